//! The conductor of a run: it runs the generator, causes the planned faults (and undoes them),
//! and samples the processes' resources meanwhile.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::display::say;
use crate::faults::{Sample, Target};
use crate::gen::Load;
use crate::report::Fault;
use crate::rig::{Part, Rig};
use crate::sim::{RunClock, SharedLedger};

/// Keys looked up under one hold of the ledger's lock while draining.
const SLICE: usize = 10_000;

/// Causes the planned faults and samples the processes' resources while a run goes on.
pub(crate) struct Conductor {
    /// Faults still to come: (seconds after the load started, target).
    pub(crate) due: std::collections::VecDeque<(f64, Target)>,
    /// Processes killed, to start again at the given time.
    pub(crate) down: Vec<(Instant, Part)>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) samples: Vec<Sample>,
    pub(crate) started: Instant,
    pub(crate) clock: RunClock,
    pub(crate) tick: tokio::time::Interval,
}

impl Conductor {
    /// Runs the generator with `load`, stepping meanwhile.
    pub(crate) async fn generate(
        &mut self,
        load: Load,
        progress: &crate::gen::Progress,
        rig: &mut Option<Rig>,
    ) -> anyhow::Result<crate::gen::Generated> {
        let clock = self.clock;
        let mut generator = tokio::spawn(crate::gen::run(load, progress.clone(), move || {
            clock.elapsed_ms()
        }));
        loop {
            tokio::select! {
                g = &mut generator => return Ok(g?),
                _ = self.tick.tick() => {
                    if let Some(r) = rig.as_mut() {
                        self.step(r, false);
                    }
                }
            }
        }
    }

    /// Waits until every recipient in `expected` was delivered or reported by a DSN and
    /// nothing is down, or `limit` passes, stepping meanwhile (restarts only: faults end
    /// with the load).
    pub(crate) async fn drain(
        &mut self,
        expected: &HashSet<(u64, String)>,
        ledger: &SharedLedger,
        limit: Duration,
        rig: &mut Option<Rig>,
    ) {
        let until = Instant::now() + limit;
        // What is still open shrinks as it finishes: each look goes over what was open at
        // the last one, a slice at a time, so the simulators (which record under the same
        // lock) are never held up for long.
        let mut open: Vec<&(u64, String)> = expected.iter().collect();
        loop {
            if let Some(r) = rig.as_mut() {
                self.step(r, true);
            }
            let mut still = Vec::with_capacity(open.len());
            for slice in open.chunks(SLICE) {
                let l = ledger.lock().unwrap();
                still.extend(
                    slice
                        .iter()
                        .filter(|k| !l.deliveries.contains_key(**k) && !l.bounces.contains(**k)),
                );
            }
            open = still;
            if (open.is_empty() && self.down.is_empty()) || Instant::now() > until {
                return;
            }
            self.tick.tick().await;
        }
    }

    /// Does what is due: restarts, then (unless `load_over`) faults; then samples.
    pub(crate) fn step(&mut self, r: &mut Rig, load_over: bool) {
        let now = Instant::now();
        let at_ms = self.clock.elapsed_ms();
        let (back, still): (Vec<_>, Vec<_>) = self.down.drain(..).partition(|(t, _)| *t <= now);
        self.down = still;
        for (_, part) in back {
            let restarted = r.restart(part);
            match restarted {
                Ok(()) => self.faults.push(Fault {
                    at_ms,
                    what: match part {
                        Part::Link => format!("open {}", r.name(part)),
                        _ => format!("restart {}", r.name(part)),
                    },
                }),
                Err(e) => say(format!("could not restart {}: {e:#}", r.name(part))),
            }
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        while !load_over && self.due.front().is_some_and(|(t, _)| *t <= elapsed) {
            let (_, target) = self.due.pop_front().expect("a fault is due");
            let part = match target {
                Target::Link if r.link.is_none() => continue,
                Target::Link => Part::Link,
                Target::Leader | Target::Follower => {
                    let Ok(leader) = r.leader() else {
                        say(format!("no leader to tell {target:?} by: fault skipped"));
                        continue;
                    };
                    let follower = (1..=r.nodes.len() as u64).find(|id| *id != leader);
                    match (target, follower) {
                        (Target::Leader, _) => Part::Node(leader),
                        (_, Some(f)) => Part::Node(f),
                        (_, None) => continue,
                    }
                }
                Target::Sender => Part::Sender,
                Target::Edge => Part::Edge,
            };
            if self.down.iter().any(|(_, p)| *p == part) {
                continue;
            }
            r.kill(part);
            let what = match (target, &r.link) {
                (Target::Leader, _) => format!("SIGKILL leader ({})", r.name(part)),
                (Target::Link, Some((l, _))) => format!(
                    "throttle {} ({} ms, {} KiB/s)",
                    r.name(part),
                    l.throttle.delay.as_millis(),
                    l.throttle.bytes_per_s / 1024
                ),
                _ => format!("SIGKILL {}", r.name(part)),
            };
            say(&what);
            self.faults.push(Fault { at_ms, what });
            self.down.push((now + target.down(), part));
        }
        for (process, pid, data) in r.processes() {
            if let Some(s) = crate::faults::sample(at_ms, &process, pid, data.as_deref()) {
                self.samples.push(s);
            }
        }
    }
}
