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
                data: format!("Subject: {index}\r\n\r\nbody\r\n")
                    .into_bytes()
                    .into(),
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

/// A store that applied entries of its own installs a snapshot of another state and applies
/// on from it: the count and the applied index it goes on from are the snapshot's, not those
/// its last apply left (the state machine keeps them between applies).
#[tokio::test]
async fn applies_after_an_install_go_on_from_the_snapshot() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_la, mut source, _ra) = skein_queue::open(a.path()).unwrap();
    for i in 1..=30 {
        source.apply([enqueue(i)]).await.unwrap();
    }
    let snap = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_lb, mut sm, reader) = skein_queue::open(b.path()).unwrap();
    for i in 1..=5 {
        sm.apply([enqueue(i)]).await.unwrap();
    }
    assert_eq!(reader.message_count().unwrap(), 5);
    sm.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(reader.message_count().unwrap(), 30);
    // Entry 31 adds one message; entries 6 to 30, which the snapshot holds, add none.
    sm.apply([enqueue(31)]).await.unwrap();
    assert_eq!(reader.message_count().unwrap(), 31);
    sm.apply([enqueue(20)]).await.unwrap();
    assert_eq!(reader.message_count().unwrap(), 31);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(31));
}

/// openraft purges the log up to a snapshot it is installing before the state machine has
/// recorded that snapshot. A follower killed in between could not start again (seen under the
/// nemesis: "purge_upto 1159 <= snapshot_last_log_id 1079" violated at open). A purge waits
/// for the snapshot that covers it and is written with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_never_recorded_past_the_recorded_snapshot() {
    use openraft::storage::RaftLogStorage;
    let at = |i: u64| LogId::new(CommittedLeaderId::new(1, 1), i);
    // A snapshot at 30, from another store, to install.
    let src = tempfile::tempdir().unwrap();
    let (_l, mut sm_src, _r) = skein_queue::open(src.path()).unwrap();
    sm_src.apply((1..=30).map(enqueue)).await.unwrap();
    let snap30 = sm_src
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut bytes = Vec::new();
    {
        use tokio::io::AsyncReadExt as _;
        let mut f = snap30.snapshot;
        f.read_to_end(&mut bytes).await.unwrap();
    }
    // What openraft does on a follower: receive the snapshot into a file of the store's.
    async fn receive(sm: &mut skein_queue::StateMachine, bytes: &[u8]) -> Box<tokio::fs::File> {
        use tokio::io::AsyncWriteExt as _;
        let mut f = sm.begin_receiving_snapshot().await.unwrap();
        f.write_all(bytes).await.unwrap();
        f
    }

    let dir = tempfile::tempdir().unwrap();
    let snapshot_and_purge = || async {
        let (mut log, mut sm, _r) = skein_queue::open(dir.path()).unwrap();
        let snap = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .map(|s| s.meta.last_log_id);
        let purged = log.get_log_state().await.unwrap().last_purged_log_id;
        (snap.flatten().map(|l| l.index), purged.map(|l| l.index))
    };
    {
        let (mut log, mut sm, _r) = skein_queue::open(dir.path()).unwrap();
        sm.apply((1..=10).map(enqueue)).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Snapshot 30 arrives; openraft purges up to it before the state machine has
        // recorded it; then the node dies.
        let _received = receive(&mut sm, &bytes).await;
        log.purge(at(15)).await.unwrap();
    }
    let (snap, purged) = snapshot_and_purge().await;
    assert_eq!(snap, Some(10));
    assert!(
        purged.is_none_or(|p| p <= 10),
        "purged to {purged:?} past the recorded snapshot {snap:?}"
    );
    {
        // This time the install finishes: the purge is recorded with it.
        let (mut log, mut sm, _r) = skein_queue::open(dir.path()).unwrap();
        let file = receive(&mut sm, &bytes).await;
        log.purge(at(15)).await.unwrap();
        sm.install_snapshot(&snap30.meta, file).await.unwrap();
    }
    assert_eq!(snapshot_and_purge().await, (Some(30), Some(15)));
    {
        // A purge the current snapshot covers is written at once.
        let (mut log, _sm, _r) = skein_queue::open(dir.path()).unwrap();
        log.purge(at(25)).await.unwrap();
    }
    assert_eq!(snapshot_and_purge().await, (Some(30), Some(25)));
}
