//! Changing the cluster at runtime through the Admin API (through a node that may be a follower),
//! and the Ingest API's own validation.

use std::time::Duration;

use skein_proto::admin::{AddLearnerRequest, NodeRef};
use skein_proto::ingest::ingest_client::IngestClient;
use skein_proto::ingest::EnqueueRequest;
use skein_tests::*;

fn message(rcpts: &[&str]) -> EnqueueRequest {
    EnqueueRequest {
        mail_from: "a@example.com".into(),
        rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
        data: b"Subject: x\r\n\r\nbody\r\n".to_vec().into(),
        client_ip: "127.0.0.1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_is_promoted_and_a_node_is_removed() -> anyhow::Result<()> {
    let c = Cluster::start(3, 40, "")?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(30)).await?;
    let follower = (leader + 1) % 3;

    // Ingest through a follower (forwarded), and its validation names the field.
    let mut ingest = IngestClient::connect(format!("http://{}", c.addrs[follower])).await?;
    let id = ingest
        .enqueue(message(&["b@example.net"]))
        .await?
        .into_inner()
        .id;
    let bad = ingest.enqueue(message(&[])).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("rcpt_to"), "{}", bad.message());
    let bad = ingest.enqueue(message(&["no-at-sign"])).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // A new cluster writes this release's format at once (a cluster upgraded from an older
    // release waits for `skeinctl finalize-upgrade`, which is idempotent).
    // This release's replicated format (skein_queue::FORMAT).
    let release = 7;
    wait_for("this release's format", Duration::from_secs(10), || async {
        let s = status(&c.addrs[follower]).await.ok()?;
        (s.format == release && s.release_format == release).then_some(())
    })
    .await?;
    let (ok, out, err) = skeinctl(&c.addrs[follower], &["finalize-upgrade"])?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("the cluster writes format {release}"));
    let (ok, out, _) = skeinctl(&c.addrs[follower], &["status"])?;
    assert!(ok && out.contains(&format!("format {release}")), "{out}");

    // A resent submission (same submission id) is stored once and answered with its first id.
    let once = EnqueueRequest {
        submission_id: b"edge-1/0001".to_vec(),
        ..message(&["c@example.net"])
    };
    let first = ingest.enqueue(once.clone()).await?.into_inner().id;
    let mut via_leader = IngestClient::connect(format!("http://{}", c.addrs[leader])).await?;
    let again = via_leader.enqueue(once).await?.into_inner().id;
    assert_eq!(again, first);
    assert_ne!(first, id);
    let bad = ingest
        .enqueue(EnqueueRequest {
            submission_id: vec![7; 65],
            ..message(&["c@example.net"])
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("submission_id"), "{}", bad.message());

    // A fourth node that waits to be added.
    let addr4 = format!("127.0.0.44:{}", free_port("127.0.0.44"));
    let cfg = c.dir.path().join("node4.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = 4\nlisten = \"{addr4}\"\ndata_dir = \"{}\"\njoin = true\n",
            c.dir.path().join("data4").display()
        ),
    )?;
    let _n4 = Proc::spawn(
        &["node", "--config", cfg.to_str().unwrap()],
        &c.dir.path().join("node4.log"),
    )?;
    wait_listening(addr4.parse()?, Duration::from_secs(20)).await?;
    assert_eq!(
        status(&addr4).await?.leader_id,
        0,
        "a joining node does not form its own cluster"
    );

    let mut a = admin(&c.addrs[follower]).await?;
    let bad = a
        .add_learner(AddLearnerRequest {
            id: 0,
            addr: addr4.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = a.promote_voter(NodeRef { id: 99 }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);

    let r = a
        .add_learner(AddLearnerRequest {
            id: 4,
            addr: addr4.clone(),
        })
        .await?
        .into_inner();
    assert!(
        r.members.iter().any(|m| m.id == 4 && !m.voter),
        "{:?}",
        r.members
    );
    // The learner replicated what was there before it joined.
    wait_for(
        "the learner to hold the message",
        Duration::from_secs(10),
        || async { local_ids(&addr4).await.ok()?.contains(&id).then_some(()) },
    )
    .await?;

    let r = a.promote_voter(NodeRef { id: 4 }).await?.into_inner();
    assert!(
        r.members.iter().any(|m| m.id == 4 && m.voter),
        "{:?}",
        r.members
    );

    // Remove a voter that is not the leader; three voters remain and the cluster still commits.
    let gone = (1..=3u64).find(|&id| id as usize - 1 != leader).unwrap();
    let r = a.remove_node(NodeRef { id: gone }).await?.into_inner();
    let mut ids: Vec<u64> = r.members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 3, "{:?}", r.members);
    assert!(!ids.contains(&gone) && ids.contains(&4));
    let alive = c
        .addrs
        .iter()
        .enumerate()
        .find(|(i, _)| *i as u64 + 1 != gone)
        .unwrap()
        .1;
    let mut ingest = IngestClient::connect(format!("http://{alive}")).await?;
    let id2 = ingest
        .enqueue(message(&["c@example.net"]))
        .await?
        .into_inner()
        .id;
    wait_for(
        "the new voter to hold the new message",
        Duration::from_secs(10),
        || async { local_ids(&addr4).await.ok()?.contains(&id2).then_some(()) },
    )
    .await?;
    Ok(())
}

