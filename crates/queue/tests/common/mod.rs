//! A state machine on a fresh RocksDB store, for the queue's integration tests.

use openraft::storage::RaftStateMachine;
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
}
