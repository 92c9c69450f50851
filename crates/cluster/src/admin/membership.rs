//! Membership changes that cannot quietly break the cluster: a learner is added only when its
//! address answers as the Skein node of that id and that node belongs to no cluster yet; a
//! learner is promoted only when it answers and has caught up with the log.

use std::time::Duration;

use skein_proto::admin::Member;
use tonic::Status;

use crate::route::Cluster;

/// How long a node being added or promoted may take to answer.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

fn refuse(why: String) -> Status {
    Status::failed_precondition(why)
}

/// Refuses to add `id` at `addr` unless a Skein node of that id answers there and is part of
/// no cluster (started with `join = true`, data directory empty).
pub(super) async fn check_new_learner(ctx: &Cluster, id: u64, addr: &str) -> Result<(), Status> {
    let s = ctx.node_status(addr, PROBE_LIMIT).await.map_err(|e| {
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
    if let Err(e) = ctx.node_status(&m.addr, PROBE_LIMIT).await {
        return Err(refuse(format!(
            "node {id} at {} does not answer ({e}): promoting it would add a voter that cannot \
             vote",
            m.addr
        )));
    }
    match lag_refusal(m, max_lag) {
        Some(why) => Err(refuse(why)),
        None => Ok(()),
    }
}

/// Why learner `m` is not caught up enough (within `max_lag` entries) to be promoted, if so.
fn lag_refusal(m: &Member, max_lag: u64) -> Option<String> {
    let id = m.id;
    if !m.replicating {
        return Some(format!(
            "node {id} has not acknowledged any replication yet: wait for it to catch up \
             (`skeinctl status` shows each member's lag)"
        ));
    }
    if m.lag > max_lag {
        return Some(format!(
            "node {id} is {} log entries behind (at most {max_lag} to be promoted): wait for it \
             to catch up (`skeinctl status` shows each member's lag)",
            m.lag
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learner_is_promoted_only_once_caught_up() {
        let learner = |replicating, lag| Member {
            id: 4,
            addr: "127.0.0.4:7070".into(),
            voter: false,
            replicating,
            lag,
        };
        assert!(lag_refusal(&learner(false, 0), 1000)
            .unwrap()
            .contains("not acknowledged any replication"));
        assert!(lag_refusal(&learner(true, 1001), 1000)
            .unwrap()
            .contains("1001 log entries behind (at most 1000"));
        assert_eq!(lag_refusal(&learner(true, 1000), 1000), None);
        assert_eq!(lag_refusal(&learner(true, 0), 0), None);
    }
}
