//! The Raft log and the state machine: the log's entries in segment files (see `segments`),
//! everything else in one RocksDB database.
//!
//! Column families:
//! - `raft`: vote and last purged log id; `log`: the entries, in builds before the segment
//!   files (moved out at open, see [`open`]; empty since).
//! - `sm`: last applied log id, membership, message count, which snapshot file is current
//!   (the snapshots themselves are files, see `snapfile`).
//! - `messages` (envelopes) and `bodies`, keyed by queue id; `tenants`, keyed by name.
//!
//! Durability: log appends and votes are synced before openraft is told they are done, so a
//! committed entry is on disk on a quorum. The state machine's writes skip RocksDB's
//! write-ahead log: the log they came from already holds them durably, and writing every
//! message body a second time through the write-ahead log cost a node a copy, a checksum and
//! the disk bandwidth of each body. Such state is on disk once RocksDB flushes its memtables,
//! which it does for all column families at once (`atomic_flush`), so what a crash leaves is
//! always the state after one applied entry, never a mix. A crash loses at most the state
//! applied since the last flush, and openraft applies those entries again from the log. The
//! log is never purged past state that could be lost: openraft purges only entries a
//! snapshot holds, and the state is flushed before a snapshot is recorded (a snapshot
//! installed from the leader is written through the write-ahead log, synced).

use std::fmt::Debug;
use std::io::{BufReader, BufWriter, Write as _};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::apply::Tx;
use crate::floors::{past, Floors, Index};
use crate::recent::Recent;
use crate::records::{
    DkimKeyRecord, MessageRecord, RcptRecord, StrikeRecord, SuppressionEntry, TenantRecord,
    TenantSuppressionPolicy,
};
use crate::segments::{self, Segments};
use crate::snapfile::{
    check_content, get_bytes, get_varint, put_bytes, put_varint, Counting, SnapshotFiles,
};
use crate::types::{message_id, NewMessage, NodeId, Request, Response, TypeConfig};
use crate::QueueError;

const CF_LOG: &str = "log";
const CF_RAFT: &str = "raft";
const CF_SM: &str = "sm";
pub(crate) const CF_MESSAGES: &str = "messages";
pub(crate) const CF_BODIES: &str = "bodies";
pub(crate) const CF_TENANTS: &str = "tenants";
pub(crate) const CF_RCPTS: &str = "rcpts";
pub(crate) const CF_DUE: &str = "due";
pub(crate) const CF_SUPPRESS: &str = "suppress";
pub(crate) const CF_DKIM: &str = "dkim";
pub(crate) const CF_FINISHED: &str = "finished";
pub(crate) const CF_SUBMISSIONS: &str = "submissions";
pub(crate) const CF_SETTINGS: &str = "settings";
/// Unfinished recipients by queue (tenant, destination domain), then due time: derived from
/// `rcpts` and kept by this node only, never in snapshots (rebuilt after installing one).
pub(crate) const CF_QUEUE_DUE: &str = "queue_due";
/// Unfinished recipients per queue (key: the queue's prefix in `queue_due`; value: the count,
/// postcard u64): derived like `queue_due`, kept and rebuilt with it.
pub(crate) const CF_QUEUE_STATS: &str = "queue_stats";
/// Sending limits (format 4): IP records, schedules, providers, tenants' pools, and the
/// counters of what each IP sent per day and per provider per hour. See [`crate::shaping`].
pub(crate) const CF_SHAPING: &str = "shaping";
/// State that a snapshot carries, in this order. New column families go at the end: a
/// snapshot from an older release lists fewer, and installing it empties the rest.
const STATE_CFS: [&str; 11] = [
    CF_MESSAGES,
    CF_BODIES,
    CF_TENANTS,
    CF_RCPTS,
    CF_DUE,
    CF_SUPPRESS,
    CF_DKIM,
    CF_FINISHED,
    CF_SUBMISSIONS,
    CF_SETTINGS,
    CF_SHAPING,
];
/// Column families release 0.1.0 knew: a snapshot lists only these while the later ones are
/// empty, so nodes of that release can still install it during a rolling upgrade.
const V1_STATE_CFS: usize = 10;

/// Key of the cluster's format version in the `settings` column family (absent: 1).
const K_FORMAT: &[u8] = b"format";
/// Key of the latest command time applied, in `settings` (format 3): command times never go
/// backwards, whatever the clock of the leader that proposed them.
const K_CLOCK: &[u8] = b"clock";

const K_VOTE: &[u8] = b"vote";
const K_PURGED: &[u8] = b"last_purged";
/// Key of the cluster's id in the `raft` column family (this node's own record).
const K_CLUSTER_ID: &[u8] = b"cluster_id";
/// Key of the cluster's id in `settings` (format 7): the replicated record, which travels in
/// snapshots.
const K_REPLICATED_CLUSTER_ID: &[u8] = b"cluster_id";
const K_APPLIED: &[u8] = b"last_applied";
const K_MEMBERSHIP: &[u8] = b"membership";
const K_COUNT: &[u8] = b"message_count";
/// Release 0.1.0 kept its snapshot here, whole; moved to a file at open.
const K_SNAPSHOT: &[u8] = b"snapshot";
/// The current snapshot: a [`SnapshotRef`].
const K_SNAPSHOT_FILE: &[u8] = b"snapshot_file";
/// Present while a snapshot is being installed (the state is then partly replaced): open
/// finishes the install from the current snapshot's file.
const K_INSTALLING: &[u8] = b"installing";
/// Present when `queue_due` and `queue_stats` match `rcpts`: absent in a data directory of an
/// earlier release and while a snapshot is installed, and then rebuilt at open. (Release
/// 0.1.x's mark, `queue_index`, stood for `queue_due` alone.)
const K_QUEUE_INDEX: &[u8] = b"queue_index_2";

/// Bytes of snapshot records written per RocksDB batch while installing.
const INSTALL_BATCH: usize = 8 * 1024 * 1024;

type SErr = StorageError<NodeId>;

/// What the state machine has applied: last log id and membership.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>);

/// A queue with recipients due: see [`QueueReader::ready_queues`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueHead {
    /// Tenant (empty for mail relayed by IP address).
    pub tenant: String,
    /// Destination domain.
    pub domain: String,
    /// When its earliest unfinished recipient is due.
    pub due_ms: i64,
}

/// A queue with unfinished recipients: see [`QueueReader::queues`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Tenant (empty for mail relayed by IP address).
    pub tenant: String,
    /// Destination domain.
    pub domain: String,
    /// Unfinished recipients (queued, deferred or leased).
    pub recipients: u64,
    /// When the first of them in due order is due (a leased one: when its lease lapses).
    pub first_due_ms: Option<i64>,
}

/// Splits a `queue_due` key into tenant, domain and the rest (due time, recipient key).
fn split_queue_key(k: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut rest = k;
    let mut parts = [""; 2];
    for p in &mut parts {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        *p = std::str::from_utf8(rest.get(4..4 + len)?).ok()?;
        rest = &rest[4 + len..];
    }
    Some((parts[0], parts[1], rest))
}

/// A message's envelope with its body, when asked for.
pub type MessageWithBody = (MessageRecord, Option<Vec<u8>>);

/// The write-ahead log files a node keeps at most before RocksDB flushes the column families
/// still holding them. A write-ahead file is deleted only once every column family's data in
/// it is flushed, and the quiet ones (membership, tenants, settings) fill their memtables so
/// rarely that, by default (four times all memtables, 8 GB here), a node under load kept
/// gigabytes of them: found by the load harness's day profile (4.5 GB of WAL beside 100 MB
/// of tables on each node). They also cost their length in replay at every start.
pub const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

/// Directory of the Raft log's segment files, in the data directory.
pub const LOG_DIR: &str = "raft-log";
/// Where the log is written while it moves out of the `log` column family.
const LOG_DIR_NEW: &str = "raft-log.new";

/// Opens (or creates) the database under `dir` and returns the log store, the state machine
/// and a reader over the applied state.
///
/// A data directory of a release that kept the log in the `log` column family has it moved
/// into segment files: written whole into a new directory, synced, renamed into place, and
/// only then deleted from the column family (a crash at any point leaves one whole copy).
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine, QueueReader), QueueError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    // The state machine writes without the write-ahead log: its column families must reach
    // the disk together (see the module's docs).
    opts.set_atomic_flush(true);
    // A writer waiting for its turn spins (up to 100 µs) before it sleeps: with log appends
    // (synced) and state writes (no write-ahead log) unable to share a write group, the
    // state machine's writes waited behind each sync and spun through it (a single node
    // spent ~10% more CPU per 100 KB message than with the write-ahead log on).
    opts.set_enable_write_thread_adaptive_yield(false);
    let cfs = [CF_LOG, CF_RAFT, CF_SM, CF_QUEUE_DUE, CF_QUEUE_STATS]
        .into_iter()
        .chain(STATE_CFS)
        .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?);
    let files = Arc::new(
        SnapshotFiles::open(&dir.join("snapshots"))
            .map_err(|e| QueueError::Snapshot(e.to_string()))?,
    );
    recover_snapshot(&db, &files).map_err(|e| QueueError::Snapshot(e.to_string()))?;
    if db.get_cf(cf(&db, CF_SM), K_QUEUE_INDEX)?.is_none() {
        rebuild_queue_index(&db)?;
    }
    let segments = open_log(&db, dir)?;
    let floors = Arc::new(Floors::default());
    Ok((
        LogStore {
            db: db.clone(),
            files: files.clone(),
            recent: Default::default(),
            segments: Arc::new(std::sync::Mutex::new(segments)),
        },
        StateMachine {
            db: db.clone(),
            files,
            floors: floors.clone(),
            tally: Default::default(),
        },
        QueueReader { db, floors },
    ))
}

