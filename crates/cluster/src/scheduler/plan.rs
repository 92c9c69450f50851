//! What one scheduling round decides, as pure functions of what the round read: the reports
//! and due recipients in, the [`DeliveryOp`]s to propose and the assignments to send once
//! they commit out. No I/O, no clock, no global randomness (the caller passes the time and a
//! seeded [`fastrand::Rng`]), so every decision is unit-tested and replayable.
//!
//! The planner ([`super::planner`]) reads the inputs and runs these; the driver proposes one
//! [`skein_queue::Request::Deliver`] and sends the assignments whose leases were granted.

use skein_config::DeliveryConfig;
use skein_proto::work::{Outcome, Report};
use skein_queue::{AttemptRecord, AttemptResult, DeliveryOp, Disposition, RcptRecord, Reply};

use super::policy;

/// A slot reserved on a sender for one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Session id.
    pub conn: u64,
    /// Sender name.
    pub sender: String,
    /// Source IP chosen.
    pub source_ip: String,
    /// Its EHLO name.
    pub ehlo: String,
}

/// The provider an assignment counts against, with its limits for one source IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRef {
    /// The provider's name.
    pub name: String,
    /// Connections open at once from the IP.
    pub max_connections: u32,
    /// Messages per connection.
    pub max_per_connection: u32,
}

/// An assignment planned in a round, sent once its lease commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The lease token.
    pub lease: u64,
    /// The sender slot reserved for it.
    pub slot: Slot,
    /// The message.
    pub message_id: String,
    /// The message's tenant.
    pub tenant: String,
    /// The destination domain.
    pub domain: String,
    /// (recipient key, address) pairs.
    pub rcpts: Vec<(String, String)>,
    /// When the lease lapses.
    pub expires_ms: i64,
    /// The provider it counts against, when sending limits apply.
    pub provider: Option<ProviderRef>,
}

/// What a round decided.
#[derive(Debug, Default)]
pub struct RoundPlan {
    /// The operations to propose, in order.
    pub ops: Vec<DeliveryOp>,
    /// Assignments to send once their leases commit.
    pub planned: Vec<Planned>,
    /// (recipient before, attempt, disposition) of each report op, for events.
    pub reported: Vec<(RcptRecord, AttemptRecord, Disposition)>,
    /// The provider each reported recipient's domain belongs to (recipient key → name),
    /// when sending limits are in force.
    pub providers: std::collections::HashMap<String, String>,
    /// Recipients expired without an attempt.
    pub expired: Vec<RcptRecord>,
    /// Whether the assignment memory budget held work back.
    pub starved: bool,
    /// Queues (tenant, domain) whose pool spent its budget, and until when.
    pub spent: Vec<(String, String, i64)>,
}

/// One sender report as the round read it.
#[derive(Debug)]
pub struct ReportIn {
    /// The report.
    pub report: Report,
    /// The name of the sender whose session sent it.
    pub sender: String,
    /// The current record of each of `report.rcpts` (same order), `None` when gone.
    pub records: Vec<Option<RcptRecord>>,
    /// For each of `records`, its tenant's own suppression rule when it has one and the
    /// recipient failed permanently (else the configuration's applies).
    pub policies: Vec<Option<skein_config::SuppressionPolicy>>,
}

