//! Delivery end to end: mail submitted with Python's smtplib goes through `skein dev` (or a
//! cluster with separate senders) to aiosmtpd sinks found through a real DNS server (dnsmasq)
//! or a static route, and every recipient ends delivered, bounced, expired or suppressed.

use std::collections::BTreeSet;
use std::time::Duration;

use skein_proto::admin::{
    AddSuppressionRequest, ListSuppressionsRequest, RemoveSuppressionRequest, UpdateTenantRequest,
};
use skein_tests::*;

const FINISH: Duration = Duration::from_secs(30);

fn submit_one(
    port: u16,
    ip: &str,
    from: &str,
    rcpts: &[&str],
    extra: &[&str],
) -> anyhow::Result<String> {
    let port = port.to_string();
    let mut args = vec!["--host", ip, "--port", &port, "--mail-from", from];
    for r in rcpts {
        args.extend(["--rcpt", r]);
    }
    args.extend(extra);
    let s = submit(&args)?;
    let id = s.first().and_then(|s| s.id.clone());
    id.ok_or_else(|| anyhow::anyhow!("not accepted: {s:?}"))
}

/// Runs a future to completion from synchronous code inside the test's runtime.
fn futures_now<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn rcpt<'a>(
    m: &'a skein_proto::admin::Message,
    address: &str,
) -> &'a skein_proto::admin::RecipientStatus {
    m.recipients
        .iter()
        .find(|r| r.address == address)
        .unwrap_or_else(|| panic!("{address} not in {:?}", m.recipients))
}

