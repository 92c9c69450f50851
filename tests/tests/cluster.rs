//! A real 3-node cluster and an edge, driven by Python's smtplib over verified TLS:
//! - STARTTLS + AUTH PLAIN and implicit TLS + AUTH LOGIN submit; every node holds the mail;
//! - SIGKILL of the leader while a client submits: every message that got 250 is on the
//!   survivors, and the killed node catches up after restart, through a snapshot because the
//!   log it missed was purged;
//! - without a quorum the edge answers 451 4.3.0, and recovers when the quorum returns;
//!   nothing partial is ever stored.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_proto::admin::{CreateTenantRequest, GetMessageRequest};
use skein_tests::*;

const RAFT: &str = "commit_timeout = \"5s\"\n[node.raft]\nheartbeat_interval = \"100ms\"\n\
election_timeout_min = \"500ms\"\nelection_timeout_max = \"1000ms\"\n\
snapshot_after_entries = 40\nkeep_entries_after_snapshot = 5\n";

fn acked(records: &[Submitted]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.code == Some(250))
        .filter_map(|r| r.id.clone())
        .collect()
}

async fn has_all(addr: &str, want: &BTreeSet<String>) -> Option<()> {
    let ids: BTreeSet<String> = local_ids(addr).await.ok()?.into_iter().collect();
    want.is_subset(&ids).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_acknowledged_mail_survives_leader_kill() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, 10, RAFT)?;
    let leader = c
        .leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;

    // A tenant, created through a node that may not be the leader (forwarding).
    let via = (leader + 1) % 3;
    admin(&c.addrs[via])
        .await?
        .create_tenant(CreateTenantRequest {
            name: "acme".into(),
            username: String::new(),
            password: "acme-password".into(),
        })
        .await?;
    let dup = admin(&c.addrs[via])
        .await?
        .create_tenant(CreateTenantRequest {
            name: "acme".into(),
            username: String::new(),
            password: "another-pass".into(),
        })
        .await;
    assert_eq!(dup.unwrap_err().code(), tonic::Code::AlreadyExists);
    let bad = admin(&c.addrs[0])
        .await?
        .create_tenant(CreateTenantRequest {
            name: "no spaces".into(),
            username: String::new(),
            password: "acme-password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("name"), "{}", bad.message());

    // Envelope fields that would smuggle SMTP commands or headers into a delivery are refused
    // by Ingest itself, not only by the edge: a precise status naming the field.
    let mut ingest = skein_proto::ingest::ingest_client::IngestClient::connect(format!(
        "http://{}",
        c.addrs[via]
    ))
    .await?;
    for (field, rcpt, from, helo) in [
        (
            "rcpt_to",
            "a@x.test>\r\nRSET\r\nMAIL FROM:<evil@x.test",
            "app@example.com",
            "h",
        ),
        ("rcpt_to", "b@sink.test>\r\nDATA", "app@example.com", "h"),
        (
            "rcpt_to",
            "b@sink.test> NOTIFY=NEVER",
            "app@example.com",
            "h",
        ),
        ("rcpt_to", "b@sink.test\0", "app@example.com", "h"),
        ("mail_from", "b@sink.test", "a@x.test> BODY=8BITMIME", "h"),
        (
            "helo",
            "b@sink.test",
            "app@example.com",
            "h\r\nX-Injected: 1",
        ),
    ] {
        let mut r = sized_request("inject", 0, 100);
        r.rcpt_to = vec![rcpt.into()];
        r.mail_from = from.into();
        r.helo = helo.into();
        let e = ingest.enqueue(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{rcpt:?}: {e}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }

    let edge = Edge::start(c.dir.path(), "127.0.0.20", &c.addrs, "").await?;
    let cert = edge.cert.clone();
    let (smtp, smtps) = (edge.smtp.to_string(), edge.smtps.to_string());
    let cafile = cert.to_str().unwrap().to_string();
    let common = [
        "--host",
        "127.0.0.20",
        "--cafile",
        &cafile,
        "--user",
        "acme",
        "--password",
        "acme-password",
    ];

    // STARTTLS + AUTH PLAIN, certificate verified by the client.
    let mut args = common.to_vec();
    args.extend([
        "--port",
        &smtp,
        "--starttls",
        "--count",
        "3",
        "--rcpt",
        "one@example.net",
        "--rcpt",
        "two@example.org",
    ]);
    let first = submit(&args)?;
    assert_eq!(
        acked(&first).len(),
        3,
        "{first:?}\n{}",
        tail(&edge.proc.log_text(), 30)
    );
    // Implicit TLS + AUTH LOGIN.
    let mut args = common.to_vec();
    args.extend(["--port", &smtps, "--ssl", "--auth", "login", "--count", "2"]);
    let second = submit(&args)?;
    assert_eq!(acked(&second).len(), 2, "{second:?}");
    // A wrong password is refused with 535.
    let tls_only = [
        "--host",
        "127.0.0.20",
        "--port",
        &smtp,
        "--starttls",
        "--cafile",
        &cafile,
    ];
    let mut args = tls_only.to_vec();
    args.extend(["--user", "acme", "--password", "nope-nope"]);
    let wrong = submit(&args)?;
    assert!(wrong[0].text.contains("535"), "{wrong:?}");
    // Without AUTH, from an address outside relay_networks: relay denied.
    let denied = submit(&tls_only)?;
    assert_eq!(denied[0].code, Some(554), "{denied:?}");

    let mut all: BTreeSet<String> = acked(&first).union(&acked(&second)).cloned().collect();
    for addr in &c.addrs {
        wait_for("replication to every node", Duration::from_secs(10), || {
            has_all(addr, &all)
        })
        .await?;
    }
    // What is stored is what was sent, with our Received: header naming TLS and the tenant.
    let id = acked(&first).into_iter().next().unwrap();
    let m = admin(&c.addrs[2])
        .await?
        .get_message(GetMessageRequest {
            id: id.clone(),
            include_data: true,
            local: true,
        })
        .await?
        .into_inner();
    let text = String::from_utf8_lossy(&m.data).to_string();
    assert!(
        text.starts_with("Received: from client.test ([127.0.0.1])"),
        "{text}"
    );
    assert!(
        text.contains("with ESMTPSA") && text.contains("(using TLSv1.3 with cipher"),
        "{text}"
    );
    assert!(text.contains("(authenticated as tenant acme)"), "{text}");
    assert!(text.contains("end of message 0\r\n"), "{text}");
    assert_eq!(m.tenant, "acme");
    assert_eq!(m.rcpt_to, ["one@example.net", "two@example.org"]);
    assert_eq!(m.mail_from, "sender@example.com");

    // Submit continuously and SIGKILL the leader part-way.
    let killed_last_log = status(&c.addrs[leader]).await?.last_log_index;
    let mut args = common.to_vec();
    args.extend([
        "--port",
        &smtp,
        "--starttls",
        "--count",
        "160",
        "--per-connection",
        "5",
    ]);
    let mut run = SubmitRun::start(&args)?;
    let records = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let records = records.clone();
        std::thread::spawn(move || {
            while let Ok(Some(r)) = run.next_record() {
                records.lock().unwrap().push(r);
            }
        })
    };
    wait_for("40 acknowledged messages", Duration::from_secs(60), || {
        let n = acked(&records.lock().unwrap()).len();
        async move { (n >= 40).then_some(()) }
    })
    .await?;
    let killed_at = status(&c.addrs[leader])
        .await?
        .last_log_index
        .max(killed_last_log);
    c.nodes[leader].kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    tokio::task::spawn_blocking(move || reader.join())
        .await?
        .ok();
    let records = records.lock().unwrap().clone();
    let during = acked(&records);
    let after_kill = records
        .iter()
        .skip(45)
        .filter(|r| r.code == Some(250))
        .count();
    assert!(
        after_kill > 50,
        "the cluster kept accepting after failover: {after_kill} of {}\n{}",
        records.len(),
        c.logs()
    );
    // Anything that failed got a temporary reply or lost its connection: never a 5xx.
    assert!(
        records
            .iter()
            .all(|r| r.code.is_none_or(|c| c == 250 || (400..500).contains(&c))),
        "{records:?}"
    );
    all.extend(during.iter().cloned());

    let new_leader = c.leader(&survivors, Duration::from_secs(30)).await?;
    assert_ne!(new_leader, leader);
    for &i in &survivors {
        wait_for(
            "acknowledged mail on survivors",
            Duration::from_secs(10),
            || has_all(&c.addrs[i], &all),
        )
        .await
        .map_err(|e| anyhow::anyhow!("node {}: {e}", i + 1))?;
    }

    // The survivors moved on far enough to purge the log the dead node missed...
    let st = status(&c.addrs[new_leader]).await?;
    assert!(
        st.purged_index > killed_at,
        "purged {} <= {killed_at}: no snapshot needed",
        st.purged_index
    );
    // ...so the restarted node can only catch up through a snapshot.
    c.nodes[leader].restart()?;
    wait_for(
        "the restarted node to catch up",
        Duration::from_secs(30),
        || has_all(&c.addrs[leader], &all),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let back = status(&c.addrs[leader]).await?;
    assert!(
        back.snapshot_index > killed_at,
        "restarted node has snapshot {}",
        back.snapshot_index
    );

    // Lose the quorum: the edge answers 451 4.3.0 in time, and nothing half-stored appears.
    let before: BTreeSet<String> = local_ids(&c.addrs[new_leader]).await?.into_iter().collect();
    let others: Vec<usize> = (0..3).filter(|&i| i != new_leader).collect();
    for &i in &others {
        c.nodes[i].kill();
    }
    let mut args = common.to_vec();
    args.extend([
        "--port",
        &smtp,
        "--starttls",
        "--count",
        "1",
        "--timeout",
        "60",
    ]);
    let refused = submit(&args)?;
    assert_eq!(refused[0].code, Some(451), "{refused:?}");
    assert!(refused[0].text.contains("4.3.0"), "{refused:?}");
    for &i in &others {
        c.nodes[i].restart()?;
    }
    c.leader(&[0, 1, 2], Duration::from_secs(30)).await?;
    let again = submit(&args)?;
    assert_eq!(acked(&again).len(), 1, "{again:?}");
    // A 451 after a commit timeout is ambiguous, as in any replicated log: the entry may still
    // commit once the quorum is back (the client's retry then makes a duplicate: at-least-once).
    // What must never exist is a partial message: every new id has its whole content.
    let after: BTreeSet<String> = local_ids(&c.addrs[new_leader]).await?.into_iter().collect();
    let new: Vec<&String> = after.difference(&before).collect();
    assert!((1..=2).contains(&new.len()), "{new:?}");
    for id in new {
        let m = admin(&c.addrs[new_leader])
            .await?
            .get_message(GetMessageRequest {
                id: id.clone(),
                include_data: true,
                local: true,
            })
            .await?
            .into_inner();
        assert!(
            m.data.ends_with(b"end of message 0\r\n"),
            "{id} is incomplete"
        );
        assert_eq!(m.size as usize, m.data.len());
    }
    drop(edge);
    Ok(())
}
