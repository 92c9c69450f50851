//! `skein-load run`: starts the provider simulators (and, unless `--target` names an existing
//! edge, a cluster of its own), configures the sending limits through the Admin API, runs the
//! generator with the profile's faults, waits for every acknowledged message to be delivered or
//! bounced, and writes `report.json` and `report.html`. Exits non-zero when anything was lost
//! or a limit was exceeded.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::gen::Load;
use crate::report::{Fault, HourlyUse, Latency, Report, Second};
use crate::rig::{free_port, Layout, Rig};
use crate::sim::{self, Provider, RunClock, SharedLedger};

/// `skein-load run` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// quick: 3 queue nodes, an edge, a sender with 4 source IPs, provider limits active, the
    /// leader SIGKILLed part-way (under a minute).
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Where the report goes (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Drive an existing edge at HOST:PORT instead of starting a cluster. Its senders must
    /// route the simulated domains to the simulators (printed at start).
    #[arg(long)]
    pub target: Option<String>,
    /// Where the skein and skeinctl binaries are (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// First three octets of the cluster's loopback addresses.
    #[arg(long, default_value = "127.0.5")]
    pub net: String,
    /// First three octets of the simulators' addresses.
    #[arg(long, default_value = "127.0.6")]
    pub sim_net: String,
    /// Messages (the profile's by default).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Arrivals per second (the profile's by default).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Source IPs of the sender (the profile's by default).
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Do not tell Skein the providers' limits (the simulators still enforce them): shows
    /// what the verdicts catch.
    #[arg(long)]
    pub no_shaping: bool,
    /// Cause no faults.
    #[arg(long)]
    pub no_faults: bool,
    /// How long to wait for the last deliveries after the load, seconds.
    #[arg(long, default_value_t = 90)]
    pub drain: u64,
}

/// A profile's settings.
struct Profile {
    nodes: usize,
    source_ips: usize,
    messages: u64,
    rate: f64,
    sessions: usize,
    size: usize,
    /// (provider, recipient domain, weight, hourly per IP, connections per IP).
    providers: Vec<(&'static str, &'static str, u32, u64, u32)>,
    /// Kill the leader when this share of the messages has been scheduled.
    kill_leader_at: Option<f64>,
}

fn profile(name: &str) -> anyhow::Result<Profile> {
    match name {
        "quick" => Ok(Profile {
            nodes: 3,
            source_ips: 4,
            messages: 800,
            rate: 50.0,
            sessions: 10,
            size: 2048,
            providers: vec![
                ("gmail", "gmail.com", 40, 120, 10),
                ("yahoo", "yahoo.com", 15, 60, 10),
                ("outlook", "outlook.com", 15, 60, 10),
                ("default", "custom.test", 30, 0, 0),
            ],
            kill_leader_at: Some(0.4),
        }),
        other => anyhow::bail!(
            "no profile {other:?} (this release has: quick; day, warmup, max and soak are \
             still to come)"
        ),
    }
}