/// DSNs the sink received for `to`: (message text) of each.
fn dsns(sink: &Sink, to: &str) -> Vec<String> {
    sink.messages_for(to)
        .into_iter()
        .filter(|m| m["mail_from"] == "<>" || m["mail_from"] == "")
        .map(|m| m["data"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_delivers_by_mx_and_route_with_retries_bounces_and_suppression() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.70";
    let (grpc, smtp) = free_ports(ip);
    let grpc_addr = format!("{ip}:{grpc}");
    // ex.test: first MX 127.0.0.74 refuses connections, second 127.0.0.75 is a sink with
    // STARTTLS. implicit.test: no MX, an A record (127.0.0.76). nullmx.test: RFC 7505 null MX.
    // nope.test: NXDOMAIN. routed.test: a static route to 127.0.0.77.
    let mx_port = free_port("127.0.0.75");
    let route_port = free_port("127.0.0.77");
    let (cert, key) = write_cert(dir.path(), &["mx2.ex.test"])?;
    let sink = Sink::start(
        &[
            format!("127.0.0.75:{mx_port}"),
            format!("127.0.0.76:{mx_port}"),
            format!("127.0.0.77:{route_port}"),
        ],
        &["--tls", cert.to_str().unwrap(), key.to_str().unwrap()],
    )?;
    let dns = Dns::start(
        "127.0.0.73",
        &[
            "--mx-host=ex.test,mx1.ex.test,10".into(),
            "--mx-host=ex.test,mx2.ex.test,20".into(),
            "--host-record=mx1.ex.test,127.0.0.74".into(),
            "--host-record=mx2.ex.test,127.0.0.75".into(),
            "--host-record=implicit.test,127.0.0.76".into(),
            "--dns-rr=nullmx.test,15,000000".into(),
        ],
        &dir.path().join("dns.log"),
    )?;
    let events = dir.path().join("events.jsonl");
    let cfg = dir.path().join("dev.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nlisten = \"{grpc_addr}\"\ndata_dir = \"{data}\"\n\
             [node.delivery]\nmta_name = \"dev.skein.test\"\nretry_first = \"1s\"\nretry_max = \"2s\"\n\
             max_age = \"12s\"\nevents = \"{events}\"\n\
             [edge]\nhostname = \"dev.skein.test\"\nrelay_networks = [\"127.0.0.0/8\"]\n\
             plaintext_auth_networks = [\"127.0.0.0/8\"]\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtp}\"\n\
             [sender]\nname = \"dev-sender\"\nsmtp_port = {mx_port}\nnameservers = [\"{dns}\"]\n\
             source_ips = [{{ ip = \"127.0.0.71\", ehlo = \"out1.skein.test\" }}, \
                           {{ ip = \"127.0.0.72\", ehlo = \"out2.skein.test\" }}]\n\
             routes = [{{ domain = \"routed.test\", to = \"127.0.0.77:{route_port}\" }}]\n\
             [sender.timeouts]\nconnect = \"2s\"\n",
            data = dir.path().join("data").display(),
            events = events.display(),
            dns = dns.addr,
        ),
    )?;
    let dev = Proc::spawn(
        &[
            "dev",
            "--config",
            cfg.to_str().unwrap(),
            "--tenant",
            "acme:acme-password",
        ],
        &dir.path().join("dev.log"),
    )?;
    wait_listening(format!("{ip}:{smtp}").parse()?, Duration::from_secs(60)).await?;

    // Two recipients of one domain: one transaction, past the refusing first MX, over TLS,
    // from one of the sender's source IPs with that IP's EHLO name.
    let m1 = submit_one(
        smtp,
        ip,
        "app@routed.test",
        &["ok1@ex.test", "ok2@ex.test"],
        &[],
    )?;
    let st = wait_final(&grpc_addr, &m1, FINISH).await?;
    for a in ["ok1@ex.test", "ok2@ex.test"] {
        let r = rcpt(&st, a);
        assert_eq!(r.state, "delivered", "{r:?}");
        let last = r.history.last().expect("an attempt");
        assert_eq!((last.code, last.result.as_str()), (250, "delivered"));
        assert!(last.mx.starts_with("mx2.ex.test[127.0.0.75]"), "{last:?}");
    }
    let got = sink.messages_for("ok1@ex.test");
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(
        m["rcpts"],
        serde_json::json!(["ok1@ex.test", "ok2@ex.test"])
    );
    assert_eq!(m["tls"], true, "STARTTLS was offered and used");
    let (peer, ehlo) = (m["peer"].as_str().unwrap(), m["ehlo"].as_str().unwrap());
    assert!(
        (peer, ehlo) == ("127.0.0.71", "out1.skein.test")
            || (peer, ehlo) == ("127.0.0.72", "out2.skein.test"),
        "source IP and EHLO name go together: {peer} {ehlo}"
    );
    assert_eq!(rcpt(&st, "ok1@ex.test").history[0].source_ip, peer);
    // The topmost Received: field is the sender's and names the queue id the client was
    // given; the edge's follows it.
    let data = m["data"].as_str().unwrap();
    assert!(
        data.starts_with(&format!(
            "Received: from dev.skein.test\r\n\tby {ehlo} (Skein) id {m1};\r\n\t"
        )),
        "{data}"
    );
    let fields: Vec<usize> = data.match_indices("Received: ").map(|(i, _)| i).collect();
    assert_eq!(fields.len(), 2, "{data}");
    assert!(
        data[fields[1]..].contains("by dev.skein.test (Skein) with ESMTP;"),
        "{data}"
    );

    // Every kind of outcome in one message.
    let m2 = submit_one(
        smtp,
        ip,
        "app@routed.test",
        &[
            "reject-1@ex.test",
            "defer-1-a@ex.test",
            "user@implicit.test",
            "u@nullmx.test",
            "u@nope.test",
            "tempfail-x@ex.test",
        ],
        &[],
    )?;
    let st = wait_final(&grpc_addr, &m2, FINISH).await?;
    let r = rcpt(&st, "reject-1@ex.test");
    assert_eq!(r.state, "bounced");
    assert_eq!(
        (r.history[0].code, r.history[0].enhanced.as_str()),
        (550, "5.1.1")
    );
    let r = rcpt(&st, "defer-1-a@ex.test");
    assert_eq!(r.state, "delivered");
    assert_eq!(r.history.len(), 2, "{r:?}");
    assert_eq!(
        (
            r.history[0].code,
            r.history[0].enhanced.as_str(),
            r.history[0].result.as_str()
        ),
        (450, "4.2.1", "transient")
    );
    assert!(
        r.history[1].at_ms - r.history[0].at_ms >= 700,
        "retried after the backoff"
    );
    let r = rcpt(&st, "user@implicit.test");
    assert_eq!(r.state, "delivered");
    assert!(
        r.history[0].mx.contains("[127.0.0.76]"),
        "implicit MX: {r:?}"
    );
    let r = rcpt(&st, "u@nullmx.test");
    assert_eq!(
        (r.state.as_str(), r.history[0].enhanced.as_str()),
        ("bounced", "5.1.10")
    );
    let r = rcpt(&st, "u@nope.test");
    assert_eq!(
        (r.state.as_str(), r.history[0].enhanced.as_str()),
        ("bounced", "5.1.2")
    );
    // A domain-level bounce counts towards suppressing the address; `skeinctl message`
    // says so.
    assert!(
        r.note
            .starts_with("1 domain-level bounces of this address since"),
        "{r:?}"
    );
    let r = rcpt(&st, "tempfail-x@ex.test");
    assert_eq!(r.state, "expired", "{r:?}");
    assert!(r.history.len() >= 3, "retried until the maximum age: {r:?}");
    assert!(r.history.iter().all(|a| a.code == 451));

    // DSNs travel the static route to the return path, one or more per scheduling round,
    // together naming every failed recipient with its status and the original headers.
    let dsn_text = wait_for("DSNs for m2", FINISH, || async {
        let all = dsns(&sink, "app@routed.test").join("\n");
        (all.contains("nope.test") && all.contains("tempfail-x@ex.test")).then_some(all)
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nsink: {:?}\ndev log:\n{}",
            sink.of("message"),
            tail(&dev.log_text(), 60)
        )
    })?;
    for want in [
        "multipart/report",
        "report-type=delivery-status",
        "Reporting-MTA: dns; dev.skein.test",
        "Final-Recipient: rfc822; reject-1@ex.test",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1",
        "Final-Recipient: rfc822; u@nullmx.test",
        "Status: 5.1.10",
        "Action: failed",
        "Subject: message 0",
    ] {
        assert!(dsn_text.contains(want), "DSN lacks {want:?}:\n{dsn_text}");
    }
    assert!(
        !dsn_text.contains("Final-Recipient: rfc822; defer-1-a@ex.test"),
        "delivered recipients are not reported"
    );

    // Hard bounces are suppressed for the tenant; the Admin API lists, adds and removes.
    let mut admin_c = admin(&grpc_addr).await?;
    let list = admin_c
        .list_suppressions(ListSuppressionsRequest {
            tenant: String::new(),
            after: String::new(),
            limit: 100,
        })
        .await?
        .into_inner();
    let suppressed: BTreeSet<String> = list
        .suppressions
        .iter()
        .map(|s| s.address.clone())
        .collect();
    assert!(suppressed.contains("reject-1@ex.test"), "{suppressed:?}");
    assert!(
        !suppressed.contains("tempfail-x@ex.test"),
        "expiry is not a hard bounce"
    );
    // The domain (NXDOMAIN, null MX) failed, not the mailbox: one bounce suppresses nothing
    // (a resolver's bad minute must not suppress a whole domain's addresses for ever).
    for a in ["u@nope.test", "u@nullmx.test"] {
        assert!(!suppressed.contains(a), "{a}: {suppressed:?}");
    }
    admin_c
        .add_suppression(AddSuppressionRequest {
            tenant: String::new(),
            address: "Manual@Ex.test".into(),
            reason: "complaint".into(),
        })
        .await?;
    let rcpt_events_before = sink.of("rcpt").len();
    let m3 = submit_one(
        smtp,
        ip,
        "app@routed.test",
        &["reject-1@ex.test", "manual@ex.test", "ok3@ex.test"],
        &[],
    )?;
    let st = wait_final(&grpc_addr, &m3, FINISH).await?;
    assert_eq!(rcpt(&st, "reject-1@ex.test").state, "suppressed");
    assert!(
        rcpt(&st, "reject-1@ex.test").history.is_empty(),
        "never attempted"
    );
    // `skeinctl message` says which entry stopped it.
    let (ok, out, err) = skeinctl(&grpc_addr, &["message", &m3])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("on the suppression list of relayed mail since") && out.contains("550 5.1.1"),
        "{out}"
    );
    assert_eq!(rcpt(&st, "manual@ex.test").state, "suppressed");
    assert_eq!(rcpt(&st, "ok3@ex.test").state, "delivered");
    assert_eq!(
        sink.of("rcpt").len(),
        rcpt_events_before,
        "suppressed: not attempted"
    );
    let err = admin_c
        .add_suppression(AddSuppressionRequest {
            tenant: String::new(),
            address: "not an address".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    admin_c
        .remove_suppression(RemoveSuppressionRequest {
            tenant: String::new(),
            address: "reject-1@ex.test".into(),
        })
        .await?;
    let err = admin_c
        .remove_suppression(RemoveSuppressionRequest {
            tenant: String::new(),
            address: "reject-1@ex.test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let m4 = submit_one(smtp, ip, "", &["reject-1@ex.test"], &[])?;
    let st = wait_final(&grpc_addr, &m4, FINISH).await?;
    assert_eq!(
        rcpt(&st, "reject-1@ex.test").state,
        "bounced",
        "attempted again"
    );

    // A null return path never gets a DSN; neither does a tenant that turned DSNs off.
    let t = admin_c
        .update_tenant(UpdateTenantRequest {
            name: "acme".into(),
            enabled: None,
            dsn: Some(false),
        })
        .await?
        .into_inner();
    assert!(!t.dsn && t.enabled);
    let m5 = submit_one(
        smtp,
        ip,
        "quiet@routed.test",
        &["reject-5@ex.test"],
        &["--user", "acme", "--password", "acme-password"],
    )?;
    let st = wait_final(&grpc_addr, &m5, FINISH).await?;
    assert_eq!(st.tenant, "acme");
    assert_eq!(rcpt(&st, "reject-5@ex.test").state, "bounced");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        dsns(&sink, "quiet@routed.test").is_empty(),
        "tenant turned DSNs off"
    );

    // One event line per attempt and per final state, with the fields operators need.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let of = |kind: &str, rcpt: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|e| e["type"] == kind && e["recipient"] == rcpt)
            .collect()
    };
    let attempts = of("attempt", "defer-1-a@ex.test");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let first = attempts[0];
    assert_eq!(first["message_id"], m2.as_str());
    assert_eq!(
        (first["code"].as_u64(), first["enhanced"].as_str()),
        (Some(450), Some("4.2.1"))
    );
    assert_eq!(first["attempt"], 1);
    assert!(first["next_attempt_ms"].as_i64().is_some());
    assert_eq!(first["sender_node"], "dev-sender");
    assert_eq!(first["domain"], "ex.test");
    assert!(first["mx"].as_str().unwrap().contains("127.0.0.75"));
    assert!(["127.0.0.71", "127.0.0.72"].contains(&first["source_ip"].as_str().unwrap()));
    assert_eq!(of("delivered", "defer-1-a@ex.test").len(), 1);
    assert_eq!(of("bounced", "reject-1@ex.test").len(), 2);
    assert_eq!(of("expired", "tempfail-x@ex.test").len(), 1);
    let sup = of("suppressed", "manual@ex.test");
    assert_eq!(sup.len(), 1, "{sup:?}");
    assert_eq!(
        (sup[0]["message_id"].as_str(), sup[0]["domain"].as_str()),
        (Some(m3.as_str()), Some("ex.test"))
    );
    assert_eq!(of("suppressed", "reject-1@ex.test").len(), 1);
    let dsn_for = |id: &str| {
        lines
            .iter()
            .any(|e| e["type"] == "dsn" && e["message_id"] == id)
    };
    assert!(dsn_for(&m2));
    assert!(!dsn_for(&m4), "no DSN to a null return path");
    assert!(!dsn_for(&m5), "no DSN for a tenant that turned them off");

    // Several transactions went to ex.test within its records' 60 s TTL: the sender asked
    // dnsmasq once and answered the rest from its cache.
    let dns_log = std::fs::read_to_string(dir.path().join("dns.log"))?;
    let mx_queries = dns_log.matches("query[MX] ex.test ").count();
    assert_eq!(mx_queries, 1, "MX answers are cached by TTL:\n{dns_log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_messages_are_forgotten_after_keep_finished() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.95";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.96",
        "keep_finished = \"4s\"\nretry_first = \"1m\"",
        "",
        &[],
    )
    .await?;
    let (smtp, grpc_addr) = (rig.smtp, rig.grpc.clone());
    let done = submit_one(smtp, ip, "app@routed.test", &["ok@x.test"], &[])?;
    let pending = submit_one(smtp, ip, "app@routed.test", &["defer-5-a@x.test"], &[])?;
    let st = wait_final(&grpc_addr, &done, FINISH).await?;
    assert_eq!(st.recipients[0].state, "delivered");
    // The other one tried once and deferred (new mail waits for the scheduler's next round,
    // at most half a second).
    let list = wait_for("the deferral", FINISH, || async {
        let (ok, list, _) = skeinctl(&grpc_addr, &["messages"]).ok()?;
        (ok && list.contains("deferred 1")).then_some(list)
    })
    .await?;
    // Each message with its recipients by state.
    let line = |id: &str| {
        list.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(&done).contains("delivered 1"), "{list}");
    assert!(line(&pending).contains("deferred 1"), "{list}");
    // The deferred one is the only recipient left queued, for x.test, relayed by IP.
    let (ok, queues, err) = skeinctl(&grpc_addr, &["queues"])?;
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = queues
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 1, "{queues}");
    assert_eq!(rows[0][..3], ["-", "x.test", "1"], "{queues}");
    assert!(queues.contains("next in"), "deferred a minute: {queues}");
    let (ok, none, _) = skeinctl(&grpc_addr, &["queues", "--tenant", "acme"])?;
    assert!(ok && none.trim().is_empty(), "{none}");
    // Kept for keep_finished, then gone; the deferred message stays.
    wait_for("the delivered message to be forgotten", FINISH, || async {
        let gone = message_status(&grpc_addr, &done)
            .await
            .err()?
            .to_string()
            .contains("not found");
        gone.then_some(())
    })
    .await?;
    let st = message_status(&grpc_addr, &pending).await?;
    assert_eq!(st.recipients[0].state, "deferred", "{st:?}");
    Ok(())
}

