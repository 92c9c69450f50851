//! The log's most recent entries, kept decoded in memory.
//!
//! Every entry is read back soon after it is appended: by the state machine to apply it, and
//! on the leader once more per follower to replicate it. Served from RocksDB, each read cost
//! an iterator, a copy of the value and a decoding (10% of a leader's CPU with 100 KB
//! messages, issue 17); served from here it is one clone. The entries kept are contiguous, the
//! newest the log holds; reads outside them go to RocksDB as before.

use std::collections::VecDeque;

use openraft::Entry;

use crate::types::TypeConfig;

/// Most bytes (encoded) of entries kept.
pub(crate) const RECENT_BYTES: usize = 32 << 20;
/// Most entries kept.
pub(crate) const RECENT_ENTRIES: usize = 8192;

/// Contiguous recent entries and their encoded sizes.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Recent {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Keeps `appended` (entries just written, in order, with their encoded sizes). Entries
    /// that do not follow the last one kept replace them all.
    pub(crate) fn appended(&mut self, appended: Vec<(Entry<TypeConfig>, usize)>) {
        for (e, size) in appended {
            if self.last().is_some_and(|l| l + 1 != e.log_id.index) {
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += size;
            self.entries.push_back((e, size));
        }
        while self.bytes > RECENT_BYTES || self.entries.len() > RECENT_ENTRIES {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Forgets entries from `index` on (the log was truncated there).
    pub(crate) fn truncated(&mut self, index: u64) {
        while self.last().is_some_and(|l| l >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets entries up to `index` included (the log was purged to there).
    pub(crate) fn purged(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// Entries `start..end` if all of them are kept; `None` otherwise (read the database).
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first()?;
        let last = self.last()?;
        if start < first || end > last + 1 {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end.max(start) - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(term: u64, index: u64) -> (Entry<TypeConfig>, usize) {
        let e = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        };
        (e, 1 << 20)
    }

    fn ids(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| {
            v.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut r = Recent::default();
        assert_eq!(ids(r.get(1, 2)), None);
        r.appended((5..=9).map(|i| entry(1, i)).collect());
        assert_eq!(ids(r.get(5, 10)), Some((5..=9).map(|i| (1, i)).collect()));
        assert_eq!(ids(r.get(7, 8)), Some(vec![(1, 7)]));
        assert_eq!(ids(r.get(7, 7)), Some(vec![]));
        assert_eq!(ids(r.get(4, 6)), None, "starts before the first kept");
        assert_eq!(ids(r.get(9, 11)), None, "ends past the last kept");
    }

    #[test]
    fn truncation_and_purge_forget_their_entries() {
        let mut r = Recent::default();
        r.appended((1..=10).map(|i| entry(1, i)).collect());
        r.truncated(8);
        assert_eq!(ids(r.get(8, 9)), None);
        // A new leader's entries replace the truncated ones.
        r.appended(vec![entry(2, 8)]);
        assert_eq!(ids(r.get(7, 9)), Some(vec![(1, 7), (2, 8)]));
        r.purged(3);
        assert_eq!(ids(r.get(3, 5)), None);
        assert_eq!(ids(r.get(4, 5)), Some(vec![(1, 4)]));
        r.purged(100);
        assert_eq!(ids(r.get(8, 9)), None);
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn a_gap_restarts_it_and_its_size_is_bounded() {
        let mut r = Recent::default();
        r.appended((1..=3).map(|i| entry(1, i)).collect());
        // Not following index 3 (a snapshot was installed meanwhile): only the new ones stay.
        r.appended(vec![entry(1, 50)]);
        assert_eq!(ids(r.get(3, 4)), None);
        assert_eq!(ids(r.get(50, 51)), Some(vec![(1, 50)]));
        // 1 MiB each: only the newest RECENT_BYTES worth are kept.
        r.appended((51..=100).map(|i| entry(1, i)).collect());
        let kept = RECENT_BYTES >> 20;
        assert_eq!(r.entries.len(), kept);
        assert_eq!(r.first(), Some(100 - kept as u64 + 1));
        assert_eq!(r.bytes, RECENT_BYTES);
    }
}
