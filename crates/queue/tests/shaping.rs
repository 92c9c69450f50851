//! Sending limits in the state machine (format 4): shaped leases are granted only within the
//! IP's daily cap and its hourly limit for the provider, counted as they are granted, and the
//! limits travel in snapshots.

mod common;

use common::{read_data, snapshot_data, Fixture};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use skein_queue::skein_shaping::{
    IpMode, IpRecord, Provider, Schedule, Step, DAY_MS, DEFAULT_POOL, HOUR_MS,
};
use skein_queue::{DeliveryOp, NewMessage, Request, Response, ShapingCommand, ShapingOutcome};

const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % DAY_MS;

fn message(n: usize, domain: &str) -> NewMessage {
    NewMessage {
        tenant: "acme".into(),
        mail_from: "app@acme.test".into(),
        rcpt_to: (0..n).map(|i| format!("r{i}@{domain}")).collect(),
        data: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
        client_ip: "127.0.0.1".into(),
        helo: "c".into(),
        edge: "e".into(),
        smtputf8: false,
        body_8bit: false,
    }
}

fn ip(addr: &str) -> IpRecord {
    IpRecord {
        ip: addr.into(),
        hostname: "mta.example.com".into(),
        pool: DEFAULT_POOL.into(),
        schedule: "tiny".into(),
        mode: IpMode::Warming,
        resume_to: IpMode::Warming,
        start_day: T0 / DAY_MS,
        sending_days: 0,
        last_sent_day: None,
        reason: String::new(),
        added_at_ms: T0,
    }
}

impl Fixture {
    async fn shape(&mut self, cmd: ShapingCommand) -> ShapingOutcome {
        match self.apply(Request::Shaping { at_ms: T0, cmd }).await {
            Response::Shaped(o) => o,
            r => panic!("{r:?}"),
        }
    }

    /// Leases `keys` from `ip` for `provider` at `now`; returns how many were granted.
    async fn lease(
        &mut self,
        lease: u64,
        ip: &str,
        provider: &str,
        keys: &[String],
        now: i64,
    ) -> usize {
        let r = self
            .apply(Request::Deliver {
                now_ms: now,
                mta: "relay.test".into(),
                ops: vec![DeliveryOp::LeaseShaped {
                    lease,
                    sender: "s1".into(),
                    source_ip: ip.into(),
                    provider: provider.into(),
                    expires_ms: now + 1,
                    rcpts: keys.to_vec(),
                }],
            })
            .await;
        match r {
            Response::Delivered { leased, .. } => leased[0].1.len(),
            r => panic!("{r:?}"),
        }
    }
}

async fn setup() -> (Fixture, Vec<String>) {
    let mut f = Fixture::new();
    f.apply(Request::SetFormat { version: 4 }).await;
    let tiny = Schedule {
        name: "tiny".into(),
        steps: vec![
            Step {
                from_day: 1,
                daily: 5,
            },
            Step {
                from_day: 2,
                daily: 8,
            },
        ],
        ..Schedule::default()
    };
    assert_eq!(
        f.shape(ShapingCommand::PutSchedule(tiny)).await,
        ShapingOutcome::Done
    );
    let gmail = Provider {
        warming_hourly: 3,
        warm_hourly: 6,
        ..skein_queue::skein_shaping::default_providers()[0].clone()
    };
    assert_eq!(gmail.name, "gmail");
    f.shape(ShapingCommand::PutProvider(gmail)).await;
    assert_eq!(
        f.shape(ShapingCommand::AddIp(ip("192.0.2.1"))).await,
        ShapingOutcome::Done
    );
    assert_eq!(
        f.shape(ShapingCommand::AddIp(ip("192.0.2.1"))).await,
        ShapingOutcome::IpExists
    );
    let id = match f
        .apply(Request::Enqueue {
            received_at_ms: T0,
            messages: vec![message(40, "gmail.com")],
        })
        .await
    {
        Response::Enqueued { ids, .. } => ids[0].clone(),
        r => panic!("{r:?}"),
    };
    let keys = (0..40).map(|i| format!("{id}{i:04X}")).collect();
    (f, keys)
}