/// At open: moves the log out of the `log` column family if it is still there, then opens its
/// segment files.
fn open_log(db: &DB, dir: &Path) -> Result<Segments, QueueError> {
    let purged = last_purged(db).map_err(|e| std::io::Error::other(e.to_string()))?;
    let log_dir = dir.join(LOG_DIR);
    let log_cf = cf(db, CF_LOG);
    let in_cf = db
        .iterator_cf(log_cf, IteratorMode::Start)
        .next()
        .transpose()?
        .is_some();
    if !log_dir.exists() {
        let new = dir.join(LOG_DIR_NEW);
        if new.exists() {
            std::fs::remove_dir_all(&new)?;
        }
        let mut log = Segments::open(&new, None)?;
        let mut moved = 0u64;
        for kv in db.iterator_cf(log_cf, IteratorMode::Start) {
            let (k, v) = kv?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| std::io::Error::other(format!("log key {k:?} is not 8 bytes")))?,
            );
            if log.staged().is_some_and(|(next, bytes)| {
                next != index || bytes >= segments::SEGMENT_BYTES as usize
            }) {
                log.commit(None)?;
            }
            log.stage(index, |b| {
                b.extend_from_slice(&v);
                Ok(())
            })?;
            moved += 1;
        }
        log.commit(None)?;
        drop(log);
        std::fs::rename(&new, &log_dir)?;
        std::fs::File::open(dir)?.sync_all()?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "raft log moved out of RocksDB into segment files"
            );
        }
    }
    if in_cf {
        let mut b = WriteBatch::default();
        b.delete_range_cf(log_cf, 0u64.to_be_bytes(), u64::MAX.to_be_bytes());
        b.delete_cf(log_cf, u64::MAX.to_be_bytes());
        db.write_opt(b, &synced())?;
    }
    Ok(Segments::open(&log_dir, purged.map(|p| p.index))?)
}

/// The last purged log id, as recorded in the `raft` column family.
fn last_purged(db: &DB) -> Result<Option<LogId<NodeId>>, SErr> {
    match db.get_cf(cf(db, CF_RAFT), K_PURGED).map_err(io_read)? {
        Some(v) => dec(&v).map_err(io_read),
        None => Ok(None),
    }
}

/// At open: moves a snapshot release 0.1.0 kept in the database into a file, finishes an
/// install a crash interrupted, and removes snapshot files no longer current.
fn recover_snapshot(db: &DB, files: &SnapshotFiles) -> Result<(), SErr> {
    let sm = cf(db, CF_SM);
    if let Some(v) = db.get_cf(sm, K_SNAPSHOT).map_err(io_read)? {
        let legacy: StoredSnapshot = dec(&v).map_err(io_read)?;
        let (tmp, mut f) = files.create().map_err(io_write)?;
        f.write_all(&legacy.data).map_err(io_write)?;
        f.sync_all().map_err(io_write)?;
        let file = files.seal(&tmp).map_err(io_write)?;
        let mut b = WriteBatch::default();
        b.put_cf(
            sm,
            K_SNAPSHOT_FILE,
            enc(&SnapshotRef {
                meta: legacy.meta,
                file,
            }),
        );
        b.delete_cf(sm, K_SNAPSHOT);
        db.write_opt(b, &synced()).map_err(io_write)?;
    }
    let current = current_snapshot(db)?;
    if db.get_cf(sm, K_INSTALLING).map_err(io_read)?.is_some() {
        let Some(r) = &current else {
            return Err(io_read(std::io::Error::other(
                "a snapshot install was interrupted and its snapshot is not recorded",
            )));
        };
        tracing::warn!(snapshot = %r.meta.snapshot_id, "finishing a snapshot install that was interrupted");
        load_snapshot(db, &files.path(&r.file), &r.meta)?;
    }
    files
        .remove_except(current.as_ref().map(|r| r.file.as_str()))
        .map_err(io_write)
}

/// Builds the `queue_due` index and the `queue_stats` counts anew from the recipients, in
/// bounded batches, and marks them built.
fn rebuild_queue_index(db: &DB) -> Result<(), QueueError> {
    let mut b = WriteBatch::default();
    b.delete_range_cf(cf(db, CF_QUEUE_DUE), [].as_slice(), [0xFFu8; 64].as_slice());
    db.write(std::mem::take(&mut b))?;
    // Keys in `queue_stats` are exactly the queues' prefixes: delete them one by one.
    for kv in db.iterator_cf(cf(db, CF_QUEUE_STATS), IteratorMode::Start) {
        let (k, _) = kv?;
        b.delete_cf(cf(db, CF_QUEUE_STATS), k);
    }
    let mut counts: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
    for kv in db.iterator_cf(cf(db, CF_RCPTS), IteratorMode::Start) {
        let (_, v) = kv?;
        let r: RcptRecord = dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_RCPTS,
            source,
        })?;
        if !r.state.is_final() {
            b.put_cf(cf(db, CF_QUEUE_DUE), crate::apply::queue_due_key(&r), []);
            *counts
                .entry(crate::apply::queue_prefix(&r.tenant, &r.domain))
                .or_default() += 1;
        }
        if b.size_in_bytes() >= INSTALL_BATCH {
            db.write(std::mem::take(&mut b))?;
        }
    }
    for (k, n) in counts {
        b.put_cf(cf(db, CF_QUEUE_STATS), k, enc(&n));
    }
    b.put_cf(cf(db, CF_SM), K_QUEUE_INDEX, []);
    db.write_opt(b, &synced())?;
    Ok(())
}

/// Adds to `b` the record of the log purged up to `log_id` (the segment files go after it is
/// written, see `segments`).
fn purge_into(db: &DB, b: &mut WriteBatch, log_id: LogId<NodeId>) {
    b.put_cf(cf(db, CF_RAFT), K_PURGED, enc(&Some(log_id)));
}

/// Adds to `b` the purge waiting in `waiting` if the snapshot `covers` it (and forgets it).
fn purge_covered(
    db: &DB,
    b: &mut WriteBatch,
    waiting: &mut Option<LogId<NodeId>>,
    covers: Option<LogId<NodeId>>,
) {
    if let (Some(w), Some(s)) = (*waiting, covers) {
        if s.index >= w.index {
            purge_into(db, b, w);
            *waiting = None;
        }
    }
}

/// The current snapshot, if there is one.
fn current_snapshot(db: &DB) -> Result<Option<SnapshotRef>, SErr> {
    match db.get_cf(cf(db, CF_SM), K_SNAPSHOT_FILE).map_err(io_read)? {
        Some(v) => Ok(Some(dec(&v).map_err(io_read)?)),
        None => Ok(None),
    }
}

/// Writes the state column families of `snap`, record by record, as a `SnapshotContent`.
fn write_content(
    db: &DB,
    snap: &rocksdb::Snapshot<'_>,
    message_count: u64,
    out: &mut impl std::io::Write,
) -> Result<(), SErr> {
    // Trailing column families are listed only from the first one that holds anything.
    let mut listed = STATE_CFS.len();
    while listed > V1_STATE_CFS
        && snap
            .iterator_cf(cf(db, STATE_CFS[listed - 1]), IteratorMode::Start)
            .next()
            .is_none()
    {
        listed -= 1;
    }
    put_varint(out, listed as u64).map_err(io_write)?;
    for name in &STATE_CFS[..listed] {
        // The count comes first in the encoding: one pass to count, one to write.
        let mut n = 0u64;
        for kv in snap.iterator_cf(cf(db, name), IteratorMode::Start) {
            kv.map_err(io_read)?;
            n += 1;
        }
        put_varint(out, n).map_err(io_write)?;
        for kv in snap.iterator_cf(cf(db, name), IteratorMode::Start) {
            let (k, v) = kv.map_err(io_read)?;
            put_bytes(out, &k).map_err(io_write)?;
            put_bytes(out, &v).map_err(io_write)?;
        }
    }
    put_varint(out, message_count).map_err(io_write)
}

/// Replaces the state with the snapshot in `path`, read record by record and written in
/// batches of [`INSTALL_BATCH`] bytes; `K_INSTALLING` must be set (the caller sets it with
/// the snapshot's record) and is cleared with the last batch, synced.
fn load_snapshot(db: &DB, path: &Path, meta: &SnapshotMeta<NodeId, BasicNode>) -> Result<(), SErr> {
    let bad =
        |e: std::io::Error| SErr::from(StorageIOError::read_snapshot(Some(meta.signature()), &e));
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(bad)?);
    let mut b = WriteBatch::default();
    // Every state column family is emptied, also those the snapshot does not list (one from
    // an older release): nothing of the replaced state survives.
    for name in STATE_CFS {
        // Keys are ids, names and big-endian times: all below 64 0xFF bytes.
        b.delete_range_cf(cf(db, name), [].as_slice(), [0xFFu8; 64].as_slice());
    }
    let listed = get_varint(&mut r).map_err(bad)?;
    if listed > STATE_CFS.len() as u64 {
        return Err(bad(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "snapshot lists {listed} column families; this release knows {}",
                STATE_CFS.len()
            ),
        )));
    }
    for name in &STATE_CFS[..listed as usize] {
        let h = cf(db, name);
        for _ in 0..get_varint(&mut r).map_err(bad)? {
            let k = get_bytes(&mut r).map_err(bad)?;
            let v = get_bytes(&mut r).map_err(bad)?;
            b.put_cf(h, k, v);
            if b.size_in_bytes() >= INSTALL_BATCH {
                db.write(std::mem::take(&mut b)).map_err(io_write)?;
            }
        }
    }
    let count = get_varint(&mut r).map_err(bad)?;
    let sm = cf(db, CF_SM);
    b.put_cf(sm, K_APPLIED, enc(&meta.last_log_id));
    b.put_cf(sm, K_MEMBERSHIP, enc(&meta.last_membership));
    b.put_cf(sm, K_COUNT, enc(&count));
    b.delete_cf(sm, K_INSTALLING);
    // The node's own index of the replaced state is stale: rebuilt next (or at open).
    b.delete_cf(sm, K_QUEUE_INDEX);
    db.write_opt(b, &synced()).map_err(io_write)?;
    rebuild_queue_index(db).map_err(io_write)
}

/// Opens the snapshot file `path` for openraft to send.
fn open_data(path: &Path) -> Result<Box<tokio::fs::File>, SErr> {
    let f = std::fs::File::open(path).map_err(io_read)?;
    Ok(Box::new(tokio::fs::File::from_std(f)))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // The column families are all created by `open`; a missing one is a programming error.
    db.cf_handle(name).expect("column family created at open")
}

/// The key bounding a due index's entries under `prefix` due by `now_ms`: the prefix and
/// the next millisecond.
fn due_bound(prefix: &[u8], now_ms: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&(now_ms.max(0) as u64 + 1).to_be_bytes());
    k
}

