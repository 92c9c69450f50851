//! Sending limits end to end through `skeinctl` against `skein dev`: an IP record makes the
//! cluster the truth about the source IP (its EHLO name, its cap), mail past the day's cap
//! waits in the queue, and bad arguments get a precise status.

use std::time::Duration;

use skein_tests::*;

const FINISH: Duration = Duration::from_secs(30);

/// Schedule "tiny" (3 on day 1, then 10 a day) for IP record 127.0.0.1 (the dev sender's
/// address), named mta1.skein.test: what `skeinctl` said of each.
fn three_a_day(g: &str) -> anyhow::Result<(String, String)> {
    let schedule = ctl(g, &["schedule", "set", "tiny", "1:3", "2:10"])?;
    let ip = ctl(
        g,
        &[
            "ip",
            "add",
            "127.0.0.1",
            "--hostname",
            "mta1.skein.test",
            "--schedule",
            "tiny",
        ],
    )?;
    Ok((schedule, ip))
}

/// Waits until the cluster at `g` writes replicated format `n` (a new cluster raises it to
/// this release's once it has a leader).
async fn format_at_least(g: &str, n: u32) -> anyhow::Result<()> {
    wait_for(&format!("format {n}"), FINISH, || async {
        (status(g).await.ok()?.format >= n).then_some(())
    })
    .await
}

fn ctl(server: &str, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = skeinctl(server, args)?;
    anyhow::ensure!(ok, "skeinctl {args:?} failed: {err}");
    Ok(out)
}

