//! The planner: everything the scheduler decides, as a state machine without I/O.
//!
//! It owns the table of connected senders (their source IPs and free slots), the reports not
//! yet committed, the leases whose assignment never reached a sender, the fair cursor over the
//! queues and the queues held back until a time. The driver (`super::run`) feeds it
//! [`Input`]s, asks it for a [`Round`] (the operations to propose, read through a
//! [`QueueView`]), proposes them, and tells it how that ended: [`Planner::committed`] answers
//! with the assignments to send, [`Planner::failed`] keeps the reports for the next round.
//! Time and randomness come from the caller, so every decision replays from a seed.

use std::collections::{BTreeMap, HashMap, HashSet};

use skein_config::DeliveryConfig;
use skein_proto::work::{Hello, Report};
use skein_queue::{DeliveryOp, QueueError, ShapingState};

use super::plan::{self, Planned, ReportIn, Reserved, RoundPlan, Slot};
use super::view::QueueView;

/// Reports taken into one round.
pub const MAX_REPORTS_PER_ROUND: usize = 4096;
// Each report is about one message and each due recipient of a round about at most one:
// the DSNs one round's entry can generate must fit in the 65,536 positions of its ids.
const _: () = assert!(MAX_REPORTS_PER_ROUND + skein_config::delivery::MAX_BATCH <= 65_536);

/// A sender's report, tagged with its session.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Session id.
    pub conn: u64,
    /// The sender that opened the session (its hello).
    pub sender: String,
    /// The report.
    pub report: Report,
}

/// What happens around the planner.
#[derive(Debug)]
pub enum Input {
    /// A sender opened session `conn` with a (validated) hello.
    Joined {
        /// Session id.
        conn: u64,
        /// Its hello.
        hello: Hello,
    },
    /// Session `conn` ended.
    Left {
        /// Session id.
        conn: u64,
    },
    /// The sender of session `conn` is shutting down: no more work for it.
    Draining {
        /// Session id.
        conn: u64,
    },
    /// A sender reported an assignment's outcome.
    Report(SessionReport),
    /// The MX lookup [`Planner::lookups`] asked for ended, at `at_ms`: the domain's primary
    /// MX host, `None` when it has none (no records, no such domain, a null MX), or why the
    /// lookup failed.
    Mx {
        /// Recipient domain.
        domain: String,
        /// What the lookup found.
        result: Result<Option<String>, String>,
        /// When it ended.
        at_ms: i64,
    },
}

/// One connected sender as the planner counts it.
#[derive(Debug)]
struct Session {
    name: String,
    ips: Vec<(String, String)>,
    max_in_flight: usize,
    in_flight: HashSet<u64>,
    next_ip: usize,
}

/// A planned round: the operations to propose as one entry, and what to do once it commits.
#[derive(Debug)]
pub struct Round {
    /// The round's time (never before the latest command time applied).
    pub now_ms: i64,
    /// Operations to propose, in order.
    pub ops: Vec<DeliveryOp>,
    /// Reports and due recipients as decided, for the events of what applies.
    pub plan: RoundPlan,
    /// Reports the round took (the first of [`Planner`]'s pending ones).
    reports: usize,
    /// Unsent leases it releases.
    released: usize,
}

/// An assignment to send: its plan and the recipients whose lease was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// The planned assignment.
    pub planned: Planned,
    /// Keys of the recipients the entry leased (a subset of `planned.rcpts`).
    pub keys: Vec<String>,
}

/// The scheduler's state on a leader, between and within rounds.
#[derive(Debug)]
pub struct Planner {
    cfg: DeliveryConfig,
    sessions: BTreeMap<u64, Session>,
    cursor: usize,
    pending: Vec<SessionReport>,
    unsent: Vec<(u64, Vec<String>)>,
    blocked: HashMap<(String, String), i64>,
    /// The sending limits and counters last read, and what was planned since.
    shaping_cache: Option<ShapingCache>,
    /// How many of `pending` (from the front) a round has taken feedback from already.
    pending_seen: usize,
    /// (IP, provider) pairs backing off after "slow down" replies.
    backoff: HashMap<(String, String), Backoff>,
    /// Queues whose pool spent its budget, until when; forgotten when the limits change.
    held: HashMap<(String, String), i64>,
    /// The limits (records, not counters) the holds were decided under.
    limits: Option<Limits>,
    /// The queue of each assignment out with a sender, and how many each queue has out.
    out: HashMap<u64, (String, String)>,
    out_per_queue: HashMap<(String, String), usize>,
    /// MX lookups for domains no domain rule classifies.
    mx: MxLookups,
    /// Queues held by the sending limits since they last had a lease granted, and when last:
    /// their recipients that expire say the limits held them.
    limited: HashMap<(String, String), i64>,
}

/// MX lookups for recipient domains that no provider's domain rule names and whose MX host is
/// not known yet: their queues wait (briefly) for the answer, so a custom domain hosted at a
/// provider gets that provider's limits from its first message.
#[derive(Debug, Default)]
struct MxLookups {
    /// Domains to look up, not yet handed to the driver.
    wanted: Vec<String>,
    /// Domains being looked up (handed out or not).
    pending: HashSet<String>,
    /// MX hosts found, to learn in the next round.
    found: Vec<(String, String)>,
    /// Domains without an MX host to go by (none, or the lookup failed), until when: they are
    /// classified by their domain alone (the default class, usually) meanwhile.
    unknown: HashMap<String, i64>,
}

/// Lookups out at once.
const MAX_MX_LOOKUPS: usize = 64;
/// Domains remembered as having no MX host to go by.
const MAX_MX_UNKNOWN: usize = 100_000;
/// How long a domain without MX records goes by its domain alone before it is looked up again.
const NO_MX_TTL_MS: i64 = 3_600_000;
/// How long after a failed lookup (timeout, SERVFAIL) a domain goes by its domain alone.
const MX_RETRY_MS: i64 = 300_000;

impl MxLookups {
    /// Whether queues of `domain` wait for its MX host: under sending limits, a domain that no
    /// domain rule names, whose MX host is neither learned nor known to be missing. Asks for a
    /// lookup the first time.
    fn waits(&mut self, st: &ShapingState, domain: &str, now_ms: i64) -> bool {
        if st.mx.contains_key(domain) || skein_shaping::by_domain(&st.providers, domain).is_some() {
            return false;
        }
        // A domain looked up before goes by what was found meanwhile, even while it is
        // looked up again; only a domain never looked up waits.
        let known = match self.unknown.get(domain) {
            Some(&until) if until > now_ms => return false,
            Some(_) => true,
            None => false,
        };
        if !self.pending.contains(domain) {
            if self.pending.len() >= MAX_MX_LOOKUPS {
                // Its turn comes when a lookup ends.
                return !known;
            }
            self.pending.insert(domain.to_string());
            self.wanted.push(domain.to_string());
        }
        !known
    }

    /// A lookup ended.
    fn ended(&mut self, domain: String, result: Result<Option<String>, String>, at_ms: i64) {
        if !self.pending.remove(&domain) {
            return;
        }
        let until = match result {
            Ok(Some(mx)) => {
                self.found.push((domain, mx));
                return;
            }
            Ok(None) => at_ms.saturating_add(NO_MX_TTL_MS),
            Err(e) => {
                tracing::info!(%domain, error = %e, "MX lookup failed: its provider is decided by the domain alone for now");
                at_ms.saturating_add(MX_RETRY_MS)
            }
        };
        // Entries outlive their time (such a domain is looked up again without waiting),
        // until there are too many.
        if self.unknown.len() >= MAX_MX_UNKNOWN {
            self.unknown.retain(|_, u| *u > at_ms);
        }
        if self.unknown.len() < MAX_MX_UNKNOWN {
            self.unknown.insert(domain, until);
        }
    }
}

impl Planner {
    /// A planner with no senders and nothing pending.
    pub fn new(cfg: DeliveryConfig) -> Self {
        Self {
            cfg,
            sessions: BTreeMap::new(),
            cursor: 0,
            pending: Vec::new(),
            unsent: Vec::new(),
            blocked: HashMap::new(),
            pending_seen: 0,
            shaping_cache: None,
            backoff: HashMap::new(),
            held: HashMap::new(),
            limits: None,
            out: HashMap::new(),
            out_per_queue: HashMap::new(),
            mx: MxLookups::default(),
            limited: HashMap::new(),
        }
    }

    /// The delivery configuration.
    pub fn cfg(&self) -> &DeliveryConfig {
        &self.cfg
    }

