//! Which cluster a node belongs to. The founder of a cluster draws a random id when it
//! initializes it; every Raft call carries the caller's id (gRPC metadata), and a node that
//! has none takes the first it is called with, then refuses calls from any other cluster. So a
//! node that founded a cluster of its own, or one whose address now belongs to another
//! cluster's member, is never mixed into a cluster it does not belong to. Calls without an id
//! (from a release before ids) are taken as before.
//!
//! A cluster founded before ids gets one through its log once it writes format 7: the leader
//! proposes `Request::ClusterId` (the first applied wins), and every node takes the
//! replicated id as its own when it has none.

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

    /// The id, if this node knows it yet: its own record, or else the replicated one.
    pub fn get(&self) -> Option<String> {
        if let Some(id) = self.id.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(id);
        }
        let mut id = self.id.write().unwrap_or_else(|p| p.into_inner());
        if id.is_none() {
            *id = self.replicated();
        }
        id.clone()
    }

    /// The id in the replicated state, recorded as this node's own.
    fn replicated(&self) -> Option<String> {
        let id = self.reader.replicated_cluster_id().ok().flatten()?;
        if let Err(e) = self.reader.set_cluster_id(&id) {
            tracing::warn!(%e, "recording the replicated cluster id");
        }
        tracing::info!(cluster = %id, "cluster id from the replicated state");
        Some(id)
    }

    /// An id for a cluster that has none in its replicated state: this node's, or a new one.
    pub fn proposal(&self) -> String {
        self.get()
            .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)))
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
        // Takes the replicated id first when this node has none of its own yet.
        self.get();
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

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine as _;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use skein_queue::Request;

    use super::*;

    fn metadata(id: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(CLUSTER_HEADER, id.parse().unwrap());
        m
    }

    /// A node of a cluster founded before ids has none; once the log records one, it takes
    /// that one as its own, stamps it on its calls and refuses other clusters' calls.
    #[tokio::test]
    async fn a_node_without_an_id_takes_the_replicated_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
        let identity = ClusterIdentity::load(reader.clone()).unwrap();
        assert_eq!(identity.get(), None);
        let entry = |index, req| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        };
        sm.apply([
            entry(
                1,
                Request::SetFormat {
                    version: skein_queue::CLUSTER_ID_FORMAT,
                },
            ),
            entry(2, Request::ClusterId("c0ffee".into())),
        ])
        .await
        .unwrap();
        assert_eq!(identity.get().as_deref(), Some("c0ffee"));
        assert_eq!(identity.proposal(), "c0ffee");
        assert!(identity.check(&metadata("c0ffee")).is_ok());
        let e = identity.check(&metadata("other")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // Recorded as its own: a restart keeps it.
        let again = ClusterIdentity::load(reader).unwrap();
        assert_eq!(again.id.read().unwrap().as_deref(), Some("c0ffee"));
    }

    /// With neither its own id nor a replicated one, a node takes the first caller's, and a
    /// proposal is drawn fresh.
    #[test]
    fn a_node_with_no_id_at_all_takes_the_first_callers() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _sm, reader) = skein_queue::open(dir.path()).unwrap();
        let identity = ClusterIdentity::load(reader).unwrap();
        let drawn = identity.proposal();
        assert_eq!(drawn.len(), 32);
        assert_eq!(identity.get(), None, "a proposal is not an id");
        assert!(identity.check(&metadata("feed")).is_ok());
        assert_eq!(identity.get().as_deref(), Some("feed"));
    }
}
