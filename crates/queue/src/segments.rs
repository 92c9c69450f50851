//! The Raft log's entries, in append-only segment files (`raft-log/` in the data directory).
//!
//! The log used to be a RocksDB column family: every entry went through RocksDB's write-ahead
//! log, a memtable, and a flush into a table file before the purge that followed its snapshot
//! deleted it — each message body written three times over per node, plus the memtable's
//! copy (a quarter of a follower's CPU with 100 KB messages, issue 17). Here an entry is
//! written once, synced, and deleted with its file.
//!
//! Layout: files named by the index of their first entry (`{index:020}.seg`), each beginning
//! with [`MAGIC`], then one record per entry:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, u32 little-endian |
//! | 4 | CRC-32 of the index's 8 bytes then the payload, u32 little-endian |
//! | 8 | log index, u64 little-endian |
//! | n | payload: the entry in postcard, as the column family held it |
//!
//! A segment takes appends until it holds [`SEGMENT_BYTES`]; an append whose first entry does
//! not follow the last one (the log was purged past its end by a snapshot) starts a new one.
//!
//! Crash rules:
//! - an append is acknowledged once its segment is synced (`sync_data`); a new segment's
//!   header and directory entry are synced before any entry goes into it;
//! - at open, the last segment is read up to its first record that is incomplete or fails its
//!   checksum and cut there: that append was interrupted, so never acknowledged. A bad record
//!   in an earlier segment is corruption and fails the open: those were whole and synced
//!   before the next segment began;
//! - a truncation removes the later segments and syncs the directory before it cuts the
//!   segment holding its index: a crash in between leaves the log with a prefix of the
//!   entries being truncated, which were uncommitted anyway;
//! - the purged log id is recorded (synced, by the caller) before segments are removed, and
//!   segments it wholly covers are removed at open.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{Entry, LogId};

use crate::types::{decode_shared, NodeId, TypeConfig};

/// First bytes of every segment file: the format's name and version.
pub(crate) const MAGIC: &[u8; 8] = b"SKNLOG01";
/// A segment takes no new appends once it holds this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes of a record's header: length, checksum, index.
const HEADER: usize = 16;
/// The staging buffer is released after an append larger than this (it is kept otherwise, so
/// appends do not fault in fresh pages each time).
const KEEP_BUFFER: usize = 16 << 20;

/// One segment file: the index of its first entry and where each of its entries begins.
#[derive(Debug)]
struct Segment {
    first: u64,
    file: Arc<File>,
    path: PathBuf,
    offsets: Vec<u64>,
    /// End of its last whole record.
    end: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }

    /// Byte range of the records of entries `from..to` (indexes into `offsets`).
    fn bytes(&self, from: usize, to: usize) -> (u64, u64) {
        let start = self.offsets[from];
        let end = self.offsets.get(to).copied().unwrap_or(self.end);
        (start, end)
    }
}

/// Records of consecutive entries in one file, to read outside the log's lock.
#[derive(Debug)]
pub(crate) struct Span {
    file: Arc<File>,
    first: u64,
    count: usize,
    start: u64,
    end: u64,
}

/// The log's segments, in index order.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    last: Option<LogId<NodeId>>,
    /// Entries up to this index are purged: never read, even while still in a file.
    purged: Option<u64>,
    /// Size at which a segment takes no new appends ([`SEGMENT_BYTES`]; smaller in tests).
    segment_bytes: u64,
    /// Records staged for the next append, and where each begins in it.
    staged: Vec<u8>,
    staged_at: Vec<usize>,
    staged_first: u64,
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("raft log {}: {what}", path.display()),
    )
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Checks one record (`rec` holds at least its header) and returns its index and payload.
fn check_record(rec: &[u8]) -> Option<(u64, &[u8])> {
    let len = u32::from_le_bytes(rec.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rec.get(4..8)?.try_into().ok()?);
    let index_bytes: [u8; 8] = rec.get(8..16)?.try_into().ok()?;
    let payload = rec.get(HEADER..HEADER + len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&index_bytes);
    h.update(payload);
    (h.finalize() == crc).then_some((u64::from_le_bytes(index_bytes), payload))
}

