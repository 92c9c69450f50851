//! Faults on demand: which process a run SIGKILLs and when, and the resources (memory, file
//! descriptors, RocksDB size) it samples from the cluster's processes meanwhile.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// What a fault kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Whichever queue node leads at the time.
    Leader,
    /// A queue node that does not lead.
    Follower,
    /// The sender.
    Sender,
    /// The edge.
    Edge,
    /// The link in front of one queue node: throttled (delayed and capped), then opened.
    Link,
}

impl Target {
    /// The targets a periodic fault plan takes in turn.
    pub const CYCLE: [Target; 4] = [
        Target::Leader,
        Target::Sender,
        Target::Edge,
        Target::Follower,
    ];

    /// How long the killed process stays down before it is started again (the link stays
    /// throttled).
    pub fn down(self) -> Duration {
        match self {
            Target::Leader | Target::Follower => Duration::from_secs(3),
            Target::Sender => Duration::from_secs(2),
            Target::Edge => Duration::from_secs(1),
            Target::Link => Duration::from_secs(8),
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "leader" => Target::Leader,
            "follower" => Target::Follower,
            "sender" => Target::Sender,
            "edge" => Target::Edge,
            "link" => Target::Link,
            other => {
                return Err(format!(
                    "no fault target {other:?} (leader, follower, sender, edge, link)"
                ))
            }
        })
    }
}

/// When a run causes faults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Kill a target when this share of the load (0..1) has been scheduled.
    pub at: Vec<(f64, Target)>,
    /// And every so often, taking [`Target::CYCLE`] in turn.
    pub every: Option<Duration>,
}

impl Plan {
    /// Parses `--faults`: `none`, or a comma-separated list of `TARGET@SHARE` (e.g.
    /// `leader@0.3,sender@0.5`) and `every:SECONDS`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut plan = Plan::default();
        if s.trim() == "none" {
            return Ok(plan);
        }
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Some(secs) = item.strip_prefix("every:") {
                let secs: f64 = secs
                    .parse()
                    .map_err(|_| format!("{item:?}: every:SECONDS wants a number"))?;
                if !(secs >= 1.0 && secs.is_finite()) {
                    return Err(format!("{item:?}: at least one second between faults"));
                }
                plan.every = Some(Duration::from_secs_f64(secs));
                continue;
            }
            let (target, share) = item
                .split_once('@')
                .ok_or_else(|| format!("{item:?}: want TARGET@SHARE, e.g. leader@0.4"))?;
            let share: f64 = share
                .parse()
                .map_err(|_| format!("{item:?}: the share is a number from 0 to 1"))?;
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{item:?}: the share is a number from 0 to 1"));
            }
            plan.at.push((share, Target::parse(target)?));
        }
        plan.at.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(plan)
    }

    /// Whether the plan ever takes `target`.
    pub fn uses(&self, target: Target) -> bool {
        self.at.iter().any(|(_, t)| *t == target)
            || (self.every.is_some() && Target::CYCLE.contains(&target))
    }

    /// The faults due in a load of `seconds`: (seconds from its start, target), in order.
    pub fn schedule(&self, seconds: f64) -> Vec<(f64, Target)> {
        let mut out: Vec<(f64, Target)> = self.at.iter().map(|(s, t)| (s * seconds, *t)).collect();
        if let Some(every) = self.every {
            let step = every.as_secs_f64();
            let mut t = step;
            let mut i = 0;
            while t < seconds {
                out.push((t, Target::CYCLE[i % Target::CYCLE.len()]));
                t += step;
                i += 1;
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// One process's resources at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When (ms since the run started).
    pub at_ms: u64,
    /// The process ("node 1", "edge", "sender").
    pub process: String,
    /// Its pid (a restarted process has another).
    pub pid: u32,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Bytes in its data directory (queue nodes; 0 otherwise).
    pub disk_bytes: u64,
    /// CPU time it has used so far (user and system), ms.
    pub cpu_ms: u64,
}

/// Samples a process by pid, `None` when it is gone.
pub fn sample(at_ms: u64, process: &str, pid: u32, data: Option<&Path>) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        at_ms,
        process: process.to_string(),
        pid,
        rss_kib,
        fds,
        disk_bytes: data.map_or(0, dir_bytes),
        cpu_ms: cpu_ms(pid)?,
    })
}

/// Clock ticks per second in /proc's CPU times (USER_HZ: 100 on every Linux build that
/// matters here).
const TICKS_PER_S: u64 = 100;

/// CPU time process `pid` has used (user and system), ms.
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from the parenthesis closing it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1000 / TICKS_PER_S)
}

/// CPU time the whole machine has spent busy (every state but idle and iowait), ms.
pub fn machine_busy_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Some(busy * 1000 / TICKS_PER_S)
}

/// Bytes in the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// How much a resource grew over the second half of a run: the largest value in its last
/// quarter over the largest in its second quarter (1.0: flat). A process that levels off
/// stays near 1; one that leaks keeps climbing. `None` with too few samples.
pub fn growth(values: &[u64]) -> Option<f64> {
    if values.len() < 8 {
        return None;
    }
    let q = values.len() / 4;
    let second = values[q..2 * q].iter().copied().max()?.max(1);
    let last = values[3 * q..].iter().copied().max()?;
    Some(last as f64 / second as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_schedule() {
        let p = Plan::parse("sender@0.6, leader@0.3,every:20").unwrap();
        assert_eq!(
            p.at,
            vec![(0.3, Target::Leader), (0.6, Target::Sender)],
            "sorted by share"
        );
        let s = p.schedule(70.0);
        let want = [
            (20.0, Target::Leader),
            (21.0, Target::Leader),
            (40.0, Target::Sender),
            (42.0, Target::Sender),
            (60.0, Target::Edge),
        ];
        assert_eq!(s.len(), want.len(), "{s:?}");
        for ((t, target), (wt, wtarget)) in s.iter().zip(want) {
            assert!((t - wt).abs() < 1e-9 && *target == wtarget, "{s:?}");
        }
        assert_eq!(Plan::parse("none").unwrap(), Plan::default());
        for bad in ["leader", "leader@2", "queen@0.5", "every:0", "every:x"] {
            assert!(Plan::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn growth_tells_a_leak_from_a_plateau() {
        let plateau: Vec<u64> = (0..40).map(|i| 100 + (i.min(10) * 10)).collect();
        assert!(growth(&plateau).unwrap() < 1.01);
        let leak: Vec<u64> = (0..40).map(|i| 100 + i * 10).collect();
        assert!(growth(&leak).unwrap() > 1.5);
        assert_eq!(growth(&[1, 2, 3]), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), [0u8; 1000]).unwrap();
        let s = sample(5, "me", std::process::id(), Some(dir.path())).unwrap();
        assert!(s.rss_kib > 0 && s.fds > 0, "{s:?}");
        // Burn some CPU: the count moves.
        let before = cpu_ms(std::process::id()).unwrap();
        let machine = machine_busy_ms().unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(cpu_ms(std::process::id()).unwrap() >= before + 100);
        assert!(machine_busy_ms().unwrap() >= machine + 100);
        assert_eq!(s.disk_bytes, 1000);
        assert!(sample(5, "gone", u32::MAX, None).is_none());
    }
}