/// A pooled connection that breaks after the final dot was sent may have delivered the
/// message: that attempt is deferred, not silently run again on a new connection (which would
/// send the message twice right away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_the_dot_is_not_retried_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.97";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.98",
        "retry_first = \"1s\"",
        "",
        &[],
    )
    .await?;
    let (smtp, grpc_addr) = (rig.smtp, rig.grpc.clone());
    // The first message opens a connection, which goes back to the pool.
    let first = submit_one(smtp, ip, "app@routed.test", &["ok@x.test"], &[])?;
    wait_final(&grpc_addr, &first, FINISH).await?;
    // The second goes over that pooled connection; the sink takes it, then drops the line.
    let id = submit_one(smtp, ip, "app@routed.test", &["dropdot-1-a@x.test"], &[])?;
    let st = wait_final(&grpc_addr, &id, FINISH).await?;
    let r = rcpt(&st, "dropdot-1-a@x.test");
    assert_eq!(r.state, "delivered");
    assert_eq!(
        r.history.len(),
        2,
        "the broken attempt is recorded, and the next one is a separate attempt: {r:?}"
    );
    assert_eq!(r.history[0].result, "transient", "{r:?}");
    let arrivals = rig.sink.messages_for("dropdot-1-a@x.test");
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redelivers_after_sender_and_leader_death() -> anyhow::Result<()> {
    let raft = "commit_timeout = \"5s\"\n[node.raft]\nheartbeat_interval = \"100ms\"\n\
                election_timeout_min = \"500ms\"\nelection_timeout_max = \"1000ms\"\n\
                [node.delivery]\nlease = \"4s\"\nretry_first = \"1s\"\nretry_max = \"2s\"\n";
    let mut c = Cluster::start(3, 80, raft)?;
    let leader = c
        .leader(&[0, 1, 2], Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    let sink_addr = format!("127.0.0.88:{}", free_port("127.0.0.88"));
    let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
    let edge = Edge::start(
        c.dir.path(),
        "127.0.0.85",
        &c.addrs,
        "relay_networks = [\"127.0.0.0/8\"]\n",
    )
    .await?;
    let smtp = edge.smtp;
    let a_cfg = sender_config(c.dir.path(), "sender-a", &c.addrs, "127.0.0.86", &sink_addr)?;
    let b_cfg = sender_config(c.dir.path(), "sender-b", &c.addrs, "127.0.0.87", &sink_addr)?;
    let mut sender_a = Proc::spawn(
        &["sender", "--config", a_cfg.to_str().unwrap()],
        &c.dir.path().join("sender-a.log"),
    )?;

    // Sender A dies while the destination holds its DATA reply: nobody reports the attempt.
    // When the lease lapses the recipient goes to sender B, and is delivered exactly once more.
    let m1 = submit_one(
        smtp,
        "127.0.0.85",
        "app@example.com",
        &["hold-2-x@ex.test"],
        &[],
    )?;
    wait_for("sender A mid-delivery", Duration::from_secs(20), || async {
        sink.of("held")
            .iter()
            .any(|h| h["peer"] == "127.0.0.86")
            .then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&sender_a.log_text(), 30)))?;
    sender_a.kill();
    let sender_b = Proc::spawn(
        &["sender", "--config", b_cfg.to_str().unwrap()],
        &c.dir.path().join("sender-b.log"),
    )?;
    let st = wait_final(&c.addrs[leader], &m1, FINISH)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&sender_b.log_text(), 30)))?;
    let r = rcpt(&st, "hold-2-x@ex.test");
    assert_eq!(r.state, "delivered");
    assert_eq!(r.history.len(), 1, "only B reported: {r:?}");
    assert_eq!(r.history[0].source_ip, "127.0.0.87");
    assert_eq!(r.history[0].sender, "sender-b");
    let peers: BTreeSet<String> = sink
        .messages_for("hold-2-x@ex.test")
        .iter()
        .map(|m| m["peer"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(peers.contains("127.0.0.87"), "{peers:?}");
    assert!(
        sink.messages_for("hold-2-x@ex.test").len() <= 2,
        "at most one duplicate"
    );

    // The leader dies while twenty messages are being delivered and retried: every recipient
    // still ends delivered, through the new leader and the same sender.
    let port = smtp.to_string();
    let records = submit(&[
        "--host",
        "127.0.0.85",
        "--port",
        &port,
        "--count",
        "20",
        "--rcpt",
        "ok@ex.test",
        "--rcpt",
        "defer-1-z@ex.test",
    ])?;
    let ids: Vec<String> = records.iter().filter_map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 20, "{records:?}");
    c.nodes[leader].kill();
    let alive: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    // Right after the kill the survivors may still name the old leader: wait for a new one.
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
        let l = c.leader(&alive, Duration::from_secs(1)).await.ok()?;
        (l != leader).then_some(l)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.logs()))?;
    for id in &ids {
        let st = wait_final(&c.addrs[new_leader], id, Duration::from_secs(60))
            .await
            .map_err(|e| {
                let ours: Vec<String> = c
                    .nodes
                    .iter()
                    .map(|n| {
                        let t = n.log_text();
                        let l: Vec<&str> = t.lines().filter(|l| !l.contains("openraft")).collect();
                        tail(&l.join("\n"), 15)
                    })
                    .collect();
                anyhow::anyhow!(
                    "{e}\n{:?}\n--- sender b ---\n{}\n--- nodes ---\n{}",
                    futures_now(message_status(&c.addrs[new_leader], id)),
                    tail(&sender_b.log_text(), 30),
                    ours.join("\n---\n")
                )
            })?;
        for r in &st.recipients {
            assert_eq!(r.state, "delivered", "{id}: {r:?}");
        }
    }
    // Each of the twenty reached the destination for both recipients (duplicates allowed).
    for r in ["ok@ex.test", "defer-1-z@ex.test"] {
        let distinct: BTreeSet<String> = sink
            .messages_for(r)
            .iter()
            .filter_map(|m| {
                let d = m["data"].as_str()?;
                d.lines()
                    .find(|l| l.starts_with("Message-ID:"))
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(distinct.len(), 20, "{r}: {distinct:?}");
    }
    Ok(())
}

/// A sender parses every address of an assignment again before it reaches an SMTP command:
/// a recipient that is not an address (as a record stored before Ingest checked them could
/// hold) fails on its own with 553 5.1.3 and is never sent; the others are delivered to a
/// real SMTP server (aiosmtpd), which sees nothing but their paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_never_sends_what_is_not_an_address() -> anyhow::Result<()> {
    let sink_addr = format!("127.0.0.84:{}", free_port("127.0.0.84"));
    let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
    let cfg = skein_config::sender::SenderConfig {
        routes: vec![skein_config::sender::Route {
            domain: "*".into(),
            to: sink_addr.clone(),
        }],
        tls: skein_config::sender::TlsPolicy::Disabled,
        allow_destinations: vec!["127.0.0.0/8".parse()?],
        ..Default::default()
    };
    let d = skein_sender::Deliverer::new(cfg, std::sync::Arc::new(skein_core::SystemClock))?;
    let rcpt = |key: &str, address: &str| skein_proto::work::Recipient {
        key: key.into(),
        address: address.into(),
    };
    let mut a = skein_proto::work::Assignment {
        lease: 7,
        message_id: "M".into(),
        mail_from: "app@example.com".into(),
        domain: "x.test".into(),
        rcpts: vec![
            rcpt("k0", "ok@x.test"),
            rcpt("k1", "b@x.test>\r\nRSET\r\nMAIL FROM:<evil@x.test"),
            rcpt("k2", "c@x.test> NOTIFY=NEVER"),
        ],
        source_ip: "127.0.0.1".into(),
        ehlo: "out.skein.test".into(),
        data: b"Subject: typed\r\n\r\nhello\r\n".to_vec().into(),
        ..Default::default()
    };
    let r = d.deliver(&a).await;
    let got: Vec<(u32, String)> = r
        .rcpts
        .iter()
        .map(|x| (x.code, x.enhanced.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (250, "2.0.0".to_string()),
            (553, "5.1.3".to_string()),
            (553, "5.1.3".to_string())
        ],
        "{r:?}"
    );
    // The sink reports on its own time.
    let msgs = wait_for("the sink's record", Duration::from_secs(10), || async {
        let m = sink.of("message");
        (!m.is_empty()).then_some(m)
    })
    .await?;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        msgs[0]["rcpts"],
        serde_json::json!(["ok@x.test"]),
        "{msgs:?}"
    );
    // A bad reverse-path fails the whole assignment without a connection.
    a.mail_from = "app@example.com> SIZE=1".into();
    a.rcpts.truncate(1);
    let r = d.deliver(&a).await;
    assert_eq!(
        (r.rcpts[0].code, r.rcpts[0].enhanced.as_str()),
        (553, "5.1.7")
    );
    assert_eq!(sink.of("message").len(), 1, "nothing more sent");
    Ok(())
}

