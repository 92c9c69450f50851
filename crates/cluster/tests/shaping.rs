//! Thirty simulated days of shaped sending: the planner against a real state machine (RocksDB
//! files, entries applied as a leader's would be), a manual clock moved ten minutes per round,
//! and a sender that delivers everything it is given. Counted here, from the assignments
//! themselves, not from Skein's counters: no IP ever exceeds its warm-up cap for a day nor a
//! provider's hourly limit; with demand above capacity every IP sends exactly its cap; a warm
//! IP takes its full quota from day one; an IP idle past its schedule's threshold warms up again.

use std::collections::BTreeMap;

use skein_cluster::scheduler::{Input, Planner, SessionReport};
use skein_config::DeliveryConfig;
use skein_core::HumanDuration;
use skein_proto::work::{Hello, Outcome, RecipientResult, Report, SourceIp};
use skein_queue::skein_shaping::{
    classify, IpMode, IpRecord, Provider, Schedule, Step, DAY_MS, HOUR_MS,
};
use skein_queue::{Request, Response, ShapingCommand};

#[path = "support/sim.rs"]
mod sim;

use sim::{Sim, T0};
const DAYS: i64 = 30;
const STEP_MS: i64 = 10 * 60_000;

/// The simulated DNS: one custom domain is hosted at Google (Gmail's limits apply to it from
/// its first message); the others have no MX of a provider.
fn mx_of(domain: &str) -> Option<&'static str> {
    (domain == "hosted.test").then_some("aspmx.l.google.com")
}

fn schedule(name: &str, idle_days: u32) -> Schedule {
    let step = |from_day, daily| Step { from_day, daily };
    Schedule {
        name: name.into(),
        // The seed table's shape, scaled down 250 times.
        steps: vec![
            step(1, 4),
            step(4, 20),
            step(7, 40),
            step(11, 100),
            step(15, 200),
            step(21, 400),
        ],
        sending_days: false,
        idle_days,
        utc_offset_minutes: 0,
    }
}

fn providers() -> Vec<Provider> {
    let p = |name: &str, domains: &[&str], warming, warm| Provider {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        mx_suffixes: Vec::new(),
        warming_hourly: warming,
        warm_hourly: warm,
        max_connections: 10,
        max_per_connection: 100,
    };
    vec![
        p("gmail", &["gmail.com"], 2, 20),
        p("yahoo", &["yahoo.com"], 4, 40),
        p("outlook", &["outlook.com"], 2, 12),
        p("default", &[], 4, 80),
    ]
}

