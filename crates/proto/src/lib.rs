//! gRPC definitions of Skein's services, generated at build time from `proto/`.
//!
//! - [`ingest`]: edges hand accepted mail to the queue cluster.
//! - [`admin`]: operators manage the cluster, tenants and the queue.
//! - [`raft`]: queue nodes replicate their log to each other (internal).
//! - [`work`]: the queue leader hands deliveries to sender nodes and hears how they went.
//! - [`health`]: the standard `grpc.health.v1` protocol, for probes and load balancers.
//!
//! [`call_within`] puts a client-side deadline on any call between Skein's roles;
//! [`FILE_DESCRIPTOR_SET`] describes every service, for gRPC server reflection.
#![allow(missing_docs, clippy::all)]

use std::future::Future;
use std::time::Duration;

/// Runs a unary gRPC call for at most `limit`, then gives up with `DEADLINE_EXCEEDED`.
///
/// `Request::set_timeout` only tells the server how long the caller will wait: a peer that is
/// stopped or cut off never enforces it, and the call would wait as long as the connection
/// stays open. Every call one role makes to another goes through this (or an equivalent
/// timeout), so one hung peer cannot hold a caller for ever. Callers also set the deadline on
/// the request, so a live server gives up at the same time.
pub async fn call_within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Largest HTTP/2 DATA frame a Skein endpoint accepts (the protocol's default is 16 KiB):
/// set where messages flow in (a node's server, a sender's channel), so a 100 KB message
/// arrives in one frame rather than seven.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Every service and message above as an encoded `FileDescriptorSet` (with comments): what
/// a node serves through gRPC server reflection, so `grpcurl` needs no `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/skein_descriptor.bin"));

/// `grpc.health.v1`.
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// `skein.ingest.v1`.
pub mod ingest {
    tonic::include_proto!("skein.ingest.v1");
}

/// `skein.admin.v1`.
pub mod admin {
    tonic::include_proto!("skein.admin.v1");
}

/// `skein.raft.v1`.
pub mod raft {
    tonic::include_proto!("skein.raft.v1");
}

/// `skein.work.v1`.
pub mod work {
    tonic::include_proto!("skein.work.v1");
}
