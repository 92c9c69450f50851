//! Liveness of the group-commit path across leadership changes, on an in-process cluster of
//! real openraft instances and RocksDB stores with a transport whose links can be cut.

mod support;

use std::time::Duration;

use skein_cluster::ingest::NotCommitted;
use skein_cluster::ClusterError;
use support::{message, Cluster, COMMIT_TIMEOUT};

/// The stall of issue 16, made deterministic. A leader proposes a batch and is cut off before
/// anyone else has it; the others elect a new leader, commit more, snapshot and purge their
/// log. When the old leader comes back it catches up by installing that snapshot, which
/// covers the index of its own proposal without ever applying or truncating it, so openraft
/// never answers that `client_write`. The batcher used to wait for that answer with its one
/// in-flight slot, so once this node led again it never proposed anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batcher_recovers_when_a_snapshot_swallows_its_proposal() {
    let c = Cluster::start(3, 3).await;
    let l1 = c.leader(&[1, 2, 3]).await;
    c.nodes[&l1]
        .batcher
        .enqueue(message(0), COMMIT_TIMEOUT)
        .await
        .expect("first commit");

    // Cut the leader off with a proposal of its own in flight.
    c.net.isolate(l1);
    let stranded = {
        let b = c.nodes[&l1].batcher.clone();
        tokio::spawn(async move { b.enqueue(message(1), Duration::from_secs(30)).await })
    };
    let stranded_index = c
        .until("the stranded proposal in the isolated leader's log", || {
            let m = c.metrics(l1);
            (m.last_log_index > m.last_applied.map(|l| l.index)).then_some(m.last_log_index?)
        })
        .await;

    // The others carry on: a new leader, enough commits to snapshot and purge past that index.
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != l1).collect();
    let l2 = c.leader(&others).await;
    for i in 2..12 {
        c.nodes[&l2]
            .batcher
            .enqueue(message(i), COMMIT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("commit {i} on the new leader: {e:?}"));
    }
    c.until("the new leader to purge past the stranded index", || {
        (c.metrics(l2).purged?.index > stranded_index).then_some(())
    })
    .await;

    // Back together: the old leader installs the snapshot, its own entry is gone unanswered.
    c.net.heal();
    let snapshot_index = c.metrics(l2).snapshot.expect("snapshot").index;
    c.until("the old leader to install the snapshot", || {
        (c.metrics(l1).snapshot?.index >= snapshot_index).then_some(())
    })
    .await;
    let r = tokio::time::timeout(COMMIT_TIMEOUT * 3, stranded)
        .await
        .expect("the stranded enqueue returns within the commit deadline")
        .expect("join");
    assert!(
        matches!(
            r,
            Err(NotCommitted::Failed(ClusterError::CommitTimeout { .. }))
        ),
        "the stranded message is reported as not known to be committed: {r:?}"
    );

    // The old leader leads again, and its intake works.
    c.until("the old leader to win an election", || {
        let raft = c.nodes[&l1].raft.clone();
        tokio::spawn(async move { raft.trigger().elect().await });
        (c.metrics(l1).state == openraft::ServerState::Leader).then_some(())
    })
    .await;
    for i in 12..15 {
        c.nodes[&l1]
            .batcher
            .enqueue(message(i), COMMIT_TIMEOUT * 2)
            .await
            .unwrap_or_else(|e| panic!("commit {i} after leading again: {e:?}"));
    }
}

/// Messages a node holds when it is not (or no longer) the leader are never proposed here:
/// they come back intact, so the caller can send them to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_batcher_hands_messages_back_for_the_leader() {
    let c = Cluster::start(3, 1000).await;
    let l = c.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|&i| i != l).expect("a follower");
    // The founding entries (membership, format) reach the follower first.
    c.until("the follower to catch up", || {
        let target = c.metrics(l).last_log_index;
        (c.metrics(follower).last_log_index == target).then_some(())
    })
    .await;
    let before = c.metrics(follower).last_log_index;
    let r = c.nodes[&follower]
        .batcher
        .enqueue(message(7), COMMIT_TIMEOUT)
        .await;
    match r {
        Err(NotCommitted::NotLeader(m)) => assert_eq!(m, message(7)),
        other => panic!("expected the message back, got {other:?}"),
    }
    assert_eq!(c.metrics(follower).last_log_index, before);
    // The leader still commits.
    c.nodes[&l]
        .batcher
        .enqueue(message(8), COMMIT_TIMEOUT)
        .await
        .expect("leader commits");
}

/// An edge that resends a submission after the leader died gets the first attempt's queue id
/// from the new leader, and the message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_gets_its_first_id_from_a_new_leader() {
    let c = Cluster::start(3, 1000).await;
    let l1 = c.leader(&[1, 2, 3]).await;
    let (first, _) = c.nodes[&l1]
        .batcher
        .enqueue(message(1), COMMIT_TIMEOUT)
        .await
        .expect("first attempt commits");
    // The edge never heard back: the leader is gone, and it retries at the new one.
    c.net.isolate(l1);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != l1).collect();
    let l2 = c.leader(&others).await;
    let (again, _) = c.nodes[&l2]
        .batcher
        .enqueue(message(1), COMMIT_TIMEOUT)
        .await
        .expect("the retry commits");
    assert_eq!(again, first);
    let (other, _) = c.nodes[&l2]
        .batcher
        .enqueue(message(2), COMMIT_TIMEOUT)
        .await
        .expect("another submission commits");
    assert_ne!(other, first);
}

/// A cluster that began on release 0.1.0 writes the old format (which that release's nodes
/// can read) until its upgrade is finalized: only then are retried submissions stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_ids_are_written_only_once_the_format_is_finalized() {
    let c = Cluster::start_at_format_1(3, 1000).await;
    let l = c.leader(&[1, 2, 3]).await;
    let node = &c.nodes[&l];
    assert_eq!(node.reader.format().unwrap(), 1);
    let (a, _) = node
        .batcher
        .enqueue(message(1), COMMIT_TIMEOUT)
        .await
        .unwrap();
    let (b, _) = node
        .batcher
        .enqueue(message(1), COMMIT_TIMEOUT)
        .await
        .unwrap();
    assert_ne!(a, b, "format 1 has no submission ids: stored twice");

    let r = node
        .raft
        .client_write(skein_queue::Request::SetFormat {
            version: skein_queue::FORMAT,
        })
        .await
        .unwrap();
    assert_eq!(r.data, skein_queue::Response::Format(skein_queue::FORMAT));
    let (c1, _) = node
        .batcher
        .enqueue(message(2), COMMIT_TIMEOUT)
        .await
        .unwrap();
    let (c2, _) = node
        .batcher
        .enqueue(message(2), COMMIT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(c1, c2);
    // Never lowered.
    let r = node
        .raft
        .client_write(skein_queue::Request::SetFormat { version: 1 })
        .await
        .unwrap();
    assert_eq!(r.data, skein_queue::Response::Format(skein_queue::FORMAT));
}
