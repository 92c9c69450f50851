//! `skein-load run`: starts the provider simulators (and, unless `--target` names an existing
//! edge, a cluster of its own), configures the sending limits through the Admin API, runs the
//! generator with the profile's faults, waits for every acknowledged message to be delivered or
//! bounced, and writes `report.json` and `report.html`. Exits non-zero when anything was lost
//! or a limit was exceeded.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::conductor::Conductor;
use crate::display::say;
use crate::dns;
use crate::faults::{Plan, Target};
use crate::gen::Load;
use crate::max::{postfix_relay, Cpu, MaxPhase, MaxRun};
use crate::profiles::{profile, Profile};
use crate::report::{DailyUse, Fault, HourlyUse, Latency, Report, Second};
use crate::rig::{free_port, Layout, Rig, SENDER_IN_FLIGHT};
use crate::sim::{self, Provider, RunClock, SharedLedger};

/// `skein-load run` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// quick: 3 queue nodes, an edge, a sender with 4 source IPs, provider limits active, the
    /// link to node 3 throttled for 8 s, the leader, the sender and the edge SIGKILLed
    /// part-way (under a minute). day: a million
    /// messages over a 24-hour day of scaled time through 16 warm IPs (about 45 minutes
    /// here). warmup: 30 days of two new IPs warming up under too much demand. max: the
    /// highest sustained rate, the accept latency at half of it, then Postfix on the same
    /// load (max-large: the same with 100 KB messages). soak: two hours at 400/s with a fault every 5 minutes; memory and descriptors
    /// must level off.
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Where the report goes (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Drive an existing edge at HOST:PORT instead of starting a cluster. Its senders must
    /// route the simulated domains to the simulators (printed at start).
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: a tenant to log in as (STARTTLS, then AUTH PLAIN), NAME:PASSWORD;
    /// repeat for several. Sessions take turns between the tenants and relaying by address.
    #[arg(long)]
    pub tenant: Vec<String>,
    /// With --tenant: the edge's certificate, or the CA that signed it (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
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
    /// Arrivals per second (the profile's by default); 0: as fast as they are answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Queue nodes, 1 to 9 (the profile's by default): `--nodes 1` measures a single node
    /// with its edge and sender.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub nodes: Option<u8>,
    /// Source IPs of the sender (the profile's by default).
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Do not tell Skein the providers' limits (the simulators still enforce them): shows
    /// what the verdicts catch.
    #[arg(long)]
    pub no_shaping: bool,
    /// Cause no faults (the same as `--faults none`).
    #[arg(long)]
    pub no_faults: bool,
    /// Which processes to SIGKILL (and restart) when, instead of the profile's:
    /// `TARGET@SHARE,...` with TARGET leader, follower, sender, edge, or link (throttle the
    /// link to the last node for 8 s: 100 ms and 256 KiB/s each way) and SHARE the part of
    /// the load scheduled by then (0 to 1), and/or `every:SECONDS` (leader, sender, edge,
    /// follower, link in turn); `none` for none.
    #[arg(long)]
    pub faults: Option<String>,
    /// Static routes to the simulators instead of MX records from a DNS server (dnsmasq).
    #[arg(long)]
    pub no_dns: bool,
    /// Run the cluster's clocks and the simulators' hours this many times faster than real
    /// time (the `day` profile sets it so the load spans 24 hours).
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// max: skip Postfix relaying the same load (it runs after Skein, in the same run, when
    /// postfix is installed).
    #[arg(long)]
    pub no_postfix: bool,
    /// max: Postfix's relay benchmark (default: ../shared/bench/postfix-relay.sh from here,
    /// or from the harness's source directory).
    #[arg(long)]
    pub postfix_script: Option<PathBuf>,
    /// How long to wait for the last deliveries after the load, seconds.
    #[arg(long, default_value_t = 90)]
    pub drain: u64,
}