    /// Takes in what happened.
    pub fn input(&mut self, input: Input) {
        match input {
            Input::Joined { conn, hello } => {
                let s = Session {
                    name: hello.sender,
                    // Addresses in one spelling, as IP records keep them.
                    ips: hello
                        .source_ips
                        .into_iter()
                        .map(|s| (canonical_ip(&s.ip), s.ehlo))
                        .collect(),
                    max_in_flight: hello.max_in_flight as usize,
                    // Work from an earlier session occupies its slots until reported.
                    in_flight: hello.active_leases.into_iter().collect(),
                    next_ip: 0,
                };
                self.sessions.insert(conn, s);
            }
            Input::Left { conn } => {
                // Its leases come back reported on a new session, or lapse.
                if let Some(s) = self.sessions.remove(&conn) {
                    for lease in s.in_flight {
                        self.returned(lease);
                    }
                }
            }
            Input::Draining { conn } => {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.max_in_flight = 0;
                }
            }
            Input::Report(r) => {
                // The sender has room again at once; the outcome commits with the next round.
                self.free_slot(r.conn, r.report.lease);
                self.returned(r.report.lease);
                self.pending.push(r);
            }
            Input::Mx {
                domain,
                result,
                at_ms,
            } => self.mx.ended(domain, result, at_ms),
        }
    }

    /// Domains whose MX host to look up (each handed out once): answer each with an
    /// [`Input::Mx`]. Their queues wait until then.
    pub fn lookups(&mut self) -> Vec<String> {
        std::mem::take(&mut self.mx.wanted)
    }

    /// Whether reports or releases wait for a round.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty() || !self.unsent.is_empty()
    }

    /// Whether another report fits in the next round.
    pub fn wants_reports(&self) -> bool {
        self.pending.len() < MAX_REPORTS_PER_ROUND
    }

    /// Free assignment slots over all senders.
    pub fn free(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| !s.ips.is_empty())
            .map(|s| s.max_in_flight.saturating_sub(s.in_flight.len()))
            .sum()
    }

    /// Connected senders.
    pub fn senders(&self) -> usize {
        self.sessions.len()
    }

    /// Holds queue (`tenant`, `domain`) back until `until_ms`: rounds pass over it without
    /// reading it, and serve the other queues as if it were not there.
    pub fn block(&mut self, tenant: &str, domain: &str, until_ms: i64) {
        let e = self
            .blocked
            .entry((tenant.to_string(), domain.to_string()))
            .or_insert(until_ms);
        *e = (*e).max(until_ms);
    }

    /// The queues held back now: by sending limits, or by a "slow down" without IP records.
    pub fn held_queues(&self) -> Vec<super::HeldQueue> {
        let q = |((tenant, domain), until): (&(String, String), &i64), why| super::HeldQueue {
            tenant: tenant.clone(),
            domain: domain.clone(),
            until_ms: *until,
            why,
        };
        let mut out: Vec<_> = self
            .held
            .iter()
            .map(|e| q(e, "sending limits"))
            .chain(self.blocked.iter().map(|e| q(e, "slow down")))
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.domain).cmp(&(&b.tenant, &b.domain)));
        out
    }

    /// The connected senders, by name.
    pub fn sender_views(&self) -> Vec<super::SenderView> {
        let mut out: Vec<_> = self
            .sessions
            .values()
            .map(|s| super::SenderView {
                name: s.name.clone(),
                ips: s.ips.iter().map(|(ip, _)| ip.clone()).collect(),
                max_in_flight: s.max_in_flight as u32,
                in_flight: s.in_flight.len() as u32,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The (IP, provider) pairs backing off at `now_ms`.
    pub fn backoffs(&self, now_ms: i64) -> Vec<super::Backoff> {
        let mut out: Vec<_> = self
            .backoff
            .iter()
            .filter(|(_, b)| b.until_ms > now_ms)
            .map(|((ip, provider), b)| super::Backoff {
                ip: ip.clone(),
                provider: provider.clone(),
                until_ms: b.until_ms,
            })
            .collect();
        out.sort_by(|a, b| (&a.ip, &a.provider).cmp(&(&b.ip, &b.provider)));
        out
    }

    /// Plans a round at `now_ms` (raised to the latest command time applied): the pending
    /// reports and unsent leases, then due recipients for the free slots. `held_bytes` is the
    /// body bytes of assignments sent but not yet taken by their senders. Slots are reserved
    /// until [`Planner::committed`] or [`Planner::failed`] says how the round ended.
    pub fn plan(
        &mut self,
        now_ms: i64,
        rng: &mut fastrand::Rng,
        view: &impl QueueView,
        held_bytes: u64,
    ) -> Result<Round, QueueError> {
        let now_ms = now_ms.max(view.clock_ms()?);
        self.blocked.retain(|_, until| *until > now_ms);
        let mut plan = RoundPlan {
            ops: plan::release(now_ms, &self.unsent),
            ..RoundPlan::default()
        };
        let reports = self.pending.len().min(MAX_REPORTS_PER_ROUND);
        let mut inputs = Vec::with_capacity(reports);
        // Tenants' own suppression rules, read once a round for those with a permanent
        // failure reported.
        let mut own: HashMap<String, Option<skein_config::SuppressionPolicy>> = HashMap::new();
        for r in &self.pending[..reports] {
            let records = r
                .report
                .rcpts
                .iter()
                .map(|x| view.rcpt(&x.key))
                .collect::<Result<Vec<_>, _>>()?;
            let mut policies = Vec::with_capacity(records.len());
            for (x, rec) in r.report.rcpts.iter().zip(&records) {
                let permanent = x.outcome == skein_proto::work::Outcome::Permanent as i32;
                let policy = match rec {
                    Some(rec) if permanent => match own.get(&rec.tenant) {
                        Some(p) => p.clone(),
                        None => {
                            let p = view
                                .suppression_policy(&rec.tenant)?
                                .map(|p| super::policy::tenant_policy(&p));
                            own.insert(rec.tenant.clone(), p.clone());
                            p
                        }
                    },
                    _ => None,
                };
                policies.push(policy);
            }
            inputs.push(ReportIn {
                report: r.report.clone(),
                sender: r.sender.clone(),
                records,
                policies,
            });
        }
        // The limits and counters are read at most every SHAPING_REFRESH_MS (and at each new
        // hour); in between, what this leader planned is tallied on top of them. The state
        // machine re-checks every lease, so a stale read can only grant less, never more.
        // (Also every SHAPING_REFRESH_ROUNDS rounds: a clock that stands still, in tests,
        // must not freeze the limits.)
        let fresh = |c: &ShapingCache| {
            now_ms - c.fetched_ms < SHAPING_REFRESH_MS
                && now_ms >= c.fetched_ms
                && c.rounds < SHAPING_REFRESH_ROUNDS
                && skein_shaping::hour(now_ms) == skein_shaping::hour(c.fetched_ms)
        };
        let mut refreshed = false;
        let cache = match self.shaping_cache.take() {
            Some(c) if fresh(&c) => c,
            _ => {
                refreshed = true;
                ShapingCache {
                    fetched_ms: now_ms,
                    rounds: 0,
                    state: view.shaping(now_ms)?,
                    day_tally: HashMap::new(),
                    hour_tally: HashMap::new(),
                }
            }
        };
        let ShapingCache {
            fetched_ms,
            rounds,
            state: mut shaping,
            mut day_tally,
            mut hour_tally,
        } = cache;
        plan::reports(&self.cfg, now_ms, rng, inputs, shaping.is_some(), &mut plan);
        // MX hosts the leader looked up: learned for every node, as senders' are below.
        for (domain, mx) in std::mem::take(&mut self.mx.found) {
            if let Some(st) = shaping.as_mut() {
                if st.mx.get(&domain) != Some(&mx) {
                    st.mx.insert(domain.clone(), mx.clone());
                    plan.ops.push(DeliveryOp::LearnMx { domain, mx });
                }
            }
        }
        let throttle = self.cfg.throttle_delay.0.as_millis() as i64;
        // A report kept after a failed write is planned again: its feedback counts once.
        let seen = self.pending_seen.min(reports);
        self.pending_seen = reports;
        let fresh: std::collections::HashSet<String> = self.pending[seen..reports]
            .iter()
            .flat_map(|r| r.report.rcpts.iter().map(|x| x.key.clone()))
            .collect();
        for (rec, attempt, _) in plan
            .reported
            .iter()
            .filter(|(rec, _, _)| fresh.contains(rec.key.as_str()))
        {
            let throttled = attempt.result == skein_queue::AttemptResult::Throttled;
            // The MX host a sender reached for a domain: providers are known by it too.
            if let (Some(st), Some(mx)) = (shaping.as_mut(), mx_host(&attempt.mx)) {
                if st.mx.get(&rec.domain) != Some(&mx) {
                    st.mx.insert(rec.domain.clone(), mx.clone());
                    plan.ops.push(DeliveryOp::LearnMx {
                        domain: rec.domain.clone(),
                        mx,
                    });
                }
            }
            match &shaping {
                // A provider that asked an IP to slow down gets nothing more from that IP for
                // a while, doubling with each repeat; other IPs and providers carry on.
                Some(st) => {
                    let provider = st.provider(&rec.domain);
                    let key = (attempt.source_ip.clone(), provider.name.clone());
                    if throttled {
                        let b = self.backoff.entry(key).or_insert(Backoff {
                            until_ms: now_ms,
                            level: 0,
                        });
                        let delay =
                            throttle.saturating_mul(1 << b.level.min(MAX_BACKOFF_DOUBLINGS));
                        b.until_ms = b.until_ms.max(now_ms + delay);
                        b.level = b.level.saturating_add(1);
                    } else if attempt.result == skein_queue::AttemptResult::Delivered {
                        self.backoff.remove(&key);
                    }
                }
                // Without sending limits, the tenant's queue for that domain waits instead.
                None if throttled => self.block(&rec.tenant, &rec.domain, now_ms + throttle),
                None => {}
            }
        }

        // Each report's provider, for the metrics (with what was just learned of MX hosts).
        if let Some(st) = &shaping {
            for (rec, _, _) in &plan.reported {
                let provider = st.provider(&rec.domain).name.clone();
                plan.providers.insert(rec.key.clone(), provider);
            }
        }

        // An operator's change (an IP added, resumed or warmed, a limit raised) may free
        // what the old limits held: look again at once.
        if refreshed {
            let limits = shaping.as_ref().map(Limits::of);
            if limits != self.limits {
                self.held.clear();
                self.limits = limits;
            }
        }
        self.held.retain(|_, until| *until > now_ms);
        let free = self.free() > 0;
        let (blocked, held, mx) = (&self.blocked, &self.held, &mut self.mx);
        let stopped = Stopped::new(view.suspensions(now_ms)?, shaping.as_ref());
        // Max-min fair slots: while other queues have due work, a queue with its share of
        // all slots out (a slow destination, say) gets no more, so the slots it frees go to
        // the others. With no free slot the round still reads every due queue: recipients
        // past the maximum age expire whether or not a sender is there.
        let slots: usize = self
            .sessions
            .values()
            .filter(|s| !s.ips.is_empty())
            .map(|s| s.max_in_flight)
            .sum();
        let out = &self.out_per_queue;
        let due = super::fair::select(
            view,
            now_ms,
            self.cfg.batch,
            self.cfg.max_rcpts_per_assignment,
            &mut self.cursor,
            |t, d| {
                let q = (t.to_string(), d.to_string());
                blocked.contains_key(&q)
                    || held.contains_key(&q)
                    || stopped.queue(t, d)
                    || shaping.as_ref().is_some_and(|st| mx.waits(st, d, now_ms))
            },
            |t, d, ready| {
                free && ready > 1
                    && out
                        .get(&(t.to_string(), d.to_string()))
                        .is_some_and(|&n| n * ready >= slots)
            },
        )?;
        plan::due(
            &self.cfg,
            now_ms,
            rng,
            due,
            |id| view.message_size(id),
            &mut Slots {
                sessions: &mut self.sessions,
                held: held_bytes,
                shaping: shaping.as_ref(),
                stopped: &stopped,
                backoff: &self.backoff,
                day_tally: &mut day_tally,
                hour_tally: &mut hour_tally,
                now_ms,
            },
            &mut plan,
        );
        self.shaping_cache = Some(ShapingCache {
            fetched_ms,
            rounds: rounds + 1,
            state: shaping,
            day_tally,
            hour_tally,
        });
        // A queue whose pool spent its budget waits for the next hour or day without being
        // read, and without an attempt counted.
        for (tenant, domain, until) in std::mem::take(&mut plan.spent) {
            self.limited
                .insert((tenant.clone(), domain.clone()), now_ms);
            let e = self.held.entry((tenant, domain)).or_insert(until);
            *e = (*e).max(until);
        }
        // What expires after the limits held it says so: the DSN's reason and the history.
        if !self.limited.is_empty() {
            let limited: HashSet<&str> = plan
                .expired
                .iter()
                .filter(|r| {
                    self.limited
                        .contains_key(&(r.tenant.clone(), r.domain.clone()))
                })
                .map(|r| r.key.as_str())
                .collect();
            for op in &mut plan.ops {
                if let DeliveryOp::Report {
                    lease: None,
                    rcpt,
                    attempt: attempt @ None,
                    disposition: skein_queue::Disposition::Expire,
                } = op
                {
                    if limited.contains(rcpt.as_str()) {
                        *attempt = Some(held_by_limits(now_ms));
                    }
                }
            }
        }
        if refreshed {
            // A queue held this long ago and never read since has nothing left to expire.
            let since = now_ms.saturating_sub(2 * self.cfg.max_age.0.as_millis() as i64);
            self.limited.retain(|_, at| *at >= since);
        }
        Ok(Round {
            now_ms,
            ops: std::mem::take(&mut plan.ops),
            plan,
            reports,
            released: self.unsent.len(),
        })
    }

    /// The round's entry committed, granting `leased` (lease, recipient keys): its reports and
    /// releases are done, and the assignments with granted recipients are to be sent. A lease
    /// granted nothing (every recipient moved on) frees its slot.
    pub fn committed(&mut self, round: Round, leased: Vec<(u64, Vec<String>)>) -> Vec<Send> {
        let done = round.reports.min(self.pending.len());
        self.pending.drain(..done);
        self.pending_seen = self.pending_seen.saturating_sub(done);
        self.unsent.drain(..round.released.min(self.unsent.len()));
        let mut granted: HashMap<u64, Vec<String>> = leased.into_iter().collect();
        let mut out = Vec::new();
        for p in round.plan.planned {
            let keys = granted.remove(&p.lease);
            let cut = keys.as_ref().is_none_or(|k| k.len() < p.rcpts.len());
            if cut {
                // The state machine granted less than planned: the limits read are stale
                // (an operator's change, or another leader's leases). Read them again; a
                // shaped lease cut short was cut by the limits, which hold its queue.
                self.shaping_cache = None;
                if p.provider.is_some() {
                    self.limited
                        .insert((p.tenant.clone(), p.domain.clone()), round.now_ms);
                }
            }
            match keys {
                Some(keys) if !keys.is_empty() => {
                    let queue = (p.tenant.clone(), p.domain.clone());
                    if !cut && !self.held.contains_key(&queue) {
                        self.limited.remove(&queue);
                    }
                    *self.out_per_queue.entry(queue.clone()).or_default() += 1;
                    self.out.insert(p.lease, queue);
                    out.push(Send { planned: p, keys });
                }
                _ => self.free_slot(p.slot.conn, p.lease),
            }
        }
        out
    }

    /// The round's entry did not commit: its slots are freed, and its reports and releases
    /// stay for the next round (applying them twice is harmless: the queue skips a report
    /// about a recipient that moved on).
    pub fn failed(&mut self, round: Round) {
        for p in round.plan.planned {
            self.free_slot(p.slot.conn, p.lease);
        }
    }

    /// An assignment whose lease committed could not be sent (its session is gone): the slot
    /// is freed and the next round gives the recipients back at once.
    pub fn not_sent(&mut self, s: Send) {
        self.free_slot(s.planned.slot.conn, s.planned.lease);
        self.returned(s.planned.lease);
        self.unsent.push((s.planned.lease, s.keys));
    }

    /// This node stopped leading: sessions, pending reports and unsent leases belong to the
    /// next leader (senders reconnect and report again; unsent leases lapse).
    pub fn reset(&mut self) {
        self.sessions.clear();
        self.pending.clear();
        self.pending_seen = 0;
        self.shaping_cache = None;
        self.unsent.clear();
        self.blocked.clear();
        self.held.clear();
        self.backoff.clear();
        self.limits = None;
        self.out.clear();
        self.out_per_queue.clear();
        self.mx = MxLookups::default();
        self.limited.clear();
    }

    /// Assignment `lease` is no longer out with a sender: its queue has one fewer out.
    fn returned(&mut self, lease: u64) {
        let Some(queue) = self.out.remove(&lease) else {
            return;
        };
        if let Some(n) = self.out_per_queue.get_mut(&queue) {
            *n -= 1;
            if *n == 0 {
                self.out_per_queue.remove(&queue);
            }
        }
    }

    fn free_slot(&mut self, conn: u64, lease: u64) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.in_flight.remove(&lease);
        }
    }
}