/// A raw iterator over column family `name` from `start`, ending before `end`. RocksDB stops
/// at the bound: without one, stepping past the last key wanted walks on over every deleted
/// key up to the next live one, beyond the range (tombstones left by consumed entries).
pub(crate) fn range<'a>(
    db: &'a DB,
    name: &str,
    start: &[u8],
    end: Vec<u8>,
) -> rocksdb::DBRawIteratorWithThreadMode<'a, DB> {
    let mut o = rocksdb::ReadOptions::default();
    o.set_iterate_upper_bound(end);
    let mut it = db.raw_iterator_cf_opt(cf(db, name), o);
    it.seek(start);
    it
}

/// Writes the state machine's column families (those it writes without the write-ahead
/// log) to disk, all at once, and waits for it.
fn flush_state(db: &DB) -> Result<(), rocksdb::Error> {
    let cfs: Vec<_> = [CF_SM, CF_QUEUE_DUE, CF_QUEUE_STATS]
        .into_iter()
        .chain(STATE_CFS)
        .map(|n| cf(db, n))
        .collect();
    let mut o = rocksdb::FlushOptions::default();
    o.set_wait(true);
    db.flush_cfs_opt(&cfs, &o)
}

/// How the state machine writes: without the write-ahead log (see the module's docs).
fn unlogged() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.disable_wal(true);
    w
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard serializes our plain data types infallibly into a Vec.
    crate::types::encode(v).expect("postcard encodes plain data")
}

pub(crate) fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

fn io_read(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read(&e).into()
}

fn io_write(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write(&e).into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SErr> + Send + 'static,
) -> Result<T, SErr> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io_write(e)),
    }
}

/// The Raft log: entries in segment files, vote and purged id in the `raft` column family.
///
/// While a snapshot is being received and installed, a purge its recorded snapshot does not
/// cover yet waits. openraft purges the log up to a snapshot it is installing before the state
/// machine has recorded that snapshot; written at once, a crash in between left the log purged
/// past the recorded snapshot and the node could not start again. Such a purge waits (in
/// memory) and is written in the same batch that records the snapshot; lost in a crash, it is
/// simply not done, and the log stays whole.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
    files: Arc<SnapshotFiles>,
    /// The newest entries, decoded, shared with every reader of this log.
    recent: Arc<std::sync::Mutex<Recent>>,
    /// The entries, shared with every reader of this log.
    segments: Arc<std::sync::Mutex<Segments>>,
}