/// Runs a profile: whether it passed.
pub async fn run(a: Args) -> anyhow::Result<bool> {
    let p = profile(&a.profile)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let clock = RunClock::start();
    let ledger = SharedLedger::default();
    // The simulators, and the DSN sink for the reverse paths' domain.
    let mut routes = Vec::new();
    let mut limits = BTreeMap::new();
    for (i, (name, domain, _, hourly, conns)) in p.providers.iter().enumerate() {
        let ip = format!("{}.{}", a.sim_net, i + 1);
        let addr = format!("{ip}:{}", free_port(&ip)?).parse()?;
        let bound = sim::start(
            Provider::new(name, *hourly, *conns),
            addr,
            ledger.clone(),
            clock,
        )
        .await?;
        routes.push((domain.to_string(), bound.to_string()));
        limits.insert(name.to_string(), *hourly);
    }
    let ip = format!("{}.99", a.sim_net);
    let returns = sim::start(
        Provider::new("returns", 0, 0),
        format!("{ip}:{}", free_port(&ip)?).parse()?,
        ledger.clone(),
        clock,
    )
    .await?;
    routes.push(("load.test".into(), returns.to_string()));
    let source_ips = a.source_ips.unwrap_or(p.source_ips);
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    let mut rig = None;
    let target = match &a.target {
        Some(t) => {
            println!("driving {t}; its senders must route these domains to the simulators:");
            for (d, to) in &routes {
                println!("  {{ domain = \"{d}\", to = \"{to}\" }}");
            }
            t.clone()
        }
        None => {
            let layout = Layout {
                nodes: p.nodes,
                net: a.net.clone(),
                source_ips,
                routes: routes.clone(),
            };
            let r = Rig::start(&a.out, &bin_dir, &layout)?;
            r.ready(4, Duration::from_secs(60)).await?;
            if !a.no_shaping {
                shape(&r, &p)?;
            }
            let smtp = r.smtp.clone();
            rig = Some(r);
            smtp
        }
    };
    let load = Load {
        target,
        messages: a.messages.unwrap_or(p.messages),
        rate: a.rate.unwrap_or(p.rate),
        sessions: p.sessions,
        per_connection: 50,
        size: p.size,
        domains: p
            .providers
            .iter()
            .map(|(_, d, w, _, _)| (d.to_string(), *w))
            .collect(),
        tempfail: 0.03,
        permfail: 0.03,
        return_domain: "load.test".into(),
    };
    println!(
        "{}: {} messages at {}/s to {}",
        a.profile, load.messages, load.rate, load.target
    );
    let mut faults = Vec::new();
    let messages = load.messages;
    let rate = load.rate;
    let generator = tokio::spawn(crate::gen::run(load, move || clock.elapsed_ms()));
    if let (Some(share), false, Some(r)) = (p.kill_leader_at, a.no_faults, rig.as_mut()) {
        tokio::time::sleep(Duration::from_secs_f64(messages as f64 * share / rate)).await;
        let leader = r.leader()?;
        r.kill_node(leader);
        faults.push(Fault {
            at_ms: clock.elapsed_ms(),
            what: format!("SIGKILL leader (node {leader})"),
        });
        println!("SIGKILLed the leader, node {leader}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.restart_node(leader)?;
        faults.push(Fault {
            at_ms: clock.elapsed_ms(),
            what: format!("restart node {leader}"),
        });
    }
    let g = generator.await?;
    println!(
        "load done in {:.1} s: {} accepted, {} refused, {} connection errors; waiting for deliveries",
        g.seconds,
        g.accepted.len(),
        g.refused,
        g.errors
    );
    // Every acknowledged recipient must end delivered (once) or reported by a DSN.
    let expected: HashSet<(u64, String)> =
        g.accepted.iter().map(|m| (m.id, m.rcpt.clone())).collect();
    let until = Instant::now() + Duration::from_secs(a.drain);
    loop {
        let open = {
            let l = ledger.lock().unwrap();
            expected
                .iter()
                .filter(|k| !l.deliveries.contains_key(*k) && !l.bounces.contains(*k))
                .count()
        };
        if open == 0 || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = build(&a.profile, &g, &ledger, &limits, faults, &expected);
    drop(rig);
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(a.out.join("report.html"), report.html())?;
    print!("{}", report.summary());
    println!("report: {}", a.out.join("report.html").display());
    Ok(report.passed())
}

/// Tells the cluster about the source IPs (warm) and the providers' limits, as an operator
/// would.
fn shape(r: &Rig, p: &Profile) -> anyhow::Result<()> {
    for (i, ip) in r.source_ips.iter().enumerate() {
        r.ctl(&[
            "ip",
            "add",
            ip,
            "--hostname",
            &format!("o{}.load.test", i + 1),
            "--warm",
        ])?;
    }
    for (name, domain, _, hourly, conns) in &p.providers {
        if *hourly == 0 {
            continue;
        }
        r.ctl(&[
            "provider",
            "set",
            name,
            "--domains",
            domain,
            "--warm-hourly",
            &hourly.to_string(),
            "--warming-hourly",
            &hourly.to_string(),
            "--max-connections",
            &conns.to_string(),
        ])?;
    }
    Ok(())
}

fn build(
    profile: &str,
    g: &crate::gen::Generated,
    ledger: &SharedLedger,
    limits: &BTreeMap<String, u64>,
    faults: Vec<Fault>,
    expected: &HashSet<(u64, String)>,
) -> Report {
    let l = ledger.lock().unwrap();
    let accepted_at: std::collections::HashMap<(u64, String), u64> = g
        .accepted
        .iter()
        .map(|m| ((m.id, m.rcpt.clone()), m.at_ms))
        .collect();
    let mut lost: Vec<String> = expected
        .iter()
        .filter(|k| !l.deliveries.contains_key(*k) && !l.bounces.contains(*k))
        .map(|(id, r)| format!("{id} {r}"))
        .collect();
    lost.sort();
    let mut e2e = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .expect("valid histogram bounds");
    let mut samples = Vec::new();
    let mut last_delivery = 0;
    let mut timeline: BTreeMap<u64, Second> = BTreeMap::new();
    for m in &g.accepted {
        timeline.entry(m.at_ms / 1000).or_default().accepted += 1;
    }
    let mut duplicates = 0;
    let mut unacknowledged = 0;
    for (k, ds) in &l.deliveries {
        duplicates += ds.len() as u64 - 1;
        let first = ds.iter().map(|d| d.at_ms).min().unwrap_or(0);
        last_delivery = last_delivery.max(first);
        timeline.entry(first / 1000).or_default().delivered += 1;
        match accepted_at.get(k) {
            Some(acked) => {
                let ms = first.saturating_sub(*acked);
                let _ = e2e.record(ms.max(1) * 1000);
                samples.push(ms as f64);
            }
            None => unacknowledged += 1,
        }
    }
    let secs = timeline.keys().next_back().copied().unwrap_or(0);
    let timeline = (0..=secs)
        .map(|t| {
            let s = timeline.remove(&t).unwrap_or_default();
            Second { t, ..s }
        })
        .collect();
    let first_ack = g.accepted.iter().map(|m| m.at_ms).min().unwrap_or(0);
    let span = (last_delivery.saturating_sub(first_ack) as f64 / 1000.0).max(0.001);
    let hourly = l
        .hourly
        .iter()
        .map(|((ip, provider, hour), sent)| HourlyUse {
            ip: ip.clone(),
            provider: provider.clone(),
            hour: *hour,
            sent: *sent,
            limit: limits.get(provider).copied().unwrap_or(0),
        })
        .collect();
    Report {
        profile: profile.into(),
        submitted: g.submitted,
        accepted: g.accepted.len() as u64,
        refused: g.refused,
        errors: g.errors,
        delivered: l.deliveries.len() as u64,
        bounced: l.bounces.len() as u64,
        deferrals: l.deferrals,
        lost: lost.len() as u64,
        duplicates,
        unacknowledged_deliveries: unacknowledged,
        limit_violations: l.violations.len() as u64,
        accepted_per_s: g.accepted.len() as f64 / g.seconds.max(0.001),
        delivered_per_s: l.deliveries.len() as f64 / span,
        accept_latency_ms: Latency::from_us(&g.dot_to_250),
        arrival_latency_ms: Latency::from_us(&g.arrival_to_250),
        end_to_end_ms: Latency::from_us(&e2e),
        hourly,
        violations: l.violations.clone(),
        faults,
        timeline,
        lost_sample: lost.into_iter().take(20).collect(),
        end_to_end_samples: samples,
    }
}
