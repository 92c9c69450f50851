//! Large log entries travel ahead of the AppendEntries that carries them.
//!
//! openraft 0.9 gives every AppendEntries exactly `heartbeat_interval` to complete. An entry
//! that takes longer to cross the network (a 20 MB batch on a slow or busy link) would time out
//! on every try, so replication to that node would stall for ever, and with it every commit
//! that needs that node for a quorum. So an entry above [`STAGE_ENTRY_ABOVE`] in a request
//! above [`STAGE_REQUEST_ABOVE`] is uploaded first by a `StageEntry` call of its own, with a
//! deadline sized to the entry, running in the background whatever openraft's timers do; the
//! follower keeps it in a bounded [`Staged`] store, and the AppendEntries that follows names
//! it by log id ([`StagedAppend`]). While an upload runs, each AppendEntries attempt sends a
//! heartbeat instead (the follower's election timer keeps being reset) and reports that the
//! follower matches only what it already had, so the leader's view stays exact.
//!
//! A log id names one entry for ever (Raft's log matching), so a staged entry can be reused
//! by any later request of any leader.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};
use skein_queue::{NodeId, TypeConfig};

/// Requests that encode to more than this are sent with their large entries staged.
pub const STAGE_REQUEST_ABOVE: usize = 1024 * 1024;

/// In such a request, entries that encode to more than this are staged; smaller ones go
/// inline (at most `max_payload_entries` of them, so the request itself stays small).
pub const STAGE_ENTRY_ABOVE: usize = 64 * 1024;

/// Bytes of staged entries a follower keeps at most. Several of the largest entries (a batch
/// of `max_batch_bytes`, or one message of the largest size accepted) fit.
pub const STAGED_BUDGET: usize = 384 * 1024 * 1024;

/// How long a follower keeps a staged entry that no AppendEntries has used yet (an upload
/// from a leader that lost its leadership, or one whose entry was truncated).
pub const STAGED_TTL: Duration = Duration::from_secs(120);

/// The deadline of an upload of `bytes`: a floor for connection setup and the follower's
/// decoding, plus the time to move them at [`SLOWEST_LINK`] bytes per second.
pub fn upload_deadline(bytes: usize) -> Duration {
    Duration::from_secs(10)
        + Duration::from_millis((bytes as u64).saturating_mul(1000) / SLOWEST_LINK)
}

/// The slowest link between nodes an upload is given time for, in bytes per second.
pub const SLOWEST_LINK: u64 = 1024 * 1024;

/// One entry of a [`StagedAppend`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Part {
    /// The entry itself.
    Inline(Entry<TypeConfig>),
    /// An entry uploaded before, by its log id.
    Staged(LogId<NodeId>),
}

/// An AppendEntries whose large entries were staged: the `AppendStaged` call's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedAppend {
    /// The leader's vote.
    pub vote: Vote<NodeId>,
    /// The entry just before `entries`.
    pub prev_log_id: Option<LogId<NodeId>>,
    /// The leader's committed log id.
    pub leader_commit: Option<LogId<NodeId>>,
    /// The entries, in log order.
    pub entries: Vec<Part>,
}

/// Why a staged entry was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Keeping it would pass [`Staged`]'s budget.
    #[error("staging {size} bytes would pass the {budget}-byte budget ({held} held)")]
    Full {
        /// The entry's encoded size.
        size: usize,
        /// Bytes already held.
        held: usize,
        /// The budget.
        budget: usize,
    },
}

#[derive(Debug)]
struct Held {
    entry: Entry<TypeConfig>,
    size: usize,
    at_ms: i64,
    used: bool,
}

/// A follower's staged entries, by log id, within a byte budget. Sans-I/O: the caller passes
/// the time.
#[derive(Debug)]
pub struct Staged {
    budget: usize,
    ttl_ms: i64,
    held: BTreeMap<LogId<NodeId>, Held>,
    bytes: usize,
}

