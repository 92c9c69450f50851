//! The way to the cluster shared by every service of a node: where leader-only calls go
//! ([`Cluster::route`]), channels to other nodes, and proposals with a deadline.

use std::time::Duration;

use openraft::{Raft, ServerState};
use skein_core::SharedClock;
use skein_queue::{NodeId, QueueReader, Request, Response, TypeConfig};
use tonic::transport::Channel;

use crate::error::ClusterError;
use crate::network::Channels;

/// gRPC metadata key set on calls a node forwards to the leader, so they are never forwarded
/// twice (a stale leader hint must not bounce a request around the cluster).
pub const FORWARDED: &str = "x-skein-forwarded";

/// Where a write or linearizable read must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node is the leader.
    Local,
    /// Forward to the leader at this address.
    Forward(String),
}

/// Messages whose trace context a leader keeps between commit and scheduling.
const TRACES_KEPT: usize = 65_536;

/// One node's place in the cluster: its Raft, the state it applied, and the way to the leader.
/// Admin, Ingest, Work and the scheduler all reach the cluster through it.
pub struct Cluster {
    /// This node's id.
    pub id: NodeId,
    /// This node's advertised address.
    pub addr: String,
    /// The Raft instance.
    pub raft: Raft<TypeConfig>,
    /// Reads over the applied state.
    pub reader: QueueReader,
    /// How long a commit may take.
    pub commit_timeout: Duration,
    /// The clock.
    pub clock: SharedClock,
    /// Trace contexts of the messages this node committed as leader, until scheduled.
    pub traces: skein_observe::trace::Recent,
    /// Connections to other nodes.
    channels: Channels,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connections to other nodes (and the cluster identity their calls carry).
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// Node `id`, advertised at `addr`, on `raft` and the state `reader` reads; proposals
    /// wait at most `commit_timeout`; calls to other nodes go through `channels` (shared with
    /// Raft's network).
    pub fn new(
        id: NodeId,
        addr: String,
        raft: Raft<TypeConfig>,
        reader: QueueReader,
        commit_timeout: Duration,
        clock: SharedClock,
        channels: Channels,
    ) -> Self {
        Self {
            id,
            addr,
            raft,
            reader,
            commit_timeout,
            clock,
            traces: skein_observe::trace::Recent::new(TRACES_KEPT),
            channels,
        }
    }

    /// Where a leader-only request goes now. A request that was already forwarded once is
    /// refused with `LeaderChanged` rather than forwarded again.
    pub fn route(&self, already_forwarded: bool) -> Result<Route, ClusterError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l) if l == self.id && m.state == ServerState::Leader => Ok(Route::Local),
            Some(_) if already_forwarded => Err(ClusterError::LeaderChanged),
            Some(l) => match m.membership_config.membership().get_node(&l) {
                Some(n) => Ok(Route::Forward(n.addr.clone())),
                None => Err(ClusterError::NoLeader),
            },
            None => Err(ClusterError::NoLeader),
        }
    }

    /// A gRPC channel to another node.
    pub fn channel(&self, addr: &str) -> Result<Channel, ClusterError> {
        self.channels.get(addr).map_err(|e| ClusterError::Forward {
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    /// The status of the node at `addr` (its Admin ClusterStatus), or why it did not answer
    /// within `limit`.
    pub async fn node_status(
        &self,
        addr: &str,
        limit: Duration,
    ) -> Result<skein_proto::admin::ClusterStatusResponse, String> {
        use skein_proto::admin::admin_client::AdminClient;
        let ch = self.channel(addr).map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(skein_proto::admin::ClusterStatusRequest {});
        req.set_timeout(limit);
        skein_proto::call_within(limit, AdminClient::new(ch).cluster_status(req))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    }

    /// Proposes `cmd` (leader only) and waits for it to apply, at most `commit_timeout`.
    pub async fn propose(
        &self,
        cmd: Request,
    ) -> Result<openraft::raft::ClientWriteResponse<TypeConfig>, ClusterError> {
        crate::propose::propose(&self.raft, cmd, self.commit_timeout).await
    }

    /// Lets the cluster write this release's replicated format (leader only); returns the
    /// cluster's format. Only once every node runs this release (or a newer one).
    pub async fn finalize_format(&self) -> Result<u32, ClusterError> {
        let v = match self
            .propose(Request::SetFormat {
                version: skein_queue::FORMAT,
            })
            .await?
            .data
        {
            Response::Format(v) => v,
            other => return Err(ClusterError::Raft(format!("unexpected response {other:?}"))),
        };
        if v >= skein_queue::CLUSTER_ID_FORMAT && self.reader.replicated_cluster_id()?.is_none() {
            // A cluster founded before ids (or a new one, with its founder's id): recorded
            // through the log, so every node agrees on it.
            let Some(identity) = self.channels.identity() else {
                return Ok(v);
            };
            match self
                .propose(Request::ClusterId(identity.proposal()))
                .await?
                .data
            {
                Response::ClusterId(id) => tracing::info!(cluster = %id, "cluster id replicated"),
                other => return Err(ClusterError::Raft(format!("unexpected response {other:?}"))),
            }
        }
        Ok(v)
    }
}
