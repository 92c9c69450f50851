//! Metrics: counters and histograms updated without locks on the hot paths, and the
//! Prometheus text exposition written at scrape time. Names follow Prometheus conventions:
//! `skein_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero (usable in statics).
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters by label values (source IP, provider, result...), each created when its values
/// are first seen. Past `MAX_SERIES` sets of values, new ones count under "other" so a
/// flood of distinct values cannot grow memory or the exposition without bound.
#[derive(Debug)]
pub struct CounterFamily {
    labels: &'static [&'static str],
    counts: std::sync::Mutex<std::collections::BTreeMap<Vec<String>, u64>>,
}

/// The most label-value sets a [`CounterFamily`] keeps apart.
pub const MAX_SERIES: usize = 2000;

impl CounterFamily {
    /// An empty family with these label names (usable in statics).
    pub const fn new(labels: &'static [&'static str]) -> Self {
        Self {
            labels,
            counts: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Adds `n` to the counter of `values` (one per label name, in order).
    pub fn add(&self, values: &[&str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let key = if counts.contains_key(&key) || counts.len() < MAX_SERIES {
            key
        } else {
            vec!["other".to_string(); self.labels.len()]
        };
        *counts.entry(key).or_default() += n;
    }

    /// The counter of `values`, 0 if never counted.
    pub fn get(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&key).copied().unwrap_or(0)
    }
}

/// A value that goes up and down (sessions open, work in flight).
#[derive(Debug, Default)]
pub struct Gauge(std::sync::atomic::AtomicI64);

impl Gauge {
    /// A gauge at zero (usable in statics).
    pub const fn new() -> Self {
        Self(std::sync::atomic::AtomicI64::new(0))
    }

    /// Adds one until the returned guard is dropped.
    pub fn track(&'static self) -> Tracked {
        self.0.fetch_add(1, Ordering::Relaxed);
        Tracked(self)
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One unit of a [`Gauge`], given back when dropped.
#[derive(Debug)]
pub struct Tracked(&'static Gauge);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) for latencies from a millisecond to ten seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A distribution of durations over [`LATENCY_BUCKETS`].
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (usable in statics).
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Rows of label values paired with their names.
fn label_rows<'a, V: Copy>(
    names: &[&'a str],
    rows: &'a [(Vec<String>, V)],
) -> Vec<(Vec<(&'a str, &'a str)>, V)> {
    rows.iter()
        .map(|(values, v)| {
            let pairs = names
                .iter()
                .zip(values)
                .map(|(n, value)| (*n, value.as_str()))
                .collect();
            (pairs, *v)
        })
        .collect()
}

/// Labels of one sample: (name, value) pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// The text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels<'_>, value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_value(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A counter family (`name` ends in `_total`), one sample per label set.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, u64)]) {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.head(name, help, "counter");
        for (labels, v) in samples {
            self.sample(name, labels, v);
        }
    }

    /// A counter family with one label, `label`, taking each of `values` for the counter at
    /// the same position in `counters`.
    pub fn counter_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
        counters: &[Counter],
    ) {
        let labels: Vec<[(&str, &str); 1]> = values.iter().map(|v| [(label, *v)]).collect();
        let samples: Vec<(Labels<'_>, u64)> = labels
            .iter()
            .zip(counters)
            .map(|(l, c)| (l.as_slice(), c.get()))
            .collect();
        self.counter(name, help, &samples);
    }

    /// A counter family of a [`CounterFamily`]: one sample per set of label values seen.
    pub fn counter_family(&mut self, name: &str, help: &str, f: &CounterFamily) {
        let counts = f.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rows: Vec<(Vec<String>, u64)> = counts.into_iter().collect();
        let labelled = label_rows(f.labels, &rows);
        let samples: Vec<(Labels<'_>, u64)> =
            labelled.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        self.counter(name, help, &samples);
    }

    /// A gauge family from rows of label values (one per name in `labels`, in order) and
    /// their values.
    pub fn gauge_rows(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        rows: &[(Vec<String>, f64)],
    ) {
        let labelled = label_rows(labels, rows);
        let samples: Vec<(Labels<'_>, f64)> =
            labelled.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        self.gauge(name, help, &samples);
    }

    /// A gauge family, one sample per label set.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) {
        self.head(name, help, "gauge");
        for (labels, v) in samples {
            self.sample(name, labels, v);
        }
    }

    /// A histogram (`name` ends in its unit, `_seconds`).
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, help, "histogram");
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let le = b.to_string();
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
        }
        let count = h.count();
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }

    /// The process's own figures from /proc (Linux): resident memory, open file
    /// descriptors, CPU seconds; nothing elsewhere.
    pub fn process(&mut self) {
        let page = 4096.0;
        if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        {
            self.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                &[(&[], rss * page)],
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                &[(&[], fds.count() as f64)],
            );
        }
        if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the command name (which may hold spaces) start at ") ".
                let rest = s.rsplit_once(") ")?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
        {
            // USER_HZ is 100 on every Linux Skein runs on.
            self.counter_f64(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                ticks / 100.0,
            );
        }
    }

    fn counter_f64(&mut self, name: &str, help: &str, v: f64) {
        self.head(name, help, "counter");
        self.sample(name, &[], v);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_types_escaped_labels_and_cumulative_buckets() {
        let h = Histogram::new();
        for s in [0.0005, 0.003, 0.003, 20.0] {
            h.observe(s);
        }
        let mut e = Exposition::new();
        e.counter(
            "skein_x_total",
            "Things.\nMore.",
            &[(&[("kind", "a\"b")], 3), (&[("kind", "c")], 0)],
        );
        e.histogram("skein_commit_seconds", "Commit time.", &h);
        let t = e.finish();
        assert!(t.contains("# HELP skein_x_total Things.\\nMore.\n"), "{t}");
        assert!(t.contains("# TYPE skein_x_total counter\n"));
        assert!(t.contains("skein_x_total{kind=\"a\\\"b\"} 3\n"), "{t}");
        assert!(
            t.contains("skein_commit_seconds_bucket{le=\"0.001\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("skein_commit_seconds_bucket{le=\"0.005\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("skein_commit_seconds_bucket{le=\"10\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("skein_commit_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{t}"
        );
        assert!(t.contains("skein_commit_seconds_count 4\n"), "{t}");
    }

    #[test]
    fn families_keep_label_sets_apart_and_bounded() {
        let f = CounterFamily::new(&["result", "ip"]);
        f.add(&["delivered", "192.0.2.1"], 2);
        f.add(&["delivered", "192.0.2.1"], 1);
        f.add(&["deferred", "192.0.2.2"], 1);
        assert_eq!(f.get(&["delivered", "192.0.2.1"]), 3);
        let mut e = Exposition::new();
        e.counter_family("skein_y_total", "Ys.", &f);
        e.gauge_rows(
            "skein_z",
            "Zs.",
            &["ip", "provider"],
            &[(vec!["192.0.2.1".into(), "gmail".into()], 7.0)],
        );
        let t = e.finish();
        assert!(
            t.contains("skein_y_total{result=\"delivered\",ip=\"192.0.2.1\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("skein_y_total{result=\"deferred\",ip=\"192.0.2.2\"} 1\n"));
        assert!(
            t.contains("skein_z{ip=\"192.0.2.1\",provider=\"gmail\"} 7\n"),
            "{t}"
        );
        for i in 0..MAX_SERIES + 10 {
            f.add(&["delivered", &i.to_string()], 1);
        }
        assert_eq!(
            f.counts.lock().unwrap().len(),
            MAX_SERIES + 1,
            "and one 'other'"
        );
        assert!(f.get(&["other", "other"]) >= 10);
    }
}
