//! The run's report: `report.json` (the figures) and `report.html` (the same, with plots as
//! inline SVG: no script, no network, opens offline).

use std::fmt::Write as _;

use serde::Serialize;

/// Latency percentiles, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: u64,
}

impl Latency {
    /// From a histogram of µs.
    pub fn from_us(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

/// Recipients one source IP sent one provider in one hour, against its limit.
#[derive(Debug, Clone, Serialize)]
pub struct HourlyUse {
    /// Source IP.
    pub ip: String,
    /// Provider.
    pub provider: String,
    /// Unix hour.
    pub hour: i64,
    /// Recipients sent (refused ones past the limit included).
    pub sent: u64,
    /// The provider's limit per IP (0: none).
    pub limit: u64,
}

/// Recipients one source IP sent in one day, against its warm-up cap.
#[derive(Debug, Clone, Serialize)]
pub struct DailyUse {
    /// Source IP.
    pub ip: String,
    /// Its warm-up day (1 is the first) when it warms up, else the Unix day.
    pub day: i64,
    /// Recipients delivered from it that day (DSNs included), every provider together.
    pub sent: u64,
    /// The warm-up schedule's cap that day (0: none).
    pub cap: u64,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Messages acknowledged by the edge.
    pub accepted: u64,
    /// Recipients accepted by the simulators.
    pub delivered: u64,
}

/// A fault the run caused.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// When (ms since the start).
    pub at_ms: u64,
    /// What.
    pub what: String,
}

/// How one process's resources grew: the largest value in the run's last quarter over the
/// largest in its second quarter (1.0: level).
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    /// The process.
    pub process: String,
    /// Resident memory.
    pub rss: f64,
    /// Open file descriptors.
    pub fds: f64,
    /// Data directory size (queue nodes only).
    pub disk: Option<f64>,
    /// Resident memory at the end, MiB.
    pub rss_mib_end: f64,
}

/// Growth above this fails a leak-checked run.
pub const MAX_GROWTH: f64 = 1.5;

/// A (re)started process's first seconds, left out of its growth: it is still opening its
/// files and filling its caches.
pub const WARMING_MS: u64 = 10_000;

