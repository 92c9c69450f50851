//! The scheduler: runs on the leader, turns due recipients into leased assignments for
//! connected senders and senders' reports into state changes.
//!
//! One loop, one proposal per round: the reports that arrived since the last round and the new
//! leases go into a single [`Request::Deliver`] entry, so a busy cluster commits many outcomes
//! and leases per fsync. Assignments are sent only after their lease committed. A new leader
//! needs nothing from the old one: leases are replicated, and those whose sender vanished come
//! due again in the `due` index when they lapse.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skein_config::DeliveryConfig;
use skein_proto::work::{Assignment, Recipient};
use skein_queue::{AttemptRecord, AttemptResult, Disposition, RcptRecord, Request, Response};
use tokio::sync::mpsc;

use crate::events::{Event, EventLog};
use crate::node::{NodeCtx, Route};
use crate::plan::{self, Planned, ReportIn, RoundPlan};
use crate::work::{Senders, SessionReport, Slot};

/// Longest wait between rounds when nothing happens.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Reports taken into one round.
const MAX_REPORTS_PER_ROUND: usize = 4096;
// Each report is about one message and each due recipient of a round about at most one:
// the DSNs one round's entry can generate must fit in the 65,536 positions of its ids.
const _: () = assert!(MAX_REPORTS_PER_ROUND + skein_config::delivery::MAX_BATCH <= 65_536);
/// Longest time between checks for finished messages to forget.
const PURGE_EVERY: Duration = Duration::from_secs(30);
/// Finished messages forgotten per Raft entry.
const PURGE_LIMIT: u32 = 1000;