impl Segments {
    /// Opens the log in `dir` (created if missing). Segments holding only entries up to
    /// `purged` are removed; the last segment's interrupted append, if any, is cut off.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut log = Segments {
            dir: dir.to_owned(),
            segments: VecDeque::new(),
            last: None,
            purged: None,
            segment_bytes: SEGMENT_BYTES,
            staged: Vec::new(),
            staged_at: Vec::new(),
            staged_first: 0,
        };
        let n = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(segment_name(first));
            let is_last = i + 1 == n;
            let Some(seg) = Self::scan(&path, first, is_last)? else {
                continue;
            };
            if let Some(prev) = log.segments.back().and_then(Segment::last) {
                if seg.first <= prev {
                    return Err(corrupt(
                        &path,
                        format!(
                            "begins at {} but the segment before ends at {prev}",
                            seg.first
                        ),
                    ));
                }
            }
            log.segments.push_back(seg);
        }
        if let Some(p) = purged {
            log.purge(p)?;
        }
        log.last = match log.segments.back().and_then(Segment::last) {
            Some(i) => Some(log.read_one(i)?.log_id),
            None => None,
        };
        Ok(log)
    }

    /// Reads a segment's records: headers only, except in the last segment, whose records
    /// are all checked and which is cut at the first bad one. `None`: a last segment whose
    /// creation a crash interrupted (removed).
    fn scan(path: &Path, first: u64, is_last: bool) -> io::Result<Option<Segment>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let mut magic = [0u8; 8];
        if is_last && len <= MAGIC.len() as u64 {
            // Created, but its header not (certainly) synced: nothing was appended to it.
            drop(file);
            std::fs::remove_file(path)?;
            return Ok(None);
        }
        if len < MAGIC.len() as u64 || {
            file.read_exact_at(&mut magic, 0)?;
            &magic != MAGIC
        } {
            return Err(corrupt(path, "not a segment of this format"));
        }
        let mut offsets = Vec::new();
        let mut at = MAGIC.len() as u64;
        let mut header = [0u8; HEADER];
        let mut record = Vec::new();
        while at < len {
            let expected = first + offsets.len() as u64;
            let whole = if len - at < HEADER as u64 {
                None
            } else {
                file.read_exact_at(&mut header, at)?;
                let n = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
                let index = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
                if index != expected || at + HEADER as u64 + n > len {
                    None
                } else if is_last {
                    record.resize(HEADER + n as usize, 0);
                    file.read_exact_at(&mut record, at)?;
                    check_record(&record).map(|_| n)
                } else {
                    Some(n)
                }
            };
            match whole {
                Some(n) => {
                    offsets.push(at);
                    at += HEADER as u64 + n;
                }
                None if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        at,
                        cut = len - at,
                        "raft log: cutting an append a crash interrupted"
                    );
                    file.set_len(at)?;
                    file.sync_data()?;
                    break;
                }
                None => return Err(corrupt(path, format!("bad record at byte {at}"))),
            }
        }
        Ok(Some(Segment {
            first,
            file: Arc::new(file),
            path: path.to_owned(),
            offsets,
            end: at,
        }))
    }

    /// The last entry's id, if the log holds any entry.
    pub(crate) fn last(&self) -> Option<LogId<NodeId>> {
        self.last
    }

    /// Stages the record of entry `index`, whose payload `fill` appends to the buffer it is
    /// given; returns the payload's length. Staged records are written by
    /// [`Segments::commit`], and must be of consecutive entries.
    pub(crate) fn stage(
        &mut self,
        index: u64,
        fill: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<usize> {
        if !self.staged_at.is_empty() {
            let expected = self.staged_first + self.staged_at.len() as u64;
            if index != expected {
                return Err(io::Error::other(format!(
                    "raft log: staged entry {index} where {expected} was expected"
                )));
            }
        }
        let at = self.staged.len();
        self.staged.extend_from_slice(&[0; HEADER]);
        let filled = fill(&mut self.staged).and_then(|()| {
            u32::try_from(self.staged.len() - at - HEADER)
                .map_err(|_| io::Error::other("raft log: an entry over 4 GiB"))
        });
        let len = match filled {
            Ok(len) => len,
            Err(e) => {
                self.staged.truncate(at);
                return Err(e);
            }
        };
        let index_bytes = index.to_le_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&index_bytes);
        h.update(&self.staged[at + HEADER..]);
        let rec = &mut self.staged[at..at + HEADER];
        rec[..4].copy_from_slice(&len.to_le_bytes());
        rec[4..8].copy_from_slice(&h.finalize().to_le_bytes());
        rec[8..].copy_from_slice(&index_bytes);
        if self.staged_at.is_empty() {
            self.staged_first = index;
        }
        self.staged_at.push(at);
        Ok(len as usize)
    }

    /// The index the next staged entry must have and the bytes staged, if any is staged.
    pub(crate) fn staged(&self) -> Option<(u64, usize)> {
        (!self.staged_at.is_empty()).then(|| {
            (
                self.staged_first + self.staged_at.len() as u64,
                self.staged.len(),
            )
        })
    }

    /// Drops what is staged.
    fn unstage(&mut self) {
        self.staged.clear();
        self.staged_at.clear();
        if self.staged.capacity() > KEEP_BUFFER {
            self.staged = Vec::new();
        }
    }

    /// Writes the staged records to the log and syncs them. `last` is the id of the last
    /// staged entry (read back from the log when not given).
    pub(crate) fn commit(&mut self, last: Option<LogId<NodeId>>) -> io::Result<()> {
        let res = self.write_staged();
        self.unstage();
        res?;
        self.last = match last {
            Some(l) => Some(l),
            None => match self.segments.back().and_then(Segment::last) {
                Some(i) => Some(self.read_one(i)?.log_id),
                None => None,
            },
        };
        Ok(())
    }

    fn write_staged(&mut self) -> io::Result<()> {
        if self.staged_at.is_empty() {
            return Ok(());
        }
        let first = self.staged_first;
        if let Some(l) = self.segments.back().and_then(Segment::last) {
            if first <= l {
                return Err(io::Error::other(format!(
                    "raft log: append at {first} over entries up to {l} (not truncated)"
                )));
            }
        }
        let fits = self.segments.back().is_some_and(|s| {
            s.end < self.segment_bytes && s.first + s.offsets.len() as u64 == first
        });
        if !fits {
            if let Some(s) = self.segments.back() {
                if s.offsets.is_empty() {
                    // Created for an append that failed: nothing in it.
                    std::fs::remove_file(&s.path)?;
                    self.segments.pop_back();
                }
            }
            self.create(first)?;
        }
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        let base = seg.end;
        let written = seg
            .file
            .write_all_at(&self.staged, base)
            .and_then(|()| seg.file.sync_data());
        if let Err(e) = written {
            // Best effort: leave no partial record past the end for the next append.
            let _ = seg.file.set_len(base);
            return Err(e);
        }
        seg.offsets
            .extend(self.staged_at.iter().map(|&at| base + at as u64));
        seg.end = base + self.staged.len() as u64;
        Ok(())
    }

    /// Starts a segment whose first entry is `first`: header and directory entry synced.
    fn create(&mut self, first: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all_at(MAGIC, 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            first,
            file: Arc::new(file),
            path,
            offsets: Vec::new(),
            end: MAGIC.len() as u64,
        });
        Ok(())
    }

    /// Removes the entries from `index` on.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<()> {
        let mut removed = false;
        while let Some(s) = self.segments.back() {
            if s.first < index {
                break;
            }
            std::fs::remove_file(&s.path)?;
            self.segments.pop_back();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        if let Some(s) = self.segments.back_mut() {
            if s.last().is_some_and(|l| l >= index) {
                let k = (index - s.first) as usize;
                let cut = s.offsets[k];
                s.file.set_len(cut)?;
                s.file.sync_data()?;
                s.offsets.truncate(k);
                s.end = cut;
            }
        }
        self.last = match self.segments.back().and_then(Segment::last) {
            Some(i) => Some(self.read_one(i)?.log_id),
            None => None,
        };
        Ok(())
    }

    /// Removes the segments holding only entries up to `index` (included). Entries up to
    /// `index` in a segment that also holds later ones stay until it is removed in turn.
    pub(crate) fn purge(&mut self, index: u64) -> io::Result<()> {
        self.purged = self.purged.max(Some(index));
        while let Some(s) = self.segments.front() {
            if s.last().unwrap_or(s.first) > index {
                break;
            }
            std::fs::remove_file(&s.path)?;
            self.segments.pop_front();
        }
        if self.segments.is_empty() {
            self.last = None;
        }
        Ok(())
    }

    /// Where the entries `start..end` that the log holds are, to [`read`] them outside the
    /// log's lock.
    pub(crate) fn spans(&self, start: u64, end: u64) -> Vec<Span> {
        self.spans_in_files(start.max(self.purged.map_or(0, |p| p + 1)), end)
    }

    /// Like [`Segments::spans`], purged entries included.
    fn spans_in_files(&self, start: u64, end: u64) -> Vec<Span> {
        let mut out = Vec::new();
        for s in &self.segments {
            let Some(last) = s.last() else { continue };
            let from = start.max(s.first);
            let to = end.min(last + 1);
            if from >= to {
                continue;
            }
            let (a, b) = ((from - s.first) as usize, (to - s.first) as usize);
            let (start, end) = s.bytes(a, b);
            out.push(Span {
                file: s.file.clone(),
                first: from,
                count: b - a,
                start,
                end,
            });
        }
        out
    }

    fn read_one(&self, index: u64) -> io::Result<Entry<TypeConfig>> {
        read(self.spans_in_files(index, index + 1))?
            .pop()
            .ok_or_else(|| corrupt(&self.dir, format!("entry {index} is missing")))
    }
}