fn ctl_err(server: &str, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = skeinctl(server, args)?;
    anyhow::ensure!(!ok, "skeinctl {args:?} should fail: {out}");
    Ok(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_record_caps_the_day_and_names_the_ehlo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.97";
    let rig = DevWithSink::start(dir.path(), ip, "127.0.0.98", "", "", &[]).await?;
    let g = rig.grpc.clone();
    // A new cluster writes this release's format once it has a leader.
    format_at_least(&g, 4).await?;

    // Bad arguments, each with the field or the thing at fault.
    let e = ctl_err(&g, &["schedule", "set", "bad", "1:100", "4:50"])?;
    assert!(
        e.contains("InvalidArgument") && e.contains("must not decrease"),
        "{e}"
    );
    let e = ctl_err(
        &g,
        &["ip", "add", "not-an-ip", "--hostname", "mta.skein.test"],
    )?;
    assert!(
        e.contains("InvalidArgument") && e.contains("not an IP address"),
        "{e}"
    );
    let e = ctl_err(
        &g,
        &[
            "ip",
            "add",
            "127.0.0.1",
            "--hostname",
            "mta.skein.test",
            "--schedule",
            "nope",
        ],
    )?;
    assert!(e.contains("no schedule named \"nope\""), "{e}");
    let e = ctl_err(&g, &["pool", "assign", "ghost", "p1"])?;
    assert!(e.contains("NotFound") && e.contains("ghost"), "{e}");

    // Three a day from 127.0.0.1 (the dev sender's address), named mta1.skein.test.
    let (schedule, out) = three_a_day(&g)?;
    assert!(schedule.contains("1:3 2:10"), "{schedule}");
    assert!(
        out.contains("warming") && out.contains("today 0/3"),
        "{out}"
    );
    let e = ctl_err(
        &g,
        &["ip", "add", "127.0.0.1", "--hostname", "mta1.skein.test"],
    )?;
    assert!(e.contains("AlreadyExists"), "{e}");

    let mut ids = Vec::new();
    for i in 0..5 {
        let rcpt = format!("r{i}@capped.test");
        ids.push(submit_relayed(ip, rig.smtp, &rcpt)?);
    }
    wait_for("three deliveries", FINISH, || async {
        (rig.sink.of("message").len() >= 3).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rig.sink.of("message");
    assert_eq!(got.len(), 3, "the day's cap: {got:?}");
    for m in &got {
        assert_eq!(m["ehlo"], "mta1.skein.test", "the IP record's name: {m}");
        assert_eq!(m["peer"], "127.0.0.1", "{m}");
    }
    let out = ctl(&g, &["ip", "show"])?;
    assert!(out.contains("today 3/3 (0 left)"), "{out}");
    assert!(
        out.contains("default 3/1000"),
        "this hour's use per provider: {out}"
    );
    // The two that wait show as held by the sending limits until the next day (the summary
    // by provider counts them held).
    let queues = wait_for("the hold to be published", FINISH, || async {
        let q = ctl(&g, &["queues"]).ok()?;
        q.contains("held: sending limits until").then_some(q)
    })
    .await?;
    assert!(
        queues.contains("capped.test") && queues.contains(" 2 "),
        "{queues}"
    );
    let summary = ctl(&g, &["queues", "--by", "provider"])?;
    let row: Vec<&str> = summary
        .lines()
        .find(|l| l.starts_with("default"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["default", "1", "2", "2"], "{summary}");
    let e = ctl_err(&g, &["queues", "--by", "colour"])?;
    assert!(e.contains("one of tenant, domain, provider, pool"), "{e}");

    // Pause and resume keep the record; the reason shows.
    let out = ctl(&g, &["ip", "pause", "127.0.0.1", "--reason", "complaints"])?;
    assert!(
        out.contains("paused") && out.contains("complaints"),
        "{out}"
    );
    let out = ctl(&g, &["ip", "resume", "127.0.0.1"])?;
    assert!(out.contains("warming"), "{out}");
    let e = ctl_err(&g, &["ip", "resume", "127.0.0.1"])?;
    assert!(
        e.contains("FailedPrecondition") && e.contains("not paused"),
        "{e}"
    );
    // Completing the warm-up lifts today's cap to the full quota: the rest goes.
    let out = ctl(&g, &["ip", "complete-warmup", "127.0.0.1"])?;
    assert!(out.contains("warm ") && out.contains("/10 "), "{out}");
    for id in &ids {
        let m = wait_final(&g, id, FINISH).await?;
        assert_eq!(m.recipients[0].state, "delivered");
    }
    assert_eq!(rig.sink.of("message").len(), 5);
    let out = ctl(&g, &["--json", "ip", "show"])?;
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default())?;
    assert_eq!(
        (v["sent_today"].as_u64(), v["state"].as_str()),
        (Some(5), Some("warm"))
    );

    // A suspended domain's mail waits; resumed, it goes.
    let e = ctl_err(&g, &["suspend", "planet", "mars"])?;
    assert!(
        e.contains("InvalidArgument") && e.contains("one of tenant, domain"),
        "{e}"
    );
    let out = ctl(
        &g,
        &[
            "suspend",
            "domain",
            "Capped.Test",
            "--for",
            "1h",
            "--reason",
            "incident 42",
        ],
    )?;
    assert!(
        out.contains("capped.test") && out.contains("until 2") && out.contains("incident 42"),
        "{out}"
    );
    let one = |rcpt: &str| submit_relayed(ip, rig.smtp, rcpt);
    let late = one("late@capped.test")?;
    let other = one("x@other.test")?;
    wait_final(&g, &other, FINISH).await?;
    assert!(
        rig.sink.messages_for("late@capped.test").is_empty(),
        "suspended"
    );
    assert!(ctl(&g, &["suspensions"])?.contains("capped.test"));
    ctl(&g, &["resume", "domain", "capped.test"])?;
    assert_eq!(
        wait_final(&g, &late, FINISH).await?.recipients[0].state,
        "delivered"
    );
    let e = ctl_err(&g, &["resume", "domain", "capped.test"])?;
    assert!(e.contains("NotFound"), "{e}");
    assert!(ctl(&g, &["suspensions"])?.trim().is_empty());
    Ok(())
}

/// Invariant 4 across senders and failover, counted by the destination: a 3-node cluster, two
/// senders with one IP each capped at 10 a day, 60 messages, and the leader SIGKILLed while
/// they go out. The sink sees at most 10 from each IP, and the cluster's counters (replicated
/// with each lease) show both caps spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_across_senders_and_a_leader_killed_mid_hour() -> anyhow::Result<()> {
    let raft = "commit_timeout = \"5s\"\n[node.raft]\nheartbeat_interval = \"100ms\"\n\
                election_timeout_min = \"500ms\"\nelection_timeout_max = \"1000ms\"\n\
                [node.delivery]\nlease = \"4s\"\nretry_first = \"1s\"\nretry_max = \"2s\"\n";
    let mut c = Cluster::start(3, 100, raft)?;
    let leader = c
        .leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let g = c.addrs[leader].clone();
    format_at_least(&g, 4).await?;
    ctl(&g, &["schedule", "set", "ten", "1:10"])?;
    for (ip, n) in [("127.0.0.106", 1), ("127.0.0.107", 2)] {
        let host = format!("mta{n}.skein.test");
        ctl(
            &g,
            &["ip", "add", ip, "--hostname", &host, "--schedule", "ten"],
        )?;
    }
    let sink_addr = format!("127.0.0.108:{}", free_port("127.0.0.108"));
    let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
    let edge = Edge::start(
        c.dir.path(),
        "127.0.0.105",
        &c.addrs,
        "relay_networks = [\"127.0.0.0/8\"]\n",
    )
    .await?;
    let mut senders = Vec::new();
    for (name, ip) in [("sender-a", "127.0.0.106"), ("sender-b", "127.0.0.107")] {
        let cfg = sender_config(c.dir.path(), name, &c.addrs, ip, &sink_addr)?;
        senders.push(Proc::spawn(
            &["sender", "--config", cfg.to_str().unwrap_or_default()],
            &c.dir.path().join(format!("{name}.log")),
        )?);
    }
    let port = edge.smtp.to_string();
    // Submitted over several seconds, so mail keeps coming before and after the kill.
    let submitter = Submitter::start(&[
        "--host",
        "127.0.0.105",
        "--port",
        &port,
        "--mail-from",
        "app@routed.test",
        "--rcpt",
        "r@capped.test",
        "--count",
        "60",
        "--per-connection",
        "5",
        "--pause",
        "0.1",
    ])?;
    wait_for("the first deliveries", FINISH, || async {
        (sink.of("message").len() >= 6).then_some(())
    })
    .await?;
    let before_kill = sink.of("message").len();
    c.nodes[leader].kill();
    let alive: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // The survivors name the dead leader until they elect another.
    let mut l2 = leader;
    for _ in 0..100 {
        l2 = c
            .leader(&alive, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
        if l2 != leader {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(l2, leader, "a new leader");
    let g2 = c.addrs[l2].clone();
    // Both caps spent, by the cluster's own count.
    let shown = wait_for("both caps spent", Duration::from_secs(40), || async {
        let out = ctl(&g2, &["ip", "show"]).ok()?;
        (out.matches("today 10/10").count() == 2).then_some(out)
    })
    .await
    .map_err(|e| {
        let shown = skeinctl(&g2, &["ip", "show"])
            .map(|r| format!("{} {}", r.1, r.2))
            .unwrap_or_default();
        let peers: Vec<String> = sink
            .of("message")
            .iter()
            .map(|m| m["peer"].as_str().unwrap_or_default().to_string())
            .collect();
        anyhow::anyhow!(
            "{e}\n{shown}\nsink: {peers:?}\n{}\n{}",
            tail(&senders[0].log_text(), 20),
            tail(&c.logs(), 30)
        )
    })?;
    // Leases granted before the kill may still be out: give them time to arrive.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut per_ip = std::collections::BTreeMap::<String, usize>::new();
    for m in sink.of("message") {
        *per_ip
            .entry(m["peer"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    for (ip, n) in &per_ip {
        assert!(*n <= 10, "{ip} sent {n} > 10: {per_ip:?}\n{shown}");
    }
    let total: usize = per_ip.values().sum();
    // A lease the dying leader granted but never handed out counts without a delivery (its
    // recipient is leased, and counted, again later): at most a few short of the caps.
    assert!((15..=20).contains(&total), "both caps used: {per_ip:?}");
    assert!(
        before_kill < 20,
        "the kill came mid-way ({before_kill} delivered before)"
    );
    wait_for("every submission answered", FINISH, || async {
        (submitter.records().len() >= 60).then_some(())
    })
    .await?;
    let queues = ctl(&g2, &["queues"])?;
    assert!(
        queues.contains("capped.test"),
        "the rest waits for tomorrow: {queues}"
    );
    drop(senders);
    Ok(())
}

/// A provider's limit on connections at once per IP holds at the destination: six messages
/// whose DATA the sink holds for two seconds each go out two at a time. Then a "slow down"
/// from it backs that IP off for that provider only (`ip show` says until when), and mail to
/// it goes again once the backoff ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_connection_limit_holds_at_the_destination() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.99";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.100",
        "throttle_delay = \"10s\"",
        "",
        &[],
    )
    .await?;
    let g = rig.grpc.clone();
    format_at_least(&g, 4).await?;
    let out = ctl(
        &g,
        &[
            "provider",
            "set",
            "slowprov",
            "--domains",
            "slow.test",
            "--warming-hourly",
            "1000",
            "--warm-hourly",
            "1000",
            "--max-connections",
            "2",
            "--max-per-connection",
            "100",
        ],
    )?;
    assert!(out.contains("2 connections"), "{out}");
    ctl(
        &g,
        &[
            "ip",
            "add",
            "127.0.0.1",
            "--hostname",
            "mta1.skein.test",
            "--warm",
        ],
    )?;
    for i in 0..6 {
        let rcpt = format!("hold-2-{i}@slow.test");
        submit_relayed(ip, rig.smtp, &rcpt)?;
    }
    wait_for("six deliveries", Duration::from_secs(40), || async {
        (rig.sink.of("message").len() >= 6).then_some(())
    })
    .await?;
    // Held DATA at once, from the sink's own event order.
    let (mut now, mut most) = (0i32, 0i32);
    for e in rig.sink.events() {
        match e["event"].as_str() {
            Some("held") => now += 1,
            Some("message") => now -= 1,
            _ => {}
        }
        most = most.max(now);
    }
    assert_eq!(most, 2, "two connections at once, and both used");

    // "450 4.7.0 ... slow down" for one recipient: the IP backs off from slowprov only.
    submit_relayed(ip, rig.smtp, "slowdown-1@slow.test")?;
    let shown = wait_for("the backoff in ip show", FINISH, || async {
        let out = ctl(&g, &["ip", "show"]).ok()?;
        out.contains("slowprov 6/1000 (slow down until")
            .then_some(out)
    })
    .await?;
    let later = submit_relayed(ip, rig.smtp, "later@slow.test")?;
    let other = submit_relayed(ip, rig.smtp, "x@other.test")?;
    wait_final(&g, &other, FINISH).await?;
    assert!(
        rig.sink.messages_for("later@slow.test").is_empty(),
        "slowprov waits out the backoff: {shown}"
    );
    let m = wait_final(&g, &later, FINISH).await?;
    assert_eq!(m.recipients[0].state, "delivered", "and then goes again");
    Ok(())
}

/// Day boundaries in a running node, with a manual clock: three a day from the IP, so three
/// of five go today; a day later (the clock advanced by skeinctl) the other two go. Mail the
/// limits hold past its maximum age expires with a DSN that says so. A node on the system
/// clock refuses to be moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_clock_crosses_the_day_boundary() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.93";
    let rig = DevWithSink::start_with(
        dir.path(),
        ip,
        "127.0.0.94",
        "clock = \"manual\"",
        "max_age = \"2d\"",
        "",
        &[],
    )
    .await?;
    let g = rig.grpc.clone();
    format_at_least(&g, 4).await?;
    three_a_day(&g)?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let rcpt = format!("d{i}@daily.test");
        ids.push(submit_relayed(ip, rig.smtp, &rcpt)?);
    }
    wait_for("three deliveries", FINISH, || async {
        (rig.sink.of("message").len() >= 3).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.sink.of("message").len(), 3, "day 1: the cap");
    let out = ctl(&g, &["clock", "advance", "1d"])?;
    assert!(out.contains("clock at"), "{out}");
    for id in &ids {
        assert_eq!(
            wait_final(&g, id, FINISH).await?.recipients[0].state,
            "delivered"
        );
    }
    let out = ctl(&g, &["ip", "show"])?;
    assert!(out.contains("day 2") && out.contains("today 2/10"), "{out}");

    // Eight more fit today; the ninth and tenth wait, and are still waiting when they are two
    // days old: they expire, and the DSN says the limits held them.
    let mut late = Vec::new();
    for i in 0..10 {
        late.push(submit_relayed(ip, rig.smtp, &format!("e{i}@daily.test"))?);
    }
    wait_for("the day's ten", FINISH, || async {
        (rig.sink.of("message").len() >= 13).then_some(())
    })
    .await?;
    // The last two wait (the scheduler has looked at them: a new message waits for its next
    // round) before the clock moves on.
    wait_for("the last two held", FINISH, || async {
        let out = ctl(&g, &["queues"]).ok()?;
        out.lines()
            .any(|l| l.contains("daily.test") && l.contains("held: sending limits"))
            .then_some(())
    })
    .await?;
    ctl(&g, &["clock", "advance", "3d"])?;
    let mut states = Vec::new();
    for id in &late {
        states.push(
            wait_final(&g, id, FINISH).await?.recipients[0]
                .state
                .clone(),
        );
    }
    states.sort();
    assert_eq!(
        states,
        [vec!["delivered"; 8], vec!["expired"; 2]].concat(),
        "{states:?}"
    );
    let text = rig.sink.dsn_to("app@routed.test", FINISH).await?;
    assert!(
        text.contains("delivery time expired: 451 4.4.7 held by sending limits")
            && text.contains("Status: 4.4.7"),
        "{text}"
    );

    let b = dir.path().join("b");
    std::fs::create_dir_all(&b)?;
    let other = DevWithSink::start(&b, "127.0.0.91", "127.0.0.92", "", "", &[]).await?;
    let e = ctl_err(&other.grpc, &["clock", "advance", "1h"])?;
    assert!(
        e.contains("FailedPrecondition") && e.contains("system clock"),
        "{e}"
    );
    Ok(())
}

/// Operators' actions on queued mail: retry a deferred domain now (not counted as an extra
/// attempt), bounce a retired domain's mail with a DSN that says why, delete one message
/// (no DSN); bad scopes refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_bounce_and_delete_queued_mail() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.89";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.90",
        "retry_first = \"1h\"",
        "",
        &[],
    )
    .await?;
    let g = rig.grpc.clone();
    let one = |rcpt: &str| submit_relayed(ip, rig.smtp, rcpt);
    let later = one("defer-1-a@later.test")?;
    let retired = one("defer-9-b@retired.test")?;
    let spam = one("defer-9-c@spam.test")?;
    for id in [&later, &retired, &spam] {
        wait_for("a deferral", FINISH, || async {
            let m = message_status(&g, id).await.ok()?;
            (m.recipients[0].state == "deferred").then_some(())
        })
        .await?;
    }

    let e = ctl_err(&g, &["retry"])?;
    assert!(
        e.contains("InvalidArgument") && e.contains("name a message id"),
        "{e}"
    );
    let e = ctl_err(&g, &["bounce", "--domain", "retired.test", "--reason", " "])?;
    assert!(e.contains("InvalidArgument") && e.contains("reason"), "{e}");
    let e = ctl_err(&g, &["retry", "--message", "00000000DEADBEEF"])?;
    assert!(e.contains("NotFound"), "{e}");

    let out = ctl(&g, &["retry", "--domain", "later.test"])?;
    assert!(out.contains("1 recipients due now"), "{out}");
    let m = wait_final(&g, &later, FINISH).await?;
    assert_eq!(m.recipients[0].state, "delivered");
    assert_eq!(
        m.recipients[0].attempts, 2,
        "the retry is the second attempt, no more"
    );

    let out = ctl(
        &g,
        &[
            "bounce",
            "--domain",
            "retired.test",
            "--reason",
            "domain retired",
        ],
    )?;
    assert!(out.contains("1 recipients bounced"), "{out}");
    let m = wait_final(&g, &retired, FINISH).await?;
    assert_eq!(m.recipients[0].state, "bounced");
    let text = rig.sink.dsn_to("app@routed.test", FINISH).await?;
    assert!(
        text.contains("bounced by the operator: domain retired"),
        "{text}"
    );

    // Deleted: final at once, never sent again, no DSN (the one DSN so far is the bounce's).
    format_at_least(&g, 7).await?;
    let out = ctl(&g, &["delete", "--message", &spam])?;
    assert!(out.contains("1 recipients deleted"), "{out}");
    let m = message_status(&g, &spam).await?;
    assert_eq!(m.recipients[0].state, "deleted");
    assert!(m.recipients[0].final_at_ms > 0);
    let out = ctl(&g, &["delete", "--message", &spam])?;
    assert!(out.contains("0 recipients deleted"), "{out}");
    // A DSN would have been queued by the same entry that deleted it.
    let out = ctl(&g, &["messages", "--json"])?;
    assert!(!out.contains(&format!("\"dsn_for\":\"{spam}\"")), "{out}");
    assert!(out.contains(&format!("\"dsn_for\":\"{retired}\"")), "{out}");
    let out = ctl(&g, &["messages", "--state", "deleted"])?;
    assert!(out.contains(&spam) && !out.contains(&retired), "{out}");
    Ok(())
}

/// A custom domain hosted at a provider gets that provider's limits from its first message:
/// the leader looks its MX host up (a real DNS server, dnsmasq) before it leases anything for
/// it. Mail is routed to the sink regardless, so no sender ever reports the MX host: only the
/// leader's lookup can classify the domain. Two an hour for the provider, ten for everyone
/// else: two of four go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_gets_its_providers_limits_from_the_first_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.81";
    let dns = Dns::start(
        "127.0.0.83",
        &[
            "--mx-host=brand.test,in1.mx.hosted.test,10".into(),
            "--mx-host=brand.test,in2.mx.hosted.test,20".into(),
        ],
        &dir.path().join("dns.log"),
    )?;
    let node = format!("nameservers = [\"{}\"]", dns.addr);
    let rig = DevWithSink::start_with(dir.path(), ip, "127.0.0.82", &node, "", "", &[]).await?;
    let g = rig.grpc.clone();
    format_at_least(&g, 4).await?;
    ctl(
        &g,
        &[
            "provider",
            "set",
            "hosted",
            "--mx",
            "mx.hosted.test",
            "--warming-hourly",
            "2",
            "--warm-hourly",
            "2",
        ],
    )?;
    ctl(
        &g,
        &["provider", "set", "default", "--warming-hourly", "10"],
    )?;
    ctl(
        &g,
        &["ip", "add", "127.0.0.1", "--hostname", "mta1.skein.test"],
    )?;
    for i in 0..4 {
        let rcpt = format!("u{i}@brand.test");
        submit_relayed(ip, rig.smtp, &rcpt)?;
    }
    wait_for("two deliveries", FINISH, || async {
        (rig.sink.of("message").len() >= 2).then_some(())
    })
    .await?;
    let summary = wait_for("two held by the provider's limit", FINISH, || async {
        let out = ctl(&g, &["queues", "--by", "provider"]).ok()?;
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["hosted", "1", "2", "2"])
            .then_some(out)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rig.sink.of("message").len(),
        2,
        "the provider's hourly limit from the first message: {summary}"
    );
    let dns_log = std::fs::read_to_string(dir.path().join("dns.log"))?;
    assert!(dns_log.contains("brand.test"), "looked up: {dns_log}");
    Ok(())
}

/// A tenant's message chooses another pool it is allowed with `X-Skein-Pool` (the edge strips
/// the header): it goes out from that pool's IP while the tenant's own pool, which has no IP,
/// holds its other mail; a pool it is not allowed is refused at the final dot with 550 5.7.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_chooses_its_pool_by_header() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.110";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.111",
        "",
        "credentials_refresh = \"1s\"",
        &["--tenant", "acme:acme-password"],
    )
    .await?;
    let g = rig.grpc.clone();
    format_at_least(&g, 5).await?;
    ctl(
        &g,
        &[
            "ip",
            "add",
            "127.0.0.1",
            "--hostname",
            "mta-bulk.skein.test",
            "--pool",
            "bulk",
            "--warm",
        ],
    )?;
    // The seeded tenant is created once the node leads.
    let out = wait_for("the tenant", FINISH, || async {
        ctl(&g, &["pool", "allow", "acme", "bulk"]).ok()
    })
    .await?;
    assert!(
        out.contains("sends from pool default; by X-Skein-Pool also from: bulk"),
        "{out}"
    );
    let e = ctl_err(&g, &["pool", "allow", "ghost", "bulk"])?;
    assert!(e.contains("NotFound") && e.contains("ghost"), "{e}");

    let port = rig.smtp.to_string();
    let send = |rcpt: &str, header: Option<&str>| -> anyhow::Result<Submitted> {
        let mut args = vec![
            "--host",
            ip,
            "--port",
            &port,
            "--user",
            "acme",
            "--password",
            "acme-password",
            "--mail-from",
            "app@acme.test",
            "--rcpt",
            rcpt,
        ];
        if let Some(h) = header {
            args.extend(["--header", h]);
        }
        Ok(submit(&args)?.remove(0))
    };
    // The edge learns the tenant's credentials on its next refresh (every second here; AUTH
    // before that would count as failures against this client). The tenant exists: the
    // pool allow above found it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let chosen = send("news@example.net", Some("X-Skein-Pool: Bulk"))?;
    let own = send("receipt@example.net", None)?;
    let refused = send("vip@example.net", Some("X-Skein-Pool: vip"))?;
    assert_eq!(
        (chosen.code, own.code),
        (Some(250), Some(250)),
        "{chosen:?} {own:?}"
    );
    assert_eq!(refused.code, Some(550), "{refused:?}");
    assert!(
        refused.text.contains("may not send from pool \"vip\""),
        "{refused:?}"
    );

    let m = wait_final(&g, chosen.id.as_deref().expect("accepted"), FINISH).await?;
    assert_eq!(m.recipients[0].state, "delivered");
    let got = rig.sink.messages_for("news@example.net");
    assert_eq!(
        got[0]["ehlo"], "mta-bulk.skein.test",
        "the bulk pool's IP: {got:?}"
    );
    let data = got[0]["data"].as_str().unwrap_or_default();
    assert!(!data.contains("X-Skein-Pool"), "stripped: {data}");
    assert!(data.contains("Subject: message 0"), "{data}");
    // The tenant's own pool has no IP: its other mail waits, in a queue of its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let own = message_status(&g, own.id.as_deref().expect("accepted")).await?;
    assert_ne!(own.recipients[0].state, "delivered", "{own:?}");
    let queues = ctl(&g, &["queues", "--by", "pool"])?;
    let row = |pool: &str| -> Vec<String> {
        queues
            .lines()
            .find(|l| l.starts_with(pool))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("default")[..3], ["default", "1", "1"], "{queues}");
    assert!(
        row("bulk").is_empty(),
        "the stream's queue is done: {queues}"
    );
    Ok(())
}

