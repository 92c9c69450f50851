//! The replicated format is forever: log entries, and snapshots written by an earlier release
//! must decode and apply to the very same state in this one.
//!
//! `fixtures/format-v2.txt` was written the same way by release 2fb3a65 (format 2), from
//! `fixtures/format_v2_entries.rs`; `fixtures/format-v4.txt` by release d876c97 (format 4:
//! sending limits), from `fixtures/format_v4_entries.rs`; `fixtures/format-v5.txt` by release
//! c1572a8 (format 5: pools chosen by message), from `fixtures/format_v5_entries.rs`;
//! `fixtures/format-v6.txt` by release 635068c (format 6: Admin tokens), from
//! `fixtures/format_v6_entries.rs`; `fixtures/format-v7.txt` by release bc18e07
//! (suppression rules, deletion, tenants' rules, the cluster id), from
//! `fixtures/format_v7_entries.rs`.
//!
//! `fixtures/format-v1.txt` was written by release 0.1.0 (the format before submission ids):
//! one line per log entry covering every command, then a snapshot of the state they build and
//! the digest of that state. This test decodes each entry and checks it is the value it was
//! written from, applies them to a fresh store and compares the state digest, and installs the
//! old snapshot on another fresh store and compares again. A fixture is never regenerated: a
//! new format version adds a file of its own (set `SKEIN_WRITE_FORMAT_FIXTURE=PATH` to write
//! one from [`entries`]).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
};
use skein_queue::{
    AttemptRecord, AttemptResult, DeliveryOp, Disposition, DkimKeyRecord, NewMessage, NodeId,
    Reply, Request, SuppressionRecord, TenantRecord, TypeConfig,
};

const FIXTURE: &str = include_str!("fixtures/format-v1.txt");
/// Written by release 2fb3a65 (format 2) from [`entries_v2`].
const FIXTURE_V2: &str = include_str!("fixtures/format-v2.txt");

/// Written by release d876c97 (format 4) from [`entries_v4`].
const FIXTURE_V4: &str = include_str!("fixtures/format-v4.txt");

/// Written by release c1572a8 (format 5) from [`entries_v5`].
const FIXTURE_V5: &str = include_str!("fixtures/format-v5.txt");

/// Written by release 635068c (format 6) from [`entries_v6`].
const FIXTURE_V6: &str = include_str!("fixtures/format-v6.txt");

include!("fixtures/format_v2_entries.rs");
include!("fixtures/format_v4_entries.rs");
include!("fixtures/format_v5_entries.rs");
include!("fixtures/format_v6_entries.rs");
include!("fixtures/format_v7_entries.rs");

/// Written by release bc18e07 from [`entries_v7`].
const FIXTURE_V7: &str = include_str!("fixtures/format-v7.txt");

fn at(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload,
    }
}

/// A scheduler entry of `ops` at `now_ms` (the fixtures' MTA name).
fn deliver(index: u64, now_ms: i64, ops: Vec<DeliveryOp>) -> Entry<TypeConfig> {
    cmd(
        index,
        Request::Deliver {
            now_ms,
            mta: "relay.example".into(),
            ops,
        },
    )
}

fn cmd(index: u64, r: Request) -> Entry<TypeConfig> {
    at(index, EntryPayload::Normal(r))
}

fn message(tenant: &str, from: &str, to: &[&str], body: &str) -> NewMessage {
    NewMessage {
        tenant: tenant.into(),
        mail_from: from.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        data: format!("From: <{from}>\r\nSubject: fixture\r\n\r\n{body}\r\n")
            .into_bytes()
            .into(),
        client_ip: "192.0.2.7".into(),
        helo: "client.example".into(),
        edge: "edge-1".into(),
        smtputf8: false,
        body_8bit: true,
    }
}

fn attempt(at_ms: i64, code: u16, enhanced: &str, result: AttemptResult) -> AttemptRecord {
    AttemptRecord {
        at_ms,
        sender: "sender-a".into(),
        source_ip: "198.51.100.1".into(),
        mx: "mx.example.net [203.0.113.5]:25".into(),
        reply: Reply {
            code,
            enhanced: enhanced.into(),
            text: format!("fixture reply {code}"),
        },
        result,
    }
}

