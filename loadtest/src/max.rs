//! The `max` profile's figures: the highest sustained end-to-end rate (the load sent as fast
//! as the edge answers), the accept latency at half that rate, CPU per message, and Postfix
//! relaying the same load on the same machine right after (../shared/bench/postfix-relay.sh:
//! smtp-source into Postfix, relayed to smtp-sink).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::faults::{cpu_ms, machine_busy_ms};
use crate::gen::Generated;
use crate::report::Latency;
use crate::rig::Rig;
use crate::sim::SharedLedger;

/// CPU time used so far: by Skein's processes, and by the whole machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    skein_ms: u64,
    machine_ms: u64,
}

impl Cpu {
    /// Now (Skein's processes: the rig's, none when driving another cluster).
    pub fn now(rig: Option<&Rig>) -> Self {
        Self {
            skein_ms: rig
                .map(|r| {
                    r.processes()
                        .iter()
                        .filter_map(|(_, pid, _)| cpu_ms(*pid))
                        .sum()
                })
                .unwrap_or(0),
            machine_ms: machine_busy_ms().unwrap_or(0),
        }
    }
}

/// The phase at full speed.
#[derive(Debug, Clone, Serialize)]
pub struct MaxPhase {
    /// Messages acknowledged.
    pub messages: u64,
    /// Messages delivered per second, from the phase's start to its last delivery (one
    /// recipient each in this profile).
    pub end_to_end_per_s: f64,
    /// Messages acknowledged per second while the generator ran.
    pub accepted_per_s: f64,
    /// CPU time of Skein's processes per message, ms.
    pub skein_cpu_ms_per_message: f64,
    /// CPU time of the whole machine (the harness and its simulators included) per 1,000
    /// messages, s.
    pub machine_cpu_s_per_1000: f64,
}

impl MaxPhase {
    /// The figures of phase `g`, started at `started_ms` on the run's clock, CPU counted
    /// between `before` and `after`.
    pub fn of(
        g: &Generated,
        ledger: &SharedLedger,
        started_ms: u64,
        before: Cpu,
        after: Cpu,
    ) -> Self {
        let l = ledger.lock().unwrap();
        let mut delivered = 0u64;
        let mut last = started_ms;
        for m in &g.accepted {
            if let Some(ds) = l.deliveries.get(&(m.id, m.rcpt.clone())) {
                delivered += 1;
                last = last.max(ds.iter().map(|d| d.at_ms).min().unwrap_or(0));
            }
        }
        let n = g.accepted_messages.max(1) as f64;
        Self {
            messages: g.accepted_messages,
            end_to_end_per_s: delivered as f64 / ((last - started_ms) as f64 / 1000.0).max(0.001),
            accepted_per_s: g.accepted_messages as f64 / g.seconds.max(0.001),
            skein_cpu_ms_per_message: after.skein_ms.saturating_sub(before.skein_ms) as f64 / n,
            machine_cpu_s_per_1000: after.machine_ms.saturating_sub(before.machine_ms) as f64 / n,
        }
    }
}

/// Postfix relaying the same load.
#[derive(Debug, Clone, Serialize)]
pub struct Postfix {
    /// Messages delivered to the sink per second, from the first submission to an empty queue.
    pub end_to_end_per_s: f64,
    /// Messages smtp-source had acknowledged per second.
    pub accepted_per_s: f64,
    /// CPU time of the whole machine per 1,000 messages, s.
    pub machine_cpu_s_per_1000: f64,
    /// The benchmark's own result line.
    pub line: String,
}

/// What the `max` profile found.
#[derive(Debug, Clone, Serialize)]
pub struct MaxRun {
    /// At full speed.
    pub full: MaxPhase,
    /// The rate of the second phase (half the full end-to-end rate).
    pub half_load_per_s: f64,
    /// Final dot to 250 at half load.
    pub half_load_accept_ms: Latency,
    /// Postfix on the same load, when it ran.
    pub postfix: Option<Postfix>,
    /// Skein's end-to-end rate over Postfix's.
    pub ratio: Option<f64>,
}

