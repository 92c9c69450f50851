//! Where the live keys of the time-ordered indexes begin.
//!
//! The due indexes, the finished messages and the edges' submission ids are time-ordered
//! and consumed from the front: a recipient's due entry is deleted when it is leased or
//! finishes, finished messages are purged, old submission ids forgotten. In RocksDB a deleted key stays behind as a
//! tombstone until compaction drops it, and an iterator that starts at the front of an index
//! steps over every one of them (in the memtable and in unflushed files alike). Under a
//! backlog that is hundreds of thousands of steps for each read of a queue's head, and the
//! leader spent most of its time doing it (found by the load harness's `day` profile).
//!
//! A floor is a key below which an index (or one queue of it) holds nothing visible: a read
//! seeks straight to it, which jumps the tombstones. Floors are raised only by a read: to the
//! first visible key it found, or to the bound it read up to when it found none (the purges
//! in the apply path: to the first key they keep, their batch deleting the ones before; a
//! batch that fails to commit stops the node). They are lowered by every insert below them.
//! Both happen under one lock: held for the whole of a read, and across the write of a batch
//! with the lowering of the floors above its inserts, so no read sees the batch without the
//! lowered floors, nor the lowered floors without the batch (see [`Floors::commit`]).
//! Floors live in memory only (they are not replicated state): a restarted node starts
//! without them and finds them on its first reads.

use std::collections::HashMap;
use std::sync::Mutex;

/// Which index a floor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Index {
    /// `due`: every unfinished recipient by due time (one floor, prefix empty).
    Due,
    /// `queue_due`: by queue (tenant, domain), then due time (a floor per queue).
    QueueDue,
    /// `finished`: finished messages by time, purged from the front.
    Finished,
    /// `submissions`: the edges' submission ids by time, forgotten from the front.
    Submissions,
}

/// A key put in an index: (index, prefix, key).
pub(crate) type Insert = (Index, Vec<u8>, Vec<u8>);

/// The floors of the time-ordered indexes, by index and prefix.
#[derive(Debug, Default)]
pub(crate) struct Floors {
    floors: Mutex<HashMap<(Index, Vec<u8>), Floor>>,
}

/// A key below which a range holds nothing visible.
type Floor = Vec<u8>;

/// A key above every key under `prefix` that the time-ordered indexes hold (their keys go on
/// with an 8-byte time and an ASCII key): the floor of a range found empty.
pub(crate) fn past(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&[0xFF; 9]);
    k
}

impl Floors {
    /// Runs `read` on the range of `index` under `prefix`, starting at its floor (or at the
    /// prefix), with the lock held. `read` returns its result and the new floor: a key below
    /// which, from the start, it saw nothing visible (`None`: the whole range).
    pub(crate) fn read<T, E>(
        &self,
        index: Index,
        prefix: &[u8],
        read: impl FnOnce(&[u8]) -> Result<(T, Option<Vec<u8>>), E>,
    ) -> Result<T, E> {
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        let key = (index, prefix.to_vec());
        let start = floors.get(&key).cloned().unwrap_or_else(|| prefix.to_vec());
        let (out, first) = read(&start)?;
        floors.insert(key, first.unwrap_or_else(|| past(prefix)));
        Ok(out)
    }

    /// Commits a batch (`write`) that inserts `keys` (`(index, prefix, key)`), bringing a
    /// floor above any of them down to it, with reads held off: a read either ends before the
    /// batch is visible (and its floor comes down after it) or starts after, from the lowered
    /// floor. (Lowered after the write alone, a read between the two would seek past a key it
    /// could see; lowered before alone, a read between the two could raise the floor again
    /// over a key not yet visible to it.)
    pub(crate) fn commit<'a, T>(
        &self,
        keys: impl IntoIterator<Item = (Index, &'a [u8], &'a [u8])>,
        write: impl FnOnce() -> T,
    ) -> T {
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        let out = write();
        for (index, prefix, k) in keys {
            if let Some(f) = floors.get_mut(&(index, prefix.to_vec())) {
                if k < f.as_slice() {
                    *f = k.to_vec();
                }
            }
        }
        out
    }

    /// Keys a batch inserted, lowering floors, outside a commit (tests).
    #[cfg(test)]
    pub(crate) fn inserted<'a>(&self, keys: impl IntoIterator<Item = (Index, &'a [u8], &'a [u8])>) {
        self.commit(keys, || ());
    }

    /// Forgets every floor (after the indexes were rewritten wholesale: a snapshot).
    #[cfg(test)]
    pub(crate) fn clear(&self) {
        self.rewrite(|| ());
    }

    /// Runs `f`, which rewrites the indexes wholesale (installs a snapshot), with reads held
    /// off; then forgets every floor.
    pub(crate) fn rewrite<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        let out = f();
        floors.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_raise_floors_and_inserts_below_lower_them() {
        let f = Floors::default();
        let read = |first: Option<&[u8]>| {
            f.read(Index::QueueDue, b"q", |start| {
                Ok::<_, ()>((start.to_vec(), first.map(<[u8]>::to_vec)))
            })
            .unwrap()
        };
        assert_eq!(read(Some(b"q5")), b"q", "no floor yet: from the prefix");
        assert_eq!(read(None), b"q5", "from the floor");
        assert_eq!(read(Some(b"q7")), past(b"q"), "found empty: past the range");
        f.inserted([(Index::QueueDue, &b"q"[..], &b"q6"[..])]);
        assert_eq!(read(Some(b"q6")), b"q6", "an insert below lowers the floor");
        f.inserted([
            (Index::QueueDue, &b"q"[..], &b"q9"[..]),
            (Index::Due, &b""[..], &b"a"[..]),
            (Index::QueueDue, &b"r"[..], &b"r1"[..]),
        ]);
        assert_eq!(read(None), b"q6", "an insert above does not");
        f.clear();
        assert_eq!(read(None), b"q");
    }
}
