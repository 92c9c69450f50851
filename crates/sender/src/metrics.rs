//! A sender's metrics and probes: assignments and recipients by outcome, delivery time,
//! assignments in flight, and whether its work session with the leader is open (readiness).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use skein_observe::metrics::{Counter, Exposition, Histogram};
use skein_observe::Probe;

/// Assignments delivered (one SMTP transaction each, successful or not).
pub static ASSIGNMENTS: Counter = Counter::new();
/// Assignments being worked on now.
pub static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
/// The outcomes [`RECIPIENTS`] counts, in its order.
pub const OUTCOMES: [&str; 4] = ["delivered", "transient", "permanent", "throttled"];
/// Recipients reported, by outcome.
pub static RECIPIENTS: [Counter; 4] = [const { Counter::new() }; 4];
/// From taking an assignment to its report.
pub static DELIVERY_SECONDS: Histogram = Histogram::new();
/// Whether a work session with the leader is open.
pub static SESSION_OPEN: AtomicBool = AtomicBool::new(false);

/// Counts an assignment while it is worked on.
pub struct Working;

impl Working {
    /// Work on an assignment begins.
    pub fn begin() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The probe of a sender.
#[derive(Debug, Default, Clone)]
pub struct SenderProbe;

impl Probe for SenderProbe {
    fn metrics(&self) -> String {
        let mut e = Exposition::new();
        e.counter(
            "skein_sender_assignments_total",
            "Assignments delivered (one SMTP transaction each, successful or not).",
            &[(&[], ASSIGNMENTS.get())],
        );
        let labels: Vec<[(&str, &str); 1]> = OUTCOMES.iter().map(|o| [("outcome", *o)]).collect();
        let rcpts: Vec<(&[(&str, &str)], u64)> = labels
            .iter()
            .zip(&RECIPIENTS)
            .map(|(l, c)| (l.as_slice(), c.get()))
            .collect();
        e.counter(
            "skein_sender_recipients_total",
            "Recipients reported to the leader, by outcome.",
            &rcpts,
        );
        e.histogram(
            "skein_sender_delivery_seconds",
            "Time from taking an assignment to its report (DNS, connection, transaction).",
            &DELIVERY_SECONDS,
        );
        e.gauge(
            "skein_sender_in_flight",
            "Assignments being worked on now.",
            &[(&[], IN_FLIGHT.load(Ordering::Relaxed) as f64)],
        );
        e.gauge(
            "skein_sender_session_open",
            "1 while a work session with the leader is open.",
            &[(
                &[],
                f64::from(u8::from(SESSION_OPEN.load(Ordering::Relaxed))),
            )],
        );
        e.process();
        e.finish()
    }

    fn live(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        if SESSION_OPEN.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("no work session with the leader".into())
        }
    }
}
