//! A state machine on a fresh RocksDB store, for the queue's integration tests.
// Each test binary uses a part of it.
#![allow(dead_code)]

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use skein_queue::{QueueReader, Request, Response, StateMachine, TypeConfig};
use tempfile::TempDir;

/// An entry of term 1 at `index` carrying `req`.
pub fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(req),
    }
}

/// Snapshot data holding `bytes`, received by `sm` as from a leader.
pub async fn snapshot_data(sm: &mut StateMachine, bytes: &[u8]) -> Box<tokio::fs::File> {
    use tokio::io::AsyncWriteExt as _;
    let mut f = sm.begin_receiving_snapshot().await.unwrap();
    f.write_all(bytes).await.unwrap();
    f
}

/// Everything in snapshot data, from the start.
pub async fn read_data(mut f: Box<tokio::fs::File>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    f.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut out = Vec::new();
    f.read_to_end(&mut out).await.unwrap();
    out
}

/// A store whose entries are applied one at a time, at increasing log indexes.
pub struct Fixture {
    _dir: TempDir,
    /// The state machine.
    pub sm: StateMachine,
    /// Reads over its state.
    pub reader: QueueReader,
    /// Index of the last entry applied.
    pub index: u64,
}

impl Fixture {
    /// An empty store in a temporary directory.
    pub fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let (_log, sm, reader) = skein_queue::open(dir.path()).unwrap();
        Self {
            _dir: dir,
            sm,
            reader,
            index: 0,
        }
    }

    /// Applies `req` as the next entry and returns its response.
    pub async fn apply(&mut self, req: Request) -> Response {
        self.index += 1;
        let mut out = self.sm.apply([entry(self.index, req)]).await.unwrap();
        out.pop().unwrap()
    }

    /// A new store holding this one's state, by building a snapshot here and installing it
    /// there (at the same log index).
    pub async fn copy_by_snapshot(&mut self) -> Fixture {
        let mut copy = Fixture::new();
        copy.install_from(self).await;
        copy
    }

    /// Replaces this store's state with `other`'s, by a snapshot built there.
    pub async fn install_from(&mut self, other: &mut Fixture) {
        let snap = other
            .sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        self.sm
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        self.index = other.index;
    }
}