/// The sessions as [`plan::due`] reserves slots on them.
struct Slots<'a> {
    sessions: &'a mut BTreeMap<u64, Session>,
    held: u64,
    /// The sending limits, when the cluster has IP records.
    shaping: Option<&'a ShapingState>,
    /// (IP, provider) pairs backing off.
    backoff: &'a HashMap<(String, String), Backoff>,
    /// Operators' suspensions.
    stopped: &'a Stopped<'a>,
    /// What this round planned so far, per IP and per (IP, provider): caps hold within the
    /// round too.
    day_tally: &'a mut HashMap<String, u64>,
    hour_tally: &'a mut HashMap<(String, String), u64>,
    now_ms: i64,
}

/// The host of a report's `mx` (`host[address]:port`, as senders describe the host they
/// reached), lower-case without a trailing dot; `None` for a bare address.
fn mx_host(mx: &str) -> Option<String> {
    let host = mx
        .split(|c: char| c == '[' || c.is_whitespace())
        .next()?
        .trim_end_matches('.');
    (!host.is_empty() && host.len() <= 253 && host.contains('.')).then(|| host.to_ascii_lowercase())
}

/// The scheduler's account of a recipient that expired while the sending limits held its
/// queue (recorded like an attempt, so the DSN and the history say why; not counted).
fn held_by_limits(now_ms: i64) -> skein_queue::AttemptRecord {
    skein_queue::AttemptRecord {
        at_ms: now_ms,
        sender: "scheduler".into(),
        source_ip: String::new(),
        mx: String::new(),
        reply: skein_queue::Reply {
            code: 451,
            enhanced: "4.4.7".into(),
            text: "held by sending limits (the warm-up caps and provider hourly limits of its \
                   IP pool) until it expired"
                .into(),
        },
        result: skein_queue::AttemptResult::Transient,
    }
}

