//! A queue node's metrics and probes: counters the hot paths bump (group commits, delivery
//! outcomes), and gauges read at scrape time from Raft and the applied state.

use std::sync::Arc;

use skein_observe::metrics::{Counter, CounterFamily, Exposition, Histogram};
use skein_observe::Probe;

use crate::route::Cluster;

/// Messages committed by this node's group commits.
pub static COMMITTED_MESSAGES: Counter = Counter::new();
/// Group commits (Raft entries of messages) this node committed.
pub static COMMITTED_BATCHES: Counter = Counter::new();
/// Messages whose group commit failed (the edge answered 451 and the client retries).
pub static FAILED_MESSAGES: Counter = Counter::new();
/// From proposing a group commit to its commit.
pub static COMMIT_SECONDS: Histogram = Histogram::new();
/// Delivery attempts this node's scheduler recorded, by result: delivered, transient,
/// permanent, throttled.
pub static ATTEMPTS: [Counter; 4] = [const { Counter::new() }; 4];
/// The results [`ATTEMPTS`] counts, in its order.
pub const RESULTS: [&str; 4] = ["delivered", "transient", "permanent", "throttled"];
/// Delivery attempts by result, source IP and provider ("" without sending limits).
pub static DELIVERIES: CounterFamily = CounterFamily::new(&["result", "source_ip", "provider"]);
/// Recipients this node's scheduler expired without an attempt.
pub static EXPIRED: Counter = Counter::new();
/// DSNs this node's scheduler generated.
pub static DSNS: Counter = Counter::new();

/// The index of `r` in [`RESULTS`].
pub fn result_index(r: skein_queue::AttemptResult) -> usize {
    match r {
        skein_queue::AttemptResult::Delivered => 0,
        skein_queue::AttemptResult::Transient => 1,
        skein_queue::AttemptResult::Permanent => 2,
        skein_queue::AttemptResult::Throttled => 3,
    }
}

/// Queues shown one by one (the largest); the rest are summed.
const QUEUES_SHOWN: usize = 50;

/// What the queue holds and what the sending limits leave (written by the leader only, so
/// sums across nodes count once): the largest queues and how far behind each is, and per
/// source IP its warm-up cap and each provider's hourly limit against what was sent.
fn queue_gauges(e: &mut Exposition, reader: &skein_queue::QueueReader, now_ms: i64) {
    if let Ok(mut queues) = reader.queues(None, 100_000) {
        queues.sort_by_key(|q| std::cmp::Reverse(q.recipients));
        let total: u64 = queues.iter().map(|q| q.recipients).sum();
        e.gauge(
            "skein_queue_unfinished_recipients",
            "Unfinished recipients (queued, deferred or leased) in every queue.",
            &[(&[], total as f64)],
        );
        e.gauge(
            "skein_queues",
            "Queues (tenant, domain) with unfinished recipients.",
            &[(&[], queues.len() as f64)],
        );
        let shown = &queues[..queues.len().min(QUEUES_SHOWN)];
        let key = |q: &skein_queue::QueueStats| vec![q.tenant.clone(), q.domain.clone()];
        let rows: Vec<(Vec<String>, f64)> = shown
            .iter()
            .map(|q| (key(q), q.recipients as f64))
            .collect();
        e.gauge_rows(
            "skein_queue_recipients",
            "Unfinished recipients of the largest queues, by tenant and domain.",
            &["tenant", "domain"],
            &rows,
        );
        let rows: Vec<(Vec<String>, f64)> = shown
            .iter()
            .filter_map(|q| Some((key(q), q.first_due_ms?)))
            .map(|(k, due)| (k, (now_ms - due).max(0) as f64 / 1000.0))
            .collect();
        e.gauge_rows(
            "skein_queue_overdue_seconds",
            "How long the first recipient of each of the largest queues has been due (0: none \
             is due).",
            &["tenant", "domain"],
            &rows,
        );
    }
    let Ok(st) = reader.shaping(now_ms) else {
        return;
    };
    let ip = |s: &skein_queue::shaping::IpStatus| vec![s.record.ip.clone(), s.record.pool.clone()];
    let rows = |f: &dyn Fn(&skein_queue::shaping::IpStatus) -> f64| -> Vec<(Vec<String>, f64)> {
        st.ips.iter().map(|s| (ip(s), f(s))).collect()
    };
    e.gauge_rows(
        "skein_ip_sent_today",
        "Recipients leased from each source IP today (its warm-up day).",
        &["ip", "pool"],
        &rows(&|s| s.sent_today as f64),
    );
    e.gauge_rows(
        "skein_ip_daily_cap",
        "Each source IP's cap today, from its warm-up schedule or its quota.",
        &["ip", "pool"],
        &rows(&|s| s.cap as f64),
    );
    e.gauge_rows(
        "skein_ip_warm",
        "1 when the source IP counts as warm today.",
        &["ip", "pool"],
        &rows(&|s| f64::from(u8::from(s.warm))),
    );
    let mut sent = Vec::new();
    let mut limit = Vec::new();
    for s in &st.ips {
        for p in st.providers.iter().filter(|p| p.hourly(s.warm) > 0) {
            let k = vec![s.record.ip.clone(), p.name.clone()];
            let n = s.sent_this_hour.get(&p.name).copied().unwrap_or(0);
            sent.push((k.clone(), n as f64));
            limit.push((k, p.hourly(s.warm) as f64));
        }
    }
    e.gauge_rows(
        "skein_ip_provider_sent_this_hour",
        "Recipients leased from each source IP to each provider this hour.",
        &["ip", "provider"],
        &sent,
    );
    e.gauge_rows(
        "skein_ip_provider_hourly_limit",
        "Each provider's hourly limit for each source IP (its warm or warming limit).",
        &["ip", "provider"],
        &limit,
    );
}