/// Adds the report ops for `reports` to `plan`. Attempt times and the reporting sender are
/// the leader's: the round's time and the session's name, never what a sender's clock or a
/// lease record says. Only the sender holding a recipient's lease may report anything but a
/// delivery about it; a delivery counts from whoever made it while the recipient is not
/// final (sending it again would be a duplicate).
///
/// With sending limits (`shaped`), a "slow down" backs off the IP for that provider instead
/// (the caller's business), and the recipient is due again at once: another IP may take it.
pub fn reports(
    cfg: &DeliveryConfig,
    now_ms: i64,
    rng: &mut fastrand::Rng,
    reports: Vec<ReportIn>,
    shaped: bool,
    plan: &mut RoundPlan,
) {
    for ReportIn {
        report,
        sender,
        records,
        mut policies,
    } in reports
    {
        policies.resize(records.len(), None);
        for ((r, rec), own) in report.rcpts.iter().zip(records).zip(policies) {
            let Some(rec) = rec else {
                continue;
            };
            let result = match Outcome::try_from(r.outcome) {
                Ok(Outcome::Delivered) => AttemptResult::Delivered,
                Ok(Outcome::Permanent) => AttemptResult::Permanent,
                Ok(Outcome::Throttled) => AttemptResult::Throttled,
                // An unknown outcome from a newer or broken sender: try again.
                Ok(Outcome::Transient | Outcome::Unspecified) | Err(_) => AttemptResult::Transient,
            };
            let holder = match &rec.state {
                skein_queue::RcptState::Leased(l) => l.id == report.lease && l.sender == sender,
                _ => false,
            };
            if result != AttemptResult::Delivered && !holder {
                tracing::debug!(
                    rcpt = %r.key,
                    lease = report.lease,
                    %sender,
                    "report from a session not holding the lease: ignored"
                );
                continue;
            }
            // What a sender reports ends up in DSNs, histories and events: a reply code, an
            // RFC 3463 code or nothing, and text on one line.
            let reply = Reply {
                code: u16::try_from(r.code)
                    .ok()
                    .filter(|c| (200..600).contains(c))
                    .unwrap_or(0),
                enhanced: enhanced_code(&r.enhanced),
                text: one_line(&r.text, 1000),
            };
            let mut disposition = policy::disposition(cfg, &rec, result, &reply, now_ms, rng.f64());
            if let (Disposition::BounceWith(_), Some(own)) = (&disposition, own) {
                disposition = Disposition::BounceWith(policy::suppress_rule(&own, &reply));
            }
            if shaped && result == AttemptResult::Throttled {
                if let Disposition::Retry { .. } = disposition {
                    disposition = Disposition::Retry {
                        at_ms: now_ms,
                        counted: false,
                    };
                }
            }
            let attempt = AttemptRecord {
                at_ms: now_ms,
                sender: one_line(&sender, 64),
                source_ip: one_line(&report.source_ip, 64),
                mx: one_line(&report.mx, 300),
                reply,
                result,
            };
            plan.ops.push(DeliveryOp::Report {
                lease: Some(report.lease),
                rcpt: r.key.clone(),
                attempt: Some(attempt.clone()),
                disposition: disposition.clone(),
            });
            plan.reported.push((rec, attempt, disposition));
        }
    }
}

/// The ops that give back leases whose assignment never reached a sender: the recipients are
/// due again at once, with no attempt counted, instead of waiting for the lease to lapse.
pub fn release(now_ms: i64, unsent: &[(u64, Vec<String>)]) -> Vec<DeliveryOp> {
    unsent
        .iter()
        .flat_map(|(lease, keys)| {
            keys.iter().map(move |k| DeliveryOp::Report {
                lease: Some(*lease),
                rcpt: k.clone(),
                attempt: None,
                disposition: Disposition::Retry {
                    at_ms: now_ms,
                    counted: false,
                },
            })
        })
        .collect()
}

/// What [`Slots::reserve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A slot for the first `n` recipients (fewer than asked when the IP's budget is short),
    /// with the provider they count against when sending limits apply.
    Slot {
        /// The slot.
        slot: Slot,
        /// The provider, when sending limits apply.
        provider: Option<ProviderRef>,
        /// Recipients it may take.
        n: usize,
    },
    /// No sender with room can take it now.
    NoSlot,
    /// Every IP of its pool has spent its budget for this provider: nothing before `until_ms`
    /// (the next hour or day boundary).
    Spent {
        /// When a budget renews.
        until_ms: i64,
    },
}

