//! Proposing commands to Raft with a deadline, and asking whether this node leads.
//!
//! openraft 0.9 answers a `client_write` when its entry is applied, or when a conflicting
//! leader truncates it. It never answers when the entry disappears another way: a node that
//! proposed as leader, lost the leadership before replicating, and then caught up by
//! installing a snapshot that covers the entry's index has its entry purged with the rest of
//! the log, and the caller waits for ever. A caller that holds anything while it waits (the
//! group-commit slot, the scheduler's round) would then hold it for ever too. So every
//! proposal in this crate goes through [`propose`], which gives up after a deadline; an entry
//! given up on may still be applied later, which the callers' at-least-once contracts allow.

use std::future::Future;
use std::time::Duration;

use openraft::raft::ClientWriteResponse;
use openraft::{Raft, ServerState};
use skein_queue::{Request, TypeConfig};

use crate::error::ClusterError;

/// Proposes `cmd` and waits up to `within` for it to be committed and applied.
///
/// [`ClusterError::CommitTimeout`] means the outcome is unknown: the entry may still be
/// applied. [`ClusterError::LeaderChanged`] means it was not appended, or was truncated.
pub async fn propose(
    raft: &Raft<TypeConfig>,
    cmd: Request,
    within: Duration,
) -> Result<ClientWriteResponse<TypeConfig>, ClusterError> {
    deadline(within, async { Ok(raft.client_write(cmd).await?) }).await
}

/// Runs `fut` (a Raft call that reports through [`ClusterError`]) for at most `within`.
pub async fn deadline<T>(
    within: Duration,
    fut: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(within, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClusterError::CommitTimeout {
            ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// Whether `raft` is the leader right now, as far as it knows.
pub fn is_leader(raft: &Raft<TypeConfig>) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(m.id)
}