/// Runs a profile: whether it passed.
pub async fn run(a: Args) -> anyhow::Result<bool> {
    let p = profile(&a.profile)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let messages = a.messages.unwrap_or(p.messages);
    let rate = a.rate.unwrap_or(p.rate);
    // Checked before anything starts.
    let plan = match (&a.faults, a.no_faults || a.target.is_some()) {
        (_, true) => Plan::default(),
        (Some(f), false) => Plan::parse(f).map_err(anyhow::Error::msg)?,
        (None, false) => Plan::parse(p.faults).map_err(anyhow::Error::msg)?,
    };
    let nodes = a.nodes.map_or(p.nodes, usize::from);
    if nodes < 2 && (plan.uses(Target::Follower) || plan.uses(Target::Link)) {
        anyhow::bail!("faults on a follower or a link need at least 2 nodes (--nodes {nodes})");
    }
    if rate <= 0.0 && plan != Plan::default() {
        anyhow::bail!("faults are planned by the share of the load sent: they need a fixed --rate");
    }
    // Scaled time: the load's real duration stands for the profile's virtual span.
    let scale = match (a.time_scale, p.virtual_span_s) {
        (Some(s), _) => s.max(1.0),
        (None, Some(span)) => (span / (messages as f64 / rate)).max(1.0),
        (None, None) => 1.0,
    };
    let clock = RunClock::start(scale);
    let ledger = SharedLedger::default();
    // The simulators all listen on one port (MX hosts are reached on the sender's
    // smtp_port), each on its own address; and the DSN sink for the reverse paths' domain.
    let sim_ips: Vec<String> = (1..=p.sims.len())
        .map(|i| format!("{}.{i}", a.sim_net))
        .chain([format!("{}.99", a.sim_net)])
        .collect();
    let port = common_port(&sim_ips)?;
    let mut limits = BTreeMap::new();
    let mut zones = Vec::new();
    for (i, spec) in p.sims.iter().enumerate() {
        let addr = format!("{}:{port}", sim_ips[i]).parse()?;
        let provider = Provider {
            greylist: spec.greylist,
            reply_delay: Duration::from_millis(spec.slow_ms),
            ..Provider::new(spec.name, spec.hourly, spec.conns)
        };
        sim::start(provider, addr, ledger.clone(), clock).await?;
        limits.insert(spec.name.to_string(), spec.hourly);
    }
    let returns = sim_ips.last().expect("the DSN sink's address");
    sim::start(
        Provider::new("returns", 0, 0),
        format!("{returns}:{port}").parse()?,
        ledger.clone(),
        clock,
    )
    .await?;
    let mut routes = Vec::new();
    for (domain, _, sim) in &p.dests {
        zones.push(dns::Zone {
            domain: domain.to_string(),
            mx: p.sims[*sim].mx.to_string(),
            ip: sim_ips[*sim].clone(),
        });
        routes.push((domain.to_string(), format!("{}:{port}", sim_ips[*sim])));
    }
    zones.push(dns::Zone {
        domain: "load.test".into(),
        mx: "mx.load.test".into(),
        ip: returns.clone(),
    });
    routes.push(("load.test".into(), format!("{returns}:{port}")));
    let dns = if a.no_dns {
        None
    } else if dns::Dns::available() {
        Some(dns::Dns::for_zones(
            &format!("{}.53", a.sim_net),
            &zones,
            &a.out.join("dns.log"),
        )?)
    } else {
        eprintln!("dnsmasq is not installed: static routes to the simulators instead of MX");
        None
    };
    let source_ips = a.source_ips.unwrap_or(p.source_ips);
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    let mut rig = None;
    // The virtual day the IPs were added (their warm-up day 1).
    let mut warm_from = clock.day();
    let mut logins = Vec::new();
    let target = match &a.target {
        Some(t) => {
            if !a.tenant.is_empty() {
                let ca = a
                    .tls_ca
                    .as_ref()
                    .context("--tenant needs --tls-ca: the edge's certificate or its CA (PEM)")?;
                let tls = crate::smtp::trusting(
                    &std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?,
                )
                .with_context(|| format!("{}", ca.display()))?;
                for t in &a.tenant {
                    let (user, password) = t
                        .split_once(':')
                        .with_context(|| format!("--tenant {t:?}: want NAME:PASSWORD"))?;
                    logins.push(crate::smtp::Login {
                        tls: tls.clone(),
                        user: user.into(),
                        password: password.into(),
                    });
                }
            }
            println!("driving {t}; its senders must deliver these domains to the simulators:");
            match &dns {
                Some(d) => println!("  nameservers = [\"{}\"], smtp_port = {port}", d.addr),
                None => {
                    for (d, to) in &routes {
                        println!("  {{ domain = \"{d}\", to = \"{to}\" }}");
                    }
                }
            }
            t.clone()
        }
        None => {
            // Durations the cluster counts on its own clock are stretched with time, so they
            // last as long in real time as at scale 1.
            let v = |real_s: f64| format!("\"{}ms\"", (real_s * scale * 1000.0) as u64);
            let layout = Layout {
                nodes,
                net: a.net.clone(),
                source_ips,
                routes: if dns.is_some() {
                    Vec::new()
                } else {
                    routes.clone()
                },
                dns: dns.as_ref().map(|d| (d.addr.clone(), port)),
                delivery: format!(
                    "retry_first = {}\nretry_max = {}\nlease = {}\nthrottle_delay = {}\n\
                     keep_finished = {}\n",
                    v(1.0),
                    v(3.0),
                    v(10.0),
                    v(2.0),
                    v(p.keep_finished_s)
                ),
                node: if scale > 1.0 {
                    "clock = \"manual\"".into()
                } else {
                    String::new()
                },
                tenants: p.tenants.iter().map(|t| t.to_string()).collect(),
                // The last node sits behind a link when the faults throttle one.
                linked_node: plan.uses(Target::Link).then_some(nodes as u64),
            };
            let r = Rig::start(&a.out, &bin_dir, &layout).await?;
            r.ready(4, Duration::from_secs(60)).await?;
            if !a.no_shaping {
                shape(&r, &p)?;
                warm_from = clock.day();
            }
            r.create_tenants(Duration::from_secs(30)).await?;
            logins = r.logins()?;
            let smtp = r.smtp.clone();
            if scale > 1.0 {
                tokio::spawn(crate::clock::drive(r.nodes.clone(), clock));
            }
            rig = Some(r);
            smtp
        }
    };
    let load = Load {
        target,
        first_id: 0,
        messages,
        rate,
        sessions: p.sessions,
        per_connection: 50,
        sizes: p.sizes.to_vec(),
        rcpts: p.rcpts.to_vec(),
        domains: p
            .dests
            .iter()
            .map(|(d, w, _)| (d.to_string(), *w))
            .collect(),
        tempfail: p.failures,
        permfail: p.failures,
        return_domain: "load.test".into(),
        logins,
    };
    println!(
        "{}: {} messages {} to {}{}{}",
        a.profile,
        load.messages,
        if load.rate > 0.0 {
            format!("at {}/s", load.rate)
        } else {
            "as fast as they are answered".into()
        },
        load.target,
        if dns.is_some() {
            ", MX from a DNS server"
        } else {
            ""
        },
        if scale > 1.0 {
            format!(", time x{scale:.0}")
        } else {
            String::new()
        }
    );
    let progress = crate::gen::Progress::default();
    let reporter = tokio::spawn(crate::display::run(
        progress.clone(),
        ledger.clone(),
        clock,
        messages,
    ));
    let mut conductor = Conductor {
        due: plan.schedule(messages as f64 / rate).into(),
        down: Vec::new(),
        faults: Vec::new(),
        samples: Vec::new(),
        started: Instant::now(),
        clock,
        tick: tokio::time::interval(Duration::from_millis(500)),
    };
    let cpu_before = Cpu::now(rig.as_ref());
    let started_ms = clock.elapsed_ms();
    let mut g = conductor
        .generate(load.clone(), &progress, &mut rig)
        .await?;
    println!(
        "load done in {:.1} s: {} accepted, {} refused, {} connection errors; waiting for deliveries",
        g.seconds,
        g.accepted_messages,
        g.refused,
        g.errors
    );
    let drain = Duration::from_secs(a.drain);
    conductor
        .drain(&keys(&g.accepted), &ledger, drain, &mut rig)
        .await;
    let max = if p.measure_max {
        let first = MaxPhase::of(&g, &ledger, started_ms, cpu_before, Cpu::now(rig.as_ref()));
        let half = Load {
            first_id: messages,
            messages: ((first.end_to_end_per_s / 2.0) * 20.0).clamp(100.0, messages as f64) as u64,
            rate: (first.end_to_end_per_s / 2.0).max(1.0),
            ..load.clone()
        };
        println!(
            "{:.0} messages/s end to end at most; now {} at half that rate ({:.0}/s)",
            first.end_to_end_per_s, half.messages, half.rate
        );
        let g2 = conductor
            .generate(half.clone(), &progress, &mut rig)
            .await?;
        conductor
            .drain(&keys(&g2.accepted), &ledger, drain, &mut rig)
            .await;
        let postfix = if a.no_postfix {
            None
        } else {
            // A max profile sends one size: Postfix relays the same.
            let size = p.sizes.first().map_or(5120, |s| s.0);
            postfix_relay(a.postfix_script.as_deref(), messages, p.sessions, size)
        };
        let m = MaxRun::new(first, half.rate, &g2, postfix);
        g.absorb(g2);
        Some(m)
    } else {
        None
    };
    reporter.abort();
    crate::display::finish();
    // What the queue itself says of the recipients the simulators never saw finish: still
    // queued (held back by the limits), or given up (expired or bounced, its DSN not seen:
    // it may itself wait behind the limits). The rest are lost.
    let unresolved: Vec<&crate::gen::Accepted> = {
        let l = ledger.lock().unwrap();
        g.accepted
            .iter()
            .filter(|m| {
                let k = (m.id, m.rcpt.clone());
                !l.deliveries.contains_key(&k) && !l.bounces.contains(&k)
            })
            .collect()
    };
    let mut fate = Fate::default();
    if !unresolved.is_empty() {
        if let Some(r) = &rig {
            match queue_states(r) {
                Ok(states) => {
                    for m in &unresolved {
                        let state = states
                            .get(&(m.queue_id.clone(), m.rcpt.clone()))
                            .map(String::as_str);
                        match state {
                            Some("queued" | "deferred" | "leased") => fate.held += 1,
                            Some("expired" | "bounced" | "suppressed" | "deleted") => {
                                fate.given_up += 1
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => say(format!("could not read the queue's states: {e:#}")),
            }
        }
    }
    let warmup = p.warmup.map(|steps| Warmup {
        steps,
        from_day: warm_from,
        ips: rig
            .as_ref()
            .map(|r| r.source_ips.clone())
            .unwrap_or_default(),
    });
    let mut report = build(
        &a.profile,
        &g,
        &ledger,
        &limits,
        conductor.faults.clone(),
        &keys(&g.accepted),
        warmup.as_ref(),
    );
    report.held_at_end = fate.held;
    // A SIGKILL of the sender or the leader can repeat the deliveries in flight at that
    // moment (the remote said 250, the report of it died): SMTP is at-least-once there.
    let repeatable = conductor
        .faults
        .iter()
        .filter(|f| f.what.starts_with("SIGKILL leader") || f.what == "SIGKILL sender")
        .count() as u64;
    report.duplicate_budget = report.accepted_recipients / 10_000 + repeatable * SENDER_IN_FLIGHT;
    report.max = max;
    report.resource_growth = crate::report::growth_of(&conductor.samples);
    report.resources = conductor.samples;
    report.leak_check = p.leak_check;
    report.given_up = fate.given_up;
    report.lost = report.lost.saturating_sub(fate.held + fate.given_up);
    drop(rig);
    drop(dns);
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(a.out.join("report.html"), report.html())?;
    print!("{}", report.summary());
    println!("report: {}", a.out.join("report.html").display());
    Ok(report.passed())
}

/// The (message, recipient) pairs of `accepted`.
fn keys(accepted: &[crate::gen::Accepted]) -> HashSet<(u64, String)> {
    accepted.iter().map(|m| (m.id, m.rcpt.clone())).collect()
}

/// Recipients the simulators never saw finish, by what the queue says of them.
#[derive(Debug, Default)]
struct Fate {
    held: u64,
    given_up: u64,
}

/// Every recipient's state in the queue: (queue id, lower-case address) → state.
fn queue_states(r: &Rig) -> anyhow::Result<std::collections::HashMap<(String, String), String>> {
    let out = r.ctl(&["--json", "messages", "--limit", "4000000000"])?;
    let mut states = std::collections::HashMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let m: serde_json::Value = serde_json::from_str(line)?;
        let id = m["id"].as_str().unwrap_or_default().to_string();
        for rc in m["recipients"].as_array().into_iter().flatten() {
            let address = rc["address"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let state = rc["state"].as_str().unwrap_or_default().to_string();
            states.insert((id.clone(), address), state);
        }
    }
    Ok(states)
}

/// A port free on every one of `ips`.
fn common_port(ips: &[String]) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = free_port(&ips[0])?;
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((ip.as_str(), port)).is_ok())
        {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on all of {ips:?}")
}

/// Tells the cluster about the source IPs (warm) and the providers' limits, as an operator
/// would.
fn shape(r: &Rig, p: &Profile) -> anyhow::Result<()> {
    if let Some(steps) = p.warmup {
        let mut args = vec!["schedule".to_string(), "set".into(), "loadwarm".into()];
        args.extend(steps.iter().map(|(d, n)| format!("{d}:{n}")));
        r.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    for (i, ip) in r.source_ips.iter().enumerate() {
        let host = format!("o{}.load.test", i + 1);
        let mut args = vec!["ip", "add", ip, "--hostname", &host];
        match p.warmup {
            Some(_) => args.extend(["--schedule", "loadwarm"]),
            None => args.push("--warm"),
        }
        r.ctl(&args)?;
    }
    for s in &p.sims {
        if s.hourly == 0 {
            continue;
        }
        // Skein's table knows these providers by their domains and MX hosts already: only
        // the limits are the simulators'.
        r.ctl(&[
            "provider",
            "set",
            s.name,
            "--warm-hourly",
            &s.hourly.to_string(),
            "--warming-hourly",
            &s.hourly.to_string(),
            "--max-connections",
            &s.conns.to_string(),
        ])?;
    }
    Ok(())
}

/// The warm-up the source IPs follow: the schedule, the virtual day they started, which IPs.
struct Warmup {
    steps: &'static [(u32, u64)],
    from_day: i64,
    ips: Vec<String>,
}

impl Warmup {
    /// The daily cap on warm-up day `day` (1 is the first).
    fn cap(&self, day: i64) -> u64 {
        self.steps
            .iter()
            .take_while(|(d, _)| i64::from(*d) <= day)
            .last()
            .map_or(0, |(_, n)| *n)
    }
}

fn build(
    profile: &str,
    g: &crate::gen::Generated,
    ledger: &SharedLedger,
    limits: &BTreeMap<String, u64>,
    faults: Vec<Fault>,
    expected: &HashSet<(u64, String)>,
    warmup: Option<&Warmup>,
) -> Report {
    let l = ledger.lock().unwrap();
    let mut violations = l.violations.clone();
    let mut daily = Vec::new();
    for ((ip, day), sent) in &l.daily {
        let (index, cap) = match warmup {
            Some(w) if w.ips.contains(ip) => {
                let index = day - w.from_day + 1;
                (index, w.cap(index))
            }
            _ => (*day, 0),
        };
        if cap > 0 && *sent > cap {
            violations.push(crate::sim::Violation {
                kind: "daily",
                provider: String::new(),
                source_ip: ip.clone(),
                hour: day * 24,
                limit: cap,
                at_ms: 0,
            });
        }
        daily.push(DailyUse {
            ip: ip.clone(),
            day: index,
            sent: *sent,
            cap,
        });
    }
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
        accepted: g.accepted_messages,
        accepted_recipients: g.accepted.len() as u64,
        refused: g.refused,
        errors: g.errors,
        delivered: l.deliveries.len() as u64,
        bounced: l.bounces.len() as u64,
        deferrals: l.deferrals,
        lost: lost.len() as u64,
        held_at_end: 0,
        given_up: 0,
        duplicates,
        unacknowledged_deliveries: unacknowledged,
        limit_violations: violations.len() as u64,
        accepted_per_s: g.accepted_messages as f64 / g.seconds.max(0.001),
        delivered_per_s: l.deliveries.len() as f64 / span,
        accept_latency_ms: Latency::from_us(&g.dot_to_250),
        arrival_latency_ms: Latency::from_us(&g.arrival_to_250),
        end_to_end_ms: Latency::from_us(&e2e),
        hourly,
        violations,
        daily,
        faults,
        timeline,
        lost_sample: lost.into_iter().take(20).collect(),
        accepted_by_tenant: g.by_tenant.clone(),
        end_to_end_samples: samples,
        ..Report::default()
    }
}

#[cfg(test)]
mod args_tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: super::Args,
    }

    fn args(extra: &[&str]) -> Result<super::Args, clap::Error> {
        let out = std::env::temp_dir().join("skein-load-args-test");
        let mut v = vec!["skein-load", "--out", out.to_str().unwrap()];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).map(|c| c.run)
    }

    /// `--nodes` takes 1 to 9 (nodes sit on .1-.9, the edge on .10), and a single node refuses
    /// faults that need a second one before anything is started.
    #[tokio::test]
    async fn nodes_are_one_to_nine_and_one_node_has_no_follower_to_fault() {
        assert_eq!(args(&["--nodes", "1"]).unwrap().nodes, Some(1));
        assert_eq!(args(&["--nodes", "9"]).unwrap().nodes, Some(9));
        assert!(args(&["--nodes", "0"]).is_err());
        assert!(args(&["--nodes", "10"]).is_err());
        let a = args(&["--nodes", "1", "--faults", "follower@0.5", "--rate", "10"]).unwrap();
        let e = super::run(a).await.unwrap_err().to_string();
        assert!(e.contains("at least 2 nodes"), "{e}");
    }
}