impl MaxRun {
    /// From the full-speed phase, the half-load phase's rate and generator, and Postfix.
    pub fn new(full: MaxPhase, half_rate: f64, half: &Generated, postfix: Option<Postfix>) -> Self {
        let ratio = postfix
            .as_ref()
            .map(|p| full.end_to_end_per_s / p.end_to_end_per_s.max(0.001));
        Self {
            full,
            half_load_per_s: half_rate,
            half_load_accept_ms: Latency::from_us(&half.dot_to_250),
            postfix,
            ratio,
        }
    }

    /// Lines for the summary.
    pub fn summary(&self) -> Vec<(String, String)> {
        let f = &self.full;
        let mut out = vec![
            (
                "max end to end".to_string(),
                format!(
                    "{:.0} messages/s ({:.0}/s accepted) over {} messages",
                    f.end_to_end_per_s, f.accepted_per_s, f.messages
                ),
            ),
            (
                "max CPU".to_string(),
                format!(
                    "Skein {:.2} ms/message; machine {:.2} s per 1,000",
                    f.skein_cpu_ms_per_message, f.machine_cpu_s_per_1000
                ),
            ),
            (
                "half load".to_string(),
                format!(
                    "{:.0}/s: accept p50 {:.1} p99 {:.1} max {:.1} ms",
                    self.half_load_per_s,
                    self.half_load_accept_ms.p50,
                    self.half_load_accept_ms.p99,
                    self.half_load_accept_ms.max
                ),
            ),
        ];
        match (&self.postfix, self.ratio) {
            (Some(p), Some(r)) => out.push((
                "postfix".to_string(),
                format!(
                    "{:.0} messages/s end to end, machine {:.2} s per 1,000: Skein x{r:.2}",
                    p.end_to_end_per_s, p.machine_cpu_s_per_1000
                ),
            )),
            _ => out.push(("postfix".to_string(), "not run".to_string())),
        }
        out
    }
}

/// Where Postfix's relay benchmark is: `explicit`, else ../shared/bench beside the current
/// directory or beside the harness's sources.
fn script(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let rel = Path::new("../shared/bench/postfix-relay.sh");
    [
        rel.to_path_buf(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// Runs Postfix's relay benchmark with the same messages, sessions and size; `None` (and a
/// note why) when Postfix or the script is not there or the run fails.
pub fn postfix_relay(
    explicit: Option<&Path>,
    messages: u64,
    sessions: usize,
    size: usize,
) -> Option<Postfix> {
    let Some(script) = script(explicit) else {
        crate::display::say("postfix-relay.sh not found (--postfix-script): Postfix not run");
        return None;
    };
    let installed = ["/usr/sbin/postfix", "/usr/bin/postfix"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !installed {
        crate::display::say("postfix is not installed (apt-get install postfix): Postfix not run");
        return None;
    }
    println!("postfix relaying the same load ({})", script.display());
    let before = machine_busy_ms().unwrap_or(0);
    let out = Command::new("bash")
        .arg(&script)
        .args([messages.to_string(), sessions.to_string(), size.to_string()])
        .output();
    let machine = machine_busy_ms().unwrap_or(0).saturating_sub(before);
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            crate::display::say(format!(
                "postfix-relay.sh failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return None;
        }
        Err(e) => {
            crate::display::say(format!("postfix-relay.sh: {e}"));
            return None;
        }
    };
    let line = out.lines().last()?.to_string();
    let (end_to_end_per_s, accepted_per_s) = parse(&line)?;
    Some(Postfix {
        end_to_end_per_s,
        accepted_per_s,
        machine_cpu_s_per_1000: machine as f64 / messages.max(1) as f64,
        line,
    })
}

/// The end-to-end and accept rates in postfix-relay.sh's result line.
fn parse(line: &str) -> Option<(f64, f64)> {
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))?
            .trim_end_matches("/s")
            .parse()
            .ok()
    };
    Some((field("e2e_rate=")?, field("accept_rate=")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn postfix_relays_result_line_is_read() {
        let line =
            "postfix-relay messages=20000 accept_rate=412/s e2e_seconds=64.10 e2e_rate=312/s";
        assert_eq!(super::parse(line), Some((312.0, 412.0)));
        assert_eq!(super::parse("postfix is not installed"), None);
    }
}
