//! A node taken out of the cluster notices and stops serving.
//!
//! A removed node may never see the membership entry that removes it (the leader stops
//! replicating to it once it is out), so it would keep running, calling elections nobody
//! answers. Every few seconds without a leader, a node that once was a member asks the other
//! members who leads, and asks that leader for its members: if the leader has applied the
//! entry that made this node a member and its own membership no longer holds it, it has been
//! removed. So has a node whose own latest membership no longer holds it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::route::Cluster;

/// How often the check runs.
const EVERY: Duration = Duration::from_secs(2);
/// How long one status call may take.
const ASK_LIMIT: Duration = Duration::from_secs(2);

/// Whether this node has been removed, asking the cluster when it has no leader.
async fn removed(ctx: &Cluster, was_member: &mut bool) -> bool {
    let (members, leader, since) = {
        let m = ctx.raft.metrics();
        let m = m.borrow();
        let members: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        // The log entry of the membership that lists this node.
        let since = m.membership_config.log_id().map_or(0, |l| l.index);
        (members, m.current_leader, since)
    };
    let listed = members.iter().any(|(id, _)| *id == ctx.id);
    if listed {
        *was_member = true;
    } else {
        // Never a member (waiting to join), or its own log says it is out.
        return *was_member;
    }
    if leader.is_some() {
        return false;
    }
    for (id, addr) in members.iter().filter(|(id, _)| *id != ctx.id) {
        let Some(s) = ctx.node_status(addr, ASK_LIMIT).await.ok() else {
            continue;
        };
        if s.leader_id == 0 || s.leader_id == ctx.id {
            continue;
        }
        // The leader's own word counts, not a follower's view of it.
        let leader = if s.leader_id == *id {
            s
        } else {
            match ctx.node_status(&s.leader_addr, ASK_LIMIT).await.ok() {
                Some(l) if l.leader_id == l.node_id => l,
                _ => continue,
            }
        };
        // Only a leader that has applied the entry that made this node a member can say a later
        // one took it out (an old leader cut off since then never saw it added).
        if leader.last_applied_index < since {
            continue;
        }
        return !leader.members.iter().any(|m| m.id == ctx.id);
    }
    false
}

/// Runs until this node finds it was removed; then says so and wakes `stop`.
pub async fn watch(ctx: Arc<Cluster>, stop: Arc<Notify>) {
    let mut was_member = false;
    loop {
        tokio::time::sleep(EVERY).await;
        if removed(&ctx, &mut was_member).await {
            tracing::error!(
                node = ctx.id,
                "this node was removed from the cluster: it stops serving (its data directory \
                 is no longer needed; to come back, start it empty with `join = true` and add it \
                 again)"
            );
            stop.notify_one();
            return;
        }
    }
}