/// The senders' side of a round, as [`due`] sees it.
pub trait Slots {
    /// Whether any sender has room at all.
    fn any_free(&self) -> bool;
    /// Reserves a slot for lease `lease`, for up to `n` recipients of `tenant`'s mail to
    /// `domain`.
    fn reserve(&mut self, lease: u64, tenant: &str, domain: &str, n: usize) -> Reserved;
    /// Body bytes of assignments sent but not yet taken by their senders.
    fn held_bytes(&self) -> u64;
}

/// Adds to `plan` what to do with `due` recipients (in the order to serve them): expire the
/// ones past the maximum age; lease the rest, one assignment per message and domain (at most
/// `max_rcpts_per_assignment` recipients each), while senders have room and bodies waiting for
/// senders stay within `assignment_memory`. Groups (message and domain, in the order of their
/// first recipient) take turns, one assignment each per turn. `size_of` gives a message's
/// size. A group that finds no slot or no room is skipped, not the rest of the round; one
/// message always goes when nothing is held, however large.
pub fn due(
    cfg: &DeliveryConfig,
    now_ms: i64,
    rng: &mut fastrand::Rng,
    due: Vec<RcptRecord>,
    mut size_of: impl FnMut(&str) -> u64,
    slots: &mut impl Slots,
    plan: &mut RoundPlan,
) {
    let free = slots.any_free();
    let held = slots.held_bytes();
    // Groups of one message and domain, in the order their first recipient came.
    let mut groups: Vec<((String, String), Vec<RcptRecord>)> = Vec::new();
    let mut group_of: std::collections::HashMap<(String, String), usize> = Default::default();
    for r in due {
        if policy::expired(cfg, &r, now_ms) {
            plan.ops.push(DeliveryOp::Report {
                lease: None,
                rcpt: r.key.clone(),
                attempt: None,
                disposition: Disposition::Expire,
            });
            plan.expired.push(r);
        } else if free {
            let key = (r.message_id.clone(), r.domain.clone());
            let i = *group_of.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(r);
        }
    }
    let mut room = cfg.assignment_memory.0.saturating_sub(held);
    let expires_ms = now_ms + cfg.lease.0.as_millis() as i64;
    // Assignments in turns: the first chunk of every group, then every second, ... so a
    // message to thousands of recipients of one domain cannot take every slot ahead of the
    // groups after it.
    let mut groups: Vec<(String, String, u64, std::vec::IntoIter<Vec<RcptRecord>>)> = groups
        .into_iter()
        .map(|((message_id, domain), rcpts)| {
            let size = size_of(&message_id);
            let chunks: Vec<Vec<RcptRecord>> = rcpts
                .chunks(cfg.max_rcpts_per_assignment)
                .map(<[RcptRecord]>::to_vec)
                .collect();
            (message_id, domain, size, chunks.into_iter())
        })
        .collect();
    while !groups.is_empty() {
        groups.retain_mut(|(message_id, domain, size, chunks)| {
            let Some(chunk) = chunks.next() else {
                return false;
            };
            let (message_id, domain, size) = (&*message_id, &*domain, *size);
            let tenant = chunk[0].tenant.clone();
            if size > room && (held > 0 || !plan.planned.is_empty()) {
                plan.starved = true;
                return false;
            }
            let lease = rng.u64(1..);
            let (slot, provider, n) = match slots.reserve(lease, &tenant, domain, chunk.len()) {
                Reserved::Slot { slot, provider, n } => (slot, provider, n.min(chunk.len())),
                Reserved::NoSlot => return false,
                Reserved::Spent { until_ms } => {
                    plan.spent
                        .push((tenant.clone(), domain.to_string(), until_ms));
                    return false;
                }
            };
            let chunk = &chunk[..n];
            room = room.saturating_sub(size);
            let rcpts = chunk.iter().map(|r| r.key.clone()).collect();
            plan.ops.push(match &provider {
                None => DeliveryOp::Lease {
                    lease,
                    sender: slot.sender.clone(),
                    source_ip: slot.source_ip.clone(),
                    expires_ms,
                    rcpts,
                },
                Some(p) => DeliveryOp::LeaseShaped {
                    lease,
                    sender: slot.sender.clone(),
                    source_ip: slot.source_ip.clone(),
                    provider: p.name.clone(),
                    expires_ms,
                    rcpts,
                },
            });
            plan.planned.push(Planned {
                lease,
                slot,
                message_id: message_id.to_string(),
                tenant,
                domain: domain.to_string(),
                rcpts: chunk
                    .iter()
                    .map(|r| (r.key.clone(), r.address.clone()))
                    .collect(),
                expires_ms,
                provider,
            });
            true
        });
    }
}

