//! The scheduler across a leadership change, on the in-process cluster: the leader's scheduler
//! starts and stops with its leadership (followed through Raft's metrics), a new leader
//! respects the old one's leases, and reports about them reach it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use skein_cluster::scheduler::sessions::Outbound;
use skein_cluster::scheduler::{Input, SessionReport};
use skein_proto::work::{Assignment, Hello, Outcome, RecipientResult, Report, SourceIp};
use skein_queue::RcptState;
use support::{message, Cluster, Node, COMMIT_TIMEOUT};
use tokio::sync::mpsc;

/// A sender session opened on `node`'s scheduler, as the Work service opens one.
async fn connect(node: &Node, slots: u32, active: Vec<u64>) -> (u64, mpsc::Receiver<Outbound>) {
    let (conn, rx) = node
        .sessions
        .open(slots as usize + 16, "s1", &["127.0.0.9".into()])
        .expect("no other sender has the IP");
    node.inputs
        .send(Input::Joined {
            conn,
            hello: Hello {
                sender: "s1".into(),
                source_ips: vec![SourceIp {
                    ip: "127.0.0.9".into(),
                    ehlo: "out.test".into(),
                }],
                max_in_flight: slots,
                active_leases: active,
            },
        })
        .await
        .expect("scheduler running");
    (conn, rx)
}

/// The next assignment on a session, if one comes within `wait`.
async fn next(rx: &mut mpsc::Receiver<Outbound>, wait: Duration) -> Option<Outbound> {
    tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
}

fn delivered(conn: u64, a: &Assignment) -> Input {
    Input::Report(SessionReport {
        conn,
        sender: "s1".into(),
        report: Report {
            lease: a.lease,
            rcpts: a
                .rcpts
                .iter()
                .map(|r| RecipientResult {
                    key: r.key.clone(),
                    outcome: Outcome::Delivered as i32,
                    code: 250,
                    enhanced: "2.0.0".into(),
                    text: "ok".into(),
                })
                .collect(),
            ..Default::default()
        },
    })
}

/// Twenty messages; the first leader leases five to a sender and is then cut off. Its
/// scheduler stops and ends the session once it learns it no longer leads; the sender opens
/// one on the new leader naming the five leases it still works on, reports them there, and
/// gets the other fifteen. Every recipient is delivered, each handed out exactly once (the
/// new leader never re-leases what the old one leased while the lease runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedulers_hand_over_with_leadership_and_leases_are_kept() {
    let c = Cluster::start(3, 1_000).await;
    let l1 = c.leader(&[1, 2, 3]).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            c.nodes[&l1]
                .batcher
                .enqueue(message(i), COMMIT_TIMEOUT)
                .await
                .expect("enqueue")
                .0,
        );
    }
    let mut handed: BTreeMap<String, u32> = BTreeMap::new();
    let (conn, mut rx) = connect(&c.nodes[&l1], 5, Vec::new()).await;
    let mut first = Vec::new();
    while first.len() < 5 {
        let a = next(&mut rx, Duration::from_secs(10))
            .await
            .expect("an assignment from the first leader")
            .expect("not an error")
            .take(0);
        for r in &a.rcpts {
            *handed.entry(r.key.clone()).or_default() += 1;
        }
        first.push(a);
    }
    assert!(
        next(&mut rx, Duration::from_millis(300)).await.is_none(),
        "five slots, five assignments"
    );

    // The first leader is cut off; the others elect a new one; back together, it follows.
    c.net.isolate(l1);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != l1).collect();
    let l2 = c.leader(&others).await;
    c.net.heal();
    c.leader(&[1, 2, 3]).await;
    match next(&mut rx, Duration::from_secs(10)).await {
        Some(Err(s)) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Some(Ok(h)) => panic!("work from a leader that lost: {:?}", h.take(0)),
        None => panic!("the old leader's scheduler kept the session"),
    }

    // The sender moves to the new leader, still holding the five leases: its slots are full.
    let leases: Vec<u64> = first.iter().map(|a| a.lease).collect();
    let (conn2, mut rx2) = connect(&c.nodes[&l2], 5, leases).await;
    assert!(
        next(&mut rx2, Duration::from_millis(500)).await.is_none(),
        "no work while the five leases occupy every slot"
    );
    let _ = conn;
    for a in &first {
        c.nodes[&l2].inputs.send(delivered(conn2, a)).await.unwrap();
    }
    // The rest arrive and are delivered as they come.
    while handed.len() < 20 {
        let a = next(&mut rx2, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {} of 20 handed out", handed.len()))
            .expect("not an error")
            .take(0);
        for r in &a.rcpts {
            *handed.entry(r.key.clone()).or_default() += 1;
        }
        c.nodes[&l2]
            .inputs
            .send(delivered(conn2, &a))
            .await
            .unwrap();
    }
    let twice: Vec<_> = handed.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "handed out twice: {twice:?}");
    c.until("every recipient delivered on every node", || {
        c.nodes
            .values()
            .all(|n| {
                ids.iter().all(|id| {
                    n.reader
                        .rcpt(&format!("{id}0000"))
                        .ok()
                        .flatten()
                        .is_some_and(|r| r.state == RcptState::Delivered)
                })
            })
            .then_some(())
    })
    .await;
}
