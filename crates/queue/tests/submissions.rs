//! Idempotent ingest: a submission id stored within the dedup window is not stored again,
//! whether the repeat comes in a later entry or the same one, and the memory of it travels
//! in snapshots (and is emptied by installing one that does not have it).

mod common;

use common::Fixture;
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, SnapshotMeta};
use skein_queue::{NewMessage, NodeId, Request, Response};

const WINDOW: i64 = 10_000;

fn message(n: u32) -> NewMessage {
    NewMessage {
        tenant: String::new(),
        mail_from: "app@example.com".into(),
        rcpt_to: vec![format!("r{n}@example.net")],
        data: format!("Subject: {n}\r\n\r\nbody\r\n").into_bytes().into(),
        client_ip: "127.0.0.1".into(),
        helo: "c".into(),
        edge: "e".into(),
        smtputf8: false,
        body_8bit: false,
    }
}

type Store = Fixture;

impl Fixture {
    /// Applies one `EnqueueOnce` of messages with these submission ids at `at`:
    /// (ids, positions that repeated).
    async fn enqueue(&mut self, at: i64, subs: &[&str]) -> (Vec<String>, Vec<u32>) {
        let r = self
            .apply(Request::EnqueueOnce {
                received_at_ms: at,
                dedup_window_ms: WINDOW,
                messages: (0..subs.len() as u32).map(message).collect(),
                submissions: subs.iter().map(|s| s.as_bytes().to_vec()).collect(),
            })
            .await;
        match r {
            Response::Enqueued { ids, repeats, .. } => (ids, repeats),
            r => panic!("{r:?}"),
        }
    }

    /// Applies a v1 `Enqueue` of `n` messages (no submission ids) at `at`.
    async fn enqueue_v1(&mut self, at: i64, n: u32) {
        self.apply(Request::Enqueue {
            received_at_ms: at,
            messages: (0..n).map(message).collect(),
        })
        .await;
    }

    fn count(&self) -> u64 {
        self.reader.message_count().unwrap()
    }
}

#[tokio::test]
async fn a_repeated_submission_gets_its_first_id_and_is_stored_once() {
    let mut s = Store::new();
    let (a, rep) = s.enqueue(1_000, &["A"]).await;
    assert!(rep.is_empty());
    // A retry in a later entry, beside a new submission.
    let (ids, rep) = s.enqueue(2_000, &["A", "B"]).await;
    assert_eq!(ids[0], a[0]);
    assert_ne!(ids[1], a[0]);
    assert_eq!(rep, [0]);
    assert_eq!(s.count(), 2);
    // Twice in one entry.
    let (ids, rep) = s.enqueue(3_000, &["C", "C"]).await;
    assert_eq!(ids[0], ids[1]);
    assert_eq!(rep, [1]);
    assert_eq!(s.count(), 3);
    // No submission id: no protection, both stored.
    let (ids, rep) = s.enqueue(3_000, &["", ""]).await;
    assert_ne!(ids[0], ids[1]);
    assert!(rep.is_empty());
    assert_eq!(s.count(), 5);
    // Past the window, the same id is a new submission.
    let (ids, rep) = s.enqueue(1_000 + WINDOW + 1, &["A"]).await;
    assert_ne!(ids[0], a[0]);
    assert!(rep.is_empty());
    assert_eq!(s.count(), 6);
    // ...and that new one is remembered in turn.
    let (again, rep) = s.enqueue(1_000 + WINDOW + 2, &["A"]).await;
    assert_eq!(again, ids);
    assert_eq!(rep, [0]);
}

#[tokio::test]
async fn submissions_travel_in_snapshots_and_an_older_snapshot_empties_them() {
    let mut s = Store::new();
    let (b, _) = s.enqueue(1_000, &["B"]).await;
    assert_eq!(s.reader.format().unwrap(), 1);
    let r = s.apply(Request::SetFormat { version: 2 }).await;
    assert_eq!(r, Response::Format(2));
    let mut t = s.copy_by_snapshot().await;
    assert_eq!(
        t.reader.state_digest().unwrap(),
        s.reader.state_digest().unwrap()
    );
    assert_eq!(
        t.reader.format().unwrap(),
        2,
        "the format travels in snapshots"
    );
    let (ids, rep) = t.enqueue(2_000, &["B"]).await;
    assert_eq!((ids, rep), (b.clone(), vec![0]));

    // Release 0.1.0's snapshots have no submissions column family: installing one leaves
    // nothing of the replaced state behind, remembered submissions included.
    let fixture = include_str!("fixtures/format-v1.txt");
    let field = |name: &str| -> Vec<u8> {
        let hex = fixture
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let meta: SnapshotMeta<NodeId, BasicNode> =
        postcard::from_bytes(&field("snapshot-meta")).unwrap();
    let data = common::snapshot_data(&mut s.sm, &field("snapshot")).await;
    s.sm.install_snapshot(&meta, data).await.unwrap();
    s.index = 100;
    assert_eq!(s.reader.format().unwrap(), 1, "a v1 snapshot is format 1");
    let (ids, rep) = s.enqueue(2_000, &["B"]).await;
    assert_ne!(ids, b);
    assert!(rep.is_empty());
}

/// Submissions older than the window are forgotten as new ones arrive: the state ends up the
/// same as if they had never been remembered.
#[tokio::test]
async fn submissions_past_the_window_are_forgotten() {
    let mut remembered = Store::new();
    remembered.enqueue(1_000, &["A", "B"]).await;
    remembered.enqueue(1_000 + WINDOW + 1, &["C"]).await;
    let mut never = Store::new();
    never.enqueue_v1(1_000, 2).await;
    never.enqueue(1_000 + WINDOW + 1, &["C"]).await;
    assert_eq!(
        remembered.reader.state_digest().unwrap(),
        never.reader.state_digest().unwrap(),
        "A and B are still remembered"
    );
    // Within the window nothing is forgotten.
    let mut kept = Store::new();
    kept.enqueue(1_000, &["A", "B"]).await;
    kept.enqueue(1_000 + WINDOW - 1, &["C"]).await;
    let mut never_kept = Store::new();
    never_kept.enqueue_v1(1_000, 2).await;
    never_kept.enqueue(1_000 + WINDOW - 1, &["C"]).await;
    assert_ne!(
        kept.reader.state_digest().unwrap(),
        never_kept.reader.state_digest().unwrap()
    );
}

/// Submission ids belong to a tenant: the same id from another tenant is another message.
#[tokio::test]
async fn submission_ids_are_per_tenant() {
    let mut s = Store::new();
    let with_tenant = |t: &str| NewMessage {
        tenant: t.into(),
        ..message(0)
    };
    let r = s
        .apply(Request::EnqueueOnce {
            received_at_ms: 1_000,
            dedup_window_ms: WINDOW,
            messages: vec![
                with_tenant("acme"),
                with_tenant("globex"),
                with_tenant("acme"),
            ],
            submissions: vec![b"X".to_vec(), b"X".to_vec(), b"X".to_vec()],
        })
        .await;
    let Response::Enqueued { ids, repeats, .. } = r else {
        panic!("{r:?}")
    };
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    assert_eq!(repeats, [2]);
    assert_eq!(s.count(), 2);
}
