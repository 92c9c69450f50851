//! A queue node's metrics and probes: counters the hot paths bump (group commits, delivery
//! outcomes), and gauges read at scrape time from Raft and the applied state.

use std::sync::Arc;

use skein_observe::metrics::{Counter, Exposition, Histogram};
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
