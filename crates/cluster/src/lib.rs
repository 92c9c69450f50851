//! A queue node and the scheduler it runs while leading: openraft over gRPC, with the
//! Ingest, Admin and Work services on the same port.
//!
//! - [`node`]: starting a node ([`start`]): the wiring of store, Raft, services, scheduler and
//!   cluster bootstrap.
//! - [`route`]: [`route::Cluster`], the way every service reaches the cluster: where
//!   leader-only calls go, channels to other nodes, proposals with a deadline.
//! - [`network`]: Raft's transport, both the client side ([`network::Network`]) and the
//!   `skein.raft.v1.Raft` service; payloads are openraft's own types in postcard. [`staging`]
//!   carries large entries ahead of AppendEntries.
//! - [`ingest`]: `skein.ingest.v1.Ingest`, with group commit: messages arriving together are
//!   proposed as one log entry, so many messages share one fsync per node.
//! - [`admin`]: the `skein.admin.v1.Admin` service; [`health`]: `grpc.health.v1.Health`.
//! - [`work`]: the `skein.work.v1.Work` sessions of sender nodes.
//! - [`scheduler`]: runs on the leader; a pure planner (fair queues, sender slots, reports,
//!   retries) and the driver that proposes its rounds and sends assignments; [`events`]
//!   writes the JSON delivery events.
//! - [`propose`]: every Raft proposal, with a deadline (openraft does not always answer).
//! - [`removal`]: a node removed from the cluster notices and stops serving; [`identity`]:
//!   the cluster id every Raft call carries, so a node never mixes into another cluster.
//! - [`error`]: [`ClusterError`] and the one table mapping it to gRPC statuses.
//! - [`incoming`]: the gRPC port's accepted connections, limited in number, accept errors
//!   backed off; [`auth`]: who may call what (certificate roles, Admin tokens).
//!
//! Any node accepts every call; writes and linearizable reads go to the leader (forwarded by
//! the node that received them). Modules depend on [`route`], never on [`node`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod error;
pub mod events;
pub mod health;
pub mod identity;
pub mod incoming;
pub mod ingest;
pub mod metrics;
pub mod network;
pub mod node;
pub mod propose;
pub mod removal;
pub mod route;
pub mod scheduler;
pub mod staging;
pub mod work;

pub use error::ClusterError;
pub use node::{start, NodeHandle};