/// Within an hour the provider's limit binds (3 while warming); across hours the day's cap
/// (5 on day 1, then 8 on day 2, when the IP is warm and its limit is 6 an hour).
#[tokio::test]
async fn leases_stay_within_the_daily_cap_and_the_hourly_limit() {
    let (mut f, keys) = setup().await;
    let t = T0 + 60_000;
    assert_eq!(f.lease(1, "192.0.2.1", "gmail", &keys[0..10], t).await, 3);
    assert_eq!(
        f.lease(2, "192.0.2.1", "gmail", &keys[10..20], t + 1).await,
        0,
        "hour spent"
    );
    // Another provider still has room this hour, within the day.
    assert_eq!(
        f.lease(3, "192.0.2.1", "default", &keys[10..20], t + 2)
            .await,
        2,
        "day: 5"
    );
    assert_eq!(
        f.lease(4, "192.0.2.1", "gmail", &keys[20..30], t + HOUR_MS)
            .await,
        0,
        "day spent"
    );
    let st = f.reader.shaping(t + HOUR_MS).unwrap();
    assert_eq!(st.ips[0].sent_today, 5);
    assert_eq!(st.ips[0].cap, 5);
    // Day 2: warm (the last step), 8 a day, 6 an hour to Gmail.
    let d2 = T0 + DAY_MS + 60_000;
    assert_eq!(f.lease(5, "192.0.2.1", "gmail", &keys[20..40], d2).await, 6);
    assert_eq!(
        f.lease(6, "192.0.2.1", "gmail", &keys[26..40], d2 + HOUR_MS)
            .await,
        2
    );
    let st = f.reader.shaping(d2 + HOUR_MS).unwrap();
    assert!(st.ips[0].warm);
    assert_eq!((st.ips[0].sent_today, st.ips[0].cap), (8, 8));
    assert_eq!(st.ips[0].sent_this_hour.get("gmail"), Some(&2));
    assert_eq!(st.ips[0].record.sending_days, 2);
}

/// Paused and unknown IPs lease nothing; resuming restores the mode it had.
#[tokio::test]
async fn paused_and_unknown_ips_lease_nothing() {
    let (mut f, keys) = setup().await;
    let pause = ShapingCommand::SetIpMode {
        ip: "192.0.2.1".into(),
        mode: IpMode::Paused,
        reason: "complaints".into(),
    };
    assert_eq!(f.shape(pause).await, ShapingOutcome::Done);
    assert_eq!(
        f.lease(1, "192.0.2.1", "gmail", &keys[0..3], T0 + 1).await,
        0
    );
    assert_eq!(
        f.lease(2, "192.0.2.9", "gmail", &keys[0..3], T0 + 2).await,
        0
    );
    let st = f.reader.shaping(T0).unwrap();
    assert_eq!(st.ips[0].record.reason, "complaints");
    assert_eq!(st.ips[0].record.resume_to, IpMode::Warming);
    f.shape(ShapingCommand::SetIpMode {
        ip: "192.0.2.1".into(),
        mode: IpMode::Warming,
        reason: String::new(),
    })
    .await;
    assert_eq!(
        f.lease(3, "192.0.2.1", "gmail", &keys[0..3], T0 + 3).await,
        3
    );
    assert_eq!(
        f.shape(ShapingCommand::RemoveIp {
            ip: "192.0.2.9".into()
        })
        .await,
        ShapingOutcome::IpNotFound
    );
}