fn ip(addr: &str, pool: &str, schedule: &str, start_day: i64, mode: IpMode) -> IpRecord {
    IpRecord {
        ip: addr.into(),
        hostname: format!("mta-{}.example.com", addr.replace('.', "-")),
        pool: pool.into(),
        schedule: schedule.into(),
        mode,
        resume_to: mode,
        start_day,
        sending_days: 0,
        last_sent_day: None,
        reason: String::new(),
        added_at_ms: T0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_days_of_warm_up_within_every_cap_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Sim::open(dir.path(), 4).await;
    let day0 = T0 / DAY_MS;
    sim.shape(ShapingCommand::PutSchedule(schedule("scaled", 30)))
        .await;
    sim.shape(ShapingCommand::PutSchedule(schedule("short-idle", 3)))
        .await;
    for p in providers() {
        sim.shape(ShapingCommand::PutProvider(p)).await;
    }
    // A starts today, B five days later, C is warm already; D, alone in pool "p2", re-warms
    // after three idle days.
    let ips = [
        ip("192.0.2.1", "default", "scaled", day0, IpMode::Warming),
        ip("192.0.2.2", "default", "scaled", day0 + 5, IpMode::Warming),
        ip("192.0.2.3", "default", "scaled", day0, IpMode::Warm),
        ip("192.0.2.4", "p2", "short-idle", day0, IpMode::Warming),
    ];
    // B is added on its first day; until then the sender's announcement of it gets no work.
    for r in ips.iter().filter(|r| r.start_day == day0) {
        sim.shape(ShapingCommand::AddIp(r.clone())).await;
    }
    sim.shape(ShapingCommand::SetTenantPool {
        tenant: "t2".into(),
        pool: "p2".into(),
    })
    .await;

    let cfg = DeliveryConfig {
        max_age: HumanDuration(std::time::Duration::from_secs(90 * 86_400)),
        batch: 2_000,
        ..DeliveryConfig::default()
    };
    let mut planner = Planner::new(cfg);
    planner.input(Input::Joined {
        conn: 1,
        hello: Hello {
            sender: "s1".into(),
            source_ips: ips
                .iter()
                .map(|r| SourceIp {
                    ip: r.ip.clone(),
                    ehlo: "ignored.example.com".into(),
                })
                .collect(),
            max_in_flight: 10_000,
            active_leases: Vec::new(),
        },
    });
    let mut rng = fastrand::Rng::with_seed(30);
    let ps = providers();
    // Counted from the assignments: (ip, day) and (ip, provider, hour).
    let mut per_day: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut per_hour: BTreeMap<(String, String, i64), u64> = BTreeMap::new();
    let mut hosted = 0;
    let mut now = T0;
    while now < T0 + DAYS * DAY_MS {
        let day = now / DAY_MS - day0;
        if now == ips[1].start_day * DAY_MS {
            sim.shape(ShapingCommand::AddIp(ips[1].clone())).await;
        }
        if now % DAY_MS == 0 {
            // Demand above capacity for the default pool, every day.
            sim.enqueue(
                now,
                "t1",
                &[
                    ("gmail.com", 1_200),
                    ("yahoo.com", 600),
                    ("outlook.com", 600),
                    ("example.org", 600),
                    ("hosted.test", 300),
                ],
            )
            .await;
            // Pool p2's tenant sends on days 0-4 exactly what D may (so D is idle after),
            // then nothing until day 12.
            let t2 = match day {
                0..=2 => 4,
                3 | 4 => 20,
                12 => 300,
                _ => 0,
            };
            if t2 > 0 {
                sim.enqueue(now, "t2", &[("example.net", t2)]).await;
            }
        }
        let round = planner.plan(now, &mut rng, &sim.reader, 0).unwrap();
        let ops = round.ops.clone();
        let r = sim
            .apply(Request::Deliver {
                now_ms: round.now_ms,
                mta: "relay.test".into(),
                ops,
            })
            .await;
        let Response::Delivered { leased, .. } = r else {
            panic!("{r:?}")
        };
        for send in planner.committed(round, leased) {
            let p = &send.planned;
            let provider = classify(&ps, &p.domain, mx_of(&p.domain)).name.clone();
            if p.domain == "hosted.test" {
                hosted += send.keys.len();
            }
            let n = send.keys.len() as u64;
            *per_day
                .entry((p.slot.source_ip.clone(), now / DAY_MS))
                .or_default() += n;
            *per_hour
                .entry((p.slot.source_ip.clone(), provider, now / HOUR_MS))
                .or_default() += n;
            assert!(p.slot.ehlo.starts_with("mta-"), "the IP record's hostname");
            // The sender delivers at once.
            planner.input(Input::Report(SessionReport {
                conn: 1,
                sender: "s1".into(),
                report: Report {
                    lease: p.lease,
                    rcpts: send
                        .keys
                        .iter()
                        .map(|k| RecipientResult {
                            key: k.clone(),
                            outcome: Outcome::Delivered as i32,
                            code: 250,
                            enhanced: "2.0.0".into(),
                            text: "ok".into(),
                        })
                        .collect(),
                    source_ip: p.slot.source_ip.clone(),
                    ..Default::default()
                },
            }));
        }
        // The leader's MX lookups, answered from the zone.
        for domain in planner.lookups() {
            let mx = mx_of(&domain).map(str::to_string);
            planner.input(Input::Mx {
                domain,
                result: Ok(mx),
                at_ms: now,
            });
        }
        now += STEP_MS;
    }

    // Hourly limits, every IP, provider and hour.
    for ((addr, provider, hour), n) in &per_hour {
        let r = ips.iter().find(|r| &r.ip == addr).unwrap();
        let day = hour * HOUR_MS / DAY_MS;
        let warm = r.mode == IpMode::Warm || day - r.start_day + 1 >= 21;
        let p = ps.iter().find(|p| &p.name == provider).unwrap();
        assert!(
            *n <= p.hourly(warm),
            "{addr} sent {n} to {provider} in hour {hour} (limit {})",
            p.hourly(warm)
        );
    }
    // Daily caps: the default pool's IPs send exactly their cap every day they are on.
    for r in &ips[..3] {
        let s = schedule("scaled", 30);
        for day in day0..day0 + DAYS {
            let sent = per_day.get(&(r.ip.clone(), day)).copied().unwrap_or(0);
            let cap = if day < r.start_day {
                0
            } else if r.mode == IpMode::Warm {
                400
            } else {
                s.cap_on((day - r.start_day + 1) as u32)
            };
            assert_eq!(sent, cap, "{} on day {}", r.ip, day - day0);
        }
    }
    // D: days 0-4 warm up (4, 4, 4, 20, 20), idle 5-11, then day 1 again from day 12.
    let d: Vec<u64> = (0..DAYS)
        .map(|day| {
            per_day
                .get(&(ips[3].ip.clone(), day0 + day))
                .copied()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(d[..5], [4, 4, 4, 20, 20], "{d:?}");
    assert!(d[5..12].iter().all(|&n| n == 0), "{d:?}");
    assert_eq!(
        d[12..15],
        [4, 4, 4],
        "idle 7 days > 3: warming up again: {d:?}"
    );
    let st = sim.reader.shaping(now).unwrap();
    assert_eq!(st.ips[3].record.start_day, day0 + 12);
    // The leader's lookup was learned for every replica (the sender reported no MX host).
    assert_eq!(
        st.mx.get("hosted.test").map(String::as_str),
        Some("aspmx.l.google.com")
    );
    assert!(hosted > 0, "the hosted domain got mail, counted as Gmail's");
}