impl LogStore {
    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // The cache holds no invariant a panic elsewhere could break halfway.
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Segments> {
        // Every change to the segments is finished or undone before the lock is released.
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Owned bounds: the range type itself cannot move into the blocking task.
        let end = range.end_bound().cloned();
        let end_excl = match end {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(e),
            Bound::Unbounded => None,
        };
        if let Some(v) = end_excl.and_then(|e| self.recent().get(start, e)) {
            return Ok(v);
        }
        let log = self.segments.clone();
        blocking(move || {
            // Located under the lock (an append may hold it through its sync), read without.
            let spans = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .spans(start, end_excl.unwrap_or(u64::MAX));
            segments::read(spans).map_err(io_read)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged = last_purged(&self.db)?;
        // Entries up to the purged one may still be in a segment that holds later ones too.
        let last = self
            .segments()
            .last()
            .filter(|l| last_purged.is_none_or(|p| l.index > p.index));
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let v = enc(vote);
        let db = self.db.clone();
        blocking(move || {
            db.put_cf_opt(cf(&db, CF_RAFT), K_VOTE, v, &synced())
                .map_err(io_write)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        match self
            .db
            .get_cf(cf(&self.db, CF_RAFT), K_VOTE)
            .map_err(io_read)?
        {
            Some(v) => dec(&v).map(Some).map_err(io_read),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let segments = self.segments.clone();
        let res = blocking(move || {
            let mut log = segments.lock().unwrap_or_else(|p| p.into_inner());
            let mut kept = Vec::with_capacity(entries.len());
            let last = entries.last().map(|e| e.log_id);
            for e in entries {
                let size = log
                    .stage(e.log_id.index, |b| {
                        postcard::to_io(&e, b)
                            .map(|_| ())
                            .map_err(std::io::Error::other)
                    })
                    .map_err(io_write)?;
                kept.push((e, size));
            }
            log.commit(last).map_err(io_write)?;
            Ok(kept)
        })
        .await;
        // Kept before openraft hears of them: the reads that follow find them here.
        let res = res.map(|kept| self.recent().appended(kept));
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let segments = self.segments.clone();
        blocking(move || {
            let mut log = segments.lock().unwrap_or_else(|p| p.into_inner());
            log.truncate(log_id.index).map_err(io_write)
        })
        .await?;
        self.recent().truncated(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let db = self.db.clone();
        let files = self.files.clone();
        let segments = self.segments.clone();
        blocking(move || {
            let mut waiting = files.lock();
            let covered = current_snapshot(&db)?
                .and_then(|r| r.meta.last_log_id)
                .is_some_and(|s| s.index >= log_id.index);
            if !covered && files.installing() {
                *waiting = Some(waiting.map_or(log_id, |w| w.max(log_id)));
                return Ok(());
            }
            let mut b = WriteBatch::default();
            purge_into(&db, &mut b, log_id);
            db.write_opt(b, &synced()).map_err(io_write)?;
            drop(waiting);
            let mut log = segments.lock().unwrap_or_else(|p| p.into_inner());
            log.purge(log_id.index).map_err(io_write)
        })
        .await?;
        // (A purge that waits for a snapshot install is forgotten here too: openraft reads
        // nothing it has purged.)
        self.recent().purged(log_id.index);
        Ok(())
    }
}

/// A snapshot as release 0.1.0 kept it in the `sm` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The current snapshot: its meta and the file holding its data (a `SnapshotContent`
/// encoding: one list of (key, value) per entry of [`STATE_CFS`], then the message count).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRef {
    meta: SnapshotMeta<NodeId, BasicNode>,
    file: String,
}

/// The replicated state machine. Which snapshot is current is recorded in the `sm` column
/// family, so every handle (the state machine and its snapshot builders) sees the same one.
#[derive(Debug)]
pub struct StateMachine {
    db: Arc<DB>,
    files: Arc<SnapshotFiles>,
    floors: Arc<Floors>,
    /// The last applied index and the message count as the last `apply` wrote them, so the
    /// next one need not read them back (two point reads per call, 3% of a follower's CPU
    /// with 5 KB messages); `None` until read, and again after a snapshot install or a failed
    /// apply, which change them behind it. Only `apply` and `install_snapshot` write either
    /// key, and openraft calls them one at a time.
    tally: Arc<std::sync::Mutex<Option<Tally>>>,
}

/// See [`StateMachine::tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    applied: Option<u64>,
    count: u64,
}

/// The applied log id and membership, read through `get` (the database or one snapshot of it).
fn read_applied(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<AppliedState, SErr> {
    let applied = match get(K_APPLIED).map_err(io_read)? {
        Some(v) => dec(&v).map_err(io_read)?,
        None => None,
    };
    let membership = match get(K_MEMBERSHIP).map_err(io_read)? {
        Some(v) => dec(&v).map_err(io_read)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl StateMachine {
    fn applied(&self) -> Result<AppliedState, SErr> {
        read_applied(|k| self.db.get_cf(cf(&self.db, CF_SM), k))
    }

    fn count(&self) -> Result<u64, SErr> {
        Ok(
            match self
                .db
                .get_cf(cf(&self.db, CF_SM), K_COUNT)
                .map_err(io_read)?
            {
                Some(v) => dec(&v).map_err(io_read)?,
                None => 0,
            },
        )
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let db = self.db.clone();
        let files = self.files.clone();
        let (meta, data) = blocking(move || {
            // openraft keeps applying while a snapshot is built: the log id and membership
            // must come from the same RocksDB snapshot as the data, or a follower installing
            // it would apply again entries the data already holds.
            let snap = db.snapshot();
            let (applied, membership) = read_applied(|k| snap.get_cf(cf(&db, CF_SM), k))?;
            let message_count: u64 = match snap.get_cf(cf(&db, CF_SM), K_COUNT).map_err(io_read)? {
                Some(v) => dec(&v).map_err(io_read)?,
                None => 0,
            };
            let (tmp, file) = files.create().map_err(io_write)?;
            let mut out = Counting {
                inner: BufWriter::with_capacity(1 << 20, file),
                written: 0,
            };
            write_content(&db, &snap, message_count, &mut out)?;
            drop(snap);
            let len = out.written;
            let file = out
                .inner
                .into_inner()
                .map_err(|e| io_write(e.into_error()))?;
            file.sync_all().map_err(io_write)?;
            // The state written without the write-ahead log goes to disk before the snapshot
            // is recorded: openraft purges the log up to a recorded snapshot, and a crash
            // must not lose state whose entries are no longer there to apply again.
            flush_state(&db).map_err(io_write)?;
            let snapshot_id = match applied {
                Some(l) => format!("{}-{}-{len}", l.leader_id, l.index),
                None => format!("empty-{len}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id,
            };
            let mut waiting = files.lock();
            if current_snapshot(&db)?.is_some_and(|c| c.meta.last_log_id >= applied) {
                // A snapshot installed meanwhile is newer: it stays current, and this one is
                // handed to openraft from the open file only.
                std::fs::remove_file(&tmp).map_err(io_write)?;
                return Ok((meta, file));
            }
            let name = files.seal(&tmp).map_err(io_write)?;
            let r = SnapshotRef {
                meta: meta.clone(),
                file: name.clone(),
            };
            let mut b = WriteBatch::default();
            b.put_cf(cf(&db, CF_SM), K_SNAPSHOT_FILE, enc(&r));
            purge_covered(&db, &mut b, &mut waiting, applied);
            db.write_opt(b, &synced()).map_err(io_write)?;
            files.remove_except(Some(&name)).map_err(io_write)?;
            // The handle that wrote it reads it: from the start.
            let data = std::fs::File::open(files.path(&name)).map_err(io_read)?;
            Ok((meta, data))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<AppliedState, SErr> {
        self.applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db.clone();
        let floors = self.floors.clone();
        let tally = self.tally.clone();
        // Taken: a failed apply leaves it unknown.
        let known = tally.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Tally { applied, mut count } = match known {
            Some(t) => t,
            None => Tally {
                applied: self.applied()?.0.map(|l| l.index),
                count: self.count()?,
            },
        };
        let entries: Vec<_> = entries.into_iter().collect();
        // Each entry is written on its own, so the next one reads what it changed.
        blocking(move || {
            let mut out = Vec::with_capacity(entries.len());
            let mut last = applied;
            for entry in entries {
                // An entry the state already holds is never applied twice (Enqueue, for one,
                // would store its messages again).
                if Some(entry.log_id.index) <= applied {
                    tracing::warn!(log_id = %entry.log_id, "entry applied already: skipped");
                    out.push(Response::None);
                    continue;
                }
                let mut tx = Tx::new(&db, &floors, batch_bytes(&entry));
                let resp = apply_one(&db, &mut tx, &entry).map_err(io_write)?;
                count = (count + tx.added).saturating_sub(tx.removed);
                let (mut batch, inserts) = tx.finish();
                let sm = cf(&db, CF_SM);
                batch.put_cf(sm, K_APPLIED, enc(&Some(entry.log_id)));
                if let EntryPayload::Membership(m) = &entry.payload {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    batch.put_cf(sm, K_MEMBERSHIP, enc(&stored));
                }
                batch.put_cf(sm, K_COUNT, enc(&count));
                let keys = inserts.iter().map(|(i, p, k)| (*i, &p[..], &k[..]));
                floors
                    .commit(keys, || db.write_opt(batch, &unlogged()))
                    .map_err(io_write)?;
                last = Some(entry.log_id.index);
                out.push(resp);
            }
            *tally.lock().unwrap_or_else(|p| p.into_inner()) = Some(Tally {
                applied: last,
                count,
            });
            Ok(out)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            db: self.db.clone(),
            files: self.files.clone(),
            floors: self.floors.clone(),
            tally: self.tally.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, SErr> {
        let f = self.files.receive().map_err(io_write)?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SErr> {
        use tokio::io::AsyncWriteExt as _;
        snapshot.flush().await.map_err(io_write)?;
        let data = snapshot.into_std().await;
        let db = self.db.clone();
        let floors = self.floors.clone();
        let files = self.files.clone();
        let meta = meta.clone();
        // The install replaces the applied index and the count.
        *self.tally.lock().unwrap_or_else(|p| p.into_inner()) = None;
        blocking(move || {
            // However the install ends, a received snapshot is no longer awaited.
            struct Awaited<'a>(Option<&'a SnapshotFiles>);
            impl Drop for Awaited<'_> {
                fn drop(&mut self) {
                    if let Some(f) = self.0 {
                        f.installed();
                    }
                }
            }
            let received = files.received_path(&data).map_err(io_read)?;
            let _awaited = Awaited(received.is_some().then_some(&*files));
            let tmp = match received {
                Some(p) => p,
                None => {
                    // Not received here (a snapshot handed over in process): copy it in.
                    let (p, mut f) = files.create().map_err(io_write)?;
                    let mut from = data.try_clone().map_err(io_read)?;
                    std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(0)).map_err(io_read)?;
                    std::io::copy(&mut from, &mut f).map_err(io_write)?;
                    p
                }
            };
            data.sync_all().map_err(io_write)?;
            drop(data);
            // A bad file is refused before the state is touched.
            let f = std::fs::File::open(&tmp).map_err(io_read)?;
            check_content(
                &mut BufReader::with_capacity(1 << 20, f),
                STATE_CFS.len() as u64,
            )
            .map_err(|e| SErr::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
            let mut waiting = files.lock();
            let name = files.seal(&tmp).map_err(io_write)?;
            // First record the snapshot and that it is being installed (and the log purge that
            // waited for it): a crash from here on finishes the install at the next open.
            let sm = cf(&db, CF_SM);
            let mut b = WriteBatch::default();
            b.put_cf(
                sm,
                K_SNAPSHOT_FILE,
                enc(&SnapshotRef {
                    meta: meta.clone(),
                    file: name.clone(),
                }),
            );
            b.put_cf(sm, K_INSTALLING, []);
            b.delete_cf(sm, K_SNAPSHOT);
            purge_covered(&db, &mut b, &mut waiting, meta.last_log_id);
            db.write_opt(b, &synced()).map_err(io_write)?;
            floors.rewrite(|| load_snapshot(&db, &files.path(&name), &meta))?;
            files.remove_except(Some(&name)).map_err(io_write)
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let db = self.db.clone();
        let files = self.files.clone();
        blocking(move || {
            let _current = files.lock();
            let Some(r) = current_snapshot(&db)? else {
                return Ok(None);
            };
            Ok(Some(Snapshot {
                snapshot: open_data(&files.path(&r.file))?,
                meta: r.meta,
            }))
        })
        .await
    }
}

/// A size to reserve for the write batch of `entry`: its messages' bodies and envelopes and
/// room for the records beside them. (The batch is a string RocksDB grows by doubling: a
/// 100 KB body followed by a few small records was copied whole into a fresh 200 KB.)
fn batch_bytes(entry: &Entry<TypeConfig>) -> usize {
    let messages = match &entry.payload {
        EntryPayload::Normal(Request::Enqueue { messages, .. })
        | EntryPayload::Normal(Request::EnqueueOnce { messages, .. }) => messages.as_slice(),
        _ => &[],
    };
    messages
        .iter()
        .map(|m| m.data.len() + 1024 + 256 * m.rcpt_to.len())
        .sum::<usize>()
        + 4096
}

/// Applies one entry's command into `tx`.
fn apply_one(db: &DB, tx: &mut Tx<'_>, entry: &Entry<TypeConfig>) -> std::io::Result<Response> {
    let index = entry.log_id.index;
    let req = match &entry.payload {
        EntryPayload::Blank | EntryPayload::Membership(_) => return Ok(Response::None),
        EntryPayload::Normal(req) => req,
    };
    let format = stored_format(db).map_err(std::io::Error::other)?;
    tx.format = format;
    // From format 3 a command's time is at least the latest one applied before it: after a
    // failover to a leader whose clock is behind, hours and days still only move forward.
    let time = |t: i64, tx: &mut Tx<'_>| -> std::io::Result<i64> {
        if format < 3 {
            return Ok(t);
        }
        let high = stored_clock(db).map_err(std::io::Error::other)?;
        if t > high {
            tx.put(CF_SETTINGS, K_CLOCK, enc(&t));
        }
        Ok(t.max(high))
    };
    Ok(match req {
        Request::Enqueue {
            received_at_ms,
            messages,
        } => {
            let at = time(*received_at_ms, tx)?;
            enqueue(tx, index, at, messages, &[], 0)?
        }
        Request::EnqueueOnce {
            received_at_ms,
            dedup_window_ms,
            messages,
            submissions,
        } => {
            let at = time(*received_at_ms, tx)?;
            enqueue(tx, index, at, messages, submissions, *dedup_window_ms)?
        }
        Request::SetFormat { version } => {
            let now = stored_format(db).map_err(std::io::Error::other)?;
            let version = now.max(*version);
            tx.put(CF_SETTINGS, K_FORMAT, enc(&version));
            Response::Format(version)
        }
        Request::CreateTenant(t) => {
            if tenant_taken(db, t)? {
                Response::TenantExists
            } else {
                tx.put_tenant(t);
                Response::TenantCreated
            }
        }
        Request::UpdateTenant { name, enabled, dsn } => tx.update_tenant(name, *enabled, *dsn)?,
        Request::Suppress(s) => {
            tx.suppress(s.clone(), None);
            Response::Suppression(true)
        }
        Request::Unsuppress { tenant, address } => {
            Response::Suppression(tx.unsuppress(tenant, address)?)
        }
        Request::Purge { before_ms, limit } => Response::Purged(tx.purge(*before_ms, *limit)?),
        Request::SetDkimKey(k) => tx.set_dkim_key(k.clone())?,
        Request::RemoveDkimKey { tenant, domain } => {
            Response::DkimKey(tx.remove_dkim_key(tenant, domain)?)
        }
        Request::Shaping { at_ms, cmd } => {
            let at = time(*at_ms, tx)?;
            Response::Shaped(tx.shaping(at, cmd.clone())?)
        }
        Request::Token(cmd) => Response::Token(tx.token(cmd.clone())?),
        Request::SuppressionPolicy { tenant, policy } => {
            if !tenant.is_empty()
                && db
                    .get_cf(cf(db, CF_TENANTS), tenant.as_bytes())
                    .map_err(std::io::Error::other)?
                    .is_none()
            {
                Response::TenantNotFound
            } else {
                let key = policy_key(tenant);
                match policy {
                    Some(p) => tx.put(CF_SETTINGS, &key, enc(p)),
                    None => tx.delete(CF_SETTINGS, &key),
                }
                Response::TenantUpdated
            }
        }
        Request::ClusterId(id) => match replicated_cluster_id(db).map_err(std::io::Error::other)? {
            Some(known) => Response::ClusterId(known),
            None => {
                tx.put(CF_SETTINGS, K_REPLICATED_CLUSTER_ID, id.as_bytes().to_vec());
                Response::ClusterId(id.clone())
            }
        },
        Request::Deliver { now_ms, mta, ops } => {
            let now_ms = time(*now_ms, tx)?;
            tx.now_ms = now_ms;
            tx.deliver(index, now_ms, mta, ops.clone(), format)?
        }
    })
}

/// Key of a tenant's own suppression rule in `settings` (format 7).
fn policy_key(tenant: &str) -> Vec<u8> {
    [b"suppolicy/".as_slice(), tenant.as_bytes()].concat()
}

fn replicated_cluster_id(db: &DB) -> Result<Option<String>, rocksdb::Error> {
    let v = db.get_cf(cf(db, CF_SETTINGS), K_REPLICATED_CLUSTER_ID)?;
    Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Applies a group commit: each message gets the id of its position, unless its submission
/// id (in `submissions`, same order; empty for none) was stored within `dedup_window_ms`
/// before `received_at_ms`, in which case it answers with the earlier id and stores nothing.
fn enqueue(
    tx: &mut Tx<'_>,
    index: u64,
    received_at_ms: i64,
    messages: &[NewMessage],
    submissions: &[Vec<u8>],
    dedup_window_ms: i64,
) -> std::io::Result<Response> {
    tx.now_ms = received_at_ms;
    let since = received_at_ms.saturating_sub(dedup_window_ms);
    if !submissions.is_empty() {
        tx.forget_submissions(since, 2 * messages.len() + 16)?;
    }
    let mut ids = Vec::with_capacity(messages.len());
    let mut suppressed = Vec::new();
    let mut repeats = Vec::new();
    for (pos, m) in messages.iter().enumerate() {
        let submission = submissions.get(pos).filter(|s| !s.is_empty());
        if let Some(s) = submission {
            if let Some(id) = tx.submitted(&m.tenant, s, since)? {
                ids.push(id);
                repeats.push(pos as u32);
                continue;
            }
        }
        let id = message_id(index, pos);
        let rec = MessageRecord {
            id: id.clone(),
            tenant: m.tenant.clone(),
            mail_from: m.mail_from.clone(),
            rcpt_to: m.rcpt_to.clone(),
            size: m.data.len() as u64,
            received_at_ms,
            client_ip: m.client_ip.clone(),
            helo: m.helo.clone(),
            edge: m.edge.clone(),
            log_index: index,
            smtputf8: m.smtputf8,
            body_8bit: m.body_8bit,
            remaining: 0,
            dsn_for: None,
        };
        for a in tx.insert_message(rec, &m.data)? {
            suppressed.push((pos as u32, a));
        }
        if let Some(s) = submission {
            tx.remember_submission(&m.tenant, s, &id, received_at_ms);
        }
        ids.push(id);
    }
    Ok(Response::Enqueued {
        ids,
        suppressed,
        repeats,
    })
}

/// The cluster's format version (1 until a `SetFormat` raised it).
fn stored_format(db: &DB) -> Result<u32, QueueError> {
    match db.get_cf(cf(db, CF_SETTINGS), K_FORMAT)? {
        Some(v) => dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_SETTINGS,
            source,
        }),
        None => Ok(1),
    }
}

/// The latest command time applied (format 3; 0 before).
fn stored_clock(db: &DB) -> Result<i64, QueueError> {
    match db.get_cf(cf(db, CF_SETTINGS), K_CLOCK)? {
        Some(v) => dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_SETTINGS,
            source,
        }),
        None => Ok(0),
    }
}

fn tenant_taken(db: &DB, t: &TenantRecord) -> Result<bool, std::io::Error> {
    let h = cf(db, CF_TENANTS);
    if db
        .get_cf(h, t.name.as_bytes())
        .map_err(std::io::Error::other)?
        .is_some()
    {
        return Ok(true);
    }
    for kv in db.iterator_cf(h, IteratorMode::Start) {
        let (_, v) = kv.map_err(std::io::Error::other)?;
        let rec: TenantRecord = dec(&v).map_err(std::io::Error::other)?;
        if rec.username == t.username {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Read-only queries over this node's applied state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueueReader {
    db: Arc<DB>,
    /// Where the due indexes' live keys begin (see [`crate::floors`]).
    floors: Arc<Floors>,
}

impl QueueReader {
    /// The id of the cluster this node belongs to, as recorded on this node (not replicated:
    /// each node learns it from its founder, see skein-cluster's `identity`).
    pub fn cluster_id(&self) -> Result<Option<String>, QueueError> {
        match self.db.get_cf(cf(&self.db, CF_RAFT), K_CLUSTER_ID)? {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None => Ok(None),
        }
    }

    /// `tenant`'s own suppression rule (format 7), if it has one.
    pub fn suppression_policy(
        &self,
        tenant: &str,
    ) -> Result<Option<TenantSuppressionPolicy>, QueueError> {
        match self
            .db
            .get_cf(cf(&self.db, CF_SETTINGS), policy_key(tenant))?
        {
            Some(v) => Ok(Some(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_SETTINGS,
                source,
            })?)),
            None => Ok(None),
        }
    }

    /// The cluster id in the replicated state (format 7), if one was recorded there.
    pub fn replicated_cluster_id(&self) -> Result<Option<String>, QueueError> {
        Ok(replicated_cluster_id(&self.db)?)
    }

    /// Records the cluster this node belongs to (synced).
    pub fn set_cluster_id(&self, id: &str) -> Result<(), QueueError> {
        self.db.put_cf_opt(
            cf(&self.db, CF_RAFT),
            K_CLUSTER_ID,
            id.as_bytes(),
            &synced(),
        )?;
        Ok(())
    }

    /// Every Admin token, by name.
    pub fn tokens(&self) -> Result<Vec<crate::tokens::TokenRecord>, QueueError> {
        crate::tokens::all(&self.db)
    }

    /// The token whose secret hashes to `sha256`, if any.
    pub fn token_by_hash(
        &self,
        sha256: &[u8],
    ) -> Result<Option<crate::tokens::TokenRecord>, QueueError> {
        Ok(self
            .tokens()?
            .into_iter()
            .find(|t| t.secret_sha256 == sha256))
    }

    /// Messages with ids after `after` (exclusive), at most `limit`.
    pub fn list_messages(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, QueueError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_MESSAGES),
            IteratorMode::From(after.as_bytes(), Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv?;
            if k.as_ref() == after.as_bytes() {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_MESSAGES,
                source,
            })?);
        }
        Ok(out)
    }

    /// A message's size (its body's bytes), read without decoding its whole envelope.
    pub fn message_size(&self, id: &str) -> Result<Option<u64>, QueueError> {
        let Some(v) = self
            .db
            .get_pinned_cf(cf(&self.db, CF_MESSAGES), id.as_bytes())?
        else {
            return Ok(None);
        };
        let m: crate::records::MessageSize<'_> =
            postcard::from_bytes(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_MESSAGES,
                source,
            })?;
        Ok(Some(m.size))
    }

    /// One message's envelope, and its body if `with_body`.
    pub fn get_message(
        &self,
        id: &str,
        with_body: bool,
    ) -> Result<Option<MessageWithBody>, QueueError> {
        let Some(v) = self.db.get_cf(cf(&self.db, CF_MESSAGES), id.as_bytes())? else {
            return Ok(None);
        };
        let rec = dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_MESSAGES,
            source,
        })?;
        let body = if with_body {
            self.db.get_cf(cf(&self.db, CF_BODIES), id.as_bytes())?
        } else {
            None
        };
        Ok(Some((rec, body)))
    }

    /// Every tenant, by name.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, QueueError> {
        let mut out = Vec::new();
        for kv in self
            .db
            .iterator_cf(cf(&self.db, CF_TENANTS), IteratorMode::Start)
        {
            let (_, v) = kv?;
            out.push(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_TENANTS,
                source,
            })?);
        }
        Ok(out)
    }

    /// Unfinished recipients due at or before `now_ms` (queued or deferred ones whose time has
    /// come, and leased ones whose lease has lapsed), earliest first, at most `limit`.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<RcptRecord>, QueueError> {
        let rcpts = cf(&self.db, CF_RCPTS);
        self.floors.read(Index::Due, &[], |start| {
            let mut out = Vec::new();
            let mut first = None;
            // Only what is due by now (see `queue_due`).
            let end = due_bound(&[], now_ms);
            let mut it = range(&self.db, CF_DUE, start, end.clone());
            while let Some(k) = it.key() {
                first.get_or_insert_with(|| k.to_vec());
                if out.len() >= limit || k.len() < 8 {
                    break;
                }
                let at = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                if at > now_ms.max(0) as u64 {
                    break;
                }
                if let Some(r) = self.live_due(rcpts, at, &k[8..])? {
                    out.push(r);
                }
                it.next();
            }
            it.status()?;
            Ok((out, Some(first.unwrap_or(end))))
        })
    }

    /// Queues (a tenant's mail to one destination domain) whose earliest unfinished recipient
    /// is due by `now_ms`, at most `limit`, in index order. One seek per queue, however many
    /// recipients each holds.
    pub fn ready_queues(&self, now_ms: i64, limit: usize) -> Result<Vec<QueueHead>, QueueError> {
        let mut out = Vec::new();
        // The queues from their counts (one key each), then each one's first entry from its
        // floor: the deleted entries at the front of a busy queue are never stepped over.
        for kv in self
            .db
            .iterator_cf(cf(&self.db, CF_QUEUE_STATS), IteratorMode::Start)
        {
            if out.len() >= limit {
                break;
            }
            let (prefix, _) = kv?;
            let Some((tenant, domain, _)) = split_queue_key(&prefix) else {
                continue;
            };
            if let Some(at) = self.first_queue_due(&prefix, Some(now_ms))? {
                if at <= now_ms {
                    out.push(QueueHead {
                        tenant: tenant.to_string(),
                        domain: domain.to_string(),
                        due_ms: at,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The due time of the first entry of the queue with key prefix `prefix`, looking only
    /// at entries due by `until_ms` when given (what is due later is not stepped through).
    fn first_queue_due(
        &self,
        prefix: &[u8],
        until_ms: Option<i64>,
    ) -> Result<Option<i64>, QueueError> {
        self.floors.read(Index::QueueDue, prefix, |start| {
            let end = match until_ms {
                Some(t) => due_bound(prefix, t),
                None => past(prefix),
            };
            let it = range(&self.db, CF_QUEUE_DUE, start, end.clone());
            let first = it.key().map(<[u8]>::to_vec);
            it.status()?;
            let at = first.as_ref().and_then(|k| {
                k.get(prefix.len()..prefix.len() + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| u64::from_be_bytes(b) as i64)
            });
            // Nothing before the bound: nothing visible below it.
            Ok((at, Some(first.unwrap_or(end))))
        })
    }

    /// Queues with unfinished recipients, in (tenant, domain) order starting after `after`,
    /// at most `limit`: each with its count and when its earliest recipient is due. One read
    /// and one seek per queue, however many recipients each holds.
    pub fn queues(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<QueueStats>, QueueError> {
        let start = after.map(|(t, d)| {
            let mut k = crate::apply::queue_prefix(t, d);
            k.push(0);
            k
        });
        let mode = match &start {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(cf(&self.db, CF_QUEUE_STATS), mode) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let Some((tenant, domain, _)) = split_queue_key(&k) else {
                continue;
            };
            let recipients: u64 = dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_QUEUE_STATS,
                source,
            })?;
            let oldest_due_ms = self.first_queue_due(&k, None)?;
            out.push(QueueStats {
                tenant: tenant.to_string(),
                domain: domain.to_string(),
                recipients,
                first_due_ms: oldest_due_ms,
            });
        }
        Ok(out)
    }

    /// Up to `limit` unfinished recipients of one queue due by `now_ms`, earliest first.
    pub fn queue_due(
        &self,
        tenant: &str,
        domain: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<RcptRecord>, QueueError> {
        let prefix = crate::apply::queue_prefix(tenant, domain);
        let rcpts = cf(&self.db, CF_RCPTS);
        self.floors.read(Index::QueueDue, &prefix, |start| {
            let mut out = Vec::new();
            let mut first = None;
            // Only what is due by now: what is due later is not stepped through.
            let end = due_bound(&prefix, now_ms);
            let mut it = range(&self.db, CF_QUEUE_DUE, start, end.clone());
            while let Some(k) = it.key() {
                first.get_or_insert_with(|| k.to_vec());
                if out.len() >= limit || k.len() < prefix.len() + 8 {
                    break;
                }
                let rest = &k[prefix.len()..];
                let at = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
                if at > now_ms.max(0) as u64 {
                    break;
                }
                if let Some(r) = self.live_due(rcpts, at, &rest[8..])? {
                    out.push(r);
                }
                it.next();
            }
            it.status()?;
            Ok((out, Some(first.unwrap_or(end))))
        })
    }

    /// The recipient a `due` index entry (due time `at`, recipient key `key`) stands for, if
    /// the entry is live: the recipient exists, is not final and is due at that time. Entries
    /// left behind by an older release (a snapshot that claimed an older log position than
    /// its data, so entries applied twice) are skipped rather than handed out again.
    fn live_due(
        &self,
        rcpts: &rocksdb::ColumnFamily,
        at: u64,
        key: &[u8],
    ) -> Result<Option<RcptRecord>, QueueError> {
        let Some(v) = self.db.get_cf(rcpts, key)? else {
            return Ok(None);
        };
        let r: RcptRecord = dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_RCPTS,
            source,
        })?;
        Ok((!r.state.is_final() && r.due_ms.max(0) as u64 == at).then_some(r))
    }

    /// A digest of the whole replicated state (every state column family, key and value, and
    /// the message count): equal digests mean equal state. FNV-1a, for comparing replicas and
    /// fixtures in tests and tools, not for security.
    pub fn state_digest(&self) -> Result<u64, QueueError> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for chunk in [&(bytes.len() as u64).to_be_bytes()[..], bytes] {
                for b in chunk {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        };
        // Empty column families leave no trace, so a release that adds one (empty until
        // its commands are used) still digests old state the same.
        for name in STATE_CFS {
            let mut named = false;
            for kv in self.db.iterator_cf(cf(&self.db, name), IteratorMode::Start) {
                let (k, v) = kv?;
                if !named {
                    eat(name.as_bytes());
                    named = true;
                }
                eat(&k);
                eat(&v);
            }
        }
        eat(&self.message_count()?.to_be_bytes());
        Ok(h)
    }

    /// The replicated format the cluster writes: 1 until a `SetFormat` raised it (a cluster
    /// that began on release 0.1.0 stays at 1 until an operator finalizes its upgrade).
    pub fn format(&self) -> Result<u32, QueueError> {
        stored_format(&self.db)
    }

    /// The sending limits and counters at `now_ms`.
    pub fn shaping(&self, now_ms: i64) -> Result<crate::ShapingState, QueueError> {
        crate::shaping::state(&self.db, now_ms)
    }

    /// `tenant`'s own pool, and the other pools its mail may choose.
    pub fn pools_of(&self, tenant: &str) -> Result<(String, Vec<String>), QueueError> {
        crate::shaping::pools_of(&self.db, tenant)
    }

    /// Whether any IP record exists (until one does, senders' own IPs send without limits).
    pub fn shaping_on(&self) -> Result<bool, QueueError> {
        crate::shaping::any_ip(&self.db)
    }

    /// Operators' suspensions in force at `now_ms`.
    pub fn suspensions(&self, now_ms: i64) -> Result<Vec<skein_shaping::Suspension>, QueueError> {
        crate::shaping::suspensions(&self.db, now_ms)
    }

    /// Every warm-up schedule, the shipped default included.
    pub fn schedules(&self) -> Result<Vec<skein_shaping::Schedule>, QueueError> {
        crate::shaping::schedules(&self.db)
    }

    /// The latest command time applied (0 before format 3, or before any command). A leader
    /// schedules at no earlier time than this, whatever its own clock says.
    pub fn clock_ms(&self) -> Result<i64, QueueError> {
        stored_clock(&self.db)
    }

    /// When the earliest unfinished recipient is due, if any.
    pub fn next_due_ms(&self) -> Result<Option<i64>, QueueError> {
        let rcpts = cf(&self.db, CF_RCPTS);
        self.floors.read(Index::Due, &[], |start| {
            let mut first = None;
            // Raw: stepped on only while more is wanted.
            let mut it = self.db.raw_iterator_cf(cf(&self.db, CF_DUE));
            it.seek(start);
            while let Some(k) = it.key() {
                first.get_or_insert_with(|| k.to_vec());
                if let Some(at) = k.get(..8).and_then(|b| b.try_into().ok()) {
                    let at = u64::from_be_bytes(at);
                    if self.live_due(rcpts, at, &k[8..])?.is_some() {
                        return Ok((Some(at as i64), first));
                    }
                }
                it.next();
            }
            it.status()?;
            Ok((None, first))
        })
    }

    /// The time prefix of the first key of a time-ordered index.
    fn first_time(&self, index: &str) -> Result<Option<i64>, QueueError> {
        let mut it = self
            .db
            .iterator_cf(cf(&self.db, index), IteratorMode::Start);
        Ok(match it.next() {
            Some(kv) => {
                let (k, _) = kv?;
                k.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| u64::from_be_bytes(b) as i64)
            }
            None => None,
        })
    }

    /// The recipients of a message with their delivery state and attempts.
    pub fn rcpts(&self, message_id: &str) -> Result<Vec<RcptRecord>, QueueError> {
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_RCPTS),
            IteratorMode::From(message_id.as_bytes(), Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv?;
            if !k.starts_with(message_id.as_bytes()) {
                break;
            }
            out.push(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_RCPTS,
                source,
            })?);
        }
        Ok(out)
    }

    /// One recipient by key.
    pub fn rcpt(&self, key: &str) -> Result<Option<RcptRecord>, QueueError> {
        match self.db.get_cf(cf(&self.db, CF_RCPTS), key.as_bytes())? {
            Some(v) => Ok(Some(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_RCPTS,
                source,
            })?)),
            None => Ok(None),
        }
    }

    /// A tenant's suppressions after address `after` (exclusive), at most `limit`, lapsed
    /// ones included (see [`SuppressionEntry::applies_at`]).
    pub fn suppressions(
        &self,
        tenant: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<SuppressionEntry>, QueueError> {
        let prefix = crate::apply::suppress_key(tenant, "");
        let start = crate::apply::suppress_key(tenant, after);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_SUPPRESS),
            IteratorMode::From(&start, Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            if !after.is_empty() && k.as_ref() == start.as_slice() {
                continue;
            }
            out.push(
                SuppressionEntry::decode(&v).map_err(|source| QueueError::Corrupt {
                    cf: CF_SUPPRESS,
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// `tenant`'s suppression of `address`, if there is one (lapsed or not).
    pub fn suppression(
        &self,
        tenant: &str,
        address: &str,
    ) -> Result<Option<SuppressionEntry>, QueueError> {
        let key = crate::apply::suppress_key(tenant, address);
        match self.db.get_cf(cf(&self.db, CF_SUPPRESS), key)? {
            Some(v) => Ok(Some(SuppressionEntry::decode(&v).map_err(|source| {
                QueueError::Corrupt {
                    cf: CF_SUPPRESS,
                    source,
                }
            })?)),
            None => Ok(None),
        }
    }

    /// The bounces counted towards suppressing `tenant`'s `address` (format 7), if any.
    pub fn strikes(&self, tenant: &str, address: &str) -> Result<Option<StrikeRecord>, QueueError> {
        let key = crate::apply::strike_key(tenant, address);
        match self.db.get_cf(cf(&self.db, CF_SETTINGS), key)? {
            Some(v) => Ok(Some(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_SETTINGS,
                source,
            })?)),
            None => Ok(None),
        }
    }

    /// DKIM keys, of one tenant or (with `None`) of all, by tenant and domain.
    pub fn dkim_keys(&self, tenant: Option<&str>) -> Result<Vec<DkimKeyRecord>, QueueError> {
        let prefix = tenant
            .map(|t| crate::apply::dkim_key(t, ""))
            .unwrap_or_default();
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_DKIM),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(dec(&v).map_err(|source| QueueError::Corrupt {
                cf: CF_DKIM,
                source,
            })?);
        }
        Ok(out)
    }

    /// When the earliest finished message still stored finished, if any.
    pub fn oldest_finished_ms(&self) -> Result<Option<i64>, QueueError> {
        self.first_time(CF_FINISHED)
    }

    /// Messages in the applied state.
    pub fn message_count(&self) -> Result<u64, QueueError> {
        Ok(match self.db.get_cf(cf(&self.db, CF_SM), K_COUNT)? {
            Some(v) => dec(&v).map_err(|source| QueueError::Corrupt { cf: CF_SM, source })?,
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NewMessage;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// The bound on write-ahead files reaches RocksDB (its OPTIONS file records what the
    /// database runs with).
    #[test]
    fn the_write_ahead_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let _ = open(dir.path()).unwrap();
        let options: String = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        let want = format!("max_total_wal_size={MAX_TOTAL_WAL_BYTES}\n");
        assert!(options.contains(&want), "{options}");
    }

    /// A due-index entry whose recipient is final, or due at another time, is never handed
    /// out (such entries were left by snapshots that claimed too old a log position).
    #[tokio::test]
    async fn stale_due_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) = open(dir.path()).unwrap();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Request::Enqueue {
                received_at_ms: 1_000,
                messages: vec![NewMessage {
                    tenant: String::new(),
                    mail_from: "a@example.com".into(),
                    rcpt_to: vec!["b@example.net".into()],
                    data: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
                    client_ip: String::new(),
                    helo: String::new(),
                    edge: String::new(),
                    smtputf8: false,
                    body_8bit: false,
                }],
            }),
        };
        sm.apply([entry.clone()]).await.unwrap();
        // Applying the same entry again changes nothing.
        sm.apply([entry]).await.unwrap();
        assert_eq!(reader.message_count().unwrap(), 1);
        assert_eq!(reader.list_messages("", 10).unwrap().len(), 1);
        let due = reader.due(2_000, 10).unwrap();
        assert_eq!(due.len(), 1);
        let live = due[0].clone();
        assert_eq!(reader.next_due_ms().unwrap(), Some(live.due_ms));

        // A second entry for the same recipient at an earlier time: stale, skipped.
        let db = &reader.db;
        db.put_cf(
            cf(db, CF_DUE),
            crate::apply::due_key(live.due_ms - 500, &live.key),
            [],
        )
        .unwrap();
        assert_eq!(reader.due(2_000, 10).unwrap(), vec![live.clone()]);
        assert_eq!(reader.next_due_ms().unwrap(), Some(live.due_ms));

        // The recipient final: neither entry is due any more.
        let mut done = live.clone();
        done.state = crate::records::RcptState::Delivered;
        db.put_cf(cf(db, CF_RCPTS), live.key.as_bytes(), enc(&done))
            .unwrap();
        assert!(reader.due(2_000, 10).unwrap().is_empty());
        assert_eq!(reader.next_due_ms().unwrap(), None);
    }
}