/// A mail loop stops at the hop limit: mail for loop.test is routed back to the edge that
/// accepted it, each pass adds a Received: field, and past `max_received_headers` (5 here) the
/// edge refuses it with 554 5.4.6; the sender bounces it and the DSN says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_loop_stops_at_the_hop_limit_with_a_bounce() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.112";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.113",
        "",
        "[edge.limits]\nmax_received_headers = 5",
        &["--route", "loop.test={smtp}"],
    )
    .await?;
    submit_relayed(ip, rig.smtp, "me@loop.test")?;
    let text = rig
        .sink
        .dsn_to("app@routed.test", Duration::from_secs(60))
        .await?;
    assert!(
        text.contains("554 5.4.6 Routing loop detected: 6 Received: header fields"),
        "{text}"
    );
    assert!(rig.sink.messages_for("me@loop.test").is_empty());
    Ok(())
}

/// Opportunistic TLS whose handshake fails (the server offers STARTTLS but only TLS 1.1) is
/// retried in plaintext on the same host, as Postfix does at `may`; `required` never falls
/// back: the recipient is deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_falls_back_to_plaintext_after_a_failed_handshake() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (cert, key) = write_cert(dir.path(), &[])?;
    let sink_addr = format!("127.0.0.130:{}", free_port("127.0.0.130"));
    let sink = Sink::start(
        std::slice::from_ref(&sink_addr),
        &[
            "--tls",
            cert.to_str().unwrap_or_default(),
            key.to_str().unwrap_or_default(),
            "--tls-max",
            "TLSv1_1",
        ],
    )?;
    let deliverer = |tls| -> anyhow::Result<skein_sender::Deliverer> {
        let cfg = skein_config::sender::SenderConfig {
            routes: vec![skein_config::sender::Route {
                domain: "*".into(),
                to: sink_addr.clone(),
            }],
            tls,
            allow_destinations: vec!["127.0.0.0/8".parse()?],
            ..Default::default()
        };
        Ok(skein_sender::Deliverer::new(
            cfg,
            std::sync::Arc::new(skein_core::SystemClock),
        )?)
    };
    let a = skein_proto::work::Assignment {
        lease: 9,
        message_id: "M".into(),
        mail_from: "app@example.com".into(),
        domain: "x.test".into(),
        rcpts: vec![skein_proto::work::Recipient {
            key: "k0".into(),
            address: "ok@x.test".into(),
        }],
        source_ip: "127.0.0.1".into(),
        ehlo: "out.skein.test".into(),
        data: b"Subject: tls\r\n\r\nhello\r\n".to_vec().into(),
        ..Default::default()
    };
    let r = deliverer(skein_config::sender::TlsPolicy::Opportunistic)?
        .deliver(&a)
        .await;
    assert_eq!(r.rcpts[0].code, 250, "{r:?}");
    let msgs = wait_for("the sink's record", Duration::from_secs(10), || async {
        let m = sink.of("message");
        (!m.is_empty()).then_some(m)
    })
    .await?;
    assert_eq!(msgs[0]["tls"], false, "delivered in plaintext: {msgs:?}");

    let r = deliverer(skein_config::sender::TlsPolicy::Required)?
        .deliver(&a)
        .await;
    assert_eq!(
        (r.rcpts[0].code, r.rcpts[0].enhanced.as_str()),
        (451, "4.7.5"),
        "{r:?}"
    );
    assert_eq!(sink.of("message").len(), 1, "nothing more sent");
    Ok(())
}

