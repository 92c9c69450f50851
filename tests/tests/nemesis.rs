//! Nemesis: a 3-node cluster, an edge, a sender and a destination under continuous submission
//! from Python's smtplib, while a seeded random schedule SIGKILLs (and restarts) leaders,
//! followers, the sender and the edge, and freezes leaders with SIGSTOP.
//!
//! After every fault: commits resume (a new `250`) within [`LIVENESS`] of the fault, and
//! again after the victim is back. At the end: every message the edge acknowledged reached
//! the destination (found there by its Message-ID), each submission was stored once, and no
//! message was refused permanently.
//!
//! `SKEIN_NEMESIS_SEED` replays a schedule (the seed is printed on every run and failure);
//! `SKEIN_NEMESIS_FAULTS` sets how many faults a run injects; `SKEIN_NEMESIS_OUT` names a file
//! that gets one JSON line per fault (its recovery time), for the benchmark in the issue note.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use skein_tests::*;

/// Longest wait for the first commit after a fault (or after the victim comes back): a few
/// election timeouts plus the edge's retry over another node.
const LIVENESS: Duration = Duration::from_secs(20);
/// Longest wait for every acknowledged message to reach the destination at the end.
const DRAIN: Duration = Duration::from_secs(120);
/// Faults per run unless `SKEIN_NEMESIS_FAULTS` says otherwise.
const FAULTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_commits_resume_and_acknowledged_mail_is_delivered() -> anyhow::Result<()> {
    run("log", 120, "").await
}

/// The same with tiny snapshots: restarted nodes catch up by installing snapshots, the path
/// that stalled the cluster in issue 16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_with_snapshot_catch_up() -> anyhow::Result<()> {
    run(
        "snapshot",
        140,
        "snapshot_after_entries = 20\nkeep_entries_after_snapshot = 2\n",
    )
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    StopLeader,
    /// Freeze the leader until the others have moved on (it catches up by snapshot in the
    /// snapshot run), then kill the new leader, so the frozen one may lead again.
    StopLeaderThenKillNew,
    KillSender,
    KillEdge,
}

impl Fault {
    fn pick(rng: &mut fastrand::Rng) -> Self {
        match rng.u32(0..12) {
            0..=3 => Self::KillLeader,
            4..=5 => Self::KillFollower,
            6..=7 => Self::StopLeader,
            8..=9 => Self::StopLeaderThenKillNew,
            10 => Self::KillSender,
            _ => Self::KillEdge,
        }
    }
}

/// What one fault did, for the report and failure messages.
#[derive(Debug)]
struct Injected {
    fault: Fault,
    victim: String,
    down: Duration,
    /// From the fault (or the edge's restart) to the first new commit.
    recovery: Duration,
}

