//! Delivery events: one JSON line per attempt and per final state, written by the leader's
//! scheduler after the state change committed.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One event. Absent fields are left out of the JSON.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Event {
    /// `attempt`, `delivered`, `bounced`, `expired`, `suppressed` or `dsn`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the event was recorded (Unix ms).
    pub ts_ms: i64,
    /// Queue id of the message.
    pub message_id: String,
    /// Tenant, empty when relayed by IP.
    pub tenant: String,
    /// Reverse-path.
    pub sender: String,
    /// Forward-path.
    pub recipient: String,
    /// Recipient domain.
    pub domain: String,
    /// Source IP of the attempt.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source_ip: String,
    /// Sender node of the attempt.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sender_node: String,
    /// MX host (and address) the attempt reached last.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mx: String,
    /// Reply code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Enhanced status code.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub enhanced: String,
    /// Reply text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// `delivered`, `transient`, `permanent` or `throttled` (attempts only).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub result: &'static str,
    /// Attempt number (attempts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the recipient is tried next (deferrals only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// When the message was received.
    pub received_ms: i64,
    /// The DSN's queue id (`dsn` events only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dsn_id: String,
}

/// Where events go.
#[derive(Default)]
pub struct EventLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
    /// Log outcomes at info level too.
    log: bool,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("enabled", &self.out.is_some())
            .finish()
    }
}

impl EventLog {
    /// Appends to `path`, or writes to standard output for `-`; `None` discards events. With
    /// `log`, outcomes are logged at info level as well (see [`outcome_line`]).
    pub fn open(path: Option<&Path>, log: bool) -> std::io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match path {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
            Some(p) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
        };
        Ok(Self {
            out: out.map(Mutex::new),
            log,
        })
    }

    /// Writes events, one line each.
    pub fn write(&self, events: &[Event]) {
        if self.log {
            for line in events.iter().filter_map(outcome_line) {
                tracing::info!("{line}");
            }
        }
        let Some(out) = &self.out else { return };
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            if serde_json::to_writer(&mut buf, e).is_ok() {
                buf.push(b'\n');
            }
        }
        let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write_all(&buf).and_then(|_| w.flush()) {
            tracing::warn!(%e, "cannot write delivery events");
        }
    }
}

/// A person's line for an outcome: delivered, deferred (with the reply and the next try),
/// bounced, expired, suppressed. `None` for what is no outcome of a recipient (a successful
/// attempt is said by its `delivered`, a DSN by the bounce).
pub fn outcome_line(e: &Event) -> Option<String> {
    let reply = || {
        let code = e.code.map(|c| c.to_string()).unwrap_or_default();
        [code.as_str(), e.enhanced.as_str(), e.text.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let via = if e.mx.is_empty() {
        String::new()
    } else {
        format!(" via {}", e.mx)
    };
    let (id, to) = (&e.message_id, &e.recipient);
    Some(match e.kind {
        "delivered" => format!("delivered {id} to {to}{via}: {}", reply()),
        "attempt" if e.result == "transient" || e.result == "throttled" => {
            let next = e
                .next_attempt_ms
                .map(|t| format!(", next try in {} s", (t - e.ts_ms).max(0) / 1000))
                .unwrap_or_default();
            format!("deferred {id} to {to}{via}: {}{next}", reply())
        }
        "bounced" => format!("bounced {id} to {to}{via}: {}", reply()),
        "expired" => format!("expired {id} to {to}: {}", reply()),
        "suppressed" => format!("suppressed {id} to {to}: on the tenant's suppression list"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_one_line_each() {
        let base = Event {
            message_id: "0000000000050000".into(),
            recipient: "you@example.test".into(),
            mx: "[127.0.0.1]:2626".into(),
            ts_ms: 1_000,
            ..Default::default()
        };
        let delivered = Event {
            kind: "delivered",
            code: Some(250),
            text: "OK".into(),
            ..base.clone()
        };
        assert_eq!(
            outcome_line(&delivered).unwrap(),
            "delivered 0000000000050000 to you@example.test via [127.0.0.1]:2626: 250 OK"
        );
        let deferred = Event {
            kind: "attempt",
            result: "transient",
            code: Some(451),
            enhanced: "4.3.0".into(),
            text: "try later".into(),
            next_attempt_ms: Some(61_000),
            ..base.clone()
        };
        assert_eq!(
            outcome_line(&deferred).unwrap(),
            "deferred 0000000000050000 to you@example.test via [127.0.0.1]:2626: 451 4.3.0 \
             try later, next try in 60 s"
        );
        let ok_attempt = Event {
            kind: "attempt",
            result: "delivered",
            ..base.clone()
        };
        assert_eq!(outcome_line(&ok_attempt), None);
        let suppressed = Event {
            kind: "suppressed",
            ..base
        };
        assert!(outcome_line(&suppressed)
            .unwrap()
            .contains("suppression list"));
    }
}