/// Every kind of entry the v1 format has, in an order that exercises each command's effects.
fn entries() -> Vec<Entry<TypeConfig>> {
    let nodes: BTreeMap<NodeId, BasicNode> = (1..=3)
        .map(|i| {
            (
                i,
                BasicNode {
                    addr: format!("10.0.0.{i}:7070"),
                },
            )
        })
        .collect();
    let m1 = "0000000000070000";
    let m2 = "0000000000070001";
    vec![
        at(
            1,
            EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)),
        ),
        at(2, EntryPayload::Blank),
        cmd(
            3,
            Request::CreateTenant(TenantRecord {
                name: "acme".into(),
                username: "acme-user".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
                enabled: true,
                dsn: false,
                created_at_ms: 1_000,
            }),
        ),
        cmd(
            4,
            Request::UpdateTenant {
                name: "acme".into(),
                enabled: None,
                dsn: Some(true),
            },
        ),
        cmd(
            5,
            Request::Suppress(SuppressionRecord {
                tenant: "acme".into(),
                address: "blocked@example.net".into(),
                reason: "asked us to stop".into(),
                at_ms: 2_000,
            }),
        ),
        cmd(
            6,
            Request::SetDkimKey(DkimKeyRecord {
                tenant: "acme".into(),
                domain: "acme.test".into(),
                selector: "s1".into(),
                algorithm: "ed25519-sha256".into(),
                private_key: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n".into(),
                dns_record: "v=DKIM1; k=ed25519; p=AAAA".into(),
                created_at_ms: 3_000,
            }),
        ),
        cmd(
            7,
            Request::Enqueue {
                received_at_ms: 1_000_000,
                messages: vec![
                    message(
                        "acme",
                        "app@acme.test",
                        &["a@example.net", "b@example.net", "blocked@example.net"],
                        "first",
                    ),
                    message("", "", &["c@example.org"], "second"),
                ],
            },
        ),
        cmd(
            8,
            Request::Deliver {
                now_ms: 1_000_100,
                mta: "relay.example".into(),
                ops: vec![
                    DeliveryOp::Lease {
                        lease: 42,
                        sender: "sender-a".into(),
                        source_ip: "198.51.100.1".into(),
                        expires_ms: 1_600_100,
                        rcpts: vec![format!("{m1}0000"), format!("{m1}0001")],
                    },
                    DeliveryOp::Lease {
                        lease: 43,
                        sender: "sender-a".into(),
                        source_ip: "198.51.100.1".into(),
                        expires_ms: 1_600_100,
                        rcpts: vec![format!("{m2}0000")],
                    },
                ],
            },
        ),
        cmd(
            9,
            Request::Deliver {
                now_ms: 1_000_200,
                mta: "relay.example".into(),
                ops: vec![
                    DeliveryOp::Report {
                        lease: Some(42),
                        rcpt: format!("{m1}0000"),
                        attempt: Some(attempt(1_000_150, 250, "2.0.0", AttemptResult::Delivered)),
                        disposition: Disposition::Delivered,
                    },
                    DeliveryOp::Report {
                        lease: Some(42),
                        rcpt: format!("{m1}0001"),
                        attempt: Some(attempt(1_000_150, 550, "5.1.1", AttemptResult::Permanent)),
                        disposition: Disposition::Bounce { suppress: true },
                    },
                    DeliveryOp::Report {
                        lease: Some(43),
                        rcpt: format!("{m2}0000"),
                        attempt: Some(attempt(1_000_160, 451, "4.3.0", AttemptResult::Transient)),
                        disposition: Disposition::Retry {
                            at_ms: 1_300_200,
                            counted: true,
                        },
                    },
                ],
            },
        ),
        cmd(
            10,
            Request::Deliver {
                now_ms: 5_000_000_000,
                mta: "relay.example".into(),
                ops: vec![DeliveryOp::Report {
                    lease: None,
                    rcpt: format!("{m2}0000"),
                    attempt: None,
                    disposition: Disposition::Expire,
                }],
            },
        ),
        cmd(
            11,
            Request::Unsuppress {
                tenant: "acme".into(),
                address: "blocked@example.net".into(),
            },
        ),
        cmd(
            12,
            Request::RemoveDkimKey {
                tenant: "acme".into(),
                domain: "acme.test".into(),
            },
        ),
        cmd(
            13,
            Request::Purge {
                before_ms: 2_000_000,
                limit: 10,
            },
        ),
    ]
}

