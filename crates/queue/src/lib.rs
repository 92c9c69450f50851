//! The replicated queue: what a queue node stores and how.
//!
//! - [`types`]: the openraft type configuration and the commands ([`Request`]) replicated
//!   through the log, with their [`Response`]s.
//! - [`store`]: the Raft log ([`LogStore`]: entries in append-only segment files, the vote in
//!   RocksDB) and the state machine ([`StateMachine`], RocksDB column families); log appends
//!   are synced before they are acknowledged, so a committed entry is on disk on a quorum.
//! - [`records`]: the stored records (message envelope, recipient delivery state, tenant,
//!   suppression) and their keys.
//! - `apply`: how each command changes the state, one write batch per log entry; the `due`
//!   column family indexes every unfinished recipient by the time it is next due (its next
//!   attempt, or its lease's expiry), so the scheduler never scans the whole queue.
//! - [`dsn`]: the RFC 3464 bounce messages generated when recipients fail.
//! - [`shaping`]: the sending limits (IPs, schedules, providers, tenants' pools) and the
//!   counters that hold them, in the `shaping` column family (format 4).
//! - [`tokens`]: Admin tokens (names, scopes, hashes of their secrets; format 6).
//! - [`QueueReader`]: read-only queries over a node's applied state, for the Admin API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// openraft's storage traits fix the error type (`StorageError`, over 200 bytes); boxing it in
// our helpers would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

mod apply;
pub mod dsn;
mod floors;
mod recent;
pub mod records;
mod segments;
pub mod shaping;
mod snapfile;
pub mod store;
pub mod tokens;
pub mod types;

pub use records::{
    domain_of, rcpt_key, AttemptRecord, AttemptResult, DkimKeyRecord, Lease, MessageRecord,
    RcptRecord, RcptState, Reply, StrikeRecord, SuppressionEntry, SuppressionRecord, TenantRecord,
    TenantSuppressionPolicy,
};
pub use shaping::{IpStatus, ShapingCommand, ShapingOutcome, ShapingState};
pub use skein_shaping;
pub use store::{open, LogStore, QueueHead, QueueReader, QueueStats, StateMachine};
pub use tokens::{TokenCommand, TokenOutcome, TokenRecord, TokenScope};
pub use types::{
    DeliveryOp, Disposition, NewMessage, NodeId, Request, Response, SuppressRule, TypeConfig,
    CLUSTER_ID_FORMAT, FORMAT, POOL_CHOICE_FORMAT, SUPPRESSION_FORMAT, TOKENS_FORMAT,
};

/// Errors of the queue's own queries and of opening the store.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// RocksDB failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A stored record does not decode: corruption or an incompatible version.
    #[error("corrupt record in {cf}: {source}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoder error.
        source: postcard::Error,
    },
    /// The Raft log's segment files could not be read or written, or are damaged.
    #[error("raft log: {0}")]
    Log(#[from] std::io::Error),
    /// The snapshot directory or a snapshot in it could not be read, written or recovered.
    #[error("snapshot: {0}")]
    Snapshot(String),
}