/// How long the planner plans on one read of the sending limits and counters.
const SHAPING_REFRESH_MS: i64 = 1_000;
/// How many rounds, at most, it plans on one read.
const SHAPING_REFRESH_ROUNDS: u32 = 16;

/// The sending limits and counters as last read, and what was planned on top of them since.
#[derive(Debug)]
struct ShapingCache {
    fetched_ms: i64,
    rounds: u32,
    state: Option<ShapingState>,
    day_tally: HashMap<String, u64>,
    hour_tally: HashMap<(String, String), u64>,
}

/// How long an (IP, provider) pair waits after a "slow down": the throttle delay, doubled for
/// each repeat without a delivery in between, at most this many times (60 s → 64 min).
const MAX_BACKOFF_DOUBLINGS: u32 = 6;

/// An (IP, provider) pair backing off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    until_ms: i64,
    /// "Slow down" replies since its last delivery.
    level: u32,
}

/// Operators' suspensions, as the planner asks about them (borrowing the limits that tell a
/// queue's provider and pool: nothing is copied per round).
#[derive(Debug)]
struct Stopped<'a> {
    set: std::collections::HashSet<(skein_shaping::SuspendKind, String)>,
    st: Option<&'a ShapingState>,
    /// The shipped providers, when a provider is suspended and there are no IP records.
    defaults: Vec<skein_shaping::Provider>,
}

impl<'a> Stopped<'a> {
    /// The suspensions in force, with the limits that tell a queue's provider and pool.
    fn new(suspensions: Vec<skein_shaping::Suspension>, st: Option<&'a ShapingState>) -> Self {
        let set: std::collections::HashSet<_> =
            suspensions.into_iter().map(|s| (s.kind, s.name)).collect();
        let providers_needed = st.is_none()
            && set
                .iter()
                .any(|(k, _)| *k == skein_shaping::SuspendKind::Provider);
        Self {
            set,
            st,
            defaults: if providers_needed {
                skein_shaping::default_providers()
            } else {
                Vec::new()
            },
        }
    }

    fn has(&self, kind: skein_shaping::SuspendKind, name: &str) -> bool {
        !self.set.is_empty() && self.set.contains(&(kind, name.to_string()))
    }

    /// Whether queue (`tenant`, `domain`) is suspended: its tenant, its domain, the
    /// domain's provider or the tenant's pool.
    fn queue(&self, tenant: &str, domain: &str) -> bool {
        use skein_shaping::SuspendKind as K;
        if self.set.is_empty() {
            return false;
        }
        let pool = match self.st {
            Some(st) => skein_shaping::pool_for(tenant, &st.tenant_pools),
            None => skein_shaping::DEFAULT_POOL,
        };
        let provider = match self.st {
            Some(st) => &st.provider(domain).name,
            None => &skein_shaping::classify(&self.defaults, domain, None).name,
        };
        self.has(K::Tenant, skein_shaping::base_tenant(tenant))
            || self.has(K::Domain, domain)
            || self.has(K::Pool, pool)
            || self.has(K::Provider, provider)
    }

    /// Whether source IP `ip` is suspended.
    fn ip(&self, ip: &str) -> bool {
        self.has(skein_shaping::SuspendKind::Ip, ip)
    }
}

/// The sending limits as operators set them (not the counters): holds decided under one set
/// of limits do not outlive a change to them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Limits {
    ips: Vec<(String, String, skein_shaping::IpMode, u64)>,
    providers: Vec<skein_shaping::Provider>,
    pools: std::collections::BTreeMap<String, String>,
    suspensions: Vec<skein_shaping::Suspension>,
}

impl Limits {
    fn of(st: &ShapingState) -> Self {
        Self {
            ips: st
                .ips
                .iter()
                .map(|i| {
                    (
                        i.record.ip.clone(),
                        i.record.pool.clone(),
                        i.record.mode,
                        i.cap,
                    )
                })
                .collect(),
            providers: st.providers.clone(),
            pools: st.tenant_pools.clone(),
            suspensions: st.suspensions.clone(),
        }
    }
}

/// `ip` in the one spelling IP records use (`::1`, not `0:0::1`); as given if not an address.
pub fn canonical_ip(ip: &str) -> String {
    ip.parse::<std::net::IpAddr>()
        .map_or_else(|_| ip.to_string(), |a| a.to_string())
}

/// How long a queue whose pool has no IP that can send waits before it is looked at again.
const NO_IP_RETRY_MS: i64 = 60_000;

impl Slots<'_> {
    /// The session with the most room among those `fits`, the lowest id among equals.
    fn session(&mut self, fits: impl Fn(&Session) -> bool) -> Option<(u64, &mut Session)> {
        self.sessions
            .iter_mut()
            .filter(|(_, s)| s.in_flight.len() < s.max_in_flight && !s.ips.is_empty() && fits(s))
            .max_by_key(|(id, s)| (s.max_in_flight - s.in_flight.len(), std::cmp::Reverse(**id)))
            .map(|(id, s)| (*id, s))
    }

    /// Within the sending limits: the IP of the tenant's pool with the most budget left for
    /// the day and for the domain's provider this hour, among those a sender with room
    /// announced.
    fn reserve_shaped(
        &mut self,
        st: &ShapingState,
        lease: u64,
        tenant: &str,
        domain: &str,
        n: usize,
    ) -> Reserved {
        let pool = skein_shaping::pool_for(tenant, &st.tenant_pools);
        let provider = st.provider(domain);
        let mut best: Option<(u64, &skein_queue::IpStatus)> = None;
        let mut renews: Option<i64> = None;
        let mut budget_left = false;
        for ip in st.ips.iter().filter(|i| i.record.pool == pool) {
            if ip.record.mode == skein_shaping::IpMode::Paused || self.stopped.ip(&ip.record.ip) {
                continue;
            }
            let addr = &ip.record.ip;
            let day_left = ip
                .cap
                .saturating_sub(ip.sent_today)
                .saturating_sub(self.day_tally.get(addr).copied().unwrap_or(0));
            let hour_left = provider
                .hourly(ip.warm)
                .saturating_sub(ip.sent_this_hour.get(&provider.name).copied().unwrap_or(0))
                .saturating_sub(
                    self.hour_tally
                        .get(&(addr.clone(), provider.name.clone()))
                        .copied()
                        .unwrap_or(0),
                );
            let backing_off = self
                .backoff
                .get(&(addr.clone(), provider.name.clone()))
                .map(|b| b.until_ms)
                .filter(|&until| until > self.now_ms);
            if day_left == 0 || hour_left == 0 || backing_off.is_some() {
                let at = if day_left == 0 {
                    ip.schedule.day_start_ms(ip.today + 1)
                } else if hour_left == 0 {
                    (st.hour + 1) * skein_shaping::HOUR_MS
                } else {
                    backing_off.unwrap_or(self.now_ms)
                };
                renews = Some(renews.map_or(at, |r| r.min(at)));
                continue;
            }
            let left = day_left.min(hour_left);
            budget_left = true;
            let announced = self.sessions.values().any(|s| {
                s.in_flight.len() < s.max_in_flight && s.ips.iter().any(|(a, _)| a == addr)
            });
            if announced && best.is_none_or(|(b, _)| left > b) {
                best = Some((left, ip));
            }
        }
        let Some((left, ip)) = best else {
            return match renews {
                // Budget left, but no sender with room has that IP: wait for a slot.
                _ if budget_left => Reserved::NoSlot,
                Some(until_ms) => Reserved::Spent { until_ms },
                // No IP in the pool can send (none, or all paused): look again in a minute.
                None => Reserved::Spent {
                    until_ms: self.now_ms + NO_IP_RETRY_MS,
                },
            };
        };
        let addr = ip.record.ip.clone();
        let Some((conn, s)) = self.session(|s| s.ips.iter().any(|(a, _)| *a == addr)) else {
            return Reserved::NoSlot;
        };
        s.in_flight.insert(lease);
        let slot = Slot {
            conn,
            sender: s.name.clone(),
            source_ip: addr.clone(),
            ehlo: ip.record.hostname.clone(),
        };
        let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
        *self.day_tally.entry(addr.clone()).or_default() += n as u64;
        *self
            .hour_tally
            .entry((addr, provider.name.clone()))
            .or_default() += n as u64;
        Reserved::Slot {
            slot,
            provider: Some(plan::ProviderRef {
                name: provider.name.clone(),
                max_connections: provider.max_connections,
                max_per_connection: provider.max_per_connection,
            }),
            n,
        }
    }
}

