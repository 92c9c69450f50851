//! Snapshot files: the state machine's snapshots live in files under `snapshots/` in the data
//! directory, never as one value in memory or in RocksDB (which refuses values past 4 GiB,
//! and a queue holding bodies gets there).
//!
//! A snapshot's data is the postcard encoding of `SnapshotContent` (release 0.1.0's format,
//! unchanged): the number of column families, then for each its number of records and each
//! record's key and value, length-prefixed, then the message count. It is written record by
//! record from a RocksDB snapshot and read back record by record, so building, sending and
//! installing one holds a record at a time, never the whole state.
//!
//! Files: `*.snap` are sealed snapshots (synced, renamed into place: a crash leaves a
//! snapshot whole or absent); `*.tmp` are being built or received, and are removed at open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use openraft::LogId;

use crate::NodeId;

/// Largest key or value a snapshot may hold (a body is at most 64 MiB); a larger length is a
/// corrupt file, refused before anything is allocated for it.
pub(crate) const MAX_RECORD: u64 = 256 * 1024 * 1024;

/// The snapshot directory of one database.
#[derive(Debug)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Files handed to openraft to receive a snapshot into, by inode: installing one gets its
    /// path back from the open file alone.
    incoming: Mutex<HashMap<u64, PathBuf>>,
    /// Orders every change of which snapshot is current, and holds a log purge waiting for
    /// the snapshot that covers it (see [`crate::LogStore`]'s purge).
    lock: Mutex<Option<LogId<NodeId>>>,
    /// Snapshots being received and not yet recorded (a receive openraft abandons keeps its
    /// count: purges then wait for the next snapshot that covers them, which is safe).
    installs: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapshotFiles {
    /// The directory `dir` (created if missing), with the temporary files of an earlier run
    /// removed.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            incoming: Mutex::new(HashMap::new()),
            lock: Mutex::new(None),
            installs: AtomicU64::new(0),
        })
    }

    /// Holds the current snapshot still while the caller changes it; the guard holds the
    /// purge waiting for a snapshot.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<LogId<NodeId>>> {
        lock(&self.lock)
    }

    fn unique(&self, ext: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.dir
            .join(format!("{nanos:x}-{}-{n}.{ext}", std::process::id()))
    }

    /// A new temporary file to build a snapshot into.
    pub(crate) fn create(&self) -> std::io::Result<(PathBuf, File)> {
        let path = self.unique("tmp");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, f))
    }

    /// A new temporary file for openraft to receive a snapshot into.
    pub(crate) fn receive(&self) -> std::io::Result<File> {
        let (path, f) = self.create()?;
        lock(&self.incoming).insert(f.metadata()?.ino(), path);
        self.installs.fetch_add(1, Ordering::Relaxed);
        Ok(f)
    }

    /// Whether a snapshot is being received or installed and not yet recorded.
    pub(crate) fn installing(&self) -> bool {
        self.installs.load(Ordering::Relaxed) > 0
    }

    /// A received snapshot is recorded (or its install failed).
    pub(crate) fn installed(&self) {
        let _ = self
            .installs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The path of `f` when it came from [`SnapshotFiles::receive`].
    pub(crate) fn received_path(&self, f: &File) -> std::io::Result<Option<PathBuf>> {
        let ino = f.metadata()?.ino();
        Ok(lock(&self.incoming).remove(&ino))
    }

    /// Makes the temporary file at `tmp` (synced by the caller) a sealed snapshot; returns
    /// its name.
    pub(crate) fn seal(&self, tmp: &Path) -> std::io::Result<String> {
        let path = self.unique("snap");
        std::fs::rename(tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default())
    }

    /// The path of the sealed snapshot `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes every sealed snapshot but `keep`. Files being built or received are left.
    pub(crate) fn remove_except(&self, keep: Option<&str>) -> std::io::Result<()> {
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".snap") && Some(name.as_str()) != keep {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// Writes postcard's unsigned varint (LEB128) of `v`.
pub(crate) fn put_varint(out: &mut impl Write, mut v: u64) -> std::io::Result<()> {
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

/// Writes `bytes` as postcard does: length, then the bytes.
pub(crate) fn put_bytes(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    put_varint(out, bytes.len() as u64)?;
    out.write_all(bytes)
}

/// A writer that counts what passes through it.
pub(crate) struct Counting<W> {
    pub(crate) inner: W,
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

fn corrupt(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads postcard's unsigned varint.
pub(crate) fn get_varint(r: &mut impl BufRead) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let mut b = [0u8];
        r.read_exact(&mut b)?;
        if shift == 63 && b[0] > 1 {
            break;
        }
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("varint longer than 64 bits".into()))
}

/// Reads a length-prefixed byte string of at most [`MAX_RECORD`] bytes.
pub(crate) fn get_bytes(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let len = get_varint(r)?;
    if len > MAX_RECORD {
        return Err(corrupt(format!(
            "record of {len} bytes, more than the {MAX_RECORD} a snapshot holds"
        )));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Walks a whole snapshot's encoding without keeping any of it: `Ok` when it is well formed
/// (at most `max_cfs` column families, every length within [`MAX_RECORD`], nothing after the
/// message count). Installing checks this first, so a bad file never touches the state.
pub(crate) fn check_content(r: &mut impl BufRead, max_cfs: u64) -> std::io::Result<()> {
    let cfs = get_varint(r)?;
    if cfs > max_cfs {
        return Err(corrupt(format!(
            "snapshot lists {cfs} column families; this release knows {max_cfs}"
        )));
    }
    for _ in 0..cfs {
        for _ in 0..get_varint(r)? * 2 {
            let len = get_varint(r)?;
            if len > MAX_RECORD {
                return Err(corrupt(format!("record of {len} bytes")));
            }
            if std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink())? != len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
    get_varint(r)?;
    if !r.fill_buf()?.is_empty() {
        return Err(corrupt("bytes after the end of the snapshot".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn varints_and_byte_strings_round_trip_in_postcard_encoding() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v).unwrap();
            assert_eq!(out, postcard::to_allocvec(&v).unwrap(), "{v}");
            assert_eq!(get_varint(&mut Cursor::new(&out)).unwrap(), v);
        }
        let mut out = Vec::new();
        put_bytes(&mut out, b"hello").unwrap();
        assert_eq!(out, postcard::to_allocvec(&b"hello".to_vec()).unwrap());
        assert_eq!(get_bytes(&mut Cursor::new(&out)).unwrap(), b"hello");
    }

    #[test]
    fn corrupt_lengths_are_refused_before_allocating() {
        let mut out = Vec::new();
        put_varint(&mut out, MAX_RECORD + 1).unwrap();
        let e = get_bytes(&mut Cursor::new(&out)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let e = get_varint(&mut Cursor::new(vec![0xffu8; 11])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        // Cut short.
        let e = get_bytes(&mut Cursor::new(vec![5u8, b'a'])).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn content_checks_find_bad_lengths_short_files_and_trailing_bytes() {
        let good =
            postcard::to_allocvec(&(vec![vec![(b"k".to_vec(), b"value".to_vec())], vec![]], 7u64))
                .unwrap();
        assert!(check_content(&mut Cursor::new(&good), 2).is_ok());
        assert!(
            check_content(&mut Cursor::new(&good), 1).is_err(),
            "too many CFs"
        );
        assert!(check_content(&mut Cursor::new(&good[..good.len() - 2]), 2).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(check_content(&mut Cursor::new(&long), 2).is_err());
    }

    #[test]
    fn received_files_are_found_by_handle_and_sealing_keeps_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        let mut f = files.receive().unwrap();
        f.write_all(b"data").unwrap();
        let tmp = files.received_path(&f).unwrap().unwrap();
        assert!(
            files.received_path(&f).unwrap().is_none(),
            "handed out once"
        );
        let a = files.seal(&tmp).unwrap();
        let (tmp2, _) = files.create().unwrap();
        let b = files.seal(&tmp2).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read(files.path(&a)).unwrap(), b"data");
        let (building, _) = files.create().unwrap();
        files.remove_except(Some(&b)).unwrap();
        assert!(!files.path(&a).exists());
        assert!(files.path(&b).exists());
        assert!(building.exists(), "a file being built is left alone");
        drop(files);
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(!building.exists(), "temporary files go at open");
        assert!(files.path(&b).exists());
    }
}
