//! Format 7 in the state machine: suppression rules (at once, after repeats, lapsing), the
//! bounce of a DSN suppressing nothing, and operator deletion, through real RocksDB files.

mod common;

use common::Fixture;
use skein_queue::{
    AttemptRecord, AttemptResult, DeliveryOp, Disposition, NewMessage, RcptState, Reply, Request,
    Response, SuppressRule, SUPPRESSION_FORMAT,
};

const DAY: i64 = 86_400_000;

fn message(from: &str, to: &str) -> NewMessage {
    NewMessage {
        tenant: "acme".into(),
        mail_from: from.into(),
        rcpt_to: vec![to.into()],
        data: b"Subject: s\r\n\r\nbody\r\n".to_vec().into(),
        client_ip: "127.0.0.1".into(),
        helo: "c".into(),
        edge: "e".into(),
        smtputf8: false,
        body_8bit: false,
    }
}

async fn at_format_7() -> Fixture {
    let mut f = Fixture::new();
    f.apply(Request::SetFormat {
        version: SUPPRESSION_FORMAT,
    })
    .await;
    f
}

impl Fixture {
    /// Queues a message from `from` to `to` at `at`: its recipient's key and state.
    async fn queue(&mut self, at: i64, from: &str, to: &str) -> (String, RcptState) {
        let r = self
            .apply(Request::Enqueue {
                received_at_ms: at,
                messages: vec![message(from, to)],
            })
            .await;
        let Response::Enqueued { ids, .. } = r else {
            panic!("{r:?}")
        };
        let key = format!("{}0000", ids[0]);
        let state = self.reader.rcpt(&key).unwrap().unwrap().state;
        (key, state)
    }

    /// The scheduler's own decision `d` about `key` at `now`, after an attempt that got
    /// `code enhanced` (none for `0`): the DSNs it made.
    async fn decide(&mut self, now: i64, key: &str, code: u16, enhanced: &str, d: Disposition) {
        let attempt = (code > 0).then(|| AttemptRecord {
            at_ms: now,
            sender: "s1".into(),
            source_ip: "127.0.0.2".into(),
            mx: "mx.test".into(),
            reply: Reply {
                code,
                enhanced: enhanced.into(),
                text: "no".into(),
            },
            result: if code < 300 {
                AttemptResult::Delivered
            } else {
                AttemptResult::Permanent
            },
        });
        let r = self
            .apply(Request::Deliver {
                now_ms: now,
                mta: "relay.test".into(),
                ops: vec![DeliveryOp::Report {
                    lease: None,
                    rcpt: key.into(),
                    attempt,
                    disposition: d,
                }],
            })
            .await;
        assert!(
            matches!(&r, Response::Delivered { applied, .. } if applied.len() == 1),
            "{r:?}"
        );
    }

    /// Sends a message to `to` at `at` and bounces it with 550 `enhanced` under `rule`.
    async fn bounce_one(&mut self, at: i64, to: &str, enhanced: &str, rule: &SuppressRule) {
        let (key, state) = self.queue(at, "app@acme.test", to).await;
        assert_eq!(state, RcptState::Queued, "{to} at {at}");
        self.decide(
            at,
            &key,
            550,
            enhanced,
            Disposition::BounceWith(rule.clone()),
        )
        .await;
    }

    fn suppressed(&self, address: &str) -> Option<skein_queue::SuppressionEntry> {
        self.reader
            .suppressions("acme", "", 100)
            .unwrap()
            .into_iter()
            .find(|e| e.record.address == address)
    }
}