impl plan::Slots for Slots<'_> {
    fn any_free(&self) -> bool {
        self.sessions
            .values()
            .any(|s| !s.ips.is_empty() && s.in_flight.len() < s.max_in_flight)
    }

    /// Without sending limits, the sender with the most room (the lowest session id among
    /// equals), rotating through its source IPs; with them, see `reserve_shaped`.
    fn reserve(&mut self, lease: u64, tenant: &str, domain: &str, n: usize) -> Reserved {
        if let Some(st) = self.shaping {
            return self.reserve_shaped(st, lease, tenant, domain, n);
        }
        let stopped = self.stopped;
        let Some((conn, s)) = self.session(|s| s.ips.iter().any(|(ip, _)| !stopped.ip(ip))) else {
            return Reserved::NoSlot;
        };
        // The next of its IPs not suspended.
        let (ip, ehlo) = loop {
            let (ip, ehlo) = s.ips[s.next_ip % s.ips.len()].clone();
            s.next_ip = s.next_ip.wrapping_add(1);
            if !stopped.ip(&ip) {
                break (ip, ehlo);
            }
        };
        s.in_flight.insert(lease);
        Reserved::Slot {
            slot: Slot {
                conn,
                sender: s.name.clone(),
                source_ip: ip,
                ehlo,
            },
            provider: None,
            n,
        }
    }

    fn held_bytes(&self) -> u64 {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use skein_core::HumanDuration;
    use skein_proto::work::{Outcome, RecipientResult, SourceIp};
    use skein_queue::{Disposition, Lease, QueueHead, RcptRecord, RcptState};

    use super::*;

    const NOW: i64 = 1_000_000_000;

    /// The queue in memory: recipients by queue and due time, message sizes, the clock mark.
    #[derive(Default)]
    struct MemView {
        queues: BTreeMap<(String, String), BTreeMap<(i64, String), RcptRecord>>,
        clock: i64,
        shaping: Option<ShapingState>,
        suspended: Vec<skein_shaping::Suspension>,
        policies: HashMap<String, skein_queue::TenantSuppressionPolicy>,
    }

    impl MemView {
        fn add(&mut self, tenant: &str, domain: &str, message: &str, n: usize) {
            let q = self
                .queues
                .entry((tenant.into(), domain.into()))
                .or_default();
            for i in 0..n {
                let r = RcptRecord {
                    key: format!("{message}{i:05X}"),
                    message_id: message.into(),
                    address: format!("r{i}@{domain}"),
                    domain: domain.into(),
                    tenant: tenant.into(),
                    state: RcptState::Queued,
                    attempts: 0,
                    due_ms: NOW - 1_000 + i as i64 % 500,
                    received_at_ms: NOW - 2_000,
                    last_reply: None,
                    history: Vec::new(),
                    final_at_ms: None,
                };
                q.insert((r.due_ms, r.key.clone()), r);
            }
        }

        /// Applies granted leases the way the queue would: leased recipients leave the index.
        fn lease(&mut self, leased: &[(u64, Vec<String>)], sender: &str) {
            for (id, keys) in leased {
                for q in self.queues.values_mut() {
                    let hits: Vec<_> = q
                        .iter()
                        .filter(|(_, r)| keys.contains(&r.key))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in hits {
                        let mut r = q.remove(&k).unwrap();
                        r.state = RcptState::Leased(Lease {
                            id: *id,
                            sender: sender.into(),
                            source_ip: "127.0.0.9".into(),
                            expires_ms: NOW + 60_000,
                        });
                        q.insert((i64::MAX, r.key.clone()), r);
                    }
                }
            }
        }
    }

    impl QueueView for MemView {
        fn ready_queues(&self, now_ms: i64, limit: usize) -> Result<Vec<QueueHead>, QueueError> {
            Ok(self
                .queues
                .iter()
                .filter_map(|((t, d), q)| {
                    let (&(due, _), _) = q.iter().next()?;
                    (due <= now_ms).then(|| QueueHead {
                        tenant: t.clone(),
                        domain: d.clone(),
                        due_ms: due,
                    })
                })
                .take(limit)
                .collect())
        }

        fn queue_due(
            &self,
            tenant: &str,
            domain: &str,
            now_ms: i64,
            limit: usize,
        ) -> Result<Vec<RcptRecord>, QueueError> {
            let Some(q) = self.queues.get(&(tenant.to_string(), domain.to_string())) else {
                return Ok(Vec::new());
            };
            Ok(q.values()
                .take_while(|r| r.due_ms <= now_ms && !matches!(r.state, RcptState::Leased(_)))
                .take(limit)
                .cloned()
                .collect())
        }

        fn rcpt(&self, key: &str) -> Result<Option<RcptRecord>, QueueError> {
            Ok(self
                .queues
                .values()
                .flat_map(|q| q.values())
                .find(|r| r.key == key)
                .cloned())
        }

        fn message_size(&self, _id: &str) -> u64 {
            1_000
        }

        fn suppression_policy(
            &self,
            tenant: &str,
        ) -> Result<Option<skein_queue::TenantSuppressionPolicy>, QueueError> {
            Ok(self.policies.get(tenant).cloned())
        }

        fn clock_ms(&self) -> Result<i64, QueueError> {
            Ok(self.clock)
        }

        fn suspensions(&self, now_ms: i64) -> Result<Vec<skein_shaping::Suspension>, QueueError> {
            Ok(self
                .suspended
                .iter()
                .filter(|s| s.active(now_ms))
                .cloned()
                .collect())
        }

        fn shaping(&self, now_ms: i64) -> Result<Option<ShapingState>, QueueError> {
            Ok(self.shaping.clone().map(|mut st| {
                st.hour = now_ms / skein_shaping::HOUR_MS;
                st
            }))
        }
    }

    fn cfg() -> DeliveryConfig {
        DeliveryConfig {
            max_rcpts_per_assignment: 10,
            lease: HumanDuration(Duration::from_secs(60)),
            ..DeliveryConfig::default()
        }
    }

    fn joined(conn: u64, name: &str, slots: u32) -> Input {
        joined_from(conn, name, "127.0.0.9", slots)
    }

    /// A sender announcing one source IP.
    fn joined_from(conn: u64, name: &str, ip: &str, slots: u32) -> Input {
        Input::Joined {
            conn,
            hello: Hello {
                sender: name.into(),
                source_ips: vec![SourceIp {
                    ip: ip.into(),
                    ehlo: "out.test".into(),
                }],
                max_in_flight: slots,
                active_leases: Vec::new(),
            },
        }
    }

    /// What the entry would grant: every planned lease, whole.
    fn grant(r: &Round) -> Vec<(u64, Vec<String>)> {
        r.plan
            .planned
            .iter()
            .map(|p| (p.lease, p.rcpts.iter().map(|(k, _)| k.clone()).collect()))
            .collect()
    }

    fn domains(r: &Round) -> Vec<String> {
        r.plan.planned.iter().map(|p| p.domain.clone()).collect()
    }

    fn report(conn: u64, sender: &str, lease: u64, key: &str, outcome: Outcome) -> Input {
        Input::Report(SessionReport {
            conn,
            sender: sender.into(),
            report: Report {
                lease,
                rcpts: vec![RecipientResult {
                    key: key.into(),
                    outcome: outcome as i32,
                    code: 421,
                    enhanced: "4.7.0".into(),
                    text: "slow down".into(),
                }],
                ..Default::default()
            },
        })
    }

    fn report_ops(r: &Round) -> usize {
        r.ops
            .iter()
            .filter(|op| matches!(op, DeliveryOp::Report { .. }))
            .count()
    }

    /// A tenant with 100,000 recipients due does not delay another tenant's one: it goes in
    /// the first round, among the first assignments.
    #[test]
    fn a_backlog_of_100k_does_not_delay_another_tenant() {
        let mut view = MemView::default();
        view.add("big", "slow.test", "B", 100_000);
        view.add("small", "fast.test", "S", 1);
        let mut p = Planner::new(cfg());
        p.input(joined(1, "s1", 4));
        let mut rng = fastrand::Rng::with_seed(1);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        let d = domains(&r);
        assert_eq!(d.len(), 4, "every slot used");
        assert!(d[..2].contains(&"fast.test".to_string()), "{d:?}");
        assert_eq!(p.free(), 0, "slots are reserved while the round is out");
    }

    /// A slow destination that took every slot while it was alone gets none of those it
    /// frees while another queue has work and it holds its share (half of the slots for
    /// two queues): the other queue's mail goes out at the first free slot.
    #[test]
    fn a_queue_holding_its_share_of_slots_waits_while_others_have_work() {
        let mut view = MemView::default();
        for i in 0..30 {
            view.add("t", "slow.test", &format!("S{i:02}"), 1);
        }
        let cfg = DeliveryConfig {
            max_rcpts_per_assignment: 1,
            ..cfg()
        };
        let mut p = Planner::new(cfg);
        p.input(joined(1, "s1", 10));
        let mut rng = fastrand::Rng::with_seed(8);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert_eq!(
            domains(&r),
            vec!["slow.test"; 10],
            "alone, it may have them all"
        );
        let leased = grant(&r);
        let mut out = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        for i in 0..10 {
            view.add("t", "fast.test", &format!("F{i:02}"), 1);
        }
        for round in 1..=5 {
            // One slow assignment finishes: one slot frees.
            let s = out.remove(0);
            assert_eq!(s.planned.domain, "slow.test");
            p.input(report(
                1,
                "s1",
                s.planned.lease,
                &s.keys[0],
                Outcome::Delivered,
            ));
            let r = p.plan(NOW + round, &mut rng, &view, 0).unwrap();
            assert_eq!(domains(&r), ["fast.test"], "round {round}");
            let leased = grant(&r);
            p.committed(r, leased.clone());
            view.lease(&leased, "s1");
        }
        // Five slow and five fast out: each at its share; the next free slot goes to either.
        let s = out.remove(0);
        p.input(report(
            1,
            "s1",
            s.planned.lease,
            &s.keys[0],
            Outcome::Delivered,
        ));
        let r = p.plan(NOW + 9, &mut rng, &view, 0).unwrap();
        assert_eq!(r.plan.planned.len(), 1);
    }

    /// Two warm IPs with plenty of budget, the shipped providers.
    fn two_ips() -> ShapingState {
        let ip = |addr: &str| skein_queue::IpStatus {
            record: skein_shaping::IpRecord {
                ip: addr.into(),
                hostname: format!("mta-{addr}.test"),
                pool: skein_shaping::DEFAULT_POOL.into(),
                schedule: skein_shaping::DEFAULT_SCHEDULE.into(),
                mode: skein_shaping::IpMode::Warm,
                resume_to: skein_shaping::IpMode::Warm,
                start_day: 0,
                sending_days: 0,
                last_sent_day: None,
                reason: String::new(),
                added_at_ms: 0,
            },
            schedule: skein_shaping::Schedule::default(),
            today: NOW / skein_shaping::DAY_MS,
            cap: 100_000,
            sent_today: 0,
            warm: true,
            sent_this_hour: BTreeMap::new(),
        };
        ShapingState {
            ips: vec![ip("192.0.2.1"), ip("192.0.2.2")],
            providers: skein_shaping::default_providers(),
            tenant_pools: BTreeMap::new(),
            allowed_pools: BTreeMap::new(),
            suspensions: Vec::new(),
            mx: BTreeMap::new(),
            hour: 0,
        }
    }

    fn ips_for(r: &Round, domain: &str) -> std::collections::BTreeSet<String> {
        r.plan
            .planned
            .iter()
            .filter(|p| p.domain == domain)
            .map(|p| p.slot.source_ip.clone())
            .collect()
    }

    /// When the state machine grants less than a round planned, the limits the planner read
    /// are stale (here: IP records added since, so plain leases grant nothing): the next
    /// round reads them again at once rather than planning on them for another second.
    #[test]
    fn a_lease_granted_less_than_planned_rereads_the_limits() {
        let mut view = MemView::default();
        view.add("t", "gmail.com", "M1", 1);
        let mut p = Planner::new(cfg());
        p.input(joined_from(1, "s1", "192.0.2.1", 10));
        let mut rng = fastrand::Rng::with_seed(8);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert!(
            matches!(r.ops[..], [DeliveryOp::Lease { .. }]),
            "{:?}",
            r.ops
        );
        let none: Vec<(u64, Vec<String>)> = r
            .plan
            .planned
            .iter()
            .map(|p| (p.lease, Vec::new()))
            .collect();
        p.committed(r, none);
        view.shaping = Some(two_ips());
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert!(
            matches!(r.ops[..], [DeliveryOp::LeaseShaped { .. }]),
            "{:?}",
            r.ops
        );
    }

    /// A recipient that expires while the sending limits hold its queue says so (a
    /// scheduler's account in its history, which the DSN quotes); one that expires without
    /// having been held does not.
    #[test]
    fn what_expires_held_by_the_limits_says_so() {
        let mut st = two_ips();
        for ip in &mut st.ips {
            ip.cap = 1;
        }
        let mut view = MemView {
            shaping: Some(st),
            ..MemView::default()
        };
        for m in ["M1", "M2", "M3"] {
            view.add("t", "gmail.com", m, 1);
        }
        let mut p = Planner::new(cfg());
        p.input(joined_from(1, "s1", "192.0.2.1", 10));
        p.input(joined_from(2, "s2", "192.0.2.2", 10));
        let mut rng = fastrand::Rng::with_seed(3);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert_eq!(r.plan.planned.len(), 2, "one a day from each IP");
        let leased = grant(&r);
        p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        assert_eq!(p.held_queues().len(), 1, "the third waits for tomorrow");
        view.add("t", "yahoo.com", "M4", 1);
        let later = NOW + cfg().max_age.0.as_millis() as i64;
        let r = p.plan(later, &mut rng, &view, 0).unwrap();
        let mut expired: Vec<(String, Option<String>)> = r
            .ops
            .iter()
            .filter_map(|op| match op {
                DeliveryOp::Report {
                    rcpt,
                    attempt,
                    disposition: skein_queue::Disposition::Expire,
                    ..
                } => Some((rcpt.clone(), attempt.as_ref().map(|a| a.reply.to_string()))),
                _ => None,
            })
            .collect();
        expired.sort();
        assert_eq!(expired.len(), 2, "{expired:?}");
        let held = expired.iter().find(|(k, _)| k.contains("M3")).unwrap();
        assert!(
            held.1
                .as_deref()
                .is_some_and(|t| t.starts_with("451 4.4.7 held by sending limits")),
            "{held:?}"
        );
        let other = expired.iter().find(|(k, _)| k.contains("M4")).unwrap();
        assert_eq!(other.1, None, "never held: {other:?}");

        // A shaped lease the state machine cut short (the limits were spent by the time it
        // applied) marks its queue held by the limits too.
        let mut view = MemView {
            shaping: Some(two_ips()),
            ..MemView::default()
        };
        view.add("t", "yahoo.com", "M5", 1);
        let mut p = Planner::new(cfg());
        p.input(joined_from(1, "s1", "192.0.2.1", 10));
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        let cut: Vec<(u64, Vec<String>)> = r
            .plan
            .planned
            .iter()
            .map(|a| (a.lease, Vec::new()))
            .collect();
        p.committed(r, cut);
        let r = p.plan(later, &mut rng, &view, 0).unwrap();
        let held = r.ops.iter().any(|op| {
            matches!(op, DeliveryOp::Report { attempt: Some(a), disposition: skein_queue::Disposition::Expire, .. }
                if a.reply.text.starts_with("held by sending limits"))
        });
        assert!(held, "{:?}", r.ops);
    }

    /// A "slow down" from Gmail to one IP backs off that IP for Gmail only, the throttle
    /// delay doubling with each repeat; the recipient is due again at once (another IP may
    /// take it), not counted; the other IP and the other providers carry on.
    #[test]
    fn a_throttled_ip_backs_off_for_that_provider_only() {
        let (a, b) = ("192.0.2.1".to_string(), "192.0.2.2".to_string());
        let mut view = MemView {
            shaping: Some(two_ips()),
            ..MemView::default()
        };
        for i in 0..10 {
            view.add("t", "gmail.com", &format!("G{i}"), 1);
            view.add("t", "yahoo.com", &format!("Y{i}"), 1);
        }
        let cfg = DeliveryConfig {
            max_rcpts_per_assignment: 1,
            ..cfg()
        };
        let mut p = Planner::new(cfg);
        p.input(Input::Joined {
            conn: 1,
            hello: Hello {
                sender: "s1".into(),
                source_ips: [&a, &b]
                    .iter()
                    .map(|ip| SourceIp {
                        ip: ip.to_string(),
                        ehlo: "x.test".into(),
                    })
                    .collect(),
                max_in_flight: 1_000,
                active_leases: Vec::new(),
            },
        });
        let mut rng = fastrand::Rng::with_seed(11);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert_eq!(ips_for(&r, "gmail.com").len(), 2, "both IPs send");
        assert!(r
            .ops
            .iter()
            .all(|op| matches!(op, DeliveryOp::LeaseShaped { .. })));
        let leased = grant(&r);
        let sends = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        let throttle = |s: &Send| {
            let mut i = report(1, "s1", s.planned.lease, &s.keys[0], Outcome::Throttled);
            if let Input::Report(r) = &mut i {
                r.report.source_ip = s.planned.slot.source_ip.clone();
            }
            i
        };
        let from_a = sends
            .iter()
            .find(|s| s.planned.domain == "gmail.com" && s.planned.slot.source_ip == a)
            .unwrap();
        p.input(throttle(from_a));
        for i in 0..10 {
            view.add("t", "gmail.com", &format!("H{i}"), 1);
            view.add("t", "yahoo.com", &format!("Z{i}"), 1);
        }
        let r = p.plan(NOW + 1_000, &mut rng, &view, 0).unwrap();
        let again = r.ops.iter().find_map(|op| match op {
            DeliveryOp::Report {
                disposition: Disposition::Retry { at_ms, counted },
                ..
            } => Some((*at_ms, *counted)),
            _ => None,
        });
        assert_eq!(
            again,
            Some((NOW + 1_000, false)),
            "due at once, not counted"
        );
        assert_eq!(
            ips_for(&r, "gmail.com"),
            [b.clone()].into(),
            "A backs off for Gmail"
        );
        assert_eq!(ips_for(&r, "yahoo.com").len(), 2, "but not for Yahoo");
        let leased = grant(&r);
        let sends = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        // After the throttle delay (60 s) A sends to Gmail again; a second "slow down" then
        // keeps it away for twice as long.
        for i in 0..10 {
            view.add("t", "gmail.com", &format!("I{i}"), 1);
        }
        let r = p.plan(NOW + 62_000, &mut rng, &view, 0).unwrap();
        assert!(
            ips_for(&r, "gmail.com").contains(&a),
            "{:?}",
            ips_for(&r, "gmail.com")
        );
        let leased = grant(&r);
        let more = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        let _ = sends;
        let from_a = more
            .iter()
            .find(|s| s.planned.domain == "gmail.com" && s.planned.slot.source_ip == a)
            .unwrap();
        p.input(throttle(from_a));
        for i in 0..10 {
            view.add("t", "gmail.com", &format!("J{i}"), 1);
        }
        // The round that takes the report (at t) starts the backoff: 120 s from t this time.
        let t = NOW + 63_000;
        let r = p.plan(t, &mut rng, &view, 0).unwrap();
        assert_eq!(ips_for(&r, "gmail.com"), [b.clone()].into());
        p.failed(r);
        let r = p.plan(t + 61_000, &mut rng, &view, 0).unwrap();
        assert_eq!(
            ips_for(&r, "gmail.com"),
            [b.clone()].into(),
            "120 s this time"
        );
        p.failed(r);
        let r = p.plan(t + 121_000, &mut rng, &view, 0).unwrap();
        assert!(
            ips_for(&r, "gmail.com").contains(&a),
            "{:?} {:?} {:?}",
            ips_for(&r, "gmail.com"),
            p.backoff,
            p.held
        );
    }

    /// A custom domain whose MX lookup failed counts as the default class until a sender
    /// reports reaching Google's MX for it: the round learns that (a replicated op) and from
    /// then on leases it against Gmail's limits.
    #[test]
    fn providers_are_learned_from_the_mx_senders_reach() {
        let mut view = MemView {
            shaping: Some(two_ips()),
            ..MemView::default()
        };
        for i in 0..4 {
            view.add("t", "hosted.test", &format!("H{i}"), 1);
        }
        let cfg = DeliveryConfig {
            max_rcpts_per_assignment: 1,
            ..cfg()
        };
        let mut p = Planner::new(cfg);
        p.input(joined_from(1, "s1", "192.0.2.1", 1));
        let provider_of = |r: &Round| -> Vec<String> {
            r.ops
                .iter()
                .filter_map(|op| match op {
                    DeliveryOp::LeaseShaped { provider, .. } => Some(provider.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut rng = fastrand::Rng::with_seed(13);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert!(r.ops.is_empty(), "waits for its MX host: {:?}", r.ops);
        p.failed(r);
        assert_eq!(p.lookups(), ["hosted.test"]);
        p.input(Input::Mx {
            domain: "hosted.test".into(),
            result: Err("timed out".into()),
            at_ms: NOW,
        });
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert_eq!(provider_of(&r), ["default"]);
        assert!(p.lookups().is_empty(), "not looked up again for a while");
        let leased = grant(&r);
        let sends = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        let s = &sends[0];
        let mut done = report(1, "s1", s.planned.lease, &s.keys[0], Outcome::Delivered);
        if let Input::Report(r) = &mut done {
            r.report.mx = "ASPMX.L.Google.com.[127.0.0.5]:25".into();
            r.report.source_ip = "192.0.2.1".into();
        }
        p.input(done);
        let r = p.plan(NOW + 1, &mut rng, &view, 0).unwrap();
        assert!(
            r.ops.contains(&DeliveryOp::LearnMx {
                domain: "hosted.test".into(),
                mx: "aspmx.l.google.com".into(),
            }),
            "{:?}",
            r.ops
        );
        assert_eq!(provider_of(&r), ["gmail"]);
    }

    /// A domain no domain rule names waits for the leader's MX lookup before its first
    /// lease: found at Google, the round learns it and leases against Gmail's limits; a
    /// domain without MX records goes by its domain (the default class). Each is looked up
    /// once, and never more than [`MAX_MX_LOOKUPS`] at a time.
    #[test]
    fn unknown_domains_are_classified_by_their_mx_before_the_first_lease() {
        let mut view = MemView {
            shaping: Some(two_ips()),
            ..MemView::default()
        };
        view.add("t", "hosted.test", "H0", 1);
        view.add("t", "plain.test", "P0", 1);
        view.add("t", "gmail.com", "G0", 1);
        let mut p = Planner::new(cfg());
        p.input(joined_from(1, "s1", "192.0.2.1", 10));
        let leases = |r: &Round| -> Vec<(String, String)> {
            let mut v: Vec<_> = r
                .plan
                .planned
                .iter()
                .map(|p| (p.domain.clone(), p.provider.as_ref().unwrap().name.clone()))
                .collect();
            v.sort();
            v
        };
        let mut rng = fastrand::Rng::with_seed(5);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        // gmail.com is known by its name and goes at once.
        assert_eq!(leases(&r), [("gmail.com".into(), "gmail".into())]);
        let leased = grant(&r);
        p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        let mut asked = p.lookups();
        asked.sort();
        assert_eq!(asked, ["hosted.test", "plain.test"]);
        let r = p.plan(NOW + 1, &mut rng, &view, 0).unwrap();
        assert!(r.plan.planned.is_empty(), "still waiting");
        p.failed(r);
        assert!(p.lookups().is_empty(), "asked once");
        p.input(Input::Mx {
            domain: "hosted.test".into(),
            result: Ok(Some("aspmx.l.google.com".into())),
            at_ms: NOW,
        });
        p.input(Input::Mx {
            domain: "plain.test".into(),
            result: Ok(None),
            at_ms: NOW,
        });
        let r = p.plan(NOW + 2, &mut rng, &view, 0).unwrap();
        assert!(r.ops.contains(&DeliveryOp::LearnMx {
            domain: "hosted.test".into(),
            mx: "aspmx.l.google.com".into(),
        }));
        assert_eq!(
            leases(&r),
            [
                ("hosted.test".into(), "gmail".into()),
                ("plain.test".into(), "default".into())
            ]
        );

        // Lookups out at once are bounded; the rest ask when one ends.
        let mut m = MxLookups::default();
        let st = two_ips();
        for i in 0..MAX_MX_LOOKUPS + 5 {
            assert!(m.waits(&st, &format!("d{i}.test"), NOW));
        }
        assert_eq!(m.wanted.len(), MAX_MX_LOOKUPS);
        m.ended("d0.test".into(), Err("SERVFAIL".into()), NOW);
        assert!(
            !m.waits(&st, "d0.test", NOW + 1),
            "failed: by its domain for now"
        );
        assert!(
            !m.waits(&st, "d0.test", NOW + MX_RETRY_MS),
            "then asked again, without waiting"
        );
        assert_eq!(m.wanted.last().map(String::as_str), Some("d0.test"));
        assert!(
            m.waits(&st, "late.test", NOW),
            "full again: waits without asking"
        );
        assert_eq!(m.wanted.len(), MAX_MX_LOOKUPS + 1);
    }

    #[test]
    fn mx_hosts_come_from_the_senders_description() {
        assert_eq!(
            mx_host("mx1.Example.test[127.0.0.21]:25").as_deref(),
            Some("mx1.example.test")
        );
        assert_eq!(mx_host("[127.0.0.21]:25"), None, "a bare address");
        assert_eq!(mx_host(""), None);
    }

    /// Operators' suspensions hold back what they cover, with or without IP records: a
    /// tenant, a domain, a provider's domains, a source IP; one with an end lifts by itself.
    #[test]
    fn suspensions_hold_back_what_they_cover() {
        use skein_shaping::{SuspendKind as K, Suspension};
        let sus = |kind, name: &str, until_ms| Suspension {
            kind,
            name: name.into(),
            until_ms,
            reason: "test".into(),
            at_ms: NOW,
        };
        let mut view = MemView::default();
        view.add("t", "a.test", "A", 2);
        view.add("t", "gmail.com", "G", 2);
        view.add("u", "b.test", "B", 2);
        view.add("v", "c.test", "C", 2);
        view.suspended = vec![
            sus(K::Domain, "a.test", Some(NOW + 1_000)),
            sus(K::Provider, "gmail", None),
            sus(K::Tenant, "u", None),
            sus(K::Ip, "127.0.0.9", None),
        ];
        let mut p = Planner::new(cfg());
        p.input(Input::Joined {
            conn: 1,
            hello: Hello {
                sender: "s1".into(),
                source_ips: ["127.0.0.9", "127.0.0.10"]
                    .iter()
                    .map(|ip| SourceIp {
                        ip: ip.to_string(),
                        ehlo: "x.test".into(),
                    })
                    .collect(),
                max_in_flight: 100,
                active_leases: Vec::new(),
            },
        });
        let mut rng = fastrand::Rng::with_seed(12);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert_eq!(domains(&r), ["c.test"]);
        assert_eq!(
            r.plan.planned[0].slot.source_ip, "127.0.0.10",
            "not the suspended IP"
        );
        p.failed(r);
        // The domain's suspension ends by itself.
        let r = p.plan(NOW + 1_000, &mut rng, &view, 0).unwrap();
        let mut d = domains(&r);
        d.sort();
        assert_eq!(d, ["a.test", "c.test"]);
    }

    /// A queue held back is passed over, and the others are served as if it were not there;
    /// a "slow down" reply holds its queue back for the throttle delay.
    #[test]
    fn a_blocked_queue_is_skipped_without_blocking_others() {
        let mut view = MemView::default();
        view.add("t", "a.test", "A", 50);
        view.add("t", "b.test", "B", 50);
        view.add("t", "c.test", "C", 50);
        let mut p = Planner::new(cfg());
        p.input(joined(1, "s1", 100));
        let mut rng = fastrand::Rng::with_seed(2);
        p.block("t", "a.test", NOW + 1_000);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        let d = domains(&r);
        assert!(!d.contains(&"a.test".to_string()), "{d:?}");
        assert_eq!(d.len(), 10, "b and c: 50 each in chunks of 10");
        let leased = grant(&r);
        let sends = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        // b.test says "slow down" for one of its recipients.
        let b = sends.iter().find(|s| s.planned.domain == "b.test").unwrap();
        p.input(report(
            1,
            "s1",
            b.planned.lease,
            &b.keys[0],
            Outcome::Throttled,
        ));
        view.add("t", "b.test", "B2", 5);
        view.add("t", "c.test", "C2", 5);
        view.add("t", "b.test", "B3", 5);
        let r = p.plan(NOW + 10, &mut rng, &view, 0).unwrap();
        let d = domains(&r);
        assert!(d.contains(&"c.test".to_string()), "{d:?}");
        assert!(!d.contains(&"b.test".to_string()), "b.test waits: {d:?}");
        assert!(
            !d.contains(&"a.test".to_string()),
            "a.test still waits: {d:?}"
        );
        let leased = grant(&r);
        p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        // Once a's time is up it is served again; b waits for the throttle delay (60 s).
        let r = p.plan(NOW + 2_000, &mut rng, &view, 0).unwrap();
        let d = domains(&r);
        assert!(d.contains(&"a.test".to_string()), "{d:?}");
        assert!(!d.contains(&"b.test".to_string()), "{d:?}");
        p.failed(r);
        let r = p.plan(NOW + 61_000, &mut rng, &view, 0).unwrap();
        assert!(domains(&r).contains(&"b.test".to_string()));
    }

    /// A round whose write fails keeps its reports for the next, and frees its slots; once a
    /// round commits they are gone.
    #[test]
    fn a_failed_write_keeps_reports() {
        let mut view = MemView::default();
        view.add("t", "a.test", "A", 1);
        let mut p = Planner::new(cfg());
        p.input(joined(1, "s1", 5));
        let mut rng = fastrand::Rng::with_seed(3);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        let leased = grant(&r);
        let sends = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        assert_eq!(p.free(), 4);
        let s = &sends[0];
        p.input(report(
            1,
            "s1",
            s.planned.lease,
            &s.keys[0],
            Outcome::Transient,
        ));
        assert_eq!(p.free(), 5, "the report frees its slot at once");
        assert!(p.busy());

        let r = p.plan(NOW + 1, &mut rng, &view, 0).unwrap();
        assert_eq!(report_ops(&r), 1);
        p.failed(r);
        assert!(p.busy(), "kept");
        let r = p.plan(NOW + 2, &mut rng, &view, 0).unwrap();
        assert_eq!(report_ops(&r), 1, "proposed again");
        p.committed(r, Vec::new());
        assert!(!p.busy());
        let r = p.plan(NOW + 3, &mut rng, &view, 0).unwrap();
        assert_eq!(report_ops(&r), 0);
    }

    /// An assignment whose lease committed but whose session was gone is given back in the
    /// next round: due at once, no attempt counted.
    #[test]
    fn a_lost_assignment_is_released() {
        let mut view = MemView::default();
        view.add("t", "a.test", "A", 3);
        let mut p = Planner::new(cfg());
        p.input(joined(1, "s1", 5));
        let mut rng = fastrand::Rng::with_seed(4);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        let leased = grant(&r);
        let mut sends = p.committed(r, leased.clone());
        view.lease(&leased, "s1");
        assert_eq!(sends.len(), 1);
        let lost = sends.pop().unwrap();
        let (lease, keys) = (lost.planned.lease, lost.keys.clone());
        p.not_sent(lost);
        assert_eq!(p.free(), 5, "its slot is free again");
        let r = p.plan(NOW + 5, &mut rng, &view, 0).unwrap();
        let released: Vec<_> = r
            .ops
            .iter()
            .filter_map(|op| match op {
                DeliveryOp::Report {
                    lease: Some(l),
                    rcpt,
                    attempt: None,
                    disposition:
                        Disposition::Retry {
                            at_ms,
                            counted: false,
                        },
                } if *l == lease && *at_ms == NOW + 5 => Some(rcpt.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(released, keys);
        p.committed(r, Vec::new());
        assert!(!p.busy());
    }

    /// Leadership lost while a round's entry is out: the planner forgets sessions, reports
    /// and releases (they belong to the next leader), and the round ending afterwards changes
    /// nothing. Leading again, it plans the same work anew.
    #[test]
    fn leadership_loss_mid_round() {
        let mut view = MemView::default();
        view.add("t", "a.test", "A", 3);
        let mut p = Planner::new(cfg());
        p.input(joined(1, "s1", 5));
        p.input(report(1, "s1", 77, "A00000", Outcome::Transient));
        let mut rng = fastrand::Rng::with_seed(5);
        let r = p.plan(NOW, &mut rng, &view, 0).unwrap();
        assert_eq!(r.plan.planned.len(), 1);
        p.reset();
        p.failed(r);
        assert_eq!((p.free(), p.senders(), p.busy()), (0, 0, false));
        let r = p.plan(NOW + 1, &mut rng, &view, 0).unwrap();
        assert!(r.ops.is_empty(), "no senders, nothing pending: {:?}", r.ops);
        p.committed(r, Vec::new());
        p.input(joined(2, "s1", 5));
        let r = p.plan(NOW + 2, &mut rng, &view, 0).unwrap();
        assert_eq!(r.plan.planned.len(), 1);
        assert_eq!(r.plan.planned[0].slot.conn, 2);
    }

    /// The same seed, inputs and view give the same decisions, lease tokens included.
    #[test]
    fn decisions_replay_from_a_seed() {
        let run = |seed: u64| {
            let mut view = MemView::default();
            view.add("t", "a.test", "A", 30);
            view.add("u", "b.test", "B", 30);
            let mut p = Planner::new(cfg());
            p.input(joined(1, "s1", 3));
            p.input(joined(2, "s2", 2));
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut ops = Vec::new();
            for i in 0..3 {
                let r = p.plan(NOW + i, &mut rng, &view, 0).unwrap();
                ops.extend(r.ops.clone());
                let leased = grant(&r);
                for s in p.committed(r, leased.clone()) {
                    p.input(report(
                        s.planned.slot.conn,
                        &s.planned.slot.sender,
                        s.planned.lease,
                        &s.keys[0],
                        Outcome::Transient,
                    ));
                }
                view.lease(&leased, "s1");
            }
            ops
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10), "lease tokens come from the seed");
    }

    /// A round never runs at a time before the latest command time applied.
    #[test]
    fn round_time_never_goes_backwards() {
        let view = MemView {
            clock: NOW + 5_000,
            ..MemView::default()
        };
        let mut p = Planner::new(cfg());
        let mut rng = fastrand::Rng::with_seed(6);
        assert_eq!(p.plan(NOW, &mut rng, &view, 0).unwrap().now_ms, NOW + 5_000);
        assert_eq!(
            p.plan(NOW + 9_000, &mut rng, &view, 0).unwrap().now_ms,
            NOW + 9_000
        );
    }
}
