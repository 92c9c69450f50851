//! What the leader does next, from what Kubernetes and Raft say: pure, no I/O.
//!
//! The StatefulSet's `replicas` is the intent: nodes 1..=replicas belong to the cluster. A
//! node whose pod is missing but within `replicas` is restarting (a rolling update, a
//! rescheduled pod) and keeps its place; only a node above `replicas` was scaled away. One
//! change per round, and only once Raft has settled the previous one:
//! 1. remove a node scaled away (the highest id first), unless the voters left would not have
//!    a reachable majority;
//! 2. promote a learner once it has caught up;
//! 3. add a new pod's node as a learner (the lowest id first).

/// A pod of the StatefulSet, as the API server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The node it runs: ordinal + 1.
    pub id: u64,
    /// Its node's gRPC address, once known (the template may need the pod's IP).
    pub addr: Option<String>,
    /// Its Ready condition is true (the node has a leader and has caught up).
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// A Raft member, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// Voter or learner.
    pub voter: bool,
    /// Has acknowledged replication from this leader.
    pub replicating: bool,
    /// Log entries behind the leader.
    pub lag: u64,
}

/// Everything a decision reads.
#[derive(Debug, Clone)]
pub struct View {
    /// The StatefulSet's desired pod count.
    pub replicas: u64,
    /// Its pods that exist.
    pub pods: Vec<Pod>,
    /// The cluster's members.
    pub members: Vec<Member>,
    /// The leader (this node).
    pub leader: u64,
    /// Most log entries a learner may be behind to be promoted.
    pub max_lag: u64,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Add node `id` at `addr` as a learner.
    Add {
        /// Raft id.
        id: u64,
        /// gRPC address.
        addr: String,
    },
    /// Make learner `id` a voter.
    Promote {
        /// Raft id.
        id: u64,
    },
    /// Remove node `id` (a voter is demoted first).
    Remove {
        /// Raft id.
        id: u64,
    },
    /// Nothing can be done yet, for this reason.
    Wait(String),
    /// Membership matches the StatefulSet.
    Settled,
}

