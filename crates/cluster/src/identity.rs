//! Which cluster a node belongs to. The founder of a cluster draws a random id when it
//! initializes it; every Raft call carries the caller's id (gRPC metadata), and a node that
//! has none takes the first it is called with, then refuses calls from any other cluster. So a
//! node that founded a cluster of its own, or one whose address now belongs to another
//! cluster's member, is never mixed into a cluster it does not belong to. Calls without an id
//! (from a release before this one) are taken as before.

use std::sync::RwLock;

use skein_queue::QueueReader;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::ClusterError;

/// gRPC metadata key carrying the caller's cluster id on Raft calls.
pub const CLUSTER_HEADER: &str = "x-skein-cluster";

/// This node's cluster id, recorded once.
#[derive(Debug)]
pub struct ClusterIdentity {
    reader: QueueReader,
    id: RwLock<Option<String>>,
}

impl ClusterIdentity {
    /// The id recorded on this node, if any.
    pub fn load(reader: QueueReader) -> Result<Self, ClusterError> {
        let id = reader.cluster_id()?;
        Ok(Self {
            reader,
            id: RwLock::new(id),
        })
    }

    /// The id, if this node knows it yet.
    pub fn get(&self) -> Option<String> {
        self.id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The id of a cluster this node founds: drawn now unless it has one.
    pub fn found(&self) -> Result<String, ClusterError> {
        let mut id = self.id.write().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = &*id {
            return Ok(id.clone());
        }
        let new = format!("{:032x}", fastrand::u128(..));
        self.reader.set_cluster_id(&new)?;
        *id = Some(new.clone());
        Ok(new)
    }

    /// Adds this node's id to a Raft call it makes.
    pub fn stamp<T>(&self, req: &mut Request<T>) {
        if let Some(id) = self.get().and_then(|id| id.parse().ok()) {
            req.metadata_mut().insert(CLUSTER_HEADER, id);
        }
    }

    /// Takes a Raft call from the cluster `metadata` names: this node's own, or the first one
    /// it hears of when it has none yet; a call from another cluster is refused.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(theirs) = metadata.get(CLUSTER_HEADER).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        if theirs.is_empty() || theirs.len() > 64 {
            return Err(Status::invalid_argument("malformed cluster id"));
        }
        let mut id = self.id.write().unwrap_or_else(|p| p.into_inner());
        match &*id {
            Some(mine) if mine == theirs => Ok(()),
            Some(mine) => Err(Status::failed_precondition(format!(
                "this node belongs to cluster {mine}, the caller to cluster {theirs}: a node \
                 joins one cluster only (start it empty with `join = true` to move it)"
            ))),
            None => {
                self.reader
                    .set_cluster_id(theirs)
                    .map_err(|e| Status::internal(format!("recording the cluster id: {e}")))?;
                tracing::info!(cluster = theirs, "joined cluster");
                *id = Some(theirs.to_string());
                Ok(())
            }
        }
    }
}
