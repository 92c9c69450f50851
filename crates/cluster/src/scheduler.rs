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
use skein_proto::work::{Assignment, Outcome, Recipient, Report};
use skein_queue::{
    AttemptRecord, AttemptResult, DeliveryOp, Disposition, RcptRecord, Reply, Request, Response,
};
use tokio::sync::mpsc;

use crate::events::{Event, EventLog};
use crate::node::{NodeCtx, Route};
use crate::policy;
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

/// An assignment planned in this round, sent once its lease commits.
struct Planned {
    lease: u64,
    slot: Slot,
    message_id: String,
    domain: String,
    rcpts: Vec<(String, String)>,
    expires_ms: i64,
}

/// Runs the scheduler until the node shuts down (the reports channel closes).
pub async fn run(
    ctx: Arc<NodeCtx>,
    senders: Arc<Senders>,
    mut reports: mpsc::Receiver<SessionReport>,
    cfg: DeliveryConfig,
    events: Arc<EventLog>,
) {
    let mut was_leader = false;
    // Whether the last round changed anything: a round that did not (due work, but no sender
    // can take it) must not be repeated at once, or the loop would spin.
    let mut progressed = true;
    let purge_every = cfg.keep_finished.0.min(PURGE_EVERY).as_millis() as i64;
    let mut last_purge_ms = i64::MIN;
    // Where the next round starts in the fair order of queues.
    let mut fair_cursor = 0usize;
    loop {
        // Reads below are synchronous: let the node's other tasks run between rounds.
        tokio::task::yield_now().await;
        let leader = matches!(ctx.route(false), Ok(Route::Local));
        if !leader {
            if was_leader {
                tracing::info!("no longer leader: closing sender sessions");
                senders.disconnect_all();
            }
            was_leader = false;
            // Reports queued here belong to sessions that are gone; their leases will lapse.
            while reports.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if !was_leader {
            tracing::info!("leading: scheduler running");
        }
        was_leader = true;

        // Wait for a report, a sender with room, or the next due time.
        let mut batch = Vec::new();
        let wait = match ctx.reader.next_due_ms() {
            Ok(Some(at)) if progressed && senders.free() > 0 => {
                let ms = (at - ctx.clock.now_ms()).clamp(0, IDLE_WAIT.as_millis() as i64);
                Duration::from_millis(ms as u64)
            }
            // Nothing due, nobody to give it to, or nothing could be done last time: wait
            // for a report, a sender with room, or the next check of maximum ages.
            _ => IDLE_WAIT,
        };
        if !wait.is_zero() {
            tokio::select! {
                r = reports.recv() => match r {
                    Some(r) => batch.push(r),
                    None => return,
                },
                _ = senders.changed.notified() => {}
                _ = senders.drained() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while batch.len() < MAX_REPORTS_PER_ROUND {
            match reports.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let now = ctx.clock.now_ms();
        if now.saturating_sub(last_purge_ms) >= purge_every {
            match purge(&ctx, &cfg, now).await {
                // A full batch: there may be more, check again next round.
                Ok(n) if n == PURGE_LIMIT => {}
                Ok(_) => last_purge_ms = now,
                Err(e) => {
                    last_purge_ms = now;
                    tracing::warn!(%e, "purging finished messages failed");
                }
            }
        }
        match round(&ctx, &senders, &cfg, &events, batch, &mut fair_cursor).await {
            Ok(p) => progressed = p,
            Err(e) => {
                progressed = false;
                tracing::warn!(%e, "scheduling round failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
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

/// One round: reports in, leases out, one proposal. True if that changed anything.
async fn round(
    ctx: &NodeCtx,
    senders: &Senders,
    cfg: &DeliveryConfig,
    events: &EventLog,
    reports: Vec<SessionReport>,
    cursor: &mut usize,
) -> Result<bool, crate::ClusterError> {
    let now = ctx.clock.now_ms();
    let mut ops = Vec::new();
    // (rcpt before, attempt, disposition) for the events of applied reports.
    let mut reported: Vec<(RcptRecord, AttemptRecord, Disposition)> = Vec::new();
    for SessionReport { conn, report } in reports {
        senders.release(conn, report.lease);
        report_ops(ctx, cfg, now, &report, &mut ops, &mut reported)?;
    }

    // Due recipients: expire the too old, lease the rest while senders have room.
    let mut planned = Vec::new();
    let mut expired = Vec::new();
    let free = senders.free();
    let due = crate::fair::select(
        &ctx.reader,
        now,
        cfg.batch,
        cfg.max_rcpts_per_assignment,
        cursor,
    )?;
    // Groups of one message and domain, in the fair order the recipients came in.
    let mut groups: Vec<((String, String), Vec<RcptRecord>)> = Vec::new();
    let mut group_of: std::collections::HashMap<(String, String), usize> = Default::default();
    for r in due {
        if policy::expired(cfg, &r, now) {
            ops.push(DeliveryOp::Report {
                lease: None,
                rcpt: r.key.clone(),
                attempt: None,
                disposition: Disposition::Expire,
            });
            expired.push(r);
        } else if free > 0 {
            let key = (r.message_id.clone(), r.domain.clone());
            let i = *group_of.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(r);
        }
    }
    // Bodies waiting for senders to take them stay within the budget: a slow sender's backlog
    // holds new work back instead of growing the leader's memory. One message always goes
    // when nothing waits, however large.
    let held = senders.held_bytes();
    let mut room = cfg.assignment_memory.0.saturating_sub(held);
    let mut starved = false;
    'plan: for ((message_id, domain), rcpts) in groups {
        let size = match ctx.reader.get_message(&message_id, false)? {
            Some((m, _)) => m.size,
            None => 0,
        };
        for chunk in rcpts.chunks(cfg.max_rcpts_per_assignment) {
            if size > room && (held > 0 || !planned.is_empty()) {
                starved = true;
                continue 'plan;
            }
            room = room.saturating_sub(size);
            let lease = fastrand::u64(1..);
            let Some(slot) = senders.reserve(lease) else {
                break 'plan;
            };
            let expires_ms = now + cfg.lease.0.as_millis() as i64;
            ops.push(DeliveryOp::Lease {
                lease,
                sender: slot.sender.clone(),
                source_ip: slot.source_ip.clone(),
                expires_ms,
                rcpts: chunk.iter().map(|r| r.key.clone()).collect(),
            });
            planned.push(Planned {
                lease,
                slot,
                message_id: message_id.clone(),
                domain: domain.clone(),
                rcpts: chunk
                    .iter()
                    .map(|r| (r.key.clone(), r.address.clone()))
                    .collect(),
                expires_ms,
            });
        }
    }
    senders.set_starved(starved);
    if ops.is_empty() {
        return Ok(false);
    }
    tracing::debug!(
        ops = ops.len(),
        leases = planned.len(),
        reported = reported.len(),
        expired = expired.len(),
        free,
        "scheduling round"
    );

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
            release_all(senders, &planned);
            return Err(e);
        }
    };

    let granted: BTreeMap<u64, Vec<String>> = leased.into_iter().collect();
    let progressed = !applied.is_empty() || granted.values().any(|k| !k.is_empty());
    for p in planned {
        let keys = granted.get(&p.lease).cloned().unwrap_or_default();
        if keys.is_empty() || !send(ctx, senders, &p, &keys)? {
            senders.release(p.slot.conn, p.lease);
        }
    }
    events.write(&round_events(ctx, now, &applied, reported, expired, &dsns));
    Ok(progressed)
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

/// The Report ops for one sender report.
fn report_ops(
    ctx: &NodeCtx,
    cfg: &DeliveryConfig,
    now: i64,
    report: &Report,
    ops: &mut Vec<DeliveryOp>,
    reported: &mut Vec<(RcptRecord, AttemptRecord, Disposition)>,
) -> Result<(), crate::ClusterError> {
    for r in &report.rcpts {
        let Some(rec) = ctx.reader.rcpt(&r.key)? else {
            continue;
        };
        let result = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Delivered) => AttemptResult::Delivered,
            Ok(Outcome::Permanent) => AttemptResult::Permanent,
            Ok(Outcome::Throttled) => AttemptResult::Throttled,
            // An unknown outcome from a newer or broken sender: try again.
            Ok(Outcome::Transient | Outcome::Unspecified) | Err(_) => AttemptResult::Transient,
        };
        let reply = Reply {
            code: u16::try_from(r.code).unwrap_or(0),
            enhanced: clip(&r.enhanced, 16),
            text: clip(&r.text, 1000),
        };
        let disposition = policy::disposition(cfg, &rec, result, &reply, now, fastrand::f64());
        let sender = match &rec.state {
            skein_queue::RcptState::Leased(l) => l.sender.clone(),
            _ => String::new(),
        };
        let attempt = AttemptRecord {
            at_ms: if report.finished_ms > 0 {
                report.finished_ms
            } else {
                now
            },
            sender,
            source_ip: clip(&report.source_ip, 64),
            mx: clip(&report.mx, 300),
            reply,
            result,
        };
        ops.push(DeliveryOp::Report {
            lease: Some(report.lease),
            rcpt: r.key.clone(),
            attempt: Some(attempt.clone()),
            disposition: disposition.clone(),
        });
        reported.push((rec, attempt, disposition));
    }
    Ok(())
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
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