#[cfg(test)]
mod snapshot_file_tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::NewMessage;

    fn enqueue(index: u64, body: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request::Enqueue {
                received_at_ms: 1_000,
                messages: vec![NewMessage {
                    tenant: String::new(),
                    mail_from: "a@example.com".into(),
                    rcpt_to: vec![format!("r{index}@example.net")],
                    data: vec![b'x'; body].into(),
                    client_ip: String::new(),
                    helo: String::new(),
                    edge: String::new(),
                    smtputf8: false,
                    body_8bit: false,
                }],
            }),
        }
    }

    async fn build(sm: &mut StateMachine) -> Snapshot<TypeConfig> {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// A store of `n` messages of `body` bytes, at log index `n`.
    async fn filled(n: u64, body: usize) -> (tempfile::TempDir, StateMachine) {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        for i in 1..=n {
            sm.apply([enqueue(i, body)]).await.unwrap();
        }
        (dir, sm)
    }

    async fn bytes(mut f: Box<tokio::fs::File>) -> Vec<u8> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        f.seek(std::io::SeekFrom::Start(0)).await.unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).await.unwrap();
        out
    }

    /// Snapshot data `f` receives as from a leader.
    async fn receive(f: &mut StateMachine, sent: &[u8]) -> Box<tokio::fs::File> {
        let mut data = f.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut data, sent)
            .await
            .unwrap();
        data
    }

    /// Whether `key` is set in the `sm` column family.
    fn has(sm: &StateMachine, key: &[u8]) -> bool {
        sm.db.get_cf(cf(&sm.db, CF_SM), key).unwrap().is_some()
    }

    /// Release 0.1.0's snapshot: the whole state as one postcard value.
    type V1Content = (Vec<Vec<(Vec<u8>, Vec<u8>)>>, u64);

    fn state(db: &DB) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        STATE_CFS
            .iter()
            .map(|name| {
                db.iterator_cf(cf(db, name), IteratorMode::Start)
                    .map(|kv| {
                        let (k, v) = kv.unwrap();
                        (k.to_vec(), v.to_vec())
                    })
                    .collect()
            })
            .collect()
    }

    /// A snapshot streamed into a file is, byte for byte, what release 0.1.0 encoded in
    /// memory: nodes of both releases read each other's snapshots during an upgrade.
    #[tokio::test]
    async fn streamed_snapshots_keep_the_0_1_0_encoding() {
        let (dir, mut sm) = filled(5, 300).await;
        let snap = build(&mut sm).await;
        let data = bytes(snap.snapshot).await;
        // Column families added since 0.1.0 are not listed while empty.
        let v1 = state(&sm.db)[..V1_STATE_CFS].to_vec();
        assert_eq!(data, enc(&(v1, 5u64)));
        let _: V1Content = dec(&data).unwrap();
        // Served from the file, not the database; older files are gone.
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snap.meta);
        assert_eq!(bytes(current.snapshot).await, data);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(!has(&sm, K_SNAPSHOT));
    }

    /// A data directory from release 0.1.0 keeps its snapshot as a database value: the
    /// first open moves it into a file, and it is served as before.
    #[tokio::test]
    async fn a_snapshot_0_1_0_kept_in_the_database_moves_to_a_file_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let meta;
        let data;
        {
            let (_log, mut sm, _reader) = open(dir.path()).unwrap();
            sm.apply([enqueue(1, 10)]).await.unwrap();
            let snap = build(&mut sm).await;
            meta = snap.meta;
            data = bytes(snap.snapshot).await;
            // As 0.1.0 left it: the value, and no file.
            let legacy = StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            };
            let sm_cf = cf(&sm.db, CF_SM);
            sm.db.put_cf(sm_cf, K_SNAPSHOT, enc(&legacy)).unwrap();
            sm.db.delete_cf(sm_cf, K_SNAPSHOT_FILE).unwrap();
        }
        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, meta);
        assert_eq!(bytes(current.snapshot).await, data);
        assert!(!has(&sm, K_SNAPSHOT));
    }

    /// A crash in the middle of an install leaves a state that is partly the old one and
    /// partly the snapshot: the next open finishes the install.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_at_open() {
        let (_leader, mut sm) = filled(20, 100).await;
        let snap = build(&mut sm).await;
        let want = state(&sm.db);

        let follower = tempfile::tempdir().unwrap();
        {
            let (_log, mut f, _reader) = open(follower.path()).unwrap();
            f.apply([enqueue(1, 5)]).await.unwrap();
            // What install does before loading, then a crash after the first batch: here,
            // half the records written and nothing else.
            let data = bytes(snap.snapshot).await;
            let (tmp, mut file) = f.files.create().unwrap();
            file.write_all(&data).unwrap();
            let name = f.files.seal(&tmp).unwrap();
            let sm_cf = cf(&f.db, CF_SM);
            let r = SnapshotRef {
                meta: snap.meta.clone(),
                file: name,
            };
            f.db.put_cf(sm_cf, K_SNAPSHOT_FILE, enc(&r)).unwrap();
            f.db.put_cf(sm_cf, K_INSTALLING, []).unwrap();
            for (k, v) in want[0].iter().take(10) {
                f.db.put_cf(cf(&f.db, CF_MESSAGES), k, v).unwrap();
            }
        }
        let (_log, mut f, reader) = open(follower.path()).unwrap();
        assert_eq!(state(&f.db), want);
        assert_eq!(reader.message_count().unwrap(), 20);
        assert_eq!(f.applied_state().await.unwrap().0, snap.meta.last_log_id);
        assert!(!has(&f, K_INSTALLING));
    }

    /// A snapshot built from a state that a newer installed snapshot already covers is handed
    /// out as built, but the installed one stays current.
    #[tokio::test]
    async fn a_build_never_replaces_an_installed_snapshot_as_new_as_it() {
        let (_leader, mut sm) = filled(3, 10).await;
        let snap = build(&mut sm).await;
        let sent = bytes(snap.snapshot).await;
        let (follower, mut f) = filled(1, 10).await;
        let data = receive(&mut f, &sent).await;
        f.install_snapshot(&snap.meta, data).await.unwrap();
        let installed = current_snapshot(&f.db).unwrap().unwrap();
        let built = build(&mut f).await;
        assert_eq!(built.meta.last_log_id, snap.meta.last_log_id);
        assert_eq!(bytes(built.snapshot).await, sent, "same state, same bytes");
        let current = current_snapshot(&f.db).unwrap().unwrap();
        assert_eq!(
            current.file, installed.file,
            "the installed snapshot stays current"
        );
        assert!(f.files.path(&current.file).exists());
        let files = std::fs::read_dir(follower.path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "the discarded build left no file");
    }

    /// A snapshot cut short is refused before anything is replaced.
    #[tokio::test]
    async fn a_truncated_snapshot_is_refused_and_the_state_stays() {
        let (_leader, mut sm) = filled(5, 100).await;
        let snap = build(&mut sm).await;
        let mut sent = bytes(snap.snapshot).await;
        sent.truncate(sent.len() - 10);
        let (_follower, mut f) = filled(2, 7).await;
        let before = state(&f.db);
        let data = receive(&mut f, &sent).await;
        assert!(f.install_snapshot(&snap.meta, data).await.is_err());
        assert_eq!(state(&f.db), before);
        assert_eq!(f.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
        assert!(!has(&f, K_INSTALLING));
    }

    /// A snapshot many times larger than an install batch goes through, and installing it
    /// replaces everything that was there.
    #[tokio::test]
    async fn a_state_larger_than_an_install_batch_round_trips() {
        // 40 MB of bodies: five install batches.
        let (_leader, mut sm) = filled(40, 1_000_000).await;
        let snap = build(&mut sm).await;
        let follower = tempfile::tempdir().unwrap();
        let (_log, mut f, reader) = open(follower.path()).unwrap();
        f.apply([enqueue(1, 5)]).await.unwrap();
        let data = receive(&mut f, &bytes(snap.snapshot).await).await;
        f.install_snapshot(&snap.meta, data).await.unwrap();
        assert_eq!(state(&f.db), state(&sm.db));
        assert_eq!(reader.message_count().unwrap(), 40);
        // Only the installed snapshot is left.
        let names = std::fs::read_dir(follower.path().join("snapshots"))
            .unwrap()
            .count();
        assert_eq!(names, 1);
    }
}

