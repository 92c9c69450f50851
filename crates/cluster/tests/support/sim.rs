//! A state machine on real RocksDB files, applied to as a leader would (one entry at a time),
//! for simulations and benchmarks of the scheduler against real stored state.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use skein_queue::skein_shaping::DAY_MS;
use skein_queue::{
    NewMessage, QueueReader, Request, Response, ShapingCommand, ShapingOutcome, StateMachine,
    TypeConfig,
};

/// Midnight UTC, the first simulated day.
pub const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % DAY_MS;

/// The state machine, its reader, and the last log index applied.
pub struct Sim {
    /// The state machine.
    pub sm: StateMachine,
    /// Reads its state.
    pub reader: QueueReader,
    /// The last index applied.
    pub index: u64,
}

impl Sim {
    /// A new store under `dir`, at format `format`.
    pub async fn open(dir: &std::path::Path, format: u32) -> Self {
        let (_log, sm, reader) = skein_queue::open(dir).unwrap();
        let mut sim = Sim {
            sm,
            reader,
            index: 0,
        };
        sim.apply(Request::SetFormat { version: format }).await;
        sim
    }

    /// Applies `req` as the next entry.
    pub async fn apply(&mut self, req: Request) -> Response {
        self.index += 1;
        let e: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(req),
        };
        self.sm.apply([e]).await.unwrap().pop().unwrap()
    }

    /// Applies a shaping change, which must succeed.
    pub async fn shape(&mut self, cmd: ShapingCommand) {
        let r = self.apply(Request::Shaping { at_ms: T0, cmd }).await;
        assert_eq!(r, Response::Shaped(ShapingOutcome::Done));
    }

    /// `n` recipients of `tenant` to each of `domains`, in messages of up to 50.
    pub async fn enqueue(&mut self, at: i64, tenant: &str, domains: &[(&str, usize)]) {
        let mut messages = Vec::new();
        for (domain, n) in domains {
            for start in (0..*n).step_by(50) {
                messages.push(NewMessage {
                    tenant: tenant.into(),
                    mail_from: format!("news@{tenant}.test"),
                    rcpt_to: (start..(start + 50).min(*n))
                        .map(|i| format!("u{at}-{i}@{domain}"))
                        .collect(),
                    data: b"Subject: news\r\n\r\nhello\r\n".to_vec().into(),
                    client_ip: "127.0.0.1".into(),
                    helo: "app".into(),
                    edge: "e".into(),
                    smtputf8: false,
                    body_8bit: false,
                });
            }
        }
        let r = self
            .apply(Request::Enqueue {
                received_at_ms: at,
                messages,
            })
            .await;
        assert!(matches!(r, Response::Enqueued { .. }), "{r:?}");
    }
}
