//! The delivery events of what a round's entry applied: one per attempt, one per final
//! outcome, one per expiry and per DSN.

use std::collections::BTreeMap;

use skein_queue::{AttemptRecord, AttemptResult, Disposition, QueueReader, RcptRecord};

use crate::events::Event;

/// Events for what a round's entry applied.
pub(super) fn round_events(
    reader: &QueueReader,
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
                reader
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
            Disposition::Bounce { .. } | Disposition::BounceWith(_) => Some("bounced"),
            Disposition::Delete => Some("deleted"),
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
        if let Ok(Some((m, _))) = reader.get_message(id, false) {
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