#[cfg(test)]
mod queue_index_tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::{DeliveryOp, Disposition};

    fn at(index: u64, req: Request) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    fn message(tenant: &str, rcpts: &[&str]) -> NewMessage {
        NewMessage {
            tenant: tenant.into(),
            mail_from: "app@example.com".into(),
            rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
            data: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
            client_ip: String::new(),
            helo: String::new(),
            edge: String::new(),
            smtputf8: false,
            body_8bit: false,
        }
    }

    fn index(db: &DB) -> Vec<Vec<u8>> {
        db.iterator_cf(cf(db, CF_QUEUE_DUE), IteratorMode::Start)
            .map(|kv| kv.unwrap().0.to_vec())
            .collect()
    }

    /// Two tenants, three queues; one recipient delivered.
    async fn queued() -> (tempfile::TempDir, StateMachine, QueueReader) {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) = open(dir.path()).unwrap();
        sm.apply([at(
            1,
            Request::Enqueue {
                received_at_ms: 1_000,
                messages: vec![
                    message("a", &["1@x.test", "2@x.test", "3@y.test"]),
                    message("a", &["4@X.test"]),
                    message("b", &["5@z.test"]),
                ],
            },
        )])
        .await
        .unwrap();
        let first = reader.queue_due("a", "x.test", 1_000, 1).unwrap();
        sm.apply([at(
            2,
            Request::Deliver {
                now_ms: 2_000,
                mta: "mx.test".into(),
                ops: vec![DeliveryOp::Report {
                    lease: None,
                    rcpt: first[0].key.clone(),
                    attempt: None,
                    disposition: Disposition::Delivered,
                }],
            },
        )])
        .await
        .unwrap();
        (dir, sm, reader)
    }

    fn stats(reader: &QueueReader) -> Vec<(String, String, u64, Option<i64>)> {
        reader
            .queues(None, 100)
            .unwrap()
            .into_iter()
            .map(|q| (q.tenant, q.domain, q.recipients, q.first_due_ms))
            .collect()
    }

    /// The index and counts applies keep are exactly the ones a rebuild makes, and they
    /// answer by queue.
    #[tokio::test]
    async fn queues_are_found_by_tenant_and_domain_and_the_index_matches_a_rebuild() {
        let (_dir, sm, reader) = queued().await;
        let kept = index(&sm.db);
        assert_eq!(kept.len(), 4, "five recipients, one delivered");
        let counted = stats(&reader);
        let q = |t: &str, d: &str, n: u64| (t.to_string(), d.to_string(), n, Some(1_000));
        assert_eq!(
            counted,
            [
                q("a", "x.test", 2),
                q("a", "y.test", 1),
                q("b", "z.test", 1)
            ]
        );
        rebuild_queue_index(&sm.db).unwrap();
        assert_eq!(index(&sm.db), kept);
        assert_eq!(stats(&reader), counted);
        // Paging: after a queue, the ones that follow it.
        let next: Vec<String> = reader
            .queues(Some(("a", "x.test")), 1)
            .unwrap()
            .into_iter()
            .map(|q| q.domain)
            .collect();
        assert_eq!(next, ["y.test"]);

        let heads: Vec<(String, String)> = reader
            .ready_queues(5_000, 100)
            .unwrap()
            .into_iter()
            .map(|q| (q.tenant, q.domain))
            .collect();
        let want = [("a", "x.test"), ("a", "y.test"), ("b", "z.test")];
        assert_eq!(heads.len(), 3, "{heads:?}");
        for (t, d) in want {
            assert!(
                heads.contains(&(t.into(), d.into())),
                "{t}/{d} in {heads:?}"
            );
        }
        assert_eq!(reader.ready_queues(5_000, 2).unwrap().len(), 2, "limit");
        assert!(
            reader.ready_queues(999, 100).unwrap().is_empty(),
            "nothing due yet"
        );
        let x: Vec<String> = reader
            .queue_due("a", "x.test", 5_000, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.address)
            .collect();
        assert_eq!(x, ["2@x.test", "4@X.test"]);
        assert!(reader
            .queue_due("b", "x.test", 5_000, 10)
            .unwrap()
            .is_empty());
    }

    /// A lease moves a recipient's due time but keeps it counted; its last recipient becoming
    /// final removes the queue.
    #[tokio::test]
    async fn counts_follow_leases_and_final_outcomes() {
        let (_dir, mut sm, reader) = queued().await;
        let z = reader.queue_due("b", "z.test", 5_000, 1).unwrap()[0]
            .key
            .clone();
        let deliver = |index: u64, now_ms: i64, ops: Vec<DeliveryOp>| {
            at(
                index,
                Request::Deliver {
                    now_ms,
                    mta: "mx.test".into(),
                    ops,
                },
            )
        };
        sm.apply([deliver(
            3,
            5_000,
            vec![DeliveryOp::Lease {
                lease: 9,
                sender: "s".into(),
                source_ip: "127.0.0.9".into(),
                expires_ms: 65_000,
                rcpts: vec![z.clone()],
            }],
        )])
        .await
        .unwrap();
        let b = |r: &QueueReader| stats(r).into_iter().find(|q| q.0 == "b" && q.1 == "z.test");
        assert_eq!(
            b(&reader),
            Some(("b".into(), "z.test".into(), 1, Some(65_000)))
        );
        sm.apply([deliver(
            4,
            6_000,
            vec![DeliveryOp::Report {
                lease: Some(9),
                rcpt: z,
                attempt: None,
                disposition: Disposition::Bounce { suppress: false },
            }],
        )])
        .await
        .unwrap();
        assert_eq!(b(&reader), None);
        // Its bounce goes back to the sender: a DSN in a queue of its own.
        assert!(stats(&reader)
            .iter()
            .any(|q| q.0 == "b" && q.1 == "example.com"));
        let counted = stats(&reader);
        rebuild_queue_index(&sm.db).unwrap();
        assert_eq!(stats(&reader), counted);
    }

    /// A data directory of an earlier release has no such index: open builds it. A snapshot
    /// does not carry it: installing one rebuilds it.
    #[tokio::test]
    async fn the_index_is_built_at_open_and_after_installing_a_snapshot() {
        let (dir, mut sm, _reader) = queued().await;
        let want = index(&sm.db);
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let other = tempfile::tempdir().unwrap();
        let (_log, mut sm2, reader2) = open(other.path()).unwrap();
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(index(&sm2.db), want);
        assert_eq!(reader2.ready_queues(5_000, 100).unwrap().len(), 3);
        assert_eq!(stats(&reader2).len(), 3);

        let db = &sm.db;
        db.delete_range_cf(cf(db, CF_QUEUE_DUE), [].as_slice(), [0xFFu8; 64].as_slice())
            .unwrap();
        db.delete_cf(cf(db, CF_SM), K_QUEUE_INDEX).unwrap();
        for q in ["a", "b"] {
            let k = crate::apply::queue_prefix(q, if q == "a" { "x.test" } else { "z.test" });
            db.delete_cf(cf(db, CF_QUEUE_STATS), k).unwrap();
        }
        drop((sm, _reader));
        let (_log, sm, reader) = open(dir.path()).unwrap();
        assert_eq!(index(&sm.db), want);
        assert_eq!(stats(&reader).len(), 3);
    }
}