/// The limits and counters travel in snapshots: a node that installs one goes on counting
/// from the same numbers.
#[tokio::test]
async fn limits_and_counters_travel_in_snapshots() {
    let (mut f, keys) = setup().await;
    assert_eq!(
        f.lease(1, "192.0.2.1", "gmail", &keys[0..10], T0 + 5).await,
        3
    );
    let snap =
        f.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    let bytes = read_data(snap.snapshot).await;
    let mut g = Fixture::new();
    let data = snapshot_data(&mut g.sm, &bytes).await;
    g.sm.install_snapshot(&snap.meta, data).await.unwrap();
    g.index = f.index;
    assert_eq!(
        g.reader.shaping(T0 + 5).unwrap(),
        f.reader.shaping(T0 + 5).unwrap()
    );
    assert_eq!(
        g.lease(2, "192.0.2.1", "gmail", &keys[3..10], T0 + 6).await,
        0,
        "hour spent there too"
    );
}

/// Once the cluster has an IP record, an unshaped lease (from a leader that had not yet seen
/// the record) grants nothing: every lease counts against the limits.
#[tokio::test]
async fn with_ip_records_only_shaped_leases_send() {
    let (mut f, keys) = setup().await;
    let r = f
        .apply(Request::Deliver {
            now_ms: T0 + 10,
            mta: "relay.test".into(),
            ops: vec![DeliveryOp::Lease {
                lease: 9,
                sender: "s1".into(),
                source_ip: "192.0.2.1".into(),
                expires_ms: T0 + 60_000,
                rcpts: keys[0..3].to_vec(),
            }],
        })
        .await;
    assert!(
        matches!(&r, Response::Delivered { leased, .. } if leased[0].1.is_empty()),
        "{r:?}"
    );
    assert_eq!(
        f.lease(10, "192.0.2.1", "gmail", &keys[0..3], T0 + 20)
            .await,
        3
    );
}

/// A learned MX host classifies a domain on every node from then on; a domain rule still wins.
#[tokio::test]
async fn learned_mx_hosts_classify_domains() {
    let (mut f, _) = setup().await;
    let learn = |domain: &str, mx: &str| DeliveryOp::LearnMx {
        domain: domain.into(),
        mx: mx.into(),
    };
    f.apply(Request::Deliver {
        now_ms: T0,
        mta: "relay.test".into(),
        ops: vec![
            learn("hosted.test", "aspmx.l.google.com"),
            learn("aol.com", "mx-aol.mail.gm0.yahoodns.net"),
        ],
    })
    .await;
    let st = f.reader.shaping(T0).unwrap();
    assert_eq!(st.provider("hosted.test").name, "gmail");
    assert_eq!(st.provider("aol.com").name, "aol", "the domain rule wins");
    assert_eq!(st.provider("other.test").name, "default");
}

/// A "slow down" or an assignment that never reached its sender gives its unit back to the
/// counters it was taken from; a delivery or a real failure does not.
#[tokio::test]
async fn throttled_and_unsent_grants_are_refunded() {
    use skein_queue::{AttemptRecord, AttemptResult, Disposition, Reply};
    let (mut f, keys) = setup().await;
    let t = T0 + 60_000;
    assert_eq!(f.lease(1, "192.0.2.1", "gmail", &keys[0..3], t).await, 3);
    let report = |lease: u64, key: &str, result: Option<AttemptResult>| DeliveryOp::Report {
        lease: Some(lease),
        rcpt: key.into(),
        attempt: result.map(|result| AttemptRecord {
            at_ms: t,
            sender: "s1".into(),
            source_ip: "192.0.2.1".into(),
            mx: String::new(),
            reply: Reply {
                code: 421,
                enhanced: "4.7.28".into(),
                text: "slow down".into(),
            },
            result,
        }),
        disposition: Disposition::Retry {
            at_ms: t,
            counted: false,
        },
    };
    f.apply(Request::Deliver {
        now_ms: t + 1,
        mta: "relay.test".into(),
        ops: vec![
            report(1, &keys[0], Some(AttemptResult::Throttled)),
            report(1, &keys[1], None),
            report(1, &keys[2], Some(AttemptResult::Transient)),
        ],
    })
    .await;
    let st = f.reader.shaping(t + 2).unwrap();
    assert_eq!(st.ips[0].sent_today, 1, "two of three given back");
    assert_eq!(st.ips[0].sent_this_hour.get("gmail"), Some(&1));
    // The hour's limit (3) has room for two again.
    assert_eq!(
        f.lease(2, "192.0.2.1", "gmail", &keys[3..10], t + 3).await,
        2
    );
    // A second report of the same lease gives nothing more back.
    f.apply(Request::Deliver {
        now_ms: t + 4,
        mta: "relay.test".into(),
        ops: vec![report(1, &keys[0], Some(AttemptResult::Throttled))],
    })
    .await;
    assert_eq!(f.reader.shaping(t + 5).unwrap().ips[0].sent_today, 3);
}

