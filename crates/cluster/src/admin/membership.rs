//! Membership changes that cannot quietly break the cluster: a learner is added only when its
//! address answers as the Skein node of that id and that node belongs to no cluster yet; a
//! learner is promoted only when it answers and has caught up with the log.

use std::time::Duration;

use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::{ClusterStatusRequest, ClusterStatusResponse, Member};
use tonic::Status;

use crate::route::Cluster;

/// How long a node being added or promoted may take to answer.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

/// The status of the node at `addr`, or why it does not answer.
async fn probe(ctx: &Cluster, addr: &str) -> Result<ClusterStatusResponse, String> {
    let ch = ctx.channel(addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(ClusterStatusRequest {});
    req.set_timeout(PROBE_LIMIT);
    skein_proto::call_within(PROBE_LIMIT, AdminClient::new(ch).cluster_status(req))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

fn refuse(why: String) -> Status {
    Status::failed_precondition(why)
}

/// Refuses to add `id` at `addr` unless a Skein node of that id answers there and is part of
/// no cluster (started with `join = true`, data directory empty).
pub(super) async fn check_new_learner(ctx: &Cluster, id: u64, addr: &str) -> Result<(), Status> {
    let s = probe(ctx, addr).await.map_err(|e| {
        refuse(format!(
            "no Skein node answers at {addr} ({e}): start node {id} there with `join = true` \
             first, then add it"
        ))
    })?;
    if s.node_id != id {
        return Err(refuse(format!(
            "the node at {addr} is node {}, not node {id}: add it under its own id, or fix its \
             [node] id",
            s.node_id
        )));
    }
    if !s.members.is_empty() {
        let ids: Vec<String> = s.members.iter().map(|m| m.id.to_string()).collect();
        return Err(refuse(format!(
            "node {id} at {addr} already belongs to a cluster (members {}): a node joins once, \
             started with `join = true` and an empty data directory",
            ids.join(", ")
        )));
    }
    Ok(())
}

/// Refuses to promote learner `id` unless it answers and is at most `max_lag` log entries
/// behind: a dead or far-behind voter would count toward the quorum without helping reach it.
pub(super) async fn check_promotion(
    ctx: &Cluster,
    members: &[Member],
    id: u64,
    max_lag: u64,
) -> Result<(), Status> {
    let Some(m) = members.iter().find(|m| m.id == id) else {
        return Ok(()); // the caller says it is not a member
    };
    if m.voter {
        return Ok(());
    }
    if let Err(e) = probe(ctx, &m.addr).await {
        return Err(refuse(format!(
            "node {id} at {} does not answer ({e}): promoting it would add a voter that cannot \
             vote",
            m.addr
        )));
    }
    if !m.replicating {
        return Err(refuse(format!(
            "node {id} has not acknowledged any replication yet: wait for it to catch up \
             (`skeinctl status` shows each member's lag)"
        )));
    }
    if m.lag > max_lag {
        return Err(refuse(format!(
            "node {id} is {} log entries behind (at most {max_lag} to be promoted): wait for it \
             to catch up (`skeinctl status` shows each member's lag)",
            m.lag
        )));
    }
    Ok(())
}