/// Starts `skein node` NAME with `[node]` lines `node` under `c`'s directory.
fn start_node(c: &Cluster, name: &str, node: &str) -> anyhow::Result<Proc> {
    let cfg = c.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[node]\n{node}\ndata_dir = \"{}\"\n",
            c.dir.path().join(name).display()
        ),
    )?;
    Proc::spawn(
        &["node", "--config", cfg.to_str().unwrap()],
        &c.dir.path().join(format!("{name}.log")),
    )
}

/// The usual mistakes are refused with the reason, and leave the cluster as it was: adding an
/// address where nothing runs, a node under another id, a node that founded its own cluster;
/// promoting a learner that is down. A removed node notices and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_mistakes_are_refused_and_a_removed_node_stops() -> anyhow::Result<()> {
    let c = Cluster::start(3, 170, "")?;
    let leader = c.leader(&[0, 1, 2], Duration::from_secs(30)).await?;
    let follower = (leader + 1) % 3;
    let mut a = admin(&c.addrs[follower]).await?;
    let refused = |s: tonic::Status, want: &str| {
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
        assert!(
            s.message().contains(want),
            "wanted {want:?}: {}",
            s.message()
        );
    };

    // Nothing listens there.
    let nobody = format!("127.0.0.175:{}", free_port("127.0.0.175"));
    let s = a
        .add_learner(AddLearnerRequest {
            id: 5,
            addr: nobody.clone(),
        })
        .await
        .unwrap_err();
    refused(s, &format!("no Skein node answers at {nobody}"));

    // Node 4, waiting to join, added under the wrong id.
    let addr4 = format!("127.0.0.174:{}", free_port("127.0.0.174"));
    let mut n4 = start_node(
        &c,
        "node4",
        &format!("id = 4\nlisten = \"{addr4}\"\njoin = true"),
    )?;
    wait_listening(addr4.parse()?, Duration::from_secs(20)).await?;
    let (_, out, _) = skeinctl(&addr4, &["status"])?;
    assert!(out.contains("node 4: not part of a cluster yet"), "{out}");
    let s = a
        .add_learner(AddLearnerRequest {
            id: 5,
            addr: addr4.clone(),
        })
        .await
        .unwrap_err();
    refused(s, "is node 4, not node 5");

    // A node that founded a cluster of its own.
    let addr6 = format!("127.0.0.176:{}", free_port("127.0.0.176"));
    let _n6 = start_node(
        &c,
        "node6",
        &format!(
            "id = 6\nlisten = \"{addr6}\"\ninitial_members = [{{ id = 6, addr = \"{addr6}\" }}]"
        ),
    )?;
    wait_for("node 6 to lead itself", Duration::from_secs(20), || async {
        (status(&addr6).await.ok()?.leader_id == 6).then_some(())
    })
    .await?;
    let s = a
        .add_learner(AddLearnerRequest {
            id: 6,
            addr: addr6.clone(),
        })
        .await
        .unwrap_err();
    refused(s, "already belongs to a cluster");
    let st = status(&c.addrs[leader]).await?;
    assert_eq!(st.members.len(), 3, "nothing changed: {:?}", st.members);

    // Every member knows its cluster's id; node 6's is another. A Raft call from node 6's
    // cluster is refused before anything is read from it.
    let ours = st.cluster_id.clone();
    assert_eq!(ours.len(), 32, "{st:?}");
    for a in &c.addrs {
        assert_eq!(status(a).await?.cluster_id, ours);
    }
    let theirs = status(&addr6).await?.cluster_id;
    assert!(!theirs.is_empty() && theirs != ours);
    let mut raft = skein_proto::raft::raft_client::RaftClient::connect(format!(
        "http://{}",
        c.addrs[follower]
    ))
    .await?;
    let mut vote = tonic::Request::new(skein_proto::raft::RaftPayload {
        data: vec![1, 2, 3].into(),
    });
    vote.metadata_mut()
        .insert("x-skein-cluster", theirs.parse()?);
    let s = raft.vote(vote).await.unwrap_err();
    refused(
        s,
        &format!("this node belongs to cluster {ours}, the caller to cluster {theirs}"),
    );

    // Node 4 properly; then it goes down, and is not promoted while down.
    a.add_learner(AddLearnerRequest {
        id: 4,
        addr: addr4.clone(),
    })
    .await?;
    n4.kill();
    let s = a.promote_voter(NodeRef { id: 4 }).await.unwrap_err();
    refused(s, "does not answer");
    n4.restart()?;
    let r = wait_for(
        "node 4 promoted once back",
        Duration::from_secs(30),
        || async {
            let mut a = admin(&c.addrs[follower]).await.ok()?;
            a.promote_voter(NodeRef { id: 4 }).await.ok()
        },
    )
    .await?
    .into_inner();
    assert!(r.members.iter().any(|m| m.id == 4 && m.voter), "{r:?}");
    assert_eq!(
        status(&addr4).await?.cluster_id,
        ours,
        "the joiner learned the id"
    );
    // The leader reports each member's replication.
    let st = status(&c.addrs[leader]).await?;
    assert!(st.members.iter().all(|m| m.replicating), "{:?}", st.members);

    // Removed, node 4 stops by itself and says why.
    a.remove_node(NodeRef { id: 4 }).await?;
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = n4.child.try_wait()? {
            break exit;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "node 4 still runs\n{}",
            tail(&n4.log_text(), 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exit.success(), "{exit:?}");
    let log = n4.log_text();
    assert!(
        log.contains("removed from the cluster"),
        "{}",
        tail(&log, 20)
    );
    Ok(())
}
