//! Delivery state in the state machine: the due index, leases, reports, DSNs and suppression,
//! applied through real RocksDB files.

mod common;

use common::Fixture;
use skein_queue::{
    AttemptRecord, AttemptResult, DeliveryOp, Disposition, NewMessage, RcptState, Reply, Request,
    Response,
};

fn message(from: &str, to: &[&str]) -> NewMessage {
    NewMessage {
        tenant: "acme".into(),
        mail_from: from.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        data: b"Subject: report\r\nFrom: app@acme.test\r\n\r\nbody\r\n"
            .to_vec()
            .into(),
        client_ip: "127.0.0.1".into(),
        helo: "c".into(),
        edge: "e".into(),
        smtputf8: false,
        body_8bit: false,
    }
}

fn attempt(code: u16, enhanced: &str, result: AttemptResult) -> AttemptRecord {
    AttemptRecord {
        at_ms: 0,
        sender: "s1".into(),
        source_ip: "127.0.0.2".into(),
        mx: "mx.example.test 127.0.0.21:25".into(),
        reply: Reply {
            code,
            enhanced: enhanced.into(),
            text: "text".into(),
        },
        result,
    }
}

impl Fixture {
    async fn enqueue(&mut self, at: i64, m: NewMessage) -> String {
        match self
            .apply(Request::Enqueue {
                received_at_ms: at,
                messages: vec![m],
            })
            .await
        {
            Response::Enqueued { mut ids, .. } => ids.pop().unwrap(),
            r => panic!("{r:?}"),
        }
    }

    async fn deliver(&mut self, now: i64, ops: Vec<DeliveryOp>) -> Response {
        self.apply(Request::Deliver {
            now_ms: now,
            mta: "relay.test".into(),
            ops,
        })
        .await
    }
}

fn lease(id: u64, expires: i64, rcpts: &[&str]) -> DeliveryOp {
    DeliveryOp::Lease {
        lease: id,
        sender: "s1".into(),
        source_ip: "127.0.0.2".into(),
        expires_ms: expires,
        rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
    }
}

fn report(lease: u64, rcpt: &str, a: AttemptRecord, d: Disposition) -> DeliveryOp {
    DeliveryOp::Report {
        lease: Some(lease),
        rcpt: rcpt.into(),
        attempt: Some(a),
        disposition: d,
    }
}

#[tokio::test]
async fn recipients_move_through_the_due_index() {
    let mut f = Fixture::new();
    let id = f
        .enqueue(
            1000,
            message("app@acme.test", &["a@example.test", "b@example.test"]),
        )
        .await;
    let (a, b) = (format!("{id}0000"), format!("{id}0001"));
    assert!(f.reader.due(999, 10).unwrap().is_empty(), "not due yet");
    let due = f.reader.due(1000, 10).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].state, RcptState::Queued);
    assert_eq!(due[0].domain, "example.test");

    // Leased: due again only at the lease's expiry.
    let r = f.deliver(1000, vec![lease(7, 5000, &[&a, &b])]).await;
    assert!(matches!(&r, Response::Delivered { leased, .. } if leased[0].1.len() == 2));
    assert!(f.reader.due(4999, 10).unwrap().is_empty());
    assert_eq!(f.reader.next_due_ms().unwrap(), Some(5000));
    // A second lease before expiry takes nothing.
    let r = f.deliver(2000, vec![lease(8, 9000, &[&a])]).await;
    assert!(matches!(&r, Response::Delivered { leased, .. } if leased[0].1.is_empty()));

    // a: delivered. b: deferred until 3000.
    let r = f
        .deliver(
            2500,
            vec![
                report(
                    7,
                    &a,
                    attempt(250, "2.0.0", AttemptResult::Delivered),
                    Disposition::Delivered,
                ),
                report(
                    7,
                    &b,
                    attempt(451, "4.3.0", AttemptResult::Transient),
                    Disposition::Retry {
                        at_ms: 3000,
                        counted: true,
                    },
                ),
            ],
        )
        .await;
    assert!(matches!(r, Response::Delivered { applied, .. } if applied.len() == 2));
    let due = f.reader.due(3000, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].key, b);
    assert_eq!(due[0].state, RcptState::Deferred);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(
        f.reader.rcpt(&a).unwrap().unwrap().state,
        RcptState::Delivered
    );

    // A report under a stale lease is ignored.
    let r = f
        .deliver(
            3000,
            vec![report(
                7,
                &b,
                attempt(550, "5.1.1", AttemptResult::Permanent),
                Disposition::Bounce { suppress: true },
            )],
        )
        .await;
    assert!(matches!(r, Response::Delivered { applied, .. } if applied.is_empty()));
    assert_eq!(
        f.reader.rcpt(&b).unwrap().unwrap().state,
        RcptState::Deferred
    );
}

