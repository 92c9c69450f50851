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
    "deleted",
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
    list_scanning(reader, after, limit, filter, SCAN_LIMIT)
}

/// [`list`], looking at `scan_limit` messages at most.
fn list_scanning(
    reader: &QueueReader,
    after: &str,
    limit: usize,
    filter: &MessageFilter,
    scan_limit: usize,
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
            if scanned == scan_limit {
                // This call has looked enough; the next goes on after what it looked at.
                return Ok((out, id));
            }
        }
        if !full {
            return Ok((out, String::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftStateMachine as _;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use skein_queue::{NewMessage, Request};

    fn message(n: usize) -> NewMessage {
        NewMessage {
            tenant: String::new(),
            mail_from: "app@example.com".into(),
            rcpt_to: vec![format!("r{n}@example.net")],
            data: b"Subject: x\r\n\r\nbody\r\n".to_vec().into(),
            client_ip: "127.0.0.1".into(),
            helo: "c".into(),
            edge: "e".into(),
            smtputf8: false,
            body_8bit: false,
        }
    }

    /// Pages cover every match exactly once, however few matches a bounded scan finds.
    #[tokio::test]
    async fn pages_go_on_after_what_a_bounded_scan_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) = skein_queue::open(dir.path()).unwrap();
        let entries: Vec<Entry<_>> = (1..=10)
            .map(|n| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), n as u64),
                payload: EntryPayload::Normal(Request::Enqueue {
                    received_at_ms: 1_000,
                    messages: vec![message(n)],
                }),
            })
            .collect();
        sm.apply(entries).await.unwrap();
        let pages = |filter: MessageFilter, limit: usize| {
            let mut seen = Vec::new();
            let (mut after, mut calls) = (String::new(), 0);
            loop {
                calls += 1;
                let (msgs, next) = list_scanning(&reader, &after, limit, &filter, 3).unwrap();
                seen.extend(msgs.into_iter().map(|m| m.rcpt_to[0].clone()));
                if next.is_empty() {
                    return (seen, calls);
                }
                after = next;
            }
        };
        let only8 = MessageFilter {
            recipient: Some("r8@example.net".into()),
            ..Default::default()
        };
        let (seen, calls) = pages(only8, 100);
        assert_eq!(seen, ["r8@example.net"]);
        assert!(calls >= 4, "3 messages a call: {calls} calls");
        let (seen, _) = pages(MessageFilter::default(), 4);
        let want: Vec<String> = (1..=10).map(|n| format!("r{n}@example.net")).collect();
        assert_eq!(seen, want, "every message once, in order");
    }
}
