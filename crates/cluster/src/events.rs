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
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("enabled", &self.out.is_some())
            .finish()
    }
}

impl EventLog {
    /// Appends to `path`, or writes to standard output for `-`; `None` discards events.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
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
        })
    }

    /// Writes events, one line each.
    pub fn write(&self, events: &[Event]) {
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