async fn run(name: &str, ip_base: u8, raft_extra: &str) -> anyhow::Result<()> {
    let seed: u64 = match std::env::var("SKEIN_NEMESIS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => fastrand::u64(..),
    };
    let faults: usize = match std::env::var("SKEIN_NEMESIS_FAULTS") {
        Ok(s) => s.parse()?,
        Err(_) => FAULTS,
    };
    eprintln!("nemesis {name}: seed {seed} (replay with SKEIN_NEMESIS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let node_extra = format!(
        "commit_timeout = \"5s\"\n[node.raft]\nheartbeat_interval = \"100ms\"\n\
         election_timeout_min = \"500ms\"\nelection_timeout_max = \"1000ms\"\n{raft_extra}\
         [node.delivery]\nlease = \"4s\"\nretry_first = \"1s\"\nretry_max = \"2s\"\n"
    );
    let mut c = Cluster::start(3, ip_base, &node_extra)?;
    c.leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let ip = |n: u8| format!("127.0.0.{}", ip_base + n);
    let sink_addr = format!("{}:{}", ip(8), free_port(&ip(8)));
    let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
    let Edge {
        proc: mut edge,
        smtp,
        ..
    } = Edge::start(
        c.dir.path(),
        &ip(5),
        &c.addrs,
        "relay_networks = [\"127.0.0.0/8\"]\n",
    )
    .await?;
    let smtp_addr: std::net::SocketAddr = format!("{}:{smtp}", ip(5)).parse()?;
    let sender_cfg = sender_config(c.dir.path(), "sender", &c.addrs, &ip(6), &sink_addr)?;
    let mut sender = Proc::spawn(
        &[
            "sender",
            "--config",
            sender_cfg.to_str().unwrap_or_default(),
        ],
        &c.dir.path().join("sender.log"),
    )?;

    let port = smtp.to_string();
    let edge_ip = ip(5);
    let tags: Vec<String> = (0..3).map(|k| format!("{name}{seed}s{k}")).collect();
    let started = Instant::now();
    let mut submitters = Vec::new();
    for tag in &tags {
        submitters.push(Submitter::start(&[
            "--host",
            &edge_ip,
            "--port",
            &port,
            "--count",
            "1000000",
            "--per-connection",
            "20",
            "--pause",
            "0.01",
            "--timeout",
            "20",
            "--tag",
            tag,
            "--rcpt",
            "ok@nemesis.test",
        ])?);
    }
    let commits_after = |t: Instant| -> Option<Instant> {
        submitters
            .iter()
            .flat_map(|s| s.records())
            .filter(|(at, r)| *at > t && r.code == Some(250))
            .map(|(at, _)| at)
            .min()
    };
    // Every role does its job before the first fault.
    wait_for("the first commits", LIVENESS, || async {
        commits_after(started)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;

    let mut injected: Vec<Injected> = Vec::new();
    let failure = |what: String, injected: &[Injected], c: &Cluster, edge: &Proc| {
        anyhow::anyhow!(
            "nemesis {name} seed {seed}: {what}\nfaults so far: {injected:#?}\n\
             replay with SKEIN_NEMESIS_SEED={seed}\n{}\n--- edge ---\n{}",
            c.logs(),
            tail(&edge.log_text(), 20)
        )
    };
    for _ in 0..faults {
        let leader = c
            .leader(&[0, 1, 2], Duration::from_secs(30))
            .await
            .map_err(|e| failure(e.to_string(), &injected, &c, &edge))?;
        let fault = Fault::pick(&mut rng);
        let down = Duration::from_millis(rng.u64(1000..4000));
        let follower = (leader + 1 + rng.usize(0..2)) % 3;
        let t0 = Instant::now();
        let (victim, back_at) = match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let i = if fault == Fault::KillLeader {
                    leader
                } else {
                    follower
                };
                c.nodes[i].kill();
                tokio::time::sleep(down).await;
                c.nodes[i].restart()?;
                (format!("node {}", i + 1), Instant::now())
            }
            Fault::StopLeader => {
                let pid = c.nodes[leader].child.id();
                signal(pid, "STOP");
                tokio::time::sleep(down).await;
                signal(pid, "CONT");
                (format!("node {}", leader + 1), Instant::now())
            }
            Fault::StopLeaderThenKillNew => {
                let pid = c.nodes[leader].child.id();
                signal(pid, "STOP");
                let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
                let next = wait_for("a new leader", LIVENESS, || async {
                    let l = c.leader(&others, Duration::from_secs(1)).await.ok()?;
                    (l != leader).then_some(l)
                })
                .await;
                tokio::time::sleep(down).await;
                signal(pid, "CONT");
                let next = next.map_err(|e| failure(e.to_string(), &injected, &c, &edge))?;
                // Let the frozen node hear of the new term and catch up first.
                let _ = c.leader(&[0, 1, 2], Duration::from_secs(5)).await;
                c.nodes[next].kill();
                tokio::time::sleep(down).await;
                c.nodes[next].restart()?;
                (
                    format!("node {} then node {}", leader + 1, next + 1),
                    Instant::now(),
                )
            }
            Fault::KillSender => {
                sender.kill();
                tokio::time::sleep(down).await;
                sender.restart()?;
                ("sender".to_string(), Instant::now())
            }
            Fault::KillEdge => {
                edge.kill();
                tokio::time::sleep(down).await;
                edge.restart()?;
                wait_listening(smtp_addr, Duration::from_secs(20)).await?;
                ("edge".to_string(), Instant::now())
            }
        };
        // Without the edge nothing can commit: count from its return.
        let from = if fault == Fault::KillEdge {
            back_at
        } else {
            t0
        };
        let resumed = wait_for("commits after the fault", LIVENESS + down, || async {
            commits_after(from)
        })
        .await
        .map_err(|e| failure(format!("{e} ({fault:?})"), &injected, &c, &edge))?;
        injected.push(Injected {
            fault,
            victim,
            down,
            recovery: resumed - from,
        });
        // And once the victim is back (it may lead again now, the case that stalled).
        wait_for("commits after the victim's return", LIVENESS, || async {
            commits_after(back_at)
        })
        .await
        .map_err(|e| failure(e.to_string(), &injected, &c, &edge))?;
    }
    for s in &mut submitters {
        s.stop();
    }

    // Safety: every acknowledged message arrives, found at the destination by its Message-ID.
    let mut acked = BTreeMap::new();
    let mut refused = Vec::new();
    for (tag, s) in tags.iter().zip(&submitters) {
        for (_, r) in s.records() {
            match (r.code, &r.id) {
                (Some(250), Some(id)) => {
                    acked.insert(format!("<{tag}.{}@client.test>", r.i), id.clone());
                }
                (Some(code), _) if code >= 500 => refused.push(r.clone()),
                _ => {}
            }
        }
    }
    assert!(
        refused.is_empty(),
        "seed {seed}: permanent refusals: {refused:?}"
    );
    let delivered = |sink: &Sink| -> Vec<String> {
        sink.of("message")
            .iter()
            .filter_map(|m| {
                let d = m["data"].as_str()?;
                d.lines()
                    .find_map(|l| l.strip_prefix("Message-ID: "))
                    .map(|v| v.trim().to_string())
            })
            .collect()
    };
    let drained = wait_for("every acknowledged message at the sink", DRAIN, || async {
        let got: BTreeSet<String> = delivered(&sink).into_iter().collect();
        acked.keys().all(|k| got.contains(k)).then_some(())
    })
    .await;
    if let Err(e) = drained {
        let got: BTreeSet<String> = delivered(&sink).into_iter().collect();
        let missing: Vec<(&String, &String)> =
            acked.iter().filter(|(k, _)| !got.contains(*k)).collect();
        let leader = c.leader(&[0, 1, 2], Duration::from_secs(10)).await.ok();
        let mut detail = String::new();
        if let Some(l) = leader {
            for (_, id) in missing.iter().take(3) {
                detail += &format!("{:?}\n", message_status(&c.addrs[l], id).await);
            }
        }
        return Err(failure(
            format!(
                "{e}: {} of {} missing, e.g. {:?}\n{detail}--- sender ---\n{}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(10)],
                tail(&sender.log_text(), 20)
            ),
            &injected,
            &c,
            &edge,
        ));
    }
    // Each submission is stored once: every stored message reaches the sink, and there are
    // as many distinct Message-IDs there as messages in the queue (a submission stored twice,
    // say by an edge retrying after a failover, would make the queue hold more).
    // (A message whose client saw an error may still be committing: count again each time,
    // on the leader after it has applied all that is committed.)
    let stored_now = || async {
        let mut last = None;
        for addr in &c.addrs {
            if let Ok(ids) = cluster_ids(addr).await {
                last = Some(ids.len());
                break;
            }
        }
        last
    };
    let once = wait_for("every stored message at the sink", DRAIN, || async {
        let stored = stored_now().await?;
        let distinct = delivered(&sink).into_iter().collect::<BTreeSet<_>>().len();
        (distinct == stored).then_some(stored)
    })
    .await;
    let stored = match once {
        Ok(stored) => stored,
        Err(e) => {
            let stored = stored_now().await.unwrap_or_default();
            let distinct = delivered(&sink).into_iter().collect::<BTreeSet<_>>().len();
            return Err(failure(
                format!("{e}: {stored} messages stored, {distinct} distinct Message-IDs delivered"),
                &injected,
                &c,
                &edge,
            ));
        }
    };
    let arrivals = delivered(&sink);
    let duplicates = arrivals.len() - arrivals.iter().collect::<BTreeSet<_>>().len();

    let mut rec: Vec<u128> = injected.iter().map(|f| f.recovery.as_millis()).collect();
    rec.sort_unstable();
    let pct = |p: f64| rec[((rec.len() as f64 - 1.0) * p).round() as usize];
    eprintln!(
        "nemesis {name}: seed {seed}, {} faults, {} acknowledged, {stored} stored, all \
         delivered, {duplicates} duplicate deliveries; first commit after a fault: p50 {} ms, p99 {} ms, max {} ms\n{injected:#?}",
        injected.len(),
        acked.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if let Ok(path) = std::env::var("SKEIN_NEMESIS_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(
            f,
            "{{\"run\":\"{name}\",\"seed\":{seed},\"acknowledged\":{},\"stored\":{stored},\
             \"duplicate_deliveries\":{duplicates}}}",
            acked.len()
        )?;
        for i in &injected {
            writeln!(
                f,
                "{{\"run\":\"{name}\",\"seed\":{seed},\"fault\":\"{:?}\",\"victim\":\"{}\",\
                 \"down_ms\":{},\"recovery_ms\":{}}}",
                i.fault,
                i.victim,
                i.down.as_millis(),
                i.recovery.as_millis()
            )?;
        }
    }
    Ok(())
}