#[cfg(test)]
mod log_move_tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Request::Enqueue {
                received_at_ms: index as i64,
                messages: vec![],
            }),
        }
    }

    /// The raw database, all column families open.
    fn raw(dir: &Path) -> DB {
        let names = DB::list_cf(&Options::default(), dir).unwrap();
        DB::open_cf(&Options::default(), dir, names).unwrap()
    }

    /// A data directory as releases before the segment files left it: the entries in the
    /// `log` column family (keyed by big-endian index, postcard values), the purged id in
    /// `raft`, no `raft-log` directory.
    fn old_layout(dir: &Path, entries: &[Entry<TypeConfig>], purged: Option<LogId<NodeId>>) {
        drop(open(dir).unwrap());
        std::fs::remove_dir_all(dir.join(LOG_DIR)).unwrap();
        let db = raw(dir);
        for e in entries {
            db.put_cf(cf(&db, CF_LOG), e.log_id.index.to_be_bytes(), enc(e))
                .unwrap();
        }
        db.put_cf(cf(&db, CF_RAFT), K_PURGED, enc(&purged)).unwrap();
    }

    fn in_cf(dir: &Path) -> usize {
        let db = raw(dir);
        let n = db.iterator_cf(cf(&db, CF_LOG), IteratorMode::Start).count();
        n
    }

    async fn entries(log: &mut LogStore) -> Vec<LogId<NodeId>> {
        let state = log.get_log_state().await.unwrap();
        let from = state.last_purged_log_id.map_or(0, |p| p.index + 1);
        log.try_get_log_entries(from..)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.log_id)
            .collect()
    }

    #[tokio::test]
    async fn a_log_kept_in_rocksdb_moves_into_segment_files_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<_> = (3..=7).map(|i| entry(2, i)).collect();
        let purged = LogId::new(CommittedLeaderId::new(1, 1), 2);
        old_layout(dir.path(), &old, Some(purged));
        assert_eq!(in_cf(dir.path()), 5);
        let (mut log, _sm, _reader) = open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purged));
        assert_eq!(state.last_log_id, Some(old[4].log_id));
        let got = log.try_get_log_entries(3..8).await.unwrap();
        assert_eq!(
            got.iter().map(enc).collect::<Vec<_>>(),
            old.iter().map(enc).collect::<Vec<_>>()
        );
        drop((log, _sm, _reader));
        assert_eq!(in_cf(dir.path()), 0, "the column family is emptied");
        assert!(dir
            .path()
            .join(LOG_DIR)
            .join("00000000000000000003.seg")
            .exists());
        assert!(!dir.path().join(LOG_DIR_NEW).exists());
        // Opened again: the same log, from the files.
        let (mut log, _sm, _reader) = open(dir.path()).unwrap();
        assert_eq!(
            entries(&mut log).await,
            old.iter().map(|e| e.log_id).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_move_a_crash_interrupted_is_done_again_or_finished() {
        // Interrupted while writing the new directory: it is written again from the start.
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<_> = (1..=4).map(|i| entry(1, i)).collect();
        old_layout(dir.path(), &old, None);
        std::fs::create_dir(dir.path().join(LOG_DIR_NEW)).unwrap();
        std::fs::write(
            dir.path()
                .join(LOG_DIR_NEW)
                .join("00000000000000000001.seg"),
            b"SKNLOG01 half",
        )
        .unwrap();
        let (mut log, _sm, _reader) = open(dir.path()).unwrap();
        assert_eq!(
            entries(&mut log).await,
            old.iter().map(|e| e.log_id).collect::<Vec<_>>()
        );
        drop((log, _sm, _reader));
        // Interrupted after the rename, before the column family was emptied: the files are
        // the log (here the column family holds something else, to tell them apart).
        {
            let db = raw(dir.path());
            let stale = entry(9, 1);
            db.put_cf(cf(&db, CF_LOG), 1u64.to_be_bytes(), enc(&stale))
                .unwrap();
        }
        let (mut log, _sm, _reader) = open(dir.path()).unwrap();
        assert_eq!(
            entries(&mut log).await,
            old.iter().map(|e| e.log_id).collect::<Vec<_>>()
        );
        drop((log, _sm, _reader));
        assert_eq!(in_cf(dir.path()), 0);
    }
}