#[tokio::test]
async fn a_hard_bounce_sends_a_dsn_suppresses_and_frees_the_body() {
    let mut f = Fixture::new();
    let id = f
        .enqueue(0, message("app@acme.test", &["gone@example.test"]))
        .await;
    let key = format!("{id}0000");
    f.deliver(0, vec![lease(1, 100, &[&key])]).await;
    let r = f
        .deliver(
            50,
            vec![report(
                1,
                &key,
                attempt(550, "5.1.1", AttemptResult::Permanent),
                Disposition::Bounce { suppress: true },
            )],
        )
        .await;
    let Response::Delivered { dsns, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!(dsns.len(), 1);
    let (dsn, body) = f.reader.get_message(&dsns[0], true).unwrap().unwrap();
    assert_eq!(dsn.mail_from, "", "a DSN has a null return path");
    assert_eq!(dsn.rcpt_to, vec!["app@acme.test".to_string()]);
    assert_eq!(dsn.dsn_for.as_deref(), Some(id.as_str()));
    let text = String::from_utf8(body.unwrap()).unwrap();
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Subject: report"), "{text}");
    // The DSN itself is due for delivery.
    assert!(f
        .reader
        .due(50, 10)
        .unwrap()
        .iter()
        .any(|r| r.message_id == dsns[0]));
    // The original's body is gone; its envelope and history stay.
    let (orig, body) = f.reader.get_message(&id, true).unwrap().unwrap();
    assert_eq!(orig.remaining, 0);
    assert!(body.is_none());
    let rcpt = &f.reader.rcpts(&id).unwrap()[0];
    assert_eq!(rcpt.state, RcptState::Bounced);
    assert_eq!(rcpt.history.len(), 1);

    // The address is suppressed (case-insensitively) for this tenant.
    let s = f.reader.suppressions("acme", "", 10).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].record.address, "gone@example.test");
    assert!(s[0].record.reason.contains("5.1.1"));
    assert_eq!(s[0].expires_at_ms, None);
    let r = f
        .apply(Request::Enqueue {
            received_at_ms: 60,
            messages: vec![message(
                "app@acme.test",
                &["Gone@Example.test", "ok@example.test"],
            )],
        })
        .await;
    let Response::Enqueued {
        ids, suppressed, ..
    } = r
    else {
        panic!("{r:?}")
    };
    // The response names it, for the leader's `suppressed` event.
    assert_eq!(suppressed, [(0, "Gone@Example.test".to_string())]);
    let id2 = ids[0].clone();
    let rcpts = f.reader.rcpts(&id2).unwrap();
    assert_eq!(rcpts[0].state, RcptState::Suppressed);
    assert_eq!(rcpts[1].state, RcptState::Queued);
    assert!(!f
        .reader
        .due(60, 10)
        .unwrap()
        .iter()
        .any(|r| r.key == rcpts[0].key));

    // Removing it lets the next message through.
    let r = f
        .apply(Request::Unsuppress {
            tenant: "acme".into(),
            address: "GONE@example.test".into(),
        })
        .await;
    assert_eq!(r, Response::Suppression(true));
    let id3 = f
        .enqueue(70, message("app@acme.test", &["gone@example.test"]))
        .await;
    assert_eq!(f.reader.rcpts(&id3).unwrap()[0].state, RcptState::Queued);
}