/// Restarting an IP's warm-up puts it on day 1 today; removing it stops its leases.
#[tokio::test]
async fn restarted_ips_warm_up_again_and_removed_ips_lease_nothing() {
    let (mut f, keys) = setup().await;
    // Day 3: past the tiny schedule's last step (warm, 8 a day).
    let d3 = T0 + 2 * DAY_MS + 60_000;
    assert!(f.reader.shaping(d3).unwrap().ips[0].warm);
    let r = f
        .apply(Request::Shaping {
            at_ms: d3,
            cmd: ShapingCommand::RestartWarmup {
                ip: "192.0.2.1".into(),
                reason: "new reputation".into(),
            },
        })
        .await;
    assert_eq!(r, Response::Shaped(ShapingOutcome::Done));
    let st = f.reader.shaping(d3).unwrap();
    assert_eq!(
        (st.ips[0].warm, st.ips[0].cap, st.ips[0].record.start_day),
        (false, 5, d3 / DAY_MS),
        "day 1 again"
    );
    assert_eq!(
        f.shape(ShapingCommand::RemoveIp {
            ip: "192.0.2.1".into()
        })
        .await,
        ShapingOutcome::Done
    );
    assert!(f.reader.shaping(d3).unwrap().ips.is_empty());
    assert_eq!(
        f.lease(1, "192.0.2.1", "gmail", &keys[0..3], d3 + 1).await,
        0
    );
}

/// From format 5 a stream (`acme+bulk`: mail that chose a pool) uses its tenant's suppression
/// list; before, every tenant name stood for itself, and entries of those formats still apply
/// that way. A tenant's allowed pools are replicated state.
#[tokio::test]
async fn streams_share_their_tenants_suppression_list_from_format_5() {
    for (format, suppressed) in [(4, false), (5, true)] {
        let mut f = Fixture::new();
        f.apply(Request::SetFormat { version: format }).await;
        f.apply(Request::Suppress(skein_queue::SuppressionRecord {
            tenant: "acme".into(),
            address: "r0@blocked.test".into(),
            reason: "550 5.1.1".into(),
            at_ms: T0,
        }))
        .await;
        let mut m = message(1, "blocked.test");
        m.tenant = skein_queue::skein_shaping::stream("acme", "bulk");
        let r = f
            .apply(Request::Enqueue {
                received_at_ms: T0,
                messages: vec![m],
            })
            .await;
        let Response::Enqueued { suppressed: s, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(!s.is_empty(), suppressed, "format {format}: {s:?}");
    }
    let mut f = Fixture::new();
    f.apply(Request::SetFormat { version: 5 }).await;
    assert_eq!(
        f.shape(ShapingCommand::AllowPools {
            tenant: "acme".into(),
            pools: vec!["bulk".into(), "trans".into()],
        })
        .await,
        ShapingOutcome::Done
    );
    assert_eq!(
        f.reader.pools_of("acme").unwrap(),
        (
            DEFAULT_POOL.to_string(),
            vec!["bulk".into(), "trans".into()]
        )
    );
    f.shape(ShapingCommand::AllowPools {
        tenant: "acme".into(),
        pools: Vec::new(),
    })
    .await;
    assert!(f.reader.pools_of("acme").unwrap().1.is_empty());
}
