//! The state machine's cost per message on real RocksDB files: a group commit of 20
//! messages (one recipient each) applied as an `EnqueueOnce` entry, then the delivery round
//! that leases their recipients and the one that records them delivered — what every message
//! costs each node, bodies of 5 KB and 100 KB.
//!
//! Run: `cargo bench --workspace --bench apply` (release profile; add `--profile dev` for the
//! build the tests use). Criterion reports time per batch and messages per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use skein_queue::{
    AttemptRecord, AttemptResult, DeliveryOp, Disposition, NewMessage, Reply, Request, Response,
};

#[path = "../tests/common/mod.rs"]
mod common;

use common::Fixture;

const BATCH: usize = 20;
const T0: i64 = 1_800_000_000_000;

/// The queue's test store (entries applied one at a time at increasing indexes) and the
/// submission ids handed out so far.
struct Store {
    f: Fixture,
    submission: u64,
}

impl Store {
    async fn open() -> Self {
        let mut f = Fixture::new();
        f.apply(Request::SetFormat {
            version: skein_queue::FORMAT,
        })
        .await;
        Store { f, submission: 0 }
    }

    /// One message's life for a batch: enqueued, leased, delivered.
    async fn cycle(&mut self, body: &[u8], now_ms: i64) {
        let messages = (0..BATCH)
            .map(|i| NewMessage {
                tenant: String::new(),
                mail_from: "a@example.com".into(),
                rcpt_to: vec![format!("b{i}@example.net")],
                data: body.to_vec().into(),
                client_ip: "127.0.0.1".into(),
                helo: "bench".into(),
                edge: "edge-1".into(),
                smtputf8: false,
                body_8bit: false,
            })
            .collect();
        let submissions = (0..BATCH)
            .map(|_| {
                self.submission += 1;
                self.submission.to_be_bytes().to_vec()
            })
            .collect();
        let r = self
            .f
            .apply(Request::EnqueueOnce {
                received_at_ms: now_ms,
                dedup_window_ms: 600_000,
                messages,
                submissions,
            })
            .await;
        assert!(
            matches!(r, Response::Enqueued { ref ids, .. } if ids.len() == BATCH),
            "{r:?}"
        );
        let due = self.f.reader.due(now_ms, BATCH).expect("due recipients");
        assert_eq!(due.len(), BATCH);
        let lease = self.f.index;
        let ops = due
            .iter()
            .map(|r| DeliveryOp::Lease {
                lease,
                sender: "sender-1".into(),
                source_ip: "127.0.0.21".into(),
                expires_ms: now_ms + 60_000,
                rcpts: vec![r.key.clone()],
            })
            .collect();
        self.deliver(now_ms, ops).await;
        let ops = due
            .iter()
            .map(|r| DeliveryOp::Report {
                lease: Some(lease),
                rcpt: r.key.clone(),
                attempt: Some(AttemptRecord {
                    at_ms: now_ms,
                    sender: "sender-1".into(),
                    source_ip: "127.0.0.21".into(),
                    mx: "mx.example.net [127.0.0.2]".into(),
                    reply: Reply {
                        code: 250,
                        enhanced: "2.0.0".into(),
                        text: "ok".into(),
                    },
                    result: AttemptResult::Delivered,
                }),
                disposition: Disposition::Delivered,
            })
            .collect();
        self.deliver(now_ms, ops).await;
    }

    async fn deliver(&mut self, now_ms: i64, ops: Vec<DeliveryOp>) {
        self.f
            .apply(Request::Deliver {
                now_ms,
                mta: "bench.example".into(),
                ops,
            })
            .await;
    }
}

fn apply(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut g = c.benchmark_group("apply enqueue+lease+report");
    g.throughput(Throughput::Elements(BATCH as u64));
    for size in [5 * 1024, 100 * 1024] {
        let body: Vec<u8> = b"Subject: bench\r\n\r\n"
            .iter()
            .copied()
            .chain((0..size).map(|i| if i % 78 == 77 { b'\n' } else { b'x' }))
            .collect();
        let mut store = rt.block_on(Store::open());
        let mut now = T0;
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                now += 1;
                rt.block_on(store.cycle(body, now))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