#[tokio::test]
async fn no_dsn_for_a_null_return_path_or_when_the_tenant_turned_them_off() {
    let mut f = Fixture::new();
    let null = f.enqueue(0, message("", &["x@example.test"])).await;
    let r = f
        .deliver(
            10,
            vec![DeliveryOp::Report {
                lease: None,
                rcpt: format!("{null}0000"),
                attempt: None,
                disposition: Disposition::Expire,
            }],
        )
        .await;
    assert!(
        matches!(&r, Response::Delivered { applied, dsns, .. } if applied.len() == 1 && dsns.is_empty())
    );
    assert_eq!(f.reader.rcpts(&null).unwrap()[0].state, RcptState::Expired);

    f.apply(Request::CreateTenant(skein_queue::TenantRecord {
        name: "acme".into(),
        username: "acme".into(),
        password_hash: "h".into(),
        enabled: true,
        dsn: true,
        created_at_ms: 0,
    }))
    .await;
    let r = f
        .apply(Request::UpdateTenant {
            name: "acme".into(),
            enabled: None,
            dsn: Some(false),
        })
        .await;
    assert_eq!(r, Response::TenantUpdated);
    let id = f
        .enqueue(20, message("app@acme.test", &["y@example.test"]))
        .await;
    let r = f
        .deliver(
            30,
            vec![DeliveryOp::Report {
                lease: None,
                rcpt: format!("{id}0000"),
                attempt: None,
                disposition: Disposition::Expire,
            }],
        )
        .await;
    assert!(
        matches!(&r, Response::Delivered { applied, dsns, .. } if applied.len() == 1 && dsns.is_empty())
    );
}

#[tokio::test]
async fn finished_messages_are_forgotten_after_they_finish_oldest_first() {
    let mut f = Fixture::new();
    // a: two recipients, finished at 2000. b: finished at 3000. c: still deferred.
    let a = f
        .enqueue(0, message("app@acme.test", &["x@e.test", "y@e.test"]))
        .await;
    let b = f.enqueue(0, message("app@acme.test", &["z@e.test"])).await;
    let c = f.enqueue(0, message("app@acme.test", &["w@e.test"])).await;
    let (ax, ay, bz, cw) = (
        format!("{a}0000"),
        format!("{a}0001"),
        format!("{b}0000"),
        format!("{c}0000"),
    );
    f.deliver(
        0,
        vec![
            lease(1, 9000, &[&ax, &ay]),
            lease(2, 9000, &[&bz]),
            lease(3, 9000, &[&cw]),
        ],
    )
    .await;
    let ok = || attempt(250, "2.0.0", AttemptResult::Delivered);
    f.deliver(1000, vec![report(1, &ax, ok(), Disposition::Delivered)])
        .await;
    assert_eq!(f.reader.oldest_finished_ms().unwrap(), None, "a has y left");
    f.deliver(2000, vec![report(1, &ay, ok(), Disposition::Delivered)])
        .await;
    f.deliver(3000, vec![report(2, &bz, ok(), Disposition::Delivered)])
        .await;
    let later = Disposition::Retry {
        at_ms: 99_000,
        counted: true,
    };
    let tmp = attempt(451, "4.3.0", AttemptResult::Transient);
    f.deliver(3000, vec![report(3, &cw, tmp, later)]).await;
    assert_eq!(f.reader.oldest_finished_ms().unwrap(), Some(2000));
    let count = f.reader.message_count().unwrap();

    // Nothing finished before 2000; then a alone; then b (c is not finished).
    assert_eq!(
        f.apply(Request::Purge {
            before_ms: 2000,
            limit: 10
        })
        .await,
        Response::Purged(0)
    );
    assert_eq!(
        f.apply(Request::Purge {
            before_ms: 2001,
            limit: 10
        })
        .await,
        Response::Purged(1)
    );
    assert!(f.reader.get_message(&a, false).unwrap().is_none());
    assert!(f.reader.rcpts(&a).unwrap().is_empty());
    assert!(f.reader.get_message(&b, false).unwrap().is_some());
    assert_eq!(f.reader.message_count().unwrap(), count - 1);
    assert_eq!(
        f.apply(Request::Purge {
            before_ms: i64::MAX,
            limit: 10
        })
        .await,
        Response::Purged(1)
    );
    assert!(f.reader.get_message(&b, false).unwrap().is_none());
    assert_eq!(f.reader.oldest_finished_ms().unwrap(), None);
    assert_eq!(
        f.reader.rcpt(&cw).unwrap().unwrap().state,
        RcptState::Deferred
    );
    assert_eq!(f.reader.next_due_ms().unwrap(), Some(99_000));
    assert_eq!(f.reader.message_count().unwrap(), count - 2);
}

