//! The scheduler's cost per recipient: one round planned over a real stored queue (RocksDB
//! files) of 60,000 due recipients in 10 tenants × 6 domains, for a sender announcing 20
//! IPs; the round is dropped (`failed`) so every iteration plans the same work.
//!
//! - `unlimited`: no IP records (senders' own IPs, no sending limits);
//! - `limits cached`: 20 warm IP records and the shipped providers, the limits read once per
//!   16 rounds as the leader does under load;
//! - `limits read`: the same, the limits and counters read again every round.
//!
//! Run: `cargo bench --workspace --profile dev --bench planner` (the dev profile the tests
//! and `skein dev` use; a release build is faster). Criterion reports time per round and
//! recipients per second; a round plans `batch` (1,000) recipients.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use skein_cluster::scheduler::{Input, Planner};
use skein_config::DeliveryConfig;
use skein_proto::work::{Hello, SourceIp};
use skein_queue::skein_shaping::{IpMode, IpRecord, DEFAULT_POOL, DEFAULT_SCHEDULE};
use skein_queue::ShapingCommand;

#[path = "../tests/support/sim.rs"]
#[allow(dead_code)]
mod sim;

use sim::{Sim, T0};

const DOMAINS: [&str; 6] = [
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "aol.com",
    "icloud.com",
    "example.org",
];
const IPS: usize = 20;

fn ips() -> Vec<String> {
    (1..=IPS).map(|i| format!("198.51.100.{i}")).collect()
}

/// A queue of 60,000 due recipients, with or without 20 warm IP records.
async fn queue(dir: &std::path::Path, limited: bool) -> Sim {
    let mut sim = Sim::open(dir, 4).await;
    if limited {
        for ip in ips() {
            sim.shape(ShapingCommand::AddIp(IpRecord {
                hostname: format!("mta-{}.example.com", ip.replace('.', "-")),
                ip,
                pool: DEFAULT_POOL.into(),
                schedule: DEFAULT_SCHEDULE.into(),
                mode: IpMode::Warm,
                resume_to: IpMode::Warm,
                start_day: T0 / skein_queue::skein_shaping::DAY_MS,
                sending_days: 0,
                last_sent_day: None,
                reason: String::new(),
                added_at_ms: T0,
            }))
            .await;
        }
    }
    for t in 0..10 {
        let domains: Vec<(&str, usize)> = DOMAINS.iter().map(|d| (*d, 1_000)).collect();
        sim.enqueue(T0, &format!("tenant{t}"), &domains).await;
    }
    sim
}

fn planner() -> Planner {
    let mut p = Planner::new(DeliveryConfig::default());
    p.input(Input::Joined {
        conn: 1,
        hello: Hello {
            sender: "s1".into(),
            source_ips: ips()
                .into_iter()
                .map(|ip| SourceIp {
                    ip,
                    ehlo: "out.example.com".into(),
                })
                .collect(),
            max_in_flight: 1_000_000,
            active_leases: Vec::new(),
        },
    });
    p
}

fn rounds(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("planner round");
    for (name, limited, step_ms) in [
        ("unlimited", false, 0),
        ("limits cached", true, 0),
        ("limits read", true, 1_001),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sim = rt.block_on(queue(dir.path(), limited));
        let mut p = planner();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut now = T0 + 1_000;
        // Domains no provider's domain rule names are looked up once: answered here.
        let first = p.plan(now, &mut rng, &sim.reader, 0).expect("a round");
        p.failed(first);
        for domain in p.lookups() {
            p.input(Input::Mx {
                domain,
                result: Ok(None),
                at_ms: now,
            });
        }
        let probe = p.plan(now, &mut rng, &sim.reader, 0).expect("a round");
        let planned: usize = probe.plan.planned.iter().map(|a| a.rcpts.len()).sum();
        p.failed(probe);
        assert_eq!(
            planned,
            DeliveryConfig::default().batch,
            "{name}: a full round"
        );
        group.throughput(Throughput::Elements(planned as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                now += step_ms;
                let r = p.plan(now, &mut rng, &sim.reader, 0).expect("a round");
                p.failed(r);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rounds);
criterion_main!(benches);