/// Each process's growth over its last life (since its last restart), from the samples after
/// its first [`WARMING_MS`]; processes with too few such samples are left out.
pub fn growth_of(samples: &[crate::faults::Sample]) -> Vec<Growth> {
    let mut by: std::collections::BTreeMap<&str, Vec<&crate::faults::Sample>> =
        std::collections::BTreeMap::new();
    for s in samples {
        by.entry(&s.process).or_default().push(s);
    }
    for ss in by.values_mut() {
        let last = ss.last().map_or(0, |s| s.pid);
        let born = ss.iter().find(|s| s.pid == last).map_or(0, |s| s.at_ms);
        ss.retain(|s| s.pid == last && s.at_ms >= born + WARMING_MS);
    }
    by.into_iter()
        .filter_map(|(process, ss)| {
            let of = |f: fn(&crate::faults::Sample) -> u64| {
                crate::faults::growth(&ss.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            Some(Growth {
                process: process.to_string(),
                rss: of(|s| s.rss_kib)?,
                fds: of(|s| s.fds)?,
                disk: ss
                    .iter()
                    .any(|s| s.disk_bytes > 0)
                    .then(|| of(|s| s.disk_bytes))
                    .flatten(),
                rss_mib_end: ss.last()?.rss_kib as f64 / 1024.0,
            })
        })
        .collect()
}

/// Everything a run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The profile run.
    pub profile: String,
    /// Messages the generator tried.
    pub submitted: u64,
    /// Messages acknowledged with 250.
    pub accepted: u64,
    /// Their recipients the edge took: what must each be delivered or bounced.
    pub accepted_recipients: u64,
    /// The messages, by the tenant the session logged in as ("" for relaying by address).
    pub accepted_by_tenant: std::collections::BTreeMap<String, u64>,
    /// Refused with a reply.
    pub refused: u64,
    /// Lost to connection errors before the reply to the final dot.
    pub errors: u64,
    /// Distinct (message, recipient) pairs the simulators accepted.
    pub delivered: u64,
    /// Distinct (message, recipient) pairs a DSN reported.
    pub bounced: u64,
    /// Temporary failures the simulators gave.
    pub deferrals: u64,
    /// Acknowledged recipients neither delivered nor reported by a DSN by the end, nor held
    /// or given up by the queue's own account.
    pub lost: u64,
    /// Of the rest, those still queued at the end (held back by the limits).
    pub held_at_end: u64,
    /// Of the rest, those the queue gave up (expired or bounced) whose DSN was not seen (it
    /// waits behind the limits too, or expired itself: no DSN is sent about a DSN).
    pub given_up: u64,
    /// Deliveries past the first of a (message, recipient).
    pub duplicates: u64,
    /// Deliveries of messages the edge never acknowledged (stored though the reply was lost).
    pub unacknowledged_deliveries: u64,
    /// Limits the simulators saw exceeded.
    pub limit_violations: u64,
    /// Acknowledged messages per second over the generator's run.
    pub accepted_per_s: f64,
    /// Delivered recipients per second, from the first acknowledgement to the last delivery.
    pub delivered_per_s: f64,
    /// Final dot to 250 at the edge.
    pub accept_latency_ms: Latency,
    /// Scheduled arrival to 250 (open loop: waiting for a session included).
    pub arrival_latency_ms: Latency,
    /// Acknowledgement to the simulator's 250 (first delivery of each).
    pub end_to_end_ms: Latency,
    /// Per IP, provider and hour.
    pub hourly: Vec<HourlyUse>,
    /// Per IP and day.
    pub daily: Vec<DailyUse>,
    /// The violations, as the simulators recorded them.
    pub violations: Vec<crate::sim::Violation>,
    /// Faults caused.
    pub faults: Vec<Fault>,
    /// Per second.
    pub timeline: Vec<Second>,
    /// Duplicates the run may have and still pass: 0.01% of the accepted, plus the sender's
    /// deliveries in flight for each SIGKILL of the sender or the leader.
    pub duplicate_budget: u64,
    /// The processes' resources over the run.
    pub resources: Vec<crate::faults::Sample>,
    /// How each process's resources grew over the second half of the run.
    pub resource_growth: Vec<Growth>,
    /// Whether growing memory or descriptors fail the run (the soak profile).
    pub leak_check: bool,
    /// The `max` profile's figures.
    pub max: Option<crate::max::MaxRun>,
    /// A sample of what was lost (load id and recipient), at most 20.
    pub lost_sample: Vec<String>,
    /// End-to-end latency samples, ms (for the histogram).
    #[serde(skip)]
    pub end_to_end_samples: Vec<f64>,
}

impl Report {
    /// Whether the run passed: nothing lost, no limit exceeded.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.limit_violations == 0
            && self.duplicates <= self.duplicate_budget
            && self.leaks().is_empty()
    }

    /// Processes whose memory or descriptors kept growing, when the run checks for it.
    pub fn leaks(&self) -> Vec<&Growth> {
        if !self.leak_check {
            return Vec::new();
        }
        self.resource_growth
            .iter()
            .filter(|g| g.rss > MAX_GROWTH || g.fds > MAX_GROWTH)
            .collect()
    }

    /// The summary table printed at the end.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let l = |x: &Latency| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms",
                x.p50, x.p90, x.p99, x.max
            )
        };
        let _ = writeln!(s, "profile            {}", self.profile);
        let _ = writeln!(
            s,
            "submitted          {} messages (accepted {} with {} recipients, refused {}, connection errors {})",
            self.submitted, self.accepted, self.accepted_recipients, self.refused, self.errors
        );
        let _ = writeln!(
            s,
            "delivered          {} recipients, bounced {}, deferrals {}",
            self.delivered, self.bounced, self.deferrals
        );
        if self.accepted_by_tenant.keys().any(|t| !t.is_empty()) {
            let by: Vec<String> = self
                .accepted_by_tenant
                .iter()
                .map(|(t, n)| match t.as_str() {
                    "" => format!("by address {n}"),
                    t => format!("{t} {n}"),
                })
                .collect();
            let _ = writeln!(s, "accepted as        {}", by.join(", "));
        }
        let _ = writeln!(s, "accepted/s         {:.1}", self.accepted_per_s);
        let _ = writeln!(s, "delivered/s        {:.1}", self.delivered_per_s);
        let _ = writeln!(s, "accept latency     {}", l(&self.accept_latency_ms));
        let _ = writeln!(s, "arrival latency    {}", l(&self.arrival_latency_ms));
        let _ = writeln!(s, "end to end         {}", l(&self.end_to_end_ms));
        let _ = writeln!(s, "faults             {}", self.faults.len());
        for (k, v) in self.max.iter().flat_map(|m| m.summary()) {
            let _ = writeln!(s, "{k:<19}{v}");
        }
        if self.held_at_end + self.given_up > 0 {
            let _ = writeln!(
                s,
                "unfinished         {} still queued, {} given up without a DSN seen",
                self.held_at_end, self.given_up
            );
        }
        let _ = writeln!(s, "LOST               {}", self.lost);
        let _ = writeln!(
            s,
            "DUPLICATES         {} (allowed {})",
            self.duplicates, self.duplicate_budget
        );
        for g in &self.resource_growth {
            let disk = g
                .disk
                .map(|d| format!(", disk x{d:.2}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "growth {:<11} memory x{:.2} ({:.0} MiB at the end), descriptors x{:.2}{disk}",
                g.process, g.rss, g.rss_mib_end, g.fds
            );
        }
        if self.leak_check {
            let _ = writeln!(s, "LEAKS              {}", self.leaks().len());
        }
        let _ = writeln!(s, "LIMIT VIOLATIONS   {}", self.limit_violations);
        let _ = writeln!(
            s,
            "verdict            {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }

    /// The HTML report: the summary and three plots.
    pub fn html(&self) -> String {
        let mut h = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Skein load report</title>\
             <style>body{font-family:sans-serif;margin:2em;color:#222}\
             table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left}\
             .fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}\
             svg{background:#fafafa;border:1px solid #ddd;margin:1em 0}</style></head><body>",
        );
        let verdict = if self.passed() {
            "<span class=\"pass\">PASS</span>"
        } else {
            "<span class=\"fail\">FAIL</span>"
        };
        let _ = write!(
            h,
            "<h1>Skein load report: {} {verdict}</h1><table>",
            esc(&self.profile)
        );
        for line in self.summary().lines() {
            let (k, v) = line.split_at(line.len().min(19));
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td></tr>",
                esc(k.trim()),
                esc(v.trim())
            );
        }
        h.push_str("</table>");
        h.push_str("<h2>Throughput</h2>");
        h.push_str(&self.throughput_svg());
        h.push_str("<h2>End-to-end latency</h2>");
        h.push_str(&histogram_svg(&self.end_to_end_samples));
        if self.daily.iter().any(|d| d.cap > 0) {
            h.push_str("<h2>Per source IP, per warm-up day, against the schedule</h2>");
            h.push_str(&self.daily_svg());
        }
        h.push_str(
            "<h2>Per source IP and provider, per hour, against the limit (the 60 nearest)</h2>",
        );
        h.push_str(&self.hourly_svg());
        if !self.resources.is_empty() {
            h.push_str("<h2>Processes: memory, descriptors, data on disk</h2>");
            h.push_str(&self.resources_svg());
        }
        if !self.violations.is_empty() {
            h.push_str("<h2 class=\"fail\">Violations</h2><table><tr><th>at</th><th>kind</th><th>provider</th><th>IP</th><th>limit</th></tr>");
            for v in self.violations.iter().take(200) {
                let _ = write!(
                    h,
                    "<tr><td>{:.1}s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    v.at_ms as f64 / 1000.0,
                    v.kind,
                    esc(&v.provider),
                    esc(&v.source_ip),
                    v.limit
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</body></html>\n");
        h
    }

    fn throughput_svg(&self) -> String {
        let (w, ht, pad) = (800.0, 260.0, 40.0);
        let n = self.timeline.len().max(2) as f64;
        let top = self
            .timeline
            .iter()
            .map(|s| s.accepted.max(s.delivered))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |t: f64| pad + t / (n - 1.0) * (w - 2.0 * pad);
        let y = |v: f64| ht - pad - v / top * (ht - 2.0 * pad);
        let line = |f: &dyn Fn(&Second) -> u64| {
            points(
                self.timeline
                    .iter()
                    .map(|s| (x(s.t as f64), y(f(s) as f64))),
            )
        };
        let mut s = format!(
            "<svg id=\"throughput\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\">"
        );
        let _ = write!(
            s,
            "<line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
             <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>\
             <text x=\"4\" y=\"{pad}\" font-size=\"11\">{top}/s</text>\
             <text x=\"{r}\" y=\"{tb}\" font-size=\"11\" text-anchor=\"end\">{secs} s</text>",
            b = ht - pad,
            r = w - pad,
            tb = ht - pad + 16.0,
            secs = self.timeline.len()
        );
        for f in &self.faults {
            let fx = x(f.at_ms as f64 / 1000.0);
            let _ = write!(
                s,
                "<line class=\"fault\" x1=\"{fx:.1}\" y1=\"{pad}\" x2=\"{fx:.1}\" y2=\"{b}\" stroke=\"#d33\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{fx:.1}\" y=\"{t}\" font-size=\"11\" fill=\"#d33\">{}</text>",
                esc(&f.what),
                b = ht - pad,
                t = pad - 6.0
            );
        }
        let _ = write!(
            s,
            "<polyline class=\"accepted\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\
             <polyline class=\"delivered\" fill=\"none\" stroke=\"#2ca02c\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{l}\" y=\"16\" font-size=\"12\" fill=\"#1f77b4\">accepted/s</text>\
             <text x=\"{l2}\" y=\"16\" font-size=\"12\" fill=\"#2ca02c\">delivered/s</text></svg>",
            line(&|s| s.accepted),
            line(&|s| s.delivered),
            l = pad,
            l2 = pad + 100.0
        );
        s
    }

    /// Three panels over time, a line per process: resident memory, open descriptors, and
    /// the queue nodes' data directories.
    fn resources_svg(&self) -> String {
        let (w, panel, pad) = (800.0, 150.0, 40.0);
        let end = self
            .resources
            .iter()
            .map(|s| s.at_ms)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut procs: Vec<&str> = self.resources.iter().map(|s| s.process.as_str()).collect();
        procs.sort();
        procs.dedup();
        // Not the throughput plot's colours.
        let palette = [
            "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#008080", "#800000",
        ];
        let ht = 3.0 * (panel + pad) + pad;
        let mut s = format!(
            "<svg id=\"resources\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\">"
        );
        type Value = fn(&crate::faults::Sample) -> f64;
        let panels: [(&str, Value); 3] = [
            ("memory MiB", |s| s.rss_kib as f64 / 1024.0),
            ("descriptors", |s| s.fds as f64),
            ("data MiB", |s| s.disk_bytes as f64 / 1_048_576.0),
        ];
        for (k, (label, value)) in panels.iter().enumerate() {
            let top0 = pad + k as f64 * (panel + pad);
            let top = self
                .resources
                .iter()
                .map(value)
                .fold(0.0, f64::max)
                .max(1.0);
            let x = |t: f64| pad + t / end * (w - 2.0 * pad);
            let y = |v: f64| top0 + panel - v / top * panel;
            let _ = write!(
                s,
                "<line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
                 <text x=\"4\" y=\"{t:.1}\" font-size=\"11\">{top:.0} {label}</text>",
                b = top0 + panel,
                r = w - pad,
                t = top0 - 4.0,
            );
            for (i, p) in procs.iter().enumerate() {
                let of: Vec<_> = self.resources.iter().filter(|s| s.process == *p).collect();
                // At most about 800 points a line (a soak samples twice a second for hours).
                let step = (of.len() / 800).max(1);
                let pts = points(
                    of.iter()
                        .step_by(step)
                        .map(|s| (x(s.at_ms as f64), y(value(s)))),
                );
                let _ = write!(
                    s,
                    "<polyline class=\"process\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{pts}\"/>",
                    c = palette[i % palette.len()]
                );
            }
        }
        for (i, p) in procs.iter().enumerate() {
            let _ = write!(
                s,
                "<text x=\"{lx}\" y=\"{ly}\" font-size=\"12\" fill=\"{c}\">{}</text>",
                esc(p),
                lx = pad + 90.0 * i as f64,
                ly = ht - 8.0,
                c = palette[i % palette.len()]
            );
        }
        s.push_str("</svg>");
        s
    }

    fn daily_svg(&self) -> String {
        let (w, ht, pad) = (800.0, 300.0, 40.0);
        let days = self.daily.iter().map(|d| d.day).max().unwrap_or(1).max(2) as f64;
        let top = self
            .daily
            .iter()
            .map(|d| d.sent.max(d.cap))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |d: f64| pad + (d - 1.0) / (days - 1.0) * (w - 2.0 * pad);
        let y = |v: f64| ht - pad - v / top * (ht - 2.0 * pad);
        let mut s = format!(
            "<svg id=\"daily\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\">\
             <text x=\"4\" y=\"{pad}\" font-size=\"11\">{top}/day</text>\
             <text x=\"{r}\" y=\"{b}\" font-size=\"11\" text-anchor=\"end\">day {days}</text>",
            r = w - pad,
            b = ht - pad + 16.0
        );
        // The cap as steps (the same for every IP), then each IP's days.
        let mut caps: Vec<(i64, u64)> = self
            .daily
            .iter()
            .filter(|d| d.cap > 0)
            .map(|d| (d.day, d.cap))
            .collect();
        caps.sort();
        caps.dedup_by_key(|c| c.0);
        let steps = points(caps.iter().map(|(d, c)| (x(*d as f64), y(*c as f64))));
        let _ = write!(
            s,
            "<polyline class=\"cap\" fill=\"none\" stroke=\"#000\" stroke-dasharray=\"6 3\" stroke-width=\"2\" points=\"{steps}\"/>"
        );
        let palette = [
            "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
        ];
        let mut ips: Vec<&str> = self
            .daily
            .iter()
            .filter(|d| d.cap > 0)
            .map(|d| d.ip.as_str())
            .collect();
        ips.sort();
        ips.dedup();
        for (i, ip) in ips.iter().enumerate() {
            let pts = points(
                self.daily
                    .iter()
                    .filter(|d| d.ip == *ip)
                    .map(|d| (x(d.day as f64), y(d.sent as f64))),
            );
            let c = palette[i % palette.len()];
            let _ = write!(
                s,
                "<polyline class=\"ip\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{pts}\"/>\
                 <text x=\"{lx}\" y=\"16\" font-size=\"12\" fill=\"{c}\">{}</text>",
                esc(ip),
                lx = pad + 110.0 * i as f64
            );
        }
        s.push_str("</svg>");
        s
    }

    fn hourly_svg(&self) -> String {
        // The hours nearest their limit (all of them in a short run): at most 60 rows.
        let mut rows: Vec<&HourlyUse> = self.hourly.iter().filter(|r| r.limit > 0).collect();
        if rows.is_empty() {
            rows = self.hourly.iter().collect();
        }
        let share = |r: &HourlyUse| r.sent as f64 / r.limit.max(1) as f64;
        rows.sort_by(|a, b| share(b).total_cmp(&share(a)));
        rows.truncate(60);
        rows.sort_by(|a, b| (&a.ip, &a.provider, a.hour).cmp(&(&b.ip, &b.provider, b.hour)));
        let (w, bar, pad) = (800.0, 18.0, 200.0);
        let ht = 30.0 + rows.len().max(1) as f64 * (bar + 6.0);
        let top = rows
            .iter()
            .map(|r| r.sent.max(r.limit))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |v: f64| pad + v / top * (w - pad - 20.0);
        let mut s = format!(
            "<svg id=\"hourly\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\">"
        );
        for (i, r) in rows.iter().enumerate() {
            let y = 20.0 + i as f64 * (bar + 6.0);
            let over = r.limit > 0 && r.sent > r.limit;
            let _ = write!(
                s,
                "<text x=\"4\" y=\"{ty:.1}\" font-size=\"11\">{} {} h{}</text>\
                 <rect class=\"sent\" x=\"{pad}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bar}\" fill=\"{c}\"/>\
                 <text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"11\">{}</text>",
                esc(&r.ip),
                esc(&r.provider),
                r.hour % 24,
                r.sent,
                ty = y + 13.0,
                bw = (x(r.sent as f64) - pad).max(1.0),
                c = if over { "#d33" } else { "#17becf" },
                tx = x(r.sent as f64) + 4.0
            );
            if r.limit > 0 {
                let lx = x(r.limit as f64);
                let _ = write!(
                    s,
                    "<line class=\"limit\" x1=\"{lx:.1}\" y1=\"{y0:.1}\" x2=\"{lx:.1}\" y2=\"{y1:.1}\" stroke=\"#000\" stroke-width=\"2\"/>",
                    y0 = y - 2.0,
                    y1 = y + bar + 2.0
                );
            }
        }
        s.push_str("</svg>");
        s
    }
}

/// SVG polyline points.
fn points(pts: impl Iterator<Item = (f64, f64)>) -> String {
    pts.map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A histogram of `samples` (ms) in 20 bins.
fn histogram_svg(samples: &[f64]) -> String {
    let (w, ht, pad) = (800.0, 220.0, 40.0);
    let max = samples.iter().cloned().fold(0.0f64, f64::max).max(1.0);
    let bins = 20;
    let mut counts = vec![0u64; bins];
    for v in samples {
        let i = ((v / max) * bins as f64).floor() as usize;
        counts[i.min(bins - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = (w - 2.0 * pad) / bins as f64;
    let mut s = format!(
        "<svg id=\"latency\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\">"
    );
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / top * (ht - 2.0 * pad);
        let _ = write!(
            s,
            "<rect class=\"bin\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#9467bd\"><title>{c}</title></rect>",
            pad + i as f64 * bw,
            ht - pad - h,
            bw - 2.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{t:.1}\" font-size=\"11\">0</text>\
         <text x=\"{r}\" y=\"{t:.1}\" font-size=\"11\" text-anchor=\"end\">{max:.0} ms</text>\
         <text x=\"4\" y=\"{pad}\" font-size=\"11\">{top}</text></svg>",
        t = ht - pad + 16.0,
        r = w - pad
    );
    s
}

/// `s` safe in HTML text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Sample;

    fn sample(at_ms: u64, pid: u32, fds: u64) -> Sample {
        Sample {
            at_ms,
            process: "node 1".into(),
            pid,
            rss_kib: 1000,
            fds,
            disk_bytes: 0,
            cpu_ms: 0,
        }
    }

    /// Growth is judged over the process's last life past its first 10 s: a restart's
    /// start-up is not a leak, a climb in a long life is.
    #[test]
    fn growth_is_judged_over_the_last_life_past_its_start() {
        // Life 1 (pid 1) then a restart (pid 2) whose descriptors climb for 10 s and level.
        let mut ss: Vec<Sample> = (0..20).map(|i| sample(i * 500, 1, 50)).collect();
        ss.extend((0..60).map(|i| sample(10_000 + i * 500, 2, (5 + i * 5).min(50))));
        let g = growth_of(&ss);
        assert_eq!(g.len(), 1);
        assert!(g[0].fds < 1.01, "{g:?}");
        // The same life climbing after its start is a leak.
        let leak: Vec<Sample> = (0..80).map(|i| sample(i * 500, 3, 50 + i * 5)).collect();
        assert!(growth_of(&leak)[0].fds > MAX_GROWTH);
        // Too little of a life to judge: left out.
        let young: Vec<Sample> = (0..25).map(|i| sample(i * 500, 4, 50)).collect();
        assert!(growth_of(&young).is_empty());
    }
}