#[tokio::test]
async fn a_mailbox_bounce_suppresses_at_once_until_the_entry_lapses() {
    let mut f = at_format_7().await;
    let rule = SuppressRule::Now {
        expire_after_ms: 10 * DAY,
    };
    f.bounce_one(DAY, "gone@x.test", "5.1.1", &rule).await;
    let e = f.suppressed("gone@x.test").expect("suppressed");
    assert_eq!(e.expires_at_ms, Some(11 * DAY));
    assert!(e.record.reason.contains("550 5.1.1"), "{e:?}");
    // Within its time mail to it is suppressed; once it lapsed the mail is queued and the
    // entry is gone.
    assert_eq!(
        f.queue(11 * DAY - 1, "app@acme.test", "gone@x.test")
            .await
            .1,
        RcptState::Suppressed
    );
    assert_eq!(
        f.queue(11 * DAY, "app@acme.test", "Gone@x.test").await.1,
        RcptState::Queued
    );
    assert!(f.suppressed("gone@x.test").is_none());

    // It travels in snapshots with its expiry.
    f.bounce_one(12 * DAY, "gone@x.test", "5.1.1", &rule).await;
    let copy = f.copy_by_snapshot().await;
    assert_eq!(
        copy.suppressed("gone@x.test").unwrap().expires_at_ms,
        Some(22 * DAY)
    );
    // A rule without an expiry keeps the entry until it is removed.
    f.bounce_one(
        DAY,
        "never@x.test",
        "5.1.1",
        &SuppressRule::Now { expire_after_ms: 0 },
    )
    .await;
    assert_eq!(f.suppressed("never@x.test").unwrap().expires_at_ms, None);
    assert_eq!(
        f.queue(5000 * DAY, "app@acme.test", "never@x.test").await.1,
        RcptState::Suppressed
    );
}

#[tokio::test]
async fn domain_failures_suppress_only_after_repeats_over_the_span() {
    let mut f = at_format_7().await;
    let rule = SuppressRule::After {
        strikes: 3,
        span_ms: 2 * DAY,
        window_ms: 30 * DAY,
        expire_after_ms: 0,
    };
    // A resolver's bad hour: many bounces, one day; nothing is suppressed.
    for i in 0..5 {
        f.bounce_one(DAY + i * 60_000, "a@big.test", "5.1.2", &rule)
            .await;
    }
    assert!(f.suppressed("a@big.test").is_none());
    let s = f.reader.strikes("acme", "a@big.test").unwrap().unwrap();
    assert_eq!((s.count, s.first_ms, s.last_ms), (5, DAY, DAY + 4 * 60_000));
    // Two days after the first, it has failed for long enough.
    f.bounce_one(3 * DAY, "a@big.test", "5.1.2", &rule).await;
    let e = f
        .suppressed("a@big.test")
        .expect("suppressed after repeats");
    assert!(
        e.record.reason.starts_with("6 bounces over 48 hours"),
        "{e:?}"
    );
    assert!(f.reader.strikes("acme", "a@big.test").unwrap().is_none());

    // A delivery in between starts the count again.
    f.bounce_one(DAY, "b@big.test", "5.1.2", &rule).await;
    f.bounce_one(DAY + 1, "b@big.test", "5.1.2", &rule).await;
    let (key, _) = f.queue(2 * DAY, "app@acme.test", "b@big.test").await;
    f.decide(2 * DAY, &key, 250, "2.0.0", Disposition::Delivered)
        .await;
    assert!(f.reader.strikes("acme", "b@big.test").unwrap().is_none());
    f.bounce_one(3 * DAY + 1, "b@big.test", "5.1.2", &rule)
        .await;
    assert!(f.suppressed("b@big.test").is_none());
    assert_eq!(
        f.reader
            .strikes("acme", "b@big.test")
            .unwrap()
            .unwrap()
            .count,
        1
    );

    // A count older than the window starts again.
    f.bounce_one(DAY, "c@big.test", "5.1.2", &rule).await;
    f.bounce_one(2 * DAY, "c@big.test", "5.1.2", &rule).await;
    f.bounce_one(40 * DAY, "c@big.test", "5.1.2", &rule).await;
    assert!(f.suppressed("c@big.test").is_none());
    let s = f.reader.strikes("acme", "c@big.test").unwrap().unwrap();
    assert_eq!((s.count, s.first_ms), (1, 40 * DAY));

    // Two bounces of one address in one entry both count.
    let (k1, _) = f.queue(DAY, "app@acme.test", "d@big.test").await;
    let (k2, _) = f.queue(DAY, "app@acme.test", "d@big.test").await;
    let ops = [k1, k2]
        .into_iter()
        .map(|k| DeliveryOp::Report {
            lease: None,
            rcpt: k,
            attempt: None,
            disposition: Disposition::BounceWith(rule.clone()),
        })
        .collect();
    f.apply(Request::Deliver {
        now_ms: DAY,
        mta: "relay.test".into(),
        ops,
    })
    .await;
    assert_eq!(
        f.reader
            .strikes("acme", "d@big.test")
            .unwrap()
            .unwrap()
            .count,
        2
    );
}