/// Reads and checks the entries of `spans`.
pub(crate) fn read(spans: Vec<Span>) -> io::Result<Vec<Entry<TypeConfig>>> {
    let mut out = Vec::with_capacity(spans.iter().map(|s| s.count).sum());
    for s in spans {
        // One buffer per span, shared by the bodies decoded from it.
        let mut buf = vec![0; (s.end - s.start) as usize];
        s.file.read_exact_at(&mut buf, s.start)?;
        let buf = bytes::Bytes::from(buf);
        let mut rest = &buf[..];
        for i in 0..s.count as u64 {
            let expected = s.first + i;
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log: the record of entry {expected} is damaged"),
                )
            };
            let (index, payload) = check_record(rest).ok_or_else(bad)?;
            if index != expected {
                return Err(bad());
            }
            let e: Entry<TypeConfig> = decode_shared(&buf.slice_ref(payload)).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("raft log: entry {expected} does not decode: {e}"),
                )
            })?;
            rest = &rest[HEADER + payload.len()..];
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append(log: &mut Segments, term: u64, indexes: std::ops::RangeInclusive<u64>) {
        let mut last = None;
        for i in indexes {
            let e = entry(term, i);
            log.stage(i, |b| {
                postcard::to_io(&e, b).map(|_| ()).map_err(io::Error::other)
            })
            .unwrap();
            last = Some(e.log_id);
        }
        log.commit(last).unwrap();
    }

    fn ids(log: &Segments, start: u64, end: u64) -> Vec<(u64, u64)> {
        read(log.spans(start, end))
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn small(dir: &Path) -> Segments {
        let mut log = Segments::open(dir, None).unwrap();
        // About four records per segment.
        log.segment_bytes = 8 + 4 * 28;
        log
    }

    #[test]
    fn entries_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = small(dir.path());
        for i in 1..=10 {
            append(&mut log, 1, i..=i);
        }
        append(&mut log, 2, 11..=13);
        assert!(files(dir.path()).len() >= 2, "{:?}", files(dir.path()));
        assert_eq!(log.last(), Some(entry(2, 13).log_id));
        drop(log);
        let log = Segments::open(dir.path(), None).unwrap();
        assert_eq!(log.last(), Some(entry(2, 13).log_id));
        let mut want: Vec<_> = (1..=10).map(|i| (1, i)).collect();
        want.extend((11..=13).map(|i| (2, i)));
        assert_eq!(ids(&log, 0, u64::MAX), want);
        assert_eq!(ids(&log, 4, 7), vec![(1, 4), (1, 5), (1, 6)]);
    }

    #[test]
    fn an_interrupted_append_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::open(dir.path(), None).unwrap();
        append(&mut log, 1, 1..=5);
        let path = log.segments.back().unwrap().path.clone();
        let whole = std::fs::metadata(&path).unwrap().len();
        drop(log);
        // A crash during the next append: a record's header and part of its payload.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &[9, 0, 0, 0, 1, 2, 3, 4, 6, 0, 0, 0, 0, 0, 0, 0, 1])
            .unwrap();
        drop(f);
        let mut log = Segments::open(dir.path(), None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(log.last(), Some(entry(1, 5).log_id));
        // The next append goes where the cut one was.
        append(&mut log, 1, 6..=6);
        drop(log);
        let log = Segments::open(dir.path(), None).unwrap();
        assert_eq!(ids(&log, 1, 7), (1..=6).map(|i| (1, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_record_fails_the_read_and_in_an_earlier_segment_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = small(dir.path());
        for i in 1..=8 {
            append(&mut log, 1, i..=i);
        }
        let first = log.segments.front().unwrap().path.clone();
        // Flip one byte of entry 2's payload.
        let at = log.segments.front().unwrap().offsets[1] + HEADER as u64;
        let f = OpenOptions::new().write(true).open(&first).unwrap();
        let mut b = [0u8; 1];
        log.segments
            .front()
            .unwrap()
            .file
            .read_exact_at(&mut b, at)
            .unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
        let err = read(log.spans(1, 4)).unwrap_err();
        assert!(err.to_string().contains("entry 2 is damaged"), "{err}");
        drop(log);
        // Headers are intact, so an open reading only headers of sealed segments succeeds;
        // damage to a header fails it.
        let at = Segments::open(dir.path(), None).unwrap().segments[0].offsets[1];
        f.write_all_at(&99u64.to_le_bytes(), at + 8).unwrap();
        let err = Segments::open(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("bad record"), "{err}");
    }

    #[test]
    fn truncation_removes_later_segments_and_cuts_the_one_holding_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = small(dir.path());
        for i in 1..=12 {
            append(&mut log, 1, i..=i);
        }
        let before = files(dir.path()).len();
        log.truncate(6).unwrap();
        assert_eq!(log.last(), Some(entry(1, 5).log_id));
        assert!(files(dir.path()).len() < before);
        append(&mut log, 2, 6..=7);
        drop(log);
        let log = Segments::open(dir.path(), None).unwrap();
        let mut want: Vec<_> = (1..=5).map(|i| (1, i)).collect();
        want.extend([(2, 6), (2, 7)]);
        assert_eq!(ids(&log, 0, u64::MAX), want);
        // Truncating everything leaves an empty log.
        let mut log = log;
        log.truncate(1).unwrap();
        assert_eq!(log.last(), None);
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn purge_removes_whole_segments_and_a_gap_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = small(dir.path());
        for i in 1..=12 {
            append(&mut log, 1, i..=i);
        }
        let first_files = files(dir.path());
        log.purge(6).unwrap();
        let left = files(dir.path());
        assert!(left.len() < first_files.len());
        assert!(left.iter().all(|f| f.as_str() > segment_name(1).as_str()));
        // Entries after the purge are all still there.
        assert_eq!(
            ids(&log, 7, 13),
            (7..=12).map(|i| (1, i)).collect::<Vec<_>>()
        );
        // Purged entries are not read, even from a segment that is kept.
        log.purge(8).unwrap();
        assert_eq!(ids(&log, 0, 10), vec![(1, 9)]);
        // A snapshot installed past the end: purged beyond the last entry, then appends.
        log.purge(40).unwrap();
        assert!(files(dir.path()).is_empty());
        assert_eq!(log.last(), None);
        append(&mut log, 3, 41..=42);
        assert_eq!(files(dir.path()), vec![segment_name(41)]);
        drop(log);
        // At open, segments the purged id covers are removed (a purge a crash interrupted).
        let mut log = Segments::open(dir.path(), None).unwrap();
        log.segment_bytes = 8 + 4 * 28;
        append(&mut log, 3, 43..=50);
        append(&mut log, 3, 51..=52);
        assert_eq!(files(dir.path()), vec![segment_name(41), segment_name(51)]);
        drop(log);
        let log = Segments::open(dir.path(), Some(50)).unwrap();
        assert_eq!(files(dir.path()), vec![segment_name(51)]);
        assert_eq!(log.last(), Some(entry(3, 52).log_id));
        assert_eq!(ids(&log, 0, 100), vec![(3, 51), (3, 52)]);
    }

    #[test]
    fn appends_that_skip_or_overlap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Segments::open(dir.path(), None).unwrap();
        append(&mut log, 1, 1..=3);
        let e = entry(1, 3);
        log.stage(3, |b| {
            postcard::to_io(&e, b).map(|_| ()).map_err(io::Error::other)
        })
        .unwrap();
        let err = log.commit(Some(e.log_id)).unwrap_err();
        assert!(err.to_string().contains("not truncated"), "{err}");
        log.stage(4, |b| {
            b.extend_from_slice(b"x");
            Ok(())
        })
        .unwrap();
        let err = log.stage(6, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("5 was expected"), "{err}");
    }
}