/// `s` cut to at most `max` characters.
/// At most `max` characters of `s`, control characters (CR, LF, NUL...) as spaces.
fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `s` if it is an RFC 3463 status code (`class.subject.detail`: 2, 4 or 5, then one to
/// three digits twice), else empty.
fn enhanced_code(s: &str) -> String {
    let mut parts = s.split('.');
    let ok = matches!(parts.next(), Some("2" | "4" | "5"))
        && parts.clone().count() == 2
        && parts.all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        s.to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skein_core::{ByteSize, HumanDuration};
    use skein_proto::work::RecipientResult;
    use skein_queue::{Lease, RcptState, SuppressRule};

    use super::*;

    const NOW: i64 = 1_000_000_000;

    fn cfg() -> DeliveryConfig {
        DeliveryConfig {
            max_rcpts_per_assignment: 2,
            assignment_memory: ByteSize(1_000),
            lease: HumanDuration(Duration::from_secs(60)),
            ..DeliveryConfig::default()
        }
    }

    fn rcpt(message: &str, n: usize, domain: &str) -> RcptRecord {
        RcptRecord {
            key: format!("{message}{n:04X}"),
            message_id: message.into(),
            address: format!("r{n}@{domain}"),
            domain: domain.into(),
            tenant: String::new(),
            state: RcptState::Queued,
            attempts: 0,
            due_ms: NOW - 10,
            received_at_ms: NOW - 1_000,
            last_reply: None,
            history: Vec::new(),
            final_at_ms: None,
        }
    }

    /// Senders with `free` slots, one of them refusing lease number `refuse` (1-based).
    struct Fake {
        free: usize,
        calls: usize,
        refuse: Option<usize>,
        held: u64,
    }

    impl Slots for Fake {
        fn any_free(&self) -> bool {
            self.free > 0
        }

        fn reserve(&mut self, lease: u64, _: &str, _: &str, n: usize) -> Reserved {
            self.calls += 1;
            if self.free == 0 || Some(self.calls) == self.refuse {
                return Reserved::NoSlot;
            }
            self.free -= 1;
            Reserved::Slot {
                slot: Slot {
                    conn: 1,
                    sender: "s1".into(),
                    source_ip: "127.0.0.9".into(),
                    ehlo: format!("out{lease}.test"),
                },
                provider: None,
                n,
            }
        }

        fn held_bytes(&self) -> u64 {
            self.held
        }
    }

    fn senders(free: usize) -> Fake {
        Fake {
            free,
            calls: 0,
            refuse: None,
            held: 0,
        }
    }

    /// [`super::due`] with the test configuration and a fixed seed.
    fn plan_due(
        due: Vec<RcptRecord>,
        size_of: impl FnMut(&str) -> u64,
        slots: &mut Fake,
    ) -> RoundPlan {
        let mut plan = RoundPlan::default();
        let mut rng = fastrand::Rng::with_seed(7);
        super::due(&cfg(), NOW, &mut rng, due, size_of, slots, &mut plan);
        plan
    }

    fn leased(plan: &RoundPlan) -> Vec<Vec<String>> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                DeliveryOp::Lease { rcpts, .. } => Some(rcpts.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn recipients_are_grouped_by_message_and_domain_in_order_and_chunked() {
        let due = vec![
            rcpt("B", 0, "x.test"),
            rcpt("A", 0, "x.test"),
            rcpt("B", 1, "x.test"),
            rcpt("B", 2, "x.test"),
            rcpt("B", 3, "y.test"),
        ];
        let plan = plan_due(due, |_| 10, &mut senders(10));
        assert_eq!(
            leased(&plan),
            [
                vec!["B0000", "B0001"],
                vec!["A0000"],
                vec!["B0003"],
                vec!["B0002"]
            ],
            "the groups' first chunks first, then their second ones"
        );
        let p = &plan.planned[0];
        assert_eq!(p.expires_ms, NOW + 60_000);
        assert_eq!(p.rcpts[1], ("B0001".into(), "r1@x.test".into()));
        // Same seed, same decisions (lease ids included).
        let due = vec![rcpt("B", 0, "x.test"), rcpt("A", 0, "x.test")];
        let again = plan_due(due.clone(), |_| 10, &mut senders(10));
        let third = plan_due(due, |_| 10, &mut senders(10));
        assert_eq!(again.ops, third.ops);
    }

    #[test]
    fn too_old_recipients_expire_and_no_senders_means_no_leases() {
        let mut old = rcpt("A", 0, "x.test");
        old.received_at_ms = NOW - 6 * 24 * 3600 * 1000;
        let plan = plan_due(vec![old, rcpt("B", 0, "x.test")], |_| 10, &mut senders(0));
        assert_eq!(plan.expired.len(), 1);
        assert!(matches!(
            &plan.ops[..],
            [DeliveryOp::Report {
                lease: None,
                disposition: Disposition::Expire,
                ..
            }]
        ));
        assert!(plan.planned.is_empty());
    }

    /// A group no sender takes is skipped; the groups after it are still served.
    #[test]
    fn a_refused_group_does_not_end_the_round() {
        let due = vec![
            rcpt("A", 0, "x.test"),
            rcpt("B", 0, "x.test"),
            rcpt("C", 0, "x.test"),
        ];
        let mut slots = Fake {
            refuse: Some(1),
            ..senders(10)
        };
        let plan = plan_due(due, |_| 10, &mut slots);
        assert_eq!(leased(&plan), [vec!["B0000"], vec!["C0000"]]);
    }

    /// Bodies held for senders stay within the budget: smaller messages still fit, and one
    /// message goes when nothing is held however large it is.
    #[test]
    fn the_assignment_budget_holds_back_what_does_not_fit() {
        let due = vec![
            rcpt("A", 0, "x.test"),
            rcpt("B", 0, "x.test"),
            rcpt("C", 0, "x.test"),
        ];
        let size = |id: &str| if id == "B" { 900 } else { 400 };
        let plan = plan_due(due.clone(), size, &mut senders(10));
        assert_eq!(leased(&plan), [vec!["A0000"], vec!["C0000"]]);
        assert!(plan.starved);

        // 800 already held: only 200 left, nothing fits.
        let mut busy = Fake {
            held: 800,
            ..senders(10)
        };
        let plan = plan_due(due, size, &mut busy);
        assert!(plan.planned.is_empty());
        assert!(plan.starved);

        // Nothing held: a message larger than the whole budget still goes, alone.
        let due = vec![rcpt("D", 0, "x.test"), rcpt("E", 0, "x.test")];
        let plan = plan_due(due, |_| 5_000, &mut senders(10));
        assert_eq!(leased(&plan), [vec!["D0000"]]);
    }

    /// Recipient A0000 of x.test, leased (5) to sender-a.
    fn leased_to_a() -> RcptRecord {
        let mut rec = rcpt("A", 0, "x.test");
        rec.state = RcptState::Leased(Lease {
            id: 5,
            sender: "sender-a".into(),
            source_ip: "127.0.0.9".into(),
            expires_ms: NOW + 1,
        });
        rec
    }

    #[test]
    fn reports_carry_the_leaders_time_and_the_reporting_session() {
        let rec = leased_to_a();
        let report = Report {
            lease: 5,
            rcpts: vec![
                RecipientResult {
                    key: "A0000".into(),
                    outcome: Outcome::Transient as i32,
                    code: 451,
                    enhanced: "4.3.0".into(),
                    text: "try later ".repeat(200),
                },
                RecipientResult {
                    key: "GONE".into(),
                    outcome: Outcome::Delivered as i32,
                    ..Default::default()
                },
            ],
            source_ip: "127.0.0.9".into(),
            mx: "mx.x.test".into(),
            // A sender whose clock is a day off.
            finished_ms: NOW - 86_400_000,
        };
        let mut plan = RoundPlan::default();
        let mut rng = fastrand::Rng::with_seed(3);
        super::reports(
            &cfg(),
            NOW,
            &mut rng,
            vec![ReportIn {
                report,
                sender: "sender-a".into(),
                records: vec![Some(rec), None],
                policies: Vec::new(),
            }],
            false,
            &mut plan,
        );
        assert_eq!(plan.ops.len(), 1, "the recipient that is gone is skipped");
        let (_, attempt, disposition) = &plan.reported[0];
        assert_eq!(attempt.at_ms, NOW);
        assert_eq!(attempt.sender, "sender-a");
        assert_eq!(attempt.reply.code, 451);
        assert_eq!(attempt.reply.text.chars().count(), 1000);
        assert!(matches!(
            disposition,
            Disposition::Retry { at_ms, counted: true } if *at_ms > NOW
        ));
    }

    /// The round that takes one report from sender-a about `rec`, with its tenant's rule.
    fn plan_one(
        report: Report,
        rec: RcptRecord,
        own: Option<skein_config::SuppressionPolicy>,
    ) -> RoundPlan {
        let mut plan = RoundPlan::default();
        super::reports(
            &cfg(),
            NOW,
            &mut fastrand::Rng::with_seed(1),
            vec![ReportIn {
                report,
                sender: "sender-a".into(),
                records: vec![Some(rec)],
                policies: vec![own],
            }],
            false,
            &mut plan,
        );
        plan
    }

    /// What a sender reports cannot put lines into DSNs or histories: control characters
    /// become spaces, an enhanced code that is not one is dropped, a code outside 200-599 is 0.
    #[test]
    fn reported_fields_are_one_line_and_well_formed() {
        let rec = leased_to_a();
        let report = |code: u32, enhanced: &str| Report {
            lease: 5,
            rcpts: vec![RecipientResult {
                key: "A0000".into(),
                outcome: Outcome::Permanent as i32,
                code,
                enhanced: enhanced.into(),
                text: "no\r\nSubject: injected\0".into(),
            }],
            source_ip: "127.0.0.9".into(),
            mx: "mx.x.test\r\nX-Evil: 1".into(),
            ..Default::default()
        };
        let mut got = Vec::new();
        for (code, enhanced) in [(550, "5.1.1"), (999, "5.1.1\r\nX: y"), (550, "5.1234.1")] {
            let plan = plan_one(report(code, enhanced), rec.clone(), None);
            let a = &plan.reported[0].1;
            assert_eq!(a.reply.text, "no  Subject: injected ");
            assert_eq!(a.mx, "mx.x.test  X-Evil: 1");
            got.push((a.reply.code, a.reply.enhanced.clone()));
        }
        assert_eq!(
            got,
            [
                (550, "5.1.1".into()),
                (0, String::new()),
                (550, String::new())
            ]
        );
    }

    /// A tenant's own suppression rule decides its domain-level bounces instead of the
    /// configuration's; mailbox bounces suppress at once either way.
    #[test]
    fn a_tenants_own_rule_decides_its_bounces() {
        let rec = leased_to_a();
        let rule = |enhanced: &str, own: Option<skein_config::SuppressionPolicy>| {
            let report = Report {
                lease: 5,
                rcpts: vec![RecipientResult {
                    key: "A0000".into(),
                    outcome: Outcome::Permanent as i32,
                    code: 550,
                    enhanced: enhanced.into(),
                    text: "no".into(),
                }],
                ..Default::default()
            };
            let plan = plan_one(report, rec.clone(), own);
            match &plan.reported[0].2 {
                Disposition::BounceWith(r) => r.clone(),
                other => panic!("{other:?}"),
            }
        };
        let day = 86_400_000;
        assert_eq!(
            rule("5.1.2", None),
            SuppressRule::After {
                strikes: 3,
                span_ms: 2 * day,
                window_ms: 30 * day,
                expire_after_ms: 0
            }
        );
        let once = skein_queue::TenantSuppressionPolicy {
            domain_failures: 1,
            domain_failure_span_ms: 0,
            domain_failure_window_ms: day,
            expire_after_ms: 7 * day,
        };
        let once = Some(super::policy::tenant_policy(&once));
        assert_eq!(
            rule("5.1.2", once.clone()),
            SuppressRule::After {
                strikes: 1,
                span_ms: 0,
                window_ms: day,
                expire_after_ms: 7 * day
            }
        );
        assert_eq!(
            rule("5.1.1", once),
            SuppressRule::Now {
                expire_after_ms: 7 * day
            }
        );
        let never = skein_config::SuppressionPolicy {
            domain_failures: 0,
            ..Default::default()
        };
        assert_eq!(rule("5.1.2", Some(never)), SuppressRule::Never);
    }

    /// A failure reported by a session that does not hold the lease (another sender, or a
    /// stale token) is ignored; a delivery counts from whoever made it, recorded under the
    /// reporting session's name.
    #[test]
    fn only_the_lease_holder_reports_failures_but_any_delivery_counts() {
        let rec = leased_to_a();
        let one = |lease: u64, outcome: Outcome, sender: &str| ReportIn {
            report: Report {
                lease,
                rcpts: vec![RecipientResult {
                    key: "A0000".into(),
                    outcome: outcome as i32,
                    code: 550,
                    enhanced: "5.1.1".into(),
                    text: "no such user".into(),
                }],
                ..Default::default()
            },
            sender: sender.into(),
            records: vec![Some(rec.clone())],
            policies: Vec::new(),
        };
        let mut plan = RoundPlan::default();
        let mut rng = fastrand::Rng::with_seed(3);
        super::reports(
            &cfg(),
            NOW,
            &mut rng,
            vec![
                one(5, Outcome::Permanent, "intruder"),
                one(4, Outcome::Permanent, "sender-a"),
                one(4, Outcome::Delivered, "sender-b"),
            ],
            false,
            &mut plan,
        );
        assert_eq!(plan.reported.len(), 1, "{:?}", plan.reported);
        let (_, attempt, disposition) = &plan.reported[0];
        assert_eq!(*disposition, Disposition::Delivered);
        assert_eq!(attempt.sender, "sender-b");
        assert!(matches!(
            &plan.ops[..],
            [DeliveryOp::Report { lease: Some(4), .. }]
        ));
    }

    #[test]
    fn unsent_leases_are_released_at_once_without_an_attempt() {
        let ops = release(NOW, &[(9, vec!["A0000".into(), "A0001".into()])]);
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[1],
            DeliveryOp::Report {
                lease: Some(9),
                rcpt: "A0001".into(),
                attempt: None,
                disposition: Disposition::Retry {
                    at_ms: NOW,
                    counted: false
                },
            }
        );
    }
}
