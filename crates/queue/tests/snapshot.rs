//! Snapshots built while openraft keeps applying: each one must describe exactly the state it
//! holds, or a follower that installs it applies entries a second time.

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use skein_queue::{NewMessage, Request, TypeConfig};

fn enqueue(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::Enqueue {
            received_at_ms: index as i64,
            messages: vec![NewMessage {
                tenant: String::new(),
                mail_from: "app@example.com".into(),
                rcpt_to: vec![format!("r{index}@example.net")],
                data: format!("Subject: {index}\r\n\r\nbody\r\n").into_bytes(),
                client_ip: "127.0.0.1".into(),
                helo: "c".into(),
                edge: "e".into(),
                smtputf8: false,
                body_8bit: false,
            }],
        }),
    }
}

/// Every entry adds one message, so a snapshot at index N holds exactly N messages. Install
/// each snapshot built during a stream of applies on a fresh store and count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_log_id_matches_its_data_under_concurrent_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _reader) = skein_queue::open(dir.path()).unwrap();
    let mut builder = sm.get_snapshot_builder().await;
    const ENTRIES: u64 = 2000;
    let applier = tokio::spawn(async move {
        for i in 1..=ENTRIES {
            sm.apply([enqueue(i)]).await.unwrap();
        }
    });
    let mut checked = 0;
    while !applier.is_finished() || checked == 0 {
        let snap = builder.build_snapshot().await.unwrap();
        let Some(at) = snap.meta.last_log_id else {
            continue;
        };
        let fresh = tempfile::tempdir().unwrap();
        let (_l, mut sm2, reader2) = skein_queue::open(fresh.path()).unwrap();
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let held = reader2.list_messages("", usize::MAX).unwrap().len() as u64;
        assert_eq!(
            held, at.index,
            "snapshot claims log index {} but holds {held} messages",
            at.index
        );
        assert_eq!(reader2.message_count().unwrap(), at.index);
        checked += 1;
    }
    applier.await.unwrap();
    assert!(checked > 0);
}
