//! gRPC definitions of Skein's services, generated at build time from `proto/`.
//!
//! - [`ingest`]: edges hand accepted mail to the queue cluster.
//! - [`admin`]: operators manage the cluster, tenants and the queue.
//! - [`raft`]: queue nodes replicate their log to each other (internal).
//! - [`work`]: the queue leader hands deliveries to sender nodes and hears how they went.
#![allow(missing_docs, clippy::all)]

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
