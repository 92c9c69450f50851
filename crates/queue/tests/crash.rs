//! The state machine writes without RocksDB's write-ahead log (its entries are in the Raft
//! log already): what a crash leaves of a store, checked by crashing a child process for real
//! (it aborts: no destructor runs, nothing is flushed on the way out).
//!
//! The child is this test binary run again on one ignored test, `child`, with the store's
//! directory and what to do in the environment.

mod common;

use std::path::Path;
use std::process::Command;

use common::entry;
use openraft::storage::{RaftSnapshotBuilder as _, RaftStateMachine as _};
use openraft::Entry;
use skein_queue::types::message_id;
use skein_queue::{NewMessage, Request, TypeConfig};
use tempfile::TempDir;

const DIR: &str = "SKEIN_CRASH_DIR";
const SCENARIO: &str = "SKEIN_CRASH_SCENARIO";

/// Entries the "flushes" scenario applies: 100 KB bodies, enough to fill more than two
/// memtables (64 MiB each), so RocksDB has finished at least one flush of its own before the
/// crash (it stalls writes while two full memtables wait for their flush) and the last
/// memtable is still unflushed.
const LARGE_ENTRIES: u64 = 1500;

fn msg(index: u64, body: usize) -> NewMessage {
    let mut data = format!("Subject: {index}\r\n\r\n").into_bytes();
    data.resize(data.len() + body, b'a' + (index % 26) as u8);
    data.extend_from_slice(b"\r\n");
    NewMessage {
        tenant: "acme".into(),
        mail_from: format!("a{index}@example.com"),
        rcpt_to: vec![format!("b{index}@example.net")],
        data: data.into(),
        client_ip: "127.0.0.1".into(),
        helo: "c".into(),
        edge: "e".into(),
        smtputf8: false,
        body_8bit: false,
    }
}

/// Entry `index` of a scenario: one message of `body` bytes.
fn enqueue(index: u64, body: usize) -> Entry<TypeConfig> {
    entry(
        index,
        Request::Enqueue {
            received_at_ms: index as i64,
            messages: vec![msg(index, body)],
        },
    )
}

/// Runs the child on `scenario` over `dir` and checks that it crashed (and did not fail).
fn crash_child(dir: &Path, scenario: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR, dir)
        .env(SCENARIO, scenario)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(6),
        "the child should abort after its work; it exited with {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "the crashing half of the tests below: run by them in a child process"]
async fn child() {
    let dir = std::env::var(DIR).expect("run by a crash test");
    let (_log, mut sm, reader) = skein_queue::open(Path::new(&dir)).unwrap();
    match std::env::var(SCENARIO).unwrap().as_str() {
        "flushes" => {
            for i in 1..=LARGE_ENTRIES {
                sm.apply([enqueue(i, 100 * 1024)]).await.unwrap();
            }
        }
        "snapshot" => {
            for i in 1..=3 {
                sm.apply([enqueue(i, 1000)]).await.unwrap();
            }
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            sm.apply([enqueue(4, 1000)]).await.unwrap();
        }
        other => panic!("unknown scenario {other}"),
    }
    // Everything applied is readable before the crash.
    assert!(reader
        .get_message(&message_id(1, 0), true)
        .unwrap()
        .is_some());
    std::process::abort();
}

/// After the crash the state is exactly what the entries up to the applied index made (RocksDB
/// flushed all column families together, never one without the others), and applying the rest
/// again, as openraft does from the log, brings back every message with its body.
#[tokio::test]
async fn a_crash_leaves_the_state_of_one_applied_entry_and_the_log_brings_back_the_rest() {
    let dir = TempDir::new().unwrap();
    crash_child(dir.path(), "flushes");
    let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
    let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
    assert!(
        applied > 0 && applied < LARGE_ENTRIES,
        "RocksDB flushed partway ({applied} of {LARGE_ENTRIES} entries on disk): the rest was \
         lost with the process, as the state machine writes without the write-ahead log"
    );
    for i in 1..=LARGE_ENTRIES {
        let m = reader.get_message(&message_id(i, 0), true).unwrap();
        assert_eq!(m.is_some(), i <= applied, "message of entry {i}");
    }
    assert_eq!(reader.message_count().unwrap(), applied);
    for i in applied + 1..=LARGE_ENTRIES {
        sm.apply([enqueue(i, 100 * 1024)]).await.unwrap();
    }
    for i in 1..=LARGE_ENTRIES {
        let (rec, body) = reader
            .get_message(&message_id(i, 0), true)
            .unwrap()
            .unwrap();
        assert_eq!(rec.mail_from, format!("a{i}@example.com"));
        assert_eq!(body.unwrap(), msg(i, 100 * 1024).data, "body of entry {i}");
    }
    assert_eq!(reader.message_count().unwrap(), LARGE_ENTRIES);
}

/// A snapshot is recorded only once the state it holds is on disk: openraft then purges the
/// log up to it, and state lost in a crash after that could not be applied again.
#[tokio::test]
async fn a_crash_after_a_snapshot_keeps_the_state_the_snapshot_holds() {
    let dir = TempDir::new().unwrap();
    crash_child(dir.path(), "snapshot");
    let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
    let snap = sm.get_current_snapshot().await.unwrap().expect("snapshot");
    let applied = sm.applied_state().await.unwrap().0;
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
    assert!(
        applied >= snap.meta.last_log_id,
        "applied {applied:?} is behind the snapshot {:?}",
        snap.meta.last_log_id
    );
    for i in 1..=3 {
        assert!(reader
            .get_message(&message_id(i, 0), true)
            .unwrap()
            .is_some());
    }
}