/// A tenant's own suppression rule (here for mail relayed by IP address, tenant ""): domain
/// failures suppress after two bounces instead of the default three over two days; a rule of
/// 0 never suppresses them; clearing it goes back to the cluster's rule. skeinctl shows each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_suppression_rule_decides_domain_failures() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.84";
    let rig = DevWithSink::start(dir.path(), ip, "127.0.0.85", "", "", &[]).await?;
    let g = rig.grpc.clone();
    format_at_least(&g, 7).await?;
    let out = ctl(&g, &["suppression", "policy"])?;
    assert!(out.contains("the cluster's rule"), "{out}");
    let out = ctl(
        &g,
        &[
            "suppression",
            "policy",
            "--domain-failures",
            "2",
            "--span",
            "0s",
        ],
    )?;
    assert!(
        out.contains("domain-level bounces after 2 bounces") && out.contains("until removed"),
        "{out}"
    );
    let e = ctl_err(&g, &["suppression", "policy", "--span", "40d"])?;
    assert!(e.contains("domain_failure_window_ms"), "{e}");
    let e = ctl_err(
        &g,
        &["suppression", "policy", "--tenant", "nobody", "--clear"],
    )?;
    assert!(e.contains("NotFound"), "{e}");

    let bounce = async |rcpt: &str| {
        let id = submit_relayed(ip, rig.smtp, rcpt)?;
        wait_final(&g, &id, FINISH).await
    };
    let m = bounce("nodomain-a@gone.test").await?;
    assert_eq!(m.recipients[0].state, "bounced");
    assert!(
        m.recipients[0].note.starts_with("1 domain-level bounces"),
        "{m:?}"
    );
    let listed = || ctl(&g, &["suppression", "list"]);
    assert!(!listed()?.contains("nodomain-a@gone.test"));
    bounce("nodomain-a@gone.test").await?;
    let list = listed()?;
    assert!(
        list.contains("nodomain-a@gone.test") && list.contains("2 bounces over 0 hours"),
        "{list}"
    );
    let m = bounce("nodomain-a@gone.test").await?;
    assert_eq!(m.recipients[0].state, "suppressed");

    // Never, then back to the cluster's rule (three bounces over two days: not in a test).
    ctl(&g, &["suppression", "policy", "--domain-failures", "0"])?;
    for _ in 0..3 {
        bounce("nodomain-b@gone.test").await?;
    }
    ctl(&g, &["suppression", "policy", "--clear"])?;
    assert!(ctl(&g, &["suppression", "policy"])?.contains("the cluster's rule"));
    for _ in 0..2 {
        bounce("nodomain-c@gone.test").await?;
    }
    let list = listed()?;
    assert!(
        !list.contains("nodomain-b@") && !list.contains("nodomain-c@"),
        "{list}"
    );
    Ok(())
}