/// How far a node's applied state may trail its log and still call itself ready.
const READY_LAG: u64 = 1000;

/// The probe of a queue node.
#[derive(Debug, Clone)]
pub struct NodeProbe {
    cluster: Arc<Cluster>,
}

impl NodeProbe {
    /// Reports on `cluster`'s node.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

impl Probe for NodeProbe {
    fn metrics(&self) -> String {
        let m = self.cluster.raft.metrics().borrow().clone();
        let mut e = Exposition::new();
        e.counter(
            "skein_ingest_committed_messages_total",
            "Messages committed by this node's group commits (as leader).",
            &[(&[], COMMITTED_MESSAGES.get())],
        );
        e.counter(
            "skein_ingest_commits_total",
            "Group commits (Raft entries of messages) this node committed.",
            &[(&[], COMMITTED_BATCHES.get())],
        );
        e.counter(
            "skein_ingest_failed_messages_total",
            "Messages whose group commit failed; their clients were told to retry.",
            &[(&[], FAILED_MESSAGES.get())],
        );
        e.histogram(
            "skein_ingest_commit_seconds",
            "Time from proposing a group commit to its quorum commit.",
            &COMMIT_SECONDS,
        );
        e.counter_by(
            "skein_delivery_attempts_total",
            "Delivery attempts recorded by this node's scheduler (as leader), by result.",
            "result",
            &RESULTS,
            &ATTEMPTS,
        );
        e.counter(
            "skein_delivery_expired_total",
            "Recipients expired at the maximum age without a further attempt.",
            &[(&[], EXPIRED.get())],
        );
        e.counter(
            "skein_dsns_total",
            "Delivery status notifications generated.",
            &[(&[], DSNS.get())],
        );
        let leads = m.current_leader == Some(m.id);
        let index = |l: Option<openraft::LogId<u64>>| l.map_or(0, |l| l.index) as f64;
        e.gauge(
            "skein_raft_term",
            "Current Raft term.",
            &[(&[], m.current_term as f64)],
        );
        e.gauge(
            "skein_raft_leader",
            "1 when this node is the leader.",
            &[(&[], f64::from(u8::from(leads)))],
        );
        e.gauge(
            "skein_raft_has_leader",
            "1 when this node knows a leader.",
            &[(&[], f64::from(u8::from(m.current_leader.is_some())))],
        );
        e.gauge(
            "skein_raft_last_log_index",
            "Index of the last entry in this node's log.",
            &[(&[], m.last_log_index.unwrap_or(0) as f64)],
        );
        e.gauge(
            "skein_raft_last_applied_index",
            "Index of the last entry applied to this node's state.",
            &[(&[], index(m.last_applied))],
        );
        e.gauge(
            "skein_raft_snapshot_index",
            "Index the latest snapshot covers.",
            &[(&[], index(m.snapshot))],
        );
        if let Some(repl) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            let peers: Vec<(String, f64)> = repl
                .iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| {
                    let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                    (id.to_string(), lag as f64)
                })
                .collect();
            let labels: Vec<[(&str, &str); 1]> = peers
                .iter()
                .map(|(id, _)| [("peer", id.as_str())])
                .collect();
            let samples: Vec<(&[(&str, &str)], f64)> = labels
                .iter()
                .zip(&peers)
                .map(|(l, (_, lag))| (l.as_slice(), *lag))
                .collect();
            e.gauge(
                "skein_raft_replication_lag_entries",
                "Entries each member trails the leader's log by (on the leader).",
                &samples,
            );
        }
        let reader = &self.cluster.reader;
        e.counter_family(
            "skein_deliveries_total",
            "Delivery attempts recorded by this node's scheduler (as leader), by result, source \
             IP and provider.",
            &DELIVERIES,
        );
        if leads {
            queue_gauges(&mut e, reader, self.cluster.clock.now_ms());
        }
        if let Ok(n) = reader.message_count() {
            e.gauge(
                "skein_queue_messages",
                "Messages in the queue (unfinished, and finished ones not yet purged).",
                &[(&[], n as f64)],
            );
        }
        if let Ok(f) = reader.format() {
            e.gauge(
                "skein_replicated_format",
                "The replicated format the cluster writes.",
                &[(&[], f64::from(f))],
            );
        }
        e.process();
        e.finish()
    }

    fn live(&self) -> Result<(), String> {
        match &self.cluster.raft.metrics().borrow().running_state {
            Ok(()) => Ok(()),
            Err(fatal) => Err(format!("Raft stopped: {fatal}")),
        }
    }

    fn ready(&self) -> Result<(), String> {
        let m = self.cluster.raft.metrics().borrow().clone();
        m.running_state
            .as_ref()
            .map_err(|f| format!("Raft stopped: {f}"))?;
        if m.current_leader.is_none() {
            return Err("no leader known (electing, cut off, or not joined yet)".into());
        }
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        if last.saturating_sub(applied) > READY_LAG {
            return Err(format!("catching up: applied {applied} of {last} entries"));
        }
        Ok(())
    }
}