/// A delivery reported late, after the recipient was leased again (its first lease lapsed
/// while the report waited out a failover), still counts from format 2: the new lease holder
/// must not send it a second time. Format 1 (release 0.1.0) dropped it, and stays so.
#[tokio::test]
async fn a_late_delivery_counts_under_a_newer_lease_from_format_2() {
    for (format, counts) in [(1, false), (2, true)] {
        let mut f = Fixture::new();
        if format == 2 {
            f.apply(Request::SetFormat { version: 2 }).await;
        }
        let id = f
            .enqueue(1000, message("app@acme.test", &["a@example.test"]))
            .await;
        let a = format!("{id}0000");
        f.deliver(1000, vec![lease(7, 2000, &[&a])]).await;
        // Lease 7 lapses; the recipient goes to lease 8.
        let r = f.deliver(2500, vec![lease(8, 9000, &[&a])]).await;
        assert!(matches!(&r, Response::Delivered { leased, .. } if leased[0].1.len() == 1));
        // Now lease 7's delivery is reported.
        let r = f
            .deliver(
                3000,
                vec![report(
                    7,
                    &a,
                    attempt(250, "2.0.0", AttemptResult::Delivered),
                    Disposition::Delivered,
                )],
            )
            .await;
        let Response::Delivered { applied, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(applied.len() == 1, counts, "format {format}");
        let state = f.reader.rcpt(&a).unwrap().unwrap().state;
        assert_eq!(
            state == RcptState::Delivered,
            counts,
            "format {format}: {state:?}"
        );
        // Other outcomes under an old lease never count.
        if !counts {
            let r = f
                .deliver(
                    3100,
                    vec![report(
                        7,
                        &a,
                        attempt(550, "5.1.1", AttemptResult::Permanent),
                        Disposition::Bounce { suppress: true },
                    )],
                )
                .await;
            assert!(matches!(r, Response::Delivered { applied, .. } if applied.is_empty()));
        }
    }
}

/// From format 3 command time never goes backwards: a leader whose clock is behind the last
/// one's (a failover to a skewed host) still enqueues and schedules at the latest time
/// applied, so receipt times, leases and hour buckets only move forward. Formats 1 and 2
/// apply times as proposed, and stay so.
#[tokio::test]
async fn command_time_never_goes_backwards_from_format_3() {
    for format in [2, 3] {
        let mut f = Fixture::new();
        f.apply(Request::SetFormat { version: format }).await;
        let first = f
            .enqueue(10_000, message("app@acme.test", &["a@example.test"]))
            .await;
        let a = format!("{first}0000");
        // The next leader's clock is 7 s behind.
        let second = f
            .enqueue(3_000, message("app@acme.test", &["b@example.test"]))
            .await;
        let (m, _) = f.reader.get_message(&second, false).unwrap().unwrap();
        let want = if format >= 3 { 10_000 } else { 3_000 };
        assert_eq!(m.received_at_ms, want, "format {format}");
        let r = f
            .deliver(
                4_000,
                vec![DeliveryOp::Report {
                    lease: None,
                    rcpt: a.clone(),
                    attempt: None,
                    disposition: Disposition::Bounce { suppress: false },
                }],
            )
            .await;
        assert!(
            matches!(&r, Response::Delivered { applied, .. } if applied.len() == 1),
            "{r:?}"
        );
        let rec = f.reader.rcpt(&a).unwrap().unwrap();
        let want = if format >= 3 { 10_000 } else { 4_000 };
        assert_eq!(rec.final_at_ms, Some(want), "format {format}");
        assert_eq!(
            f.reader.clock_ms().unwrap(),
            if format >= 3 { 10_000 } else { 0 }
        );
        // A later time raises the mark.
        f.deliver(12_000, Vec::new()).await;
        if format >= 3 {
            assert_eq!(f.reader.clock_ms().unwrap(), 12_000);
        }
    }
}

/// Reads of the due indexes start where the live entries began at the last read (skipping the
/// deleted ones at the front): a recipient added below that point since, by a later entry or
/// by a snapshot installed over the state, is still found.
#[tokio::test]
async fn reads_find_recipients_added_below_where_the_last_read_began() {
    let mut f = Fixture::new();
    // Forty recipients leased and delivered: their index entries are deleted.
    let mut keys = Vec::new();
    for n in 0..40 {
        let id = f
            .enqueue(1000 + n, message("app@acme.test", &["a@example.test"]))
            .await;
        keys.push(format!("{id}0000"));
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    f.deliver(1100, vec![lease(1, 60_000, &refs)]).await;
    let delivered = keys
        .iter()
        .map(|k| {
            report(
                1,
                k,
                attempt(250, "2.0.0", AttemptResult::Delivered),
                Disposition::Delivered,
            )
        })
        .collect();
    f.deliver(1200, delivered).await;
    // One more, deferred until 9000: the first live entry of its queue and of `due`.
    let late = f
        .enqueue(1300, message("app@acme.test", &["late@example.test"]))
        .await;
    let late = format!("{late}0000");
    f.deliver(1300, vec![lease(2, 60_000, &[&late])]).await;
    let retry = Disposition::Retry {
        at_ms: 9000,
        counted: true,
    };
    let a = attempt(451, "4.3.0", AttemptResult::Transient);
    f.deliver(1400, vec![report(2, &late, a, retry)]).await;
    let r = &f.reader;
    assert!(r
        .queue_due("acme", "example.test", 2000, 10)
        .unwrap()
        .is_empty());
    assert!(r.due(2000, 10).unwrap().is_empty());
    assert!(r.ready_queues(2000, 10).unwrap().is_empty());
    assert_eq!(r.next_due_ms().unwrap(), Some(9000));
    assert_eq!(r.queues(None, 10).unwrap()[0].first_due_ms, Some(9000));

    // A new message, due before the deferred one: below where those reads began.
    let early = f
        .enqueue(3000, message("app@acme.test", &["early@example.test"]))
        .await;
    let early = format!("{early}0000");
    let r = &f.reader;
    let keys_of =
        |v: Vec<skein_queue::RcptRecord>| -> Vec<String> { v.into_iter().map(|r| r.key).collect() };
    assert_eq!(
        keys_of(r.queue_due("acme", "example.test", 3000, 10).unwrap()),
        std::slice::from_ref(&early)
    );
    assert_eq!(
        keys_of(r.due(3000, 10).unwrap()),
        std::slice::from_ref(&early)
    );
    let heads = r.ready_queues(3000, 10).unwrap();
    assert_eq!((heads.len(), heads[0].due_ms), (1, 3000), "{heads:?}");
    assert_eq!(r.next_due_ms().unwrap(), Some(3000));
    assert_eq!(r.queues(None, 10).unwrap()[0].first_due_ms, Some(3000));
    assert_eq!(
        keys_of(r.queue_due("acme", "example.test", 10_000, 10).unwrap()),
        [early.clone(), late.clone()],
        "both, in due order"
    );

    // Another store whose reads began at a recipient due at 50,000 takes this state by a
    // snapshot: what it reads is the snapshot's, from its front.
    let mut g = Fixture::new();
    g.enqueue(50_000, message("app@acme.test", &["x@example.test"]))
        .await;
    assert!(g
        .reader
        .queue_due("acme", "example.test", 10_000, 10)
        .unwrap()
        .is_empty());
    assert!(g.reader.due(10_000, 10).unwrap().is_empty());
    g.install_from(&mut f).await;
    assert_eq!(
        keys_of(
            g.reader
                .queue_due("acme", "example.test", 10_000, 10)
                .unwrap()
        ),
        [early.clone(), late.clone()]
    );
    assert_eq!(keys_of(g.reader.due(10_000, 10).unwrap()), [early, late]);
}

/// The scheduler's reads between a lease and the next message: the message is found.
#[tokio::test]
async fn a_message_after_a_lease_is_found_by_the_schedulers_reads() {
    let mut f = Fixture::new();
    let a = f
        .enqueue(1000, message("app@acme.test", &["a@x.test"]))
        .await;
    let a = format!("{a}0000");
    assert_eq!(f.reader.ready_queues(1000, 10).unwrap().len(), 1);
    assert_eq!(
        f.reader
            .queue_due("acme", "x.test", 1000, 10)
            .unwrap()
            .len(),
        1
    );
    f.deliver(1000, vec![lease(1, 61_000, &[&a])]).await;
    assert!(f.reader.ready_queues(1500, 10).unwrap().is_empty());
    assert!(f
        .reader
        .queue_due("acme", "x.test", 1500, 10)
        .unwrap()
        .is_empty());
    assert_eq!(f.reader.next_due_ms().unwrap(), Some(61_000));
    for (at, now) in [(1200, 1600), (1700, 1800)] {
        let b = f.enqueue(at, message("app@acme.test", &["b@x.test"])).await;
        assert_eq!(f.reader.next_due_ms().unwrap(), Some(at), "{b}");
        let heads = f.reader.ready_queues(now, 10).unwrap();
        assert_eq!(heads.len(), 1, "{b} {heads:?}");
        let due = f.reader.queue_due("acme", "x.test", now, 10).unwrap();
        assert_eq!(due.len(), 1, "{b}");
        f.deliver(now, vec![lease(at as u64, 61_000, &[&due[0].key])])
            .await;
    }
}
