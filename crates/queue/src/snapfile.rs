//! The current snapshot, kept in a file beside the database rather than as one RocksDB value
//! (RocksDB refuses values past 4 GiB, and a queue holding bodies gets there).
//!
//! A snapshot's data is the postcard encoding of the state column families, written here
//! record by record straight from a RocksDB snapshot, so building one holds one record in
//! memory at a time. The file is the data, then the postcard-encoded [`SnapshotMeta`], then the
//! meta's length as 8 little-endian bytes; it is written to a temporary name, synced and
//! renamed over the current one, so a crash leaves the old snapshot or the new one, whole.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use openraft::{BasicNode, SnapshotMeta};

use crate::types::NodeId;

/// File name of the current snapshot in the data directory.
const CURRENT: &str = "snapshot.bin";

/// A snapshot's meta and data.
type MetaAndData = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// The data directory's snapshot file, and the lock that orders replacing it.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// Writes postcard's unsigned varint (LEB128) of `v`.
pub(crate) fn varint(out: &mut impl Write, mut v: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.write_all(&buf[..=n])
}

/// A writer that counts what passes through it.
pub(crate) struct Counting<W> {
    inner: W,
    /// Bytes written so far.
    pub(crate) written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A snapshot file being written; [`SnapshotFile::commit`] makes it the current one.
pub(crate) struct Pending {
    path: PathBuf,
    /// Where the data goes.
    pub(crate) out: Counting<BufWriter<File>>,
}

impl SnapshotFile {
    /// The snapshot file of the database in `dir`. Temporary files a crash left behind are
    /// removed.
    pub(crate) fn new(dir: &Path) -> Self {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("snapshot.tmp.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Self {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// Starts a new snapshot file under a temporary name.
    pub(crate) fn begin(&self) -> std::io::Result<Pending> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("snapshot.tmp.{}.{n}", std::process::id()));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Pending {
            path,
            out: Counting {
                inner: BufWriter::new(f),
                written: 0,
            },
        })
    }

    /// Ends `p` with `meta` and makes it the current snapshot, unless the current one is
    /// newer (a snapshot installed while this one was being built): then `p` is dropped.
    /// Returns the data written.
    pub(crate) fn commit(
        &self,
        mut p: Pending,
        meta: &SnapshotMeta<NodeId, BasicNode>,
    ) -> std::io::Result<Vec<u8>> {
        let data_len = p.out.written;
        let m = postcard::to_allocvec(meta).map_err(std::io::Error::other)?;
        p.out.write_all(&m)?;
        p.out.write_all(&(m.len() as u64).to_le_bytes())?;
        let f = p.out.inner.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let data = read_data(&p.path, data_len)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let newer = match self.read_locked()? {
            Some((current, _)) => current.last_log_id > meta.last_log_id,
            None => false,
        };
        if newer {
            std::fs::remove_file(&p.path)?;
        } else {
            std::fs::rename(&p.path, self.current())?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(data)
    }

    /// Removes the current snapshot (before its state is replaced by an installed one: a
    /// crash in between then leaves no snapshot, and openraft builds one from the state).
    pub(crate) fn remove(&self) -> std::io::Result<()> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::remove_file(self.current()) {
            Ok(()) => File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes an installed snapshot as the current one.
    pub(crate) fn write(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut p = self.begin()?;
        p.out.write_all(data)?;
        self.commit(p, meta).map(|_| ())
    }

    /// The current snapshot's meta and data, if there is one.
    pub(crate) fn read(&self) -> std::io::Result<Option<MetaAndData>> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.read_locked()
    }

    fn read_locked(&self) -> std::io::Result<Option<MetaAndData>> {
        let mut f = match File::open(self.current()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let corrupt = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let len = f.metadata()?.len();
        if len < 8 {
            return Err(corrupt("snapshot file shorter than its trailer"));
        }
        f.seek(SeekFrom::Start(len - 8))?;
        let mut n = [0u8; 8];
        f.read_exact(&mut n)?;
        let meta_len = u64::from_le_bytes(n);
        let data_len = len
            .checked_sub(8 + meta_len)
            .ok_or_else(|| corrupt("snapshot meta longer than the file"))?;
        f.seek(SeekFrom::Start(data_len))?;
        let mut m = vec![0u8; meta_len as usize];
        f.read_exact(&mut m)?;
        let meta = postcard::from_bytes(&m).map_err(|_| corrupt("snapshot meta"))?;
        f.seek(SeekFrom::Start(0))?;
        let mut data = vec![0u8; data_len as usize];
        f.read_exact(&mut data)?;
        Ok(Some((meta, data)))
    }
}

/// The first `len` bytes of the file at `path`.
fn read_data(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    let mut data = vec![0u8; len as usize];
    File::open(path)?.read_exact(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_postcard() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            varint(&mut ours, v).unwrap();
            assert_eq!(ours, postcard::to_allocvec(&v).unwrap(), "{v}");
        }
    }

    #[test]
    fn a_snapshot_file_round_trips_and_an_older_one_never_replaces_a_newer() {
        let dir = tempfile::tempdir().unwrap();
        let f = SnapshotFile::new(dir.path());
        assert!(f.read().unwrap().is_none());
        let meta = |index: u64| SnapshotMeta::<NodeId, BasicNode> {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                index,
            )),
            last_membership: Default::default(),
            snapshot_id: format!("s{index}"),
        };
        f.write(&meta(10), b"ten").unwrap();
        let (m, d) = f.read().unwrap().unwrap();
        assert_eq!((m, d), (meta(10), b"ten".to_vec()));
        // Built from older state, finishing late: the newer snapshot stays.
        let mut p = f.begin().unwrap();
        p.out.write_all(b"five").unwrap();
        assert_eq!(f.commit(p, &meta(5)).unwrap(), b"five");
        assert_eq!(f.read().unwrap().unwrap().1, b"ten");
        f.write(&meta(20), b"").unwrap();
        assert_eq!(f.read().unwrap().unwrap(), (meta(20), Vec::new()));
        f.remove().unwrap();
        assert!(f.read().unwrap().is_none());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