/// Runs the scheduler until the node shuts down (the reports channel closes). `rng` is its
/// only source of randomness (lease tokens, retry jitter).
pub async fn run(
    ctx: Arc<NodeCtx>,
    senders: Arc<Senders>,
    mut reports: mpsc::Receiver<SessionReport>,
    cfg: DeliveryConfig,
    events: Arc<EventLog>,
    rng: fastrand::Rng,
) {
    let mut s = Scheduler {
        ctx,
        senders,
        cfg,
        events,
        rng,
        cursor: 0,
        pending: Vec::new(),
        unsent: Vec::new(),
    };
    let mut was_leader = false;
    // Whether the last round changed anything: a round that did not (due work, but no sender
    // can take it) must not be repeated at once, or the loop would spin.
    let mut progressed = true;
    let purge_every = s.cfg.keep_finished.0.min(PURGE_EVERY).as_millis() as i64;
    let mut last_purge_ms = i64::MIN;
    loop {
        // Reads below are synchronous: let the node's other tasks run between rounds.
        tokio::task::yield_now().await;
        let leader = matches!(s.ctx.route(false), Ok(Route::Local));
        if !leader {
            if was_leader {
                tracing::info!("no longer leader: closing sender sessions");
                s.senders.disconnect_all();
            }
            was_leader = false;
            // Reports here belong to sessions that are gone (their senders report again to
            // the new leader), and unsent leases lapse.
            while reports.try_recv().is_ok() {}
            s.pending.clear();
            s.unsent.clear();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if !was_leader {
            tracing::info!("leading: scheduler running");
        }
        was_leader = true;

        // Wait for a report, a sender with room, or the next due time.
        let wait = match s.ctx.reader.next_due_ms() {
            _ if !s.pending.is_empty() || !s.unsent.is_empty() => Duration::ZERO,
            Ok(Some(at)) if progressed && s.senders.free() > 0 => {
                let ms = (at - s.ctx.clock.now_ms()).clamp(0, IDLE_WAIT.as_millis() as i64);
                Duration::from_millis(ms as u64)
            }
            // Nothing due, nobody to give it to, or nothing could be done last time: wait
            // for a report, a sender with room, or the next check of maximum ages.
            _ => IDLE_WAIT,
        };
        if !wait.is_zero() {
            tokio::select! {
                r = reports.recv() => match r {
                    Some(r) => s.pending.push(r),
                    None => return,
                },
                _ = s.senders.changed.notified() => {}
                _ = s.senders.drained() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Reports a failed round kept come first; new ones fill the round up.
        while s.pending.len() < MAX_REPORTS_PER_ROUND {
            match reports.try_recv() {
                Ok(r) => s.pending.push(r),
                Err(_) => break,
            }
        }
        let now = s.ctx.clock.now_ms();
        if now.saturating_sub(last_purge_ms) >= purge_every {
            match purge(&s.ctx, &s.cfg, now).await {
                // A full batch: there may be more, check again next round.
                Ok(n) if n == PURGE_LIMIT => {}
                Ok(_) => last_purge_ms = now,
                Err(e) => {
                    last_purge_ms = now;
                    tracing::warn!(%e, "purging finished messages failed");
                }
            }
        }
        match s.round().await {
            Ok(p) => progressed = p,
            Err(e) => {
                progressed = false;
                tracing::warn!(%e, "scheduling round failed; its reports are kept for the next");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The scheduler's state between rounds.
struct Scheduler {
    ctx: Arc<NodeCtx>,
    senders: Arc<Senders>,
    cfg: DeliveryConfig,
    events: Arc<EventLog>,
    rng: fastrand::Rng,
    /// Where the next round starts in the fair order of queues.
    cursor: usize,
    /// Reports not yet committed: a round whose write fails keeps them for the next.
    pending: Vec<SessionReport>,
    /// Leases granted whose assignment could not be sent: released by the next round.
    unsent: Vec<(u64, Vec<String>)>,
}

/// The senders as [`plan::due`] sees them.
struct SenderSlots<'a>(&'a Senders);

impl plan::Slots for SenderSlots<'_> {
    fn any_free(&self) -> bool {
        self.0.free() > 0
    }

    fn reserve(&mut self, lease: u64) -> Option<Slot> {
        self.0.reserve(lease)
    }

    fn held_bytes(&self) -> u64 {
        self.0.held_bytes()
    }
}

/// Forgets messages that finished more than `keep_finished` ago, at most [`PURGE_LIMIT`];
/// proposes nothing when there are none.
async fn purge(ctx: &NodeCtx, cfg: &DeliveryConfig, now: i64) -> Result<u32, crate::ClusterError> {
    let before_ms = now.saturating_sub(cfg.keep_finished.0.as_millis() as i64);
    match ctx.reader.oldest_finished_ms()? {
        Some(at) if at < before_ms => {}
        _ => return Ok(0),
    }
    let r = ctx
        .propose(Request::Purge {
            before_ms,
            limit: PURGE_LIMIT,
        })
        .await?;
    match r.data {
        Response::Purged(n) => {
            tracing::debug!(purged = n, before_ms, "forgot finished messages");
            Ok(n)
        }
        other => Err(crate::ClusterError::Raft(format!(
            "unexpected response {other:?}"
        ))),
    }
}

impl Scheduler {
    /// One round: reports in, leases out, one proposal. True if that changed anything.
    async fn round(&mut self) -> Result<bool, crate::ClusterError> {
        let (ctx, senders, cfg) = (&self.ctx, &self.senders, &self.cfg);
        let now = ctx.clock.now_ms();
        let mut plan = RoundPlan {
            ops: plan::release(now, &self.unsent),
            ..RoundPlan::default()
        };
        let mut inputs = Vec::with_capacity(self.pending.len());
        for r in &self.pending {
            senders.release(r.conn, r.report.lease);
            let records = r
                .report
                .rcpts
                .iter()
                .map(|x| ctx.reader.rcpt(&x.key))
                .collect::<Result<Vec<_>, _>>()?;
            inputs.push(ReportIn {
                report: r.report.clone(),
                sender: r.sender.clone(),
                records,
            });
        }
        plan::reports(cfg, now, &mut self.rng, inputs, &mut plan);

        let due = crate::fair::select(
            &ctx.reader,
            now,
            cfg.batch,
            cfg.max_rcpts_per_assignment,
            &mut self.cursor,
        )?;
        let reader = &ctx.reader;
        let size_of = |id: &str| match reader.get_message(id, false) {
            Ok(Some((m, _))) => m.size,
            _ => 0,
        };
        plan::due(
            cfg,
            now,
            &mut self.rng,
            due,
            size_of,
            &mut SenderSlots(senders),
            &mut plan,
        );
        senders.set_starved(plan.starved);
        if plan.ops.is_empty() {
            self.pending.clear();
            return Ok(false);
        }
        tracing::debug!(
            ops = plan.ops.len(),
            leases = plan.planned.len(),
            reported = plan.reported.len(),
            expired = plan.expired.len(),
            released = self.unsent.len(),
            "scheduling round"
        );

        let RoundPlan {
            ops,
            planned,
            reported,
            expired,
            ..
        } = plan;
        let resp = ctx
            .propose(Request::Deliver {
                now_ms: now,
                mta: cfg.mta_name.clone(),
                ops,
            })
            .await;
        let (leased, applied, dsns) = match resp {
            Ok(r) => match r.data {
                Response::Delivered {
                    leased,
                    applied,
                    dsns,
                } => (leased, applied, dsns),
                other => {
                    release_all(senders, &planned);
                    return Err(crate::ClusterError::Raft(format!(
                        "unexpected response {other:?}"
                    )));
                }
            },
            Err(e) => {
                // Reports and releases stay for the next round: applying them twice is
                // harmless (a report about a recipient that moved on is skipped).
                release_all(senders, &planned);
                return Err(e);
            }
        };
        self.pending.clear();
        self.unsent.clear();

        let granted: BTreeMap<u64, Vec<String>> = leased.into_iter().collect();
        let progressed = !applied.is_empty() || granted.values().any(|k| !k.is_empty());
        for p in planned {
            let keys = granted.get(&p.lease).cloned().unwrap_or_default();
            if keys.is_empty() {
                senders.release(p.slot.conn, p.lease);
            } else if !send(ctx, senders, &p, &keys)? {
                senders.release(p.slot.conn, p.lease);
                self.unsent.push((p.lease, keys));
            }
        }
        self.events
            .write(&round_events(ctx, now, &applied, reported, expired, &dsns));
        Ok(progressed)
    }
}

fn release_all(senders: &Senders, planned: &[Planned]) {
    for p in planned {
        senders.release(p.slot.conn, p.lease);
    }
}

/// Builds and sends the assignment for the granted recipients of `p`.
fn send(
    ctx: &NodeCtx,
    senders: &Senders,
    p: &Planned,
    keys: &[String],
) -> Result<bool, crate::ClusterError> {
    let Some((msg, Some(body))) = ctx.reader.get_message(&p.message_id, true)? else {
        tracing::warn!(id = %p.message_id, "leased recipients of a message without a body");
        return Ok(false);
    };
    let a = Assignment {
        lease: p.lease,
        message_id: msg.id,
        tenant: msg.tenant,
        mail_from: msg.mail_from,
        domain: p.domain.clone(),
        rcpts: p
            .rcpts
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(key, address)| Recipient {
                key: key.clone(),
                address: address.clone(),
            })
            .collect(),
        source_ip: p.slot.source_ip.clone(),
        ehlo: p.slot.ehlo.clone(),
        data: body,
        smtputf8: msg.smtputf8,
        body_8bit: msg.body_8bit,
        expires_ms: p.expires_ms,
    };
    Ok(senders.send(p.slot.conn, a))
}

/// Events for what a round's entry applied.
fn round_events(
    ctx: &NodeCtx,
    now: i64,
    applied: &[String],
    reported: Vec<(RcptRecord, AttemptRecord, Disposition)>,
    expired: Vec<RcptRecord>,
    dsns: &[String],
) -> Vec<Event> {
    let applied: std::collections::HashSet<&str> = applied.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    let mut senders_of: BTreeMap<String, String> = BTreeMap::new();
    let mut base = |r: &RcptRecord, kind: &'static str| -> Event {
        let mail_from = senders_of
            .entry(r.message_id.clone())
            .or_insert_with(|| {
                ctx.reader
                    .get_message(&r.message_id, false)
                    .ok()
                    .flatten()
                    .map(|(m, _)| m.mail_from)
                    .unwrap_or_default()
            })
            .clone();
        Event {
            kind,
            ts_ms: now,
            message_id: r.message_id.clone(),
            tenant: r.tenant.clone(),
            sender: mail_from,
            recipient: r.address.clone(),
            domain: r.domain.clone(),
            received_ms: r.received_at_ms,
            ..Event::default()
        }
    };
    for (rec, a, d) in reported {
        if !applied.contains(rec.key.as_str()) {
            continue;
        }
        let mut e = base(&rec, "attempt");
        e.source_ip = a.source_ip.clone();
        e.sender_node = a.sender.clone();
        e.mx = a.mx.clone();
        e.code = Some(a.reply.code);
        e.enhanced = a.reply.enhanced.clone();
        e.text = a.reply.text.clone();
        e.result = match a.result {
            AttemptResult::Delivered => "delivered",
            AttemptResult::Transient => "transient",
            AttemptResult::Permanent => "permanent",
            AttemptResult::Throttled => "throttled",
        };
        e.attempt = Some(rec.attempts + 1);
        let final_kind = match d {
            Disposition::Retry { at_ms, .. } => {
                e.next_attempt_ms = Some(at_ms);
                None
            }
            Disposition::Delivered => Some("delivered"),
            Disposition::Bounce { .. } => Some("bounced"),
            Disposition::Expire => Some("expired"),
        };
        let attempt_event = e.clone();
        out.push(attempt_event);
        if let Some(kind) = final_kind {
            e.kind = kind;
            e.result = "";
            e.next_attempt_ms = None;
            out.push(e);
        }
    }
    for rec in expired {
        if applied.contains(rec.key.as_str()) {
            out.push(base(&rec, "expired"));
        }
    }
    for id in dsns {
        if let Ok(Some((m, _))) = ctx.reader.get_message(id, false) {
            let original = m.dsn_for.clone().unwrap_or_default();
            let r = m.rcpt_to.first().cloned().unwrap_or_default();
            out.push(Event {
                kind: "dsn",
                ts_ms: now,
                message_id: original,
                tenant: m.tenant,
                recipient: r.clone(),
                domain: skein_queue::domain_of(&r),
                received_ms: m.received_at_ms,
                dsn_id: m.id,
                ..Event::default()
            });
        }
    }
    out
}
