//! A sender's metrics and probes: assignments and recipients by outcome, delivery time,
//! assignments in flight, and whether its work session with the leader is open (readiness).

use std::sync::atomic::{AtomicBool, Ordering};

use skein_observe::metrics::{Counter, Exposition, Gauge, Histogram};
use skein_observe::Probe;

/// Assignments delivered (one SMTP transaction each, successful or not).
pub static ASSIGNMENTS: Counter = Counter::new();
/// Assignments being worked on now.
pub static IN_FLIGHT: Gauge = Gauge::new();
/// The outcomes [`RECIPIENTS`] counts, in its order.
pub const OUTCOMES: [&str; 4] = ["delivered", "transient", "permanent", "throttled"];
/// Recipients reported, by outcome.
pub static RECIPIENTS: [Counter; 4] = [const { Counter::new() }; 4];
/// From taking an assignment to its report.
pub static DELIVERY_SECONDS: Histogram = Histogram::new();
/// Whether a work session with the leader is open.
pub static SESSION_OPEN: AtomicBool = AtomicBool::new(false);

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
        e.counter_by(
            "skein_sender_recipients_total",
            "Recipients reported to the leader, by outcome.",
            "outcome",
            &OUTCOMES,
            &RECIPIENTS,
        );
        e.histogram(
            "skein_sender_delivery_seconds",
            "Time from taking an assignment to its report (DNS, connection, transaction).",
            &DELIVERY_SECONDS,
        );
        e.gauge(
            "skein_sender_in_flight",
            "Assignments being worked on now.",
            &[(&[], IN_FLIGHT.get() as f64)],
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
