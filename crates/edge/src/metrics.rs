//! An edge's metrics and probes: sessions, the replies to final dots by code, the time the
//! queue takes to commit, and whether a queue node answers (readiness).

use std::sync::atomic::{AtomicBool, Ordering};

use skein_observe::metrics::{Counter, Exposition, Gauge, Histogram, Tracked};
use skein_observe::Probe;

/// SMTP sessions accepted (connections past the connection limits).
pub static SESSIONS: Counter = Counter::new();
/// Sessions open now.
pub static OPEN_SESSIONS: Gauge = Gauge::new();
/// Connections refused at once for the connection limits.
pub static REFUSED_CONNECTIONS: Counter = Counter::new();
/// The reply codes a final dot gets, and one more slot for any other.
pub const CODES: [&str; 8] = ["250", "421", "451", "452", "550", "552", "554", "other"];
/// Replies to final dots, by [`CODES`].
pub static DOT_REPLIES: [Counter; 8] = [const { Counter::new() }; 8];
/// From handing a message to the queue to its answer.
pub static ENQUEUE_SECONDS: Histogram = Histogram::new();
/// Whether the last credentials refresh reached a queue node.
pub static QUEUE_REACHABLE: AtomicBool = AtomicBool::new(false);

/// Counts the reply to a final dot.
pub fn dot_reply(code: u16) {
    let code = code.to_string();
    let i = CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(CODES.len() - 1);
    DOT_REPLIES[i].inc();
}

/// Counts a session for as long as it lives.
pub fn session() -> Tracked {
    SESSIONS.inc();
    OPEN_SESSIONS.track()
}

/// The probe of an edge.
#[derive(Debug, Default, Clone)]
pub struct EdgeProbe;

impl Probe for EdgeProbe {
    fn metrics(&self) -> String {
        let mut e = Exposition::new();
        e.counter(
            "skein_edge_sessions_total",
            "SMTP sessions accepted.",
            &[(&[], SESSIONS.get())],
        );
        e.gauge(
            "skein_edge_open_sessions",
            "SMTP sessions open now.",
            &[(&[], OPEN_SESSIONS.get() as f64)],
        );
        e.counter(
            "skein_edge_refused_connections_total",
            "Connections refused at once by the connection limits.",
            &[(&[], REFUSED_CONNECTIONS.get())],
        );
        e.counter_by(
            "skein_edge_messages_total",
            "Messages that reached the final dot, by the reply's code (250: queued).",
            "code",
            &CODES,
            &DOT_REPLIES,
        );
        e.histogram(
            "skein_edge_enqueue_seconds",
            "Time from handing a message to the queue to its answer (the quorum commit).",
            &ENQUEUE_SECONDS,
        );
        e.gauge(
            "skein_edge_queue_reachable",
            "1 when the last credentials refresh reached a queue node.",
            &[(
                &[],
                f64::from(u8::from(QUEUE_REACHABLE.load(Ordering::Relaxed))),
            )],
        );
        e.process();
        e.finish()
    }

    fn live(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        if QUEUE_REACHABLE.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("no queue node answers (mail would get 451)".into())
        }
    }
}
