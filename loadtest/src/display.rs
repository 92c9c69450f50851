//! The live progress display: on a terminal, a bar of the messages submitted with the counts
//! and rates beside it, redrawn a few times a second; elsewhere (a log, CI) a plain line every
//! 5 seconds. Notes (faults, restarts) go above the bar.

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::gen::Progress;
use crate::sim::{RunClock, SharedLedger};

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Prints a note to standard error, above the bar when there is one.
pub fn say(msg: impl std::fmt::Display) {
    match BAR.get() {
        Some(b) if !b.is_finished() => b.println(msg.to_string()),
        _ => eprintln!("{msg}"),
    }
}

/// Ends the bar (its last state stays on screen); later notes print plainly.
pub fn finish() {
    if let Some(b) = BAR.get() {
        b.finish();
    }
}

/// Shows progress until aborted (then call [`finish`]); `total` is the messages the load will submit.
pub async fn run(p: Progress, ledger: SharedLedger, clock: RunClock, total: u64) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        BAR.get_or_init(|| b.clone());
        b
    });
    let every = if bar.is_some() {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let (mut last_acc, mut last_del) = (0u64, 0u64);
    loop {
        tokio::time::sleep(every).await;
        let (delivered, bounced, deferrals, violations) = {
            let l = ledger.lock().unwrap();
            (
                l.deliveries.len() as u64,
                l.bounces.len() as u64,
                l.deferrals,
                l.violations.len(),
            )
        };
        let accepted = p.accepted();
        let per_s = |now: u64, before: u64| (now - before.min(now)) as f64 / every.as_secs_f64();
        let counts = format!(
            "accepted {accepted} ({:.0}/s)  delivered {delivered} ({:.0}/s)  bounced {bounced}  \
             deferrals {deferrals}  violations {violations}",
            per_s(accepted, last_acc),
            per_s(delivered, last_del),
        );
        (last_acc, last_del) = (accepted, delivered);
        match &bar {
            Some(b) => {
                if p.submitted() > b.length().unwrap_or(0) {
                    b.set_length(p.submitted());
                }
                b.set_position(p.submitted());
                b.set_message(counts);
            }
            None => eprintln!(
                "{:>6.0}s  submitted {}  {counts}",
                clock.elapsed_ms() as f64 / 1000.0,
                p.submitted(),
            ),
        }
    }
}