/// A route or MX that resolves to this host is a loop, not a destination: a sender refuses to
/// deliver there (554 5.4.6, nothing reaches the live SMTP server listening at the address)
/// unless `allow_destinations` lets it, and `deny_destinations` (the cluster's own edges)
/// refuses even what is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_refuses_destinations_that_loop_back() -> anyhow::Result<()> {
    let sink_addr = format!("127.0.0.133:{}", free_port("127.0.0.133"));
    let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
    let deliver = |allow: &[&str], deny: &[&str]| {
        let cfg = skein_config::sender::SenderConfig {
            routes: vec![skein_config::sender::Route {
                domain: "*".into(),
                to: sink_addr.clone(),
            }],
            tls: skein_config::sender::TlsPolicy::Disabled,
            allow_destinations: allow.iter().map(|n| n.parse().unwrap()).collect(),
            deny_destinations: deny.iter().map(|n| n.parse().unwrap()).collect(),
            ..Default::default()
        };
        let a = skein_proto::work::Assignment {
            lease: 8,
            message_id: "M".into(),
            mail_from: "app@example.com".into(),
            domain: "x.test".into(),
            rcpts: vec![skein_proto::work::Recipient {
                key: "k0".into(),
                address: "loop@x.test".into(),
            }],
            source_ip: "127.0.0.1".into(),
            ehlo: "out.skein.test".into(),
            data: b"Subject: loop\r\n\r\nhello\r\n".to_vec().into(),
            ..Default::default()
        };
        async move {
            let d = skein_sender::Deliverer::new(cfg, std::sync::Arc::new(skein_core::SystemClock))
                .unwrap();
            d.deliver(&a).await.rcpts.remove(0)
        }
    };
    let r = deliver(&[], &[]).await;
    assert_eq!((r.code, r.enhanced.as_str()), (554, "5.4.6"), "{r:?}");
    assert!(
        r.text.contains("127.0.0.133") && r.text.contains("loopback"),
        "{r:?}"
    );
    let r = deliver(&["127.0.0.0/8"], &["127.0.0.133/32"]).await;
    assert_eq!((r.code, r.enhanced.as_str()), (554, "5.4.6"), "{r:?}");
    assert!(r.text.contains("deny_destinations"), "{r:?}");
    assert!(sink.of("message").is_empty(), "nothing reached the sink");
    // Allowed: delivered to the same server.
    let r = deliver(&["127.0.0.0/8"], &[]).await;
    assert_eq!(r.code, 250, "{r:?}");
    wait_for("the sink's record", Duration::from_secs(10), || async {
        (!sink.of("message").is_empty()).then_some(())
    })
    .await?;
    Ok(())
}