impl Staged {
    /// An empty store keeping at most `budget` bytes, unused entries for at most `ttl`.
    pub fn new(budget: usize, ttl: Duration) -> Self {
        Self {
            budget,
            ttl_ms: ttl.as_millis() as i64,
            held: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `entry`, `size` bytes encoded, received at `now_ms`. To make room it drops
    /// entries already used, oldest first, then unused ones past their time; never one still
    /// awaited, so a flood of uploads is refused rather than starving the entry in flight.
    pub fn insert(
        &mut self,
        entry: Entry<TypeConfig>,
        size: usize,
        now_ms: i64,
    ) -> Result<(), StageError> {
        if let Some(h) = self.held.get_mut(&entry.log_id) {
            h.at_ms = now_ms;
            return Ok(());
        }
        if self.bytes + size > self.budget {
            self.make_room(size, now_ms);
        }
        if self.bytes + size > self.budget {
            return Err(StageError::Full {
                size,
                held: self.bytes,
                budget: self.budget,
            });
        }
        self.bytes += size;
        self.held.insert(
            entry.log_id,
            Held {
                entry,
                size,
                at_ms: now_ms,
                used: false,
            },
        );
        Ok(())
    }

    fn make_room(&mut self, size: usize, now_ms: i64) {
        let mut victims: Vec<(bool, i64, LogId<NodeId>)> = self
            .held
            .iter()
            .filter(|(_, h)| h.used || now_ms - h.at_ms > self.ttl_ms)
            .map(|(id, h)| (!h.used, h.at_ms, *id))
            .collect();
        // Used ones first (false < true), then the oldest.
        victims.sort();
        for (_, _, id) in victims {
            if self.bytes + size <= self.budget {
                break;
            }
            if let Some(h) = self.held.remove(&id) {
                self.bytes -= h.size;
            }
        }
    }

    /// The entries of `parts`, staged ones taken from the store and marked used (kept: an
    /// AppendEntries whose answer is lost is sent again with the same ids). `Err` lists the
    /// staged ids this store does not hold.
    pub fn resolve(
        &mut self,
        parts: Vec<Part>,
    ) -> Result<Vec<Entry<TypeConfig>>, Vec<LogId<NodeId>>> {
        let missing: Vec<LogId<NodeId>> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Staged(id) if !self.held.contains_key(id) => Some(*id),
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(parts
            .into_iter()
            .map(|p| match p {
                Part::Inline(e) => e,
                Part::Staged(id) => {
                    let h = self.held.get_mut(&id).expect("checked above");
                    h.used = true;
                    h.entry.clone()
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn id(index: u64) -> LogId<NodeId> {
        entry(index).log_id
    }

    #[test]
    fn resolves_inline_and_staged_entries_in_order_and_keeps_them_for_a_retry() {
        let mut s = Staged::new(100, Duration::from_secs(10));
        s.insert(entry(2), 40, 0).unwrap();
        let parts = || {
            vec![
                Part::Inline(entry(1)),
                Part::Staged(id(2)),
                Part::Inline(entry(3)),
            ]
        };
        let got = s.resolve(parts()).unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, [1, 2, 3]);
        assert!(s.resolve(parts()).is_ok(), "kept for a retry");
        assert_eq!(s.resolve(vec![Part::Staged(id(9))]).unwrap_err(), [id(9)]);
    }

    #[test]
    fn the_budget_drops_used_entries_first_then_expired_ones_and_never_an_awaited_one() {
        let mut s = Staged::new(100, Duration::from_secs(10));
        s.insert(entry(1), 40, 0).unwrap();
        s.insert(entry(2), 40, 5_000).unwrap();
        // Both awaited, none expired: a third is refused, and says why.
        assert_eq!(
            s.insert(entry(3), 40, 6_000),
            Err(StageError::Full {
                size: 40,
                held: 80,
                budget: 100
            })
        );
        // Entry 2 was used: it makes room.
        s.resolve(vec![Part::Staged(id(2))]).unwrap();
        s.insert(entry(3), 40, 6_000).unwrap();
        assert!(s.resolve(vec![Part::Staged(id(2))]).is_err());
        assert!(s.resolve(vec![Part::Staged(id(1))]).is_ok());
        assert_eq!(s.bytes(), 80);
        // Once unused entries pass their time they go too, oldest first.
        let mut s = Staged::new(100, Duration::from_secs(10));
        s.insert(entry(1), 40, 0).unwrap();
        s.insert(entry(2), 40, 1_000).unwrap();
        s.insert(entry(3), 40, 10_500).unwrap();
        assert!(
            s.resolve(vec![Part::Staged(id(1))]).is_err(),
            "expired and dropped"
        );
        assert!(s.resolve(vec![Part::Staged(id(2))]).is_ok());
        // Larger than the whole budget: refused.
        assert!(s.insert(entry(4), 101, 20_000).is_err());
    }

    #[test]
    fn a_repeated_upload_is_kept_once() {
        let mut s = Staged::new(100, Duration::from_secs(10));
        s.insert(entry(1), 60, 0).unwrap();
        s.insert(entry(1), 60, 1).unwrap();
        assert_eq!(s.bytes(), 60);
    }

    #[test]
    fn upload_deadlines_grow_with_size() {
        assert_eq!(upload_deadline(0), Duration::from_secs(10));
        assert_eq!(upload_deadline(20 * 1024 * 1024), Duration::from_secs(30));
    }
}
