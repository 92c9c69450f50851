//! A queue node: openraft over gRPC, with the Ingest and Admin services on the same port.
//!
//! - [`node`]: starting a node ([`start`]): store, Raft, gRPC server, cluster bootstrap.
//! - [`network`]: Raft's transport, both the client side ([`network::Network`]) and the
//!   `skein.raft.v1.Raft` service; payloads are openraft's own types in postcard.
//! - [`ingest`]: `skein.ingest.v1.Ingest`, with group commit: messages arriving together are
//!   proposed as one log entry, so many messages share one fsync per node.
//! - [`admin`]: the `skein.admin.v1.Admin` service.
//! - [`work`]: the `skein.work.v1.Work` sessions of sender nodes, and the registry of connected
//!   senders ([`work::Senders`]).
//! - [`scheduler`]: runs on the leader; leases due recipients to senders and commits their
//!   reports; [`policy`] decides retries, expiry and suppression; [`events`] writes the JSON
//!   delivery events.
//! - [`propose`]: every Raft proposal, with a deadline (openraft does not always answer).
//! - [`error`]: [`ClusterError`] and the one table mapping it to gRPC statuses.
//!
//! Any node accepts every call; writes and linearizable reads go to the leader (forwarded by
//! the node that received them).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod error;
pub mod events;
pub mod fair;
pub mod ingest;
pub mod network;
pub mod node;
pub mod plan;
pub mod policy;
pub mod propose;
pub mod scheduler;
pub mod staging;
pub mod work;

pub use error::ClusterError;
pub use node::{start, NodeHandle};