/// The next step toward membership matching `v`.
pub fn decide(v: &View) -> Decision {
    let pod = |id: u64| v.pods.iter().find(|p| p.id == id);
    let reachable = |id: u64| id == v.leader || pod(id).is_some_and(|p| p.ready && !p.terminating);

    // 1. Nodes scaled away, the highest first (the order a StatefulSet removes pods).
    let mut gone: Vec<&Member> = v.members.iter().filter(|m| m.id > v.replicas).collect();
    gone.sort_by_key(|m| std::cmp::Reverse(m.id));
    if let Some(m) = gone.first() {
        if !m.voter {
            return Decision::Remove { id: m.id };
        }
        let left: Vec<u64> = v
            .members
            .iter()
            .filter(|o| o.voter && o.id != m.id)
            .map(|o| o.id)
            .collect();
        let up = left.iter().filter(|&&id| reachable(id)).count();
        if left.is_empty() || up * 2 <= left.len() {
            return Decision::Wait(format!(
                "node {} was scaled away, but removing it would leave {up} of {} voters \
                 reachable (a majority must be): waiting for pods to be ready",
                m.id,
                left.len()
            ));
        }
        return Decision::Remove { id: m.id };
    }

    // 2. Learners within the StatefulSet, once caught up.
    let mut learners: Vec<&Member> = v.members.iter().filter(|m| !m.voter).collect();
    learners.sort_by_key(|m| m.id);
    if let Some(m) = learners.first() {
        if !m.replicating {
            return Decision::Wait(format!(
                "node {} is a learner that has not acknowledged replication yet",
                m.id
            ));
        }
        if m.lag > v.max_lag {
            return Decision::Wait(format!(
                "node {} is a learner {} log entries behind (at most {} to be promoted)",
                m.id, m.lag, v.max_lag
            ));
        }
        return Decision::Promote { id: m.id };
    }

    // 3. New pods, the lowest first.
    let mut new: Vec<&Pod> = v
        .pods
        .iter()
        .filter(|p| p.id <= v.replicas && !p.terminating)
        .filter(|p| !v.members.iter().any(|m| m.id == p.id))
        .collect();
    new.sort_by_key(|p| p.id);
    if let Some(p) = new.first() {
        return match &p.addr {
            Some(addr) => Decision::Add {
                id: p.id,
                addr: addr.clone(),
            },
            None => Decision::Wait(format!("the pod of node {} has no IP yet", p.id)),
        };
    }
    Decision::Settled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: u64, ready: bool) -> Pod {
        Pod {
            id,
            addr: Some(format!("skein-node-{}.skein-node:7070", id - 1)),
            ready,
            terminating: false,
        }
    }

    fn voter(id: u64) -> Member {
        Member {
            id,
            voter: true,
            replicating: true,
            lag: 0,
        }
    }

    fn learner(id: u64, replicating: bool, lag: u64) -> Member {
        Member {
            voter: false,
            replicating,
            lag,
            ..voter(id)
        }
    }

    fn view(replicas: u64, pods: Vec<Pod>, members: Vec<Member>) -> View {
        View {
            replicas,
            pods,
            members,
            leader: 1,
            max_lag: 100,
        }
    }

    #[test]
    fn scaling_up_adds_the_lowest_new_pod_as_a_learner() {
        let v = view(
            5,
            (1..=5).map(|i| pod(i, i <= 3)).collect(),
            (1..=3).map(voter).collect(),
        );
        assert_eq!(
            decide(&v),
            Decision::Add {
                id: 4,
                addr: "skein-node-3.skein-node:7070".into()
            }
        );
    }

    #[test]
    fn a_learner_is_promoted_once_caught_up_before_the_next_is_added() {
        let mut members: Vec<Member> = (1..=3).map(voter).collect();
        members.push(learner(4, false, 0));
        let pods: Vec<Pod> = (1..=5).map(|i| pod(i, true)).collect();
        let v = view(5, pods.clone(), members.clone());
        assert!(
            matches!(decide(&v), Decision::Wait(w) if w.contains("node 4") && w.contains("not acknowledged"))
        );
        members[3] = learner(4, true, 101);
        let v = view(5, pods.clone(), members.clone());
        assert!(matches!(decide(&v), Decision::Wait(w) if w.contains("101 log entries behind")));
        members[3] = learner(4, true, 100);
        assert_eq!(
            decide(&view(5, pods.clone(), members.clone())),
            Decision::Promote { id: 4 }
        );
        members[3] = voter(4);
        assert!(matches!(
            decide(&view(5, pods, members)),
            Decision::Add { id: 5, .. }
        ));
    }

    #[test]
    fn a_pod_without_an_address_yet_is_waited_for() {
        let mut pods: Vec<Pod> = (1..=4).map(|i| pod(i, true)).collect();
        pods[3].addr = None;
        let v = view(4, pods, (1..=3).map(voter).collect());
        assert_eq!(
            decide(&v),
            Decision::Wait("the pod of node 4 has no IP yet".into())
        );
    }

    #[test]
    fn scaling_down_removes_the_highest_node_first_one_at_a_time() {
        let pods: Vec<Pod> = (1..=3).map(|i| pod(i, true)).collect();
        let v = view(3, pods, (1..=5).map(voter).collect());
        assert_eq!(decide(&v), Decision::Remove { id: 5 });
    }

    #[test]
    fn a_removal_that_would_leave_no_reachable_majority_waits() {
        // 5 voters scaled to 3, but of nodes 1-4 only the leader and node 2 are reachable:
        // removing node 5 leaves 2 of 4 voters up, not a majority.
        let pods = vec![pod(1, true), pod(2, true), pod(3, false)];
        let v = view(3, pods.clone(), (1..=5).map(voter).collect());
        let Decision::Wait(why) = decide(&v) else {
            panic!("{:?}", decide(&v))
        };
        assert!(
            why.contains("node 5") && why.contains("2 of 4 voters"),
            "{why}"
        );
        // Once node 3 is ready again, 3 of 4: node 5 goes.
        let pods = vec![pod(1, true), pod(2, true), pod(3, true)];
        assert_eq!(
            decide(&view(3, pods, (1..=5).map(voter).collect())),
            Decision::Remove { id: 5 }
        );
        // A terminating pod does not count as reachable.
        let mut pods: Vec<Pod> = (1..=4).map(|i| pod(i, true)).collect();
        pods[2].terminating = true;
        pods[3].terminating = true;
        assert!(matches!(
            decide(&view(2, pods, (1..=5).map(voter).collect())),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn learners_scaled_away_are_removed_without_a_quorum_check() {
        let mut members: Vec<Member> = (1..=3).map(voter).collect();
        members.push(learner(4, false, 0));
        let v = view(3, vec![pod(1, true)], members);
        assert_eq!(decide(&v), Decision::Remove { id: 4 });
    }

    #[test]
    fn a_missing_pod_within_replicas_is_restarting_and_keeps_its_place() {
        // Pod of node 2 deleted for a rolling update: nothing to do.
        let v = view(
            3,
            vec![pod(1, true), pod(3, true)],
            (1..=3).map(voter).collect(),
        );
        assert_eq!(decide(&v), Decision::Settled);
        // Nor is a terminating pod's node added, or a pod beyond replicas.
        let mut pods: Vec<Pod> = (1..=5).map(|i| pod(i, true)).collect();
        pods[3].terminating = true;
        let v = view(4, pods, (1..=3).map(voter).collect());
        assert_eq!(decide(&v), Decision::Settled);
    }

    #[test]
    fn the_leader_counts_as_reachable_even_without_a_ready_pod() {
        // Three voters scaled to two; the leader's own pod is not ready (it has just won an
        // election): the leader and node 2 are up, a majority of the two left.
        let pods = vec![pod(1, false), pod(2, true)];
        let v = view(2, pods, (1..=3).map(voter).collect());
        assert_eq!(decide(&v), Decision::Remove { id: 3 });
    }
}