#[tokio::test]
async fn the_bounce_of_a_dsn_suppresses_nothing() {
    let mut f = at_format_7().await;
    let (key, _) = f.queue(DAY, "", "return-path@x.test").await;
    f.decide(
        DAY,
        &key,
        550,
        "5.1.1",
        Disposition::BounceWith(SuppressRule::Now { expire_after_ms: 0 }),
    )
    .await;
    assert_eq!(
        f.reader.rcpt(&key).unwrap().unwrap().state,
        RcptState::Bounced
    );
    assert!(f.suppressed("return-path@x.test").is_none());
    // The tenant's own mail to that address still goes.
    assert_eq!(
        f.queue(DAY, "app@acme.test", "return-path@x.test").await.1,
        RcptState::Queued
    );
}

#[tokio::test]
async fn deleted_mail_is_final_without_a_dsn_and_frees_its_body() {
    let mut f = at_format_7().await;
    let (key, _) = f.queue(DAY, "app@acme.test", "spam@x.test").await;
    let id = &key[..16];
    let r = f
        .apply(Request::Deliver {
            now_ms: DAY,
            mta: "relay.test".into(),
            ops: vec![DeliveryOp::Report {
                lease: None,
                rcpt: key.clone(),
                attempt: None,
                disposition: Disposition::Delete,
            }],
        })
        .await;
    let Response::Delivered { applied, dsns, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!((applied.len(), dsns.len()), (1, 0));
    let rc = f.reader.rcpt(&key).unwrap().unwrap();
    assert_eq!(rc.state, RcptState::Deleted);
    assert_eq!(rc.state.name(), "deleted");
    assert!(rc.state.is_final());
    assert!(f.reader.due(i64::MAX, 10).unwrap().is_empty());
    let (m, body) = f.reader.get_message(id, true).unwrap().unwrap();
    assert_eq!(m.remaining, 0);
    assert!(body.is_none());
}

/// Before format 7 the leader writes the decisions an older replica reads.
#[test]
fn decisions_of_format_7_are_written_as_older_formats_read_them() {
    let now = Disposition::BounceWith(SuppressRule::Now { expire_after_ms: 5 });
    let after = Disposition::BounceWith(SuppressRule::After {
        strikes: 3,
        span_ms: 1,
        window_ms: 2,
        expire_after_ms: 0,
    });
    assert_eq!(
        now.clone().for_format(6),
        Some(Disposition::Bounce { suppress: true })
    );
    assert_eq!(
        after.clone().for_format(6),
        Some(Disposition::Bounce { suppress: false })
    );
    assert_eq!(
        Disposition::BounceWith(SuppressRule::Never).for_format(6),
        Some(Disposition::Bounce { suppress: false })
    );
    assert_eq!(Disposition::Delete.for_format(6), None);
    assert_eq!(now.clone().for_format(7), Some(now));
    assert_eq!(Disposition::Expire.for_format(1), Some(Disposition::Expire));
}

#[tokio::test]
async fn a_tenants_own_rule_is_set_cleared_and_travels_in_snapshots() {
    let mut f = at_format_7().await;
    let rule = skein_queue::TenantSuppressionPolicy {
        domain_failures: 1,
        domain_failure_span_ms: 0,
        domain_failure_window_ms: DAY,
        expire_after_ms: 0,
    };
    let set = |tenant: &str, policy: Option<skein_queue::TenantSuppressionPolicy>| {
        Request::SuppressionPolicy {
            tenant: tenant.into(),
            policy,
        }
    };
    assert_eq!(
        f.apply(set("nobody", Some(rule.clone()))).await,
        Response::TenantNotFound
    );
    // Mail relayed by IP address ("") has a rule of its own too.
    assert_eq!(
        f.apply(set("", Some(rule.clone()))).await,
        Response::TenantUpdated
    );
    assert_eq!(f.reader.suppression_policy("").unwrap(), Some(rule.clone()));
    assert_eq!(f.reader.suppression_policy("acme").unwrap(), None);
    let copy = f.copy_by_snapshot().await;
    assert_eq!(copy.reader.suppression_policy("").unwrap(), Some(rule));
    assert_eq!(f.apply(set("", None)).await, Response::TenantUpdated);
    assert_eq!(f.reader.suppression_policy("").unwrap(), None);
}