/// Decodes each entry of `fixture` (checking it is the one in `want` and encodes the same),
/// applies them to a fresh store and compares the state digest `writer` recorded, then
/// installs `writer`'s snapshot on another fresh store and compares again.
async fn check(fixture: &str, want: Vec<Entry<TypeConfig>>, last_index: u64, writer: &str) {
    let field = |name: &str| -> Vec<&str> {
        fixture
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .collect()
    };

    let lines = field("entry");
    assert_eq!(lines.len(), want.len(), "one fixture line per entry");
    let mut decoded = Vec::new();
    for (line, want) in lines.iter().zip(&want) {
        let bytes = unhex(line);
        let e: Entry<TypeConfig> = postcard::from_bytes(&bytes)
            .unwrap_or_else(|err| panic!("entry {} no longer decodes: {err}", want.log_id));
        assert_eq!(&e, want, "entry {} decodes to something else", want.log_id);
        assert_eq!(
            postcard::to_allocvec(want).unwrap(),
            bytes,
            "entry {} encodes differently: old nodes could not read it",
            want.log_id
        );
        decoded.push(e);
    }
    let digest = u64::from_str_radix(field("digest")[0], 16).unwrap();
    let (applied, _, _) = apply_all(decoded).await;
    assert_eq!(
        applied, digest,
        "applying the fixture's entries gives a different state than {writer} did"
    );

    // Its snapshot installs to that same state.
    let meta: SnapshotMeta<NodeId, BasicNode> =
        postcard::from_bytes(&unhex(field("snapshot-meta")[0])).unwrap();
    let data = unhex(field("snapshot")[0]);
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
    let data = common::snapshot_data(&mut sm, &data).await;
    sm.install_snapshot(&meta, data).await.unwrap();
    assert_eq!(reader.state_digest().unwrap(), digest);
    assert_eq!(
        sm.applied_state().await.unwrap().0.map(|l| l.index),
        Some(last_index)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Applies `entries` to a fresh store: (state digest, snapshot meta and data).
async fn apply_all(
    entries: Vec<Entry<TypeConfig>>,
) -> (u64, SnapshotMeta<NodeId, BasicNode>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
    for e in entries {
        sm.apply([e]).await.unwrap();
    }
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    (
        reader.state_digest().unwrap(),
        snap.meta,
        common::read_data(snap.snapshot).await,
    )
}

#[tokio::test]
async fn v1_entries_and_snapshot_decode_and_apply_to_the_same_state() {
    if let Ok(path) = std::env::var("SKEIN_WRITE_FORMAT_FIXTURE") {
        write_fixture(&path, "v1, written by release 0.1.0", entries()).await;
        return;
    }
    check(FIXTURE, entries(), 13, "release 0.1.0").await;
}

/// Writes a fixture of `entries`: each entry, then the snapshot of the state they build and
/// its digest. Run by the release that writes the format, never again.
async fn write_fixture(path: &str, what: &str, entries: Vec<Entry<TypeConfig>>) {
    let (digest, meta, data) = apply_all(entries.clone()).await;
    let mut out = format!("# Skein replicated format {what}: never regenerate.\n");
    for e in entries {
        out += &format!("entry {}\n", hex(&postcard::to_allocvec(&e).unwrap()));
    }
    out += &format!(
        "snapshot-meta {}\n",
        hex(&postcard::to_allocvec(&meta).unwrap())
    );
    out += &format!("snapshot {}\n", hex(&data));
    out += &format!("digest {digest:016x}\n");
    std::fs::write(path, out).unwrap();
}

/// Entries and a snapshot written by the release before this one (format 2: submissions,
/// late deliveries under a newer lease) decode and apply to the same state here.
#[tokio::test]
async fn v2_entries_and_snapshot_from_the_previous_release_apply_to_the_same_state() {
    check(FIXTURE_V2, entries_v2(), 20, "release 2fb3a65").await;
}

/// Entries and a snapshot written by release d876c97 (format 4: command times never go
/// backwards, sending limits, learned MX hosts, shaped leases and their refunds) decode and
/// apply to the same state here.
#[tokio::test]
async fn v4_entries_and_snapshot_from_release_d876c97_apply_to_the_same_state() {
    if let Ok(path) = std::env::var("SKEIN_WRITE_FORMAT_FIXTURE_V4") {
        write_fixture(
            &path,
            "v4, written by release d876c97 (format 4)",
            entries_v4(),
        )
        .await;
        return;
    }
    check(FIXTURE_V4, entries_v4(), 36, "release d876c97").await;
}

/// Entries and a snapshot written by release c1572a8 (format 5: a tenant allowed a pool, a
/// message queued as the stream `tenant+pool` that chose it, found on its tenant's suppression
/// list) decode and apply to the same state here.
#[tokio::test]
async fn v5_entries_and_snapshot_from_release_c1572a8_apply_to_the_same_state() {
    if let Ok(path) = std::env::var("SKEIN_WRITE_FORMAT_FIXTURE_V5") {
        write_fixture(
            &path,
            "v5, written by release c1572a8 (format 5)",
            entries_v5(),
        )
        .await;
        return;
    }
    check(FIXTURE_V5, entries_v5(), 42, "release c1572a8").await;
}

/// Entries and a snapshot written by release 635068c (format 6: Admin tokens created, one
/// refused for a taken name, one revoked) decode and apply to the same state here.
#[tokio::test]
async fn v6_entries_and_snapshot_from_release_635068c_apply_to_the_same_state() {
    if let Ok(path) = std::env::var("SKEIN_WRITE_FORMAT_FIXTURE_V6") {
        write_fixture(
            &path,
            "v6, written by release 635068c (format 6)",
            entries_v6(),
        )
        .await;
        return;
    }
    check(FIXTURE_V6, entries_v6(), 47, "release 635068c").await;
}

/// Entries and a snapshot written by release bc18e07 (suppression rules with lapses and
/// counts, a DSN's bounce, a deletion, a tenant's rule, the replicated cluster id) decode and
/// apply to the same state here.
#[tokio::test]
async fn v7_entries_and_snapshot_from_release_bc18e07_apply_to_the_same_state() {
    if let Ok(path) = std::env::var("SKEIN_WRITE_FORMAT_FIXTURE_V7") {
        write_fixture(&path, "v7, written by release bc18e07", entries_v7()).await;
        return;
    }
    check(FIXTURE_V7, entries_v7(), 56, "release bc18e07").await;

    // And the entries did what format 7 says.
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, r) = skein_queue::open(dir.path()).unwrap();
    sm.apply(entries_v7()).await.unwrap();
    let suppressed = |a: &str| r.suppression("acme", a).unwrap().is_some();
    assert!(!suppressed("gone@x.example"), "lapsed, removed by entry 53");
    assert!(suppressed("a@dead.example"), "second domain-level bounce");
    assert!(!suppressed("b@dead.example"));
    assert!(
        r.strikes("acme", "b@dead.example").unwrap().is_none(),
        "delivered"
    );
    assert!(!suppressed("return-path@x.example"), "a DSN's bounce");
    let deleted = r
        .rcpt(&format!("{:012X}{:04X}0000", 49, 3))
        .unwrap()
        .unwrap();
    assert_eq!(deleted.state, skein_queue::RcptState::Deleted);
    assert!(r.suppression_policy("acme").unwrap().is_some());
    assert_eq!(
        r.replicated_cluster_id().unwrap().as_deref(),
        Some("c0ffee")
    );
}
