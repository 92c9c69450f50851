//! Listing messages with filters: by a state some recipient is in (or pending / done), tenant,
//! recipient address and receipt time, a page at a time, each message with its recipients'
//! states. A call looks at a bounded number of messages, so a filter that matches little
//! never makes one call scan the whole store: the page says where to go on.

use skein_proto::admin::{ListMessagesRequest, Message};
use skein_queue::{MessageRecord, QueueReader, RcptRecord};

use super::convert::{rcpt_proto, to_proto};
use crate::ClusterError;

/// Most messages one call looks at.
const SCAN_LIMIT: usize = 10_000;

const STATES: &[&str] = &[
    "queued",
    "leased",
    "deferred",
    "delivered",
    "bounced",
    "expired",
    "suppressed",
    "pending",
    "done",
];

/// What a listed message must match.
#[derive(Debug, Clone, Default)]
pub(super) struct MessageFilter {
    state: Option<String>,
    tenant: Option<String>,
    recipient: Option<String>,
    after_ms: i64,
    before_ms: i64,
}

impl MessageFilter {
    /// The filter a request asks for, or which field is wrong.
    pub(super) fn from_request(r: &ListMessagesRequest) -> Result<Self, ClusterError> {
        let invalid = |field: &'static str, reason: String| ClusterError::Invalid { field, reason };
        if !r.state.is_empty() && !STATES.contains(&r.state.as_str()) {
            return Err(invalid(
                "state",
                format!("{:?}: one of {}", r.state, STATES.join(", ")),
            ));
        }
        if r.recipient.len() > 320 {
            return Err(invalid("recipient", "longer than an address can be".into()));
        }
        Ok(Self {
            state: (!r.state.is_empty()).then(|| r.state.clone()),
            tenant: r.tenant.clone(),
            recipient: (!r.recipient.is_empty()).then(|| r.recipient.to_ascii_lowercase()),
            after_ms: r.received_after_ms,
            before_ms: r.received_before_ms,
        })
    }

    /// Whether the envelope alone rules the message out (before its recipients are read).
    fn envelope_matches(&self, m: &MessageRecord) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == m.tenant)
            && (self.after_ms == 0 || m.received_at_ms >= self.after_ms)
            && (self.before_ms == 0 || m.received_at_ms < self.before_ms)
            && self
                .recipient
                .as_ref()
                .is_none_or(|r| m.rcpt_to.iter().any(|a| a.eq_ignore_ascii_case(r)))
            && match self.state.as_deref() {
                Some("pending") => m.remaining > 0,
                Some("done") => m.remaining == 0,
                _ => true,
            }
    }

    fn rcpts_match(&self, rcpts: &[RcptRecord]) -> bool {
        match self.state.as_deref() {
            None | Some("pending" | "done") => true,
            Some(s) => rcpts.iter().any(|r| r.state.name() == s),
        }
    }
}

/// Up to `limit` messages after `after` that match `filter`, each with its recipients'
/// states (no attempt histories), and where the next page starts ("" at the end).
pub(super) fn list(
    reader: &QueueReader,
    after: &str,
    limit: usize,
    filter: &MessageFilter,
) -> Result<(Vec<Message>, String), ClusterError> {
    let mut out = Vec::new();
    let mut cursor = after.to_string();
    let mut scanned = 0;
    loop {
        let batch = reader.list_messages(&cursor, 500)?;
        let Some(last) = batch.last() else {
            return Ok((out, String::new()));
        };
        cursor = last.id.clone();
        let full = batch.len() == 500;
        for m in batch {
            scanned += 1;
            let id = m.id.clone();
            if filter.envelope_matches(&m) {
                let rcpts = reader.rcpts(&m.id)?;
                if filter.rcpts_match(&rcpts) {
                    let mut msg = to_proto(m, None);
                    msg.recipients = rcpts
                        .into_iter()
                        .map(|r| {
                            let mut r = rcpt_proto(r);
                            r.history.clear();
                            r
                        })
                        .collect();
                    out.push(msg);
                    if out.len() == limit {
                        return Ok((out, id));
                    }
                }
            }
            if scanned == SCAN_LIMIT {
                // This call has looked enough; the next goes on after what it looked at.
                return Ok((out, id));
            }
        }
        if !full {
            return Ok((out, String::new()));
        }
    }
}
