//! The scheduler: runs on the leader, turns due recipients into leased assignments for
//! connected senders and senders' reports into state changes.
//!
//! - [`planner`]: every decision, without I/O: the senders table, pending reports, unsent
//!   leases, queues held back, the fair cursor. [`plan`] holds its pure round functions,
//!   [`fair`] the order queues are served in, [`policy`] retries, expiry and suppression.
//! - [`sessions`]: the senders' streams, the only way assignments leave.
//! - this module: the driver, which feeds the planner, proposes what it planned (one
//!   [`Request::Deliver`] entry per round, so a busy cluster commits many outcomes and leases
//!   per fsync), sends assignments once their lease committed, and writes the events.
//!
//! A new leader needs nothing from the old one: leases are replicated, and those whose sender
//! vanished come due again when they lapse. Leadership is followed through Raft's metrics.

pub mod events;
pub mod fair;
pub mod plan;
pub mod planner;
pub mod policy;
pub mod sessions;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use skein_config::DeliveryConfig;
use skein_observe::trace;
use skein_proto::work::{Assignment, Recipient};
use skein_queue::{Request, Response};
use tokio::sync::{mpsc, watch};

pub use planner::{Input, Planner, SessionReport};
pub use sessions::Sessions;

use crate::events::EventLog;
use crate::route::Cluster;
use planner::{Round, Send};

/// A queue the leader's scheduler holds back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldQueue {
    /// Tenant.
    pub tenant: String,
    /// Destination domain.
    pub domain: String,
    /// Until when.
    pub until_ms: i64,
    /// `"sending limits"` (its pool spent its budget) or `"slow down"` (the destination
    /// asked, without IP records).
    pub why: &'static str,
}

/// An (IP, provider) pair backing off after "slow down" replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Source IP.
    pub ip: String,
    /// Provider.
    pub provider: String,
    /// Until when.
    pub until_ms: i64,
}

/// A connected sender as the scheduler counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderView {
    /// Its name.
    pub name: String,
    /// The source IPs it announced.
    pub ips: Vec<String>,
    /// Assignments it works on at once.
    pub max_in_flight: u32,
    /// Leases it holds now.
    pub in_flight: u32,
}

/// What the scheduler holds back (queues, and (IP, provider) pairs backing off) and the senders
/// it works with, as it last published them (once a second at most), for the Admin API. Empty
/// on a node that does not lead.
#[derive(Debug, Default)]
pub struct HeldQueues {
    inner: std::sync::Mutex<Published>,
}

type Published = (Vec<HeldQueue>, Vec<Backoff>, Vec<SenderView>);

impl HeldQueues {
    /// The queues held back now.
    pub fn get(&self) -> Vec<HeldQueue> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The (IP, provider) pairs backing off now.
    pub fn backoffs(&self) -> Vec<Backoff> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The connected senders.
    pub fn senders(&self) -> Vec<SenderView> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .2
            .clone()
    }

    fn set(&self, published: Published) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = published;
    }
}

/// Longest wait between rounds when nothing happens.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Longest time between checks for finished messages to forget.
const PURGE_EVERY: Duration = Duration::from_secs(30);
/// Finished messages forgotten per Raft entry.
const PURGE_LIMIT: u32 = 1000;

/// How long the leader waits for a domain's MX host before it classifies the domain without.
const MX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the scheduler until the node shuts down (the inputs channel closes). `rng` is its only
/// source of randomness (lease tokens, retry jitter); `resolver` finds the MX hosts of
/// recipient domains that need them to be classified (none: they are classified without).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cluster: Arc<Cluster>,
    sessions: Arc<Sessions>,
    mut inputs: mpsc::Receiver<Input>,
    cfg: DeliveryConfig,
    events: Arc<EventLog>,
    held: Arc<HeldQueues>,
    resolver: Option<Arc<dyn skein_dns::Resolve>>,
    mut rng: fastrand::Rng,
) {
    // Lookups run beside the loop and answer through their own channel (the planner bounds
    // how many are out).
    let (mx_tx, mut mx_rx) = mpsc::unbounded_channel::<Input>();
    let mut published = std::time::Instant::now();
    let purge_every = cfg.keep_finished.0.min(PURGE_EVERY).as_millis() as i64;
    let mut planner = Planner::new(cfg);
    let mut leadership = leadership(&cluster);
    let mut leading = false;
    // Whether the last round changed anything: a round that did not (due work, but no sender
    // can take it) must not be repeated at once, or the loop would spin.
    let mut progressed = true;
    let mut last_purge_ms = i64::MIN;
    loop {
        // Reads below are synchronous: let the node's other tasks run between rounds.
        tokio::task::yield_now().await;
        let leader = *leadership.borrow_and_update();
        if !leader {
            if leading {
                tracing::info!("no longer leader: closing sender sessions");
                sessions.disconnect_all();
                planner.reset();
                held.set(Default::default());
            }
            leading = false;
            // A session opened just as this node became leader (before the watch says so) is
            // kept; one opened by a node that is not leading is ended, and its sender retries.
            // Reports from ended sessions are dropped: their senders report to the leader.
            tokio::select! {
                i = inputs.recv() => match i {
                    Some(i @ Input::Joined { .. }) => {
                        if matches!(cluster.route(false), Ok(crate::route::Route::Local)) {
                            planner.input(i);
                        } else {
                            sessions.disconnect_all();
                        }
                    }
                    Some(i @ (Input::Left { .. } | Input::Draining { .. })) => planner.input(i),
                    Some(Input::Report(_) | Input::Mx { .. }) => {}
                    None => return,
                },
                r = leadership.changed() => if r.is_err() { return },
            }
            continue;
        }
        if !leading {
            tracing::info!("leading: scheduler running");
            leading = true;
            progressed = true;
        }

        // Wait for an input, a change of leadership, room in the senders' backlog, or the
        // next due time.
        // (The due index is read only when its answer counts: under load there are nearly
        // always reports waiting, and the read is a seek over every column family level.)
        let wait = if planner.busy() {
            Duration::ZERO
        } else if progressed && planner.free() > 0 {
            match cluster.reader.next_due_ms() {
                Ok(Some(at)) => {
                    let ms = (at - cluster.clock.now_ms()).clamp(0, IDLE_WAIT.as_millis() as i64);
                    Duration::from_millis(ms as u64)
                }
                // Nothing due: wait for an input or the next check of maximum ages.
                _ => IDLE_WAIT,
            }
        } else {
            // Nobody to give work to, or nothing could be done last time: wait for an input,
            // a drained backlog, or the next check of maximum ages.
            IDLE_WAIT
        };
        if !wait.is_zero() {
            tokio::select! {
                i = inputs.recv() => match i {
                    Some(i) => planner.input(i),
                    None => return,
                },
                Some(i) = mx_rx.recv() => planner.input(i),
                _ = leadership.changed() => continue,
                _ = sessions.drained() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        while let Ok(i) = mx_rx.try_recv() {
            planner.input(i);
        }
        // Reports a failed round kept come first; new inputs fill the round up.
        while planner.wants_reports() {
            match inputs.try_recv() {
                Ok(i) => planner.input(i),
                Err(_) => break,
            }
        }
        let now = cluster.clock.now_ms();
        if now.saturating_sub(last_purge_ms) >= purge_every {
            match purge(&cluster, planner.cfg(), now).await {
                // A full batch: there may be more, check again next round.
                Ok(n) if n == PURGE_LIMIT => {}
                Ok(_) => last_purge_ms = now,
                Err(e) => {
                    last_purge_ms = now;
                    tracing::warn!(%e, "purging finished messages failed");
                }
            }
        }
        let result = round(&cluster, &sessions, &events, &mut planner, &mut rng).await;
        for domain in planner.lookups() {
            look_up_mx(&cluster, resolver.clone(), domain, mx_tx.clone());
        }
        if published.elapsed() >= Duration::from_secs(1) {
            held.set((
                planner.held_queues(),
                planner.backoffs(cluster.clock.now_ms()),
                planner.sender_views(),
            ));
            published = std::time::Instant::now();
        }
        match result {
            Ok(p) => progressed = p,
            Err(e) => {
                progressed = false;
                tracing::warn!(%e, "scheduling round failed; its reports are kept for the next");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Looks up `domain`'s primary MX host beside the loop and answers on `tx`.
fn look_up_mx(
    cluster: &Arc<Cluster>,
    resolver: Option<Arc<dyn skein_dns::Resolve>>,
    domain: String,
    tx: mpsc::UnboundedSender<Input>,
) {
    let clock = cluster.clock.clone();
    tokio::spawn(async move {
        let result = match resolver {
            None => Err("no resolver".to_string()),
            Some(r) => match tokio::time::timeout(MX_LOOKUP_TIMEOUT, r.mx(&domain)).await {
                Err(_) => Err(format!("no answer in {MX_LOOKUP_TIMEOUT:?}")),
                Ok(Err(e)) => Err(e),
                Ok(Ok(skein_dns::Answer::Found(records))) => {
                    Ok(skein_dns::primary(&records).map(str::to_string))
                }
                Ok(Ok(skein_dns::Answer::NoRecords | skein_dns::Answer::NxDomain)) => Ok(None),
            },
        };
        tracing::debug!(%domain, ?result, "MX lookup for provider classification");
        let _ = tx.send(Input::Mx {
            domain,
            result,
            at_ms: clock.now_ms(),
        });
    });
}

/// Whether this node leads, updated from Raft's metrics whenever that changes (and only
/// then: the metrics themselves change with every entry).
fn leadership(cluster: &Cluster) -> watch::Receiver<bool> {
    let mut metrics = cluster.raft.metrics();
    let id = cluster.id;
    let leads = move |m: &openraft::RaftMetrics<u64, openraft::BasicNode>| {
        m.state == openraft::ServerState::Leader && m.current_leader == Some(id)
    };
    let (tx, rx) = watch::channel(leads(&metrics.borrow()));
    tokio::spawn(async move {
        while metrics.changed().await.is_ok() {
            let now = leads(&metrics.borrow_and_update());
            tx.send_if_modified(|v| std::mem::replace(v, now) != now);
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// One round: plan, propose, send. True if it changed anything.
async fn round(
    cluster: &Cluster,
    sessions: &Sessions,
    events: &EventLog,
    planner: &mut Planner,
    rng: &mut fastrand::Rng,
) -> Result<bool, crate::ClusterError> {
    let r = planner.plan(
        cluster.clock.now_ms(),
        rng,
        &cluster.reader,
        sessions.held_bytes(),
    )?;
    sessions.set_starved(r.plan.starved);
    if r.ops.is_empty() {
        planner.committed(r, Vec::new());
        return Ok(false);
    }
    tracing::debug!(
        ops = r.ops.len(),
        leases = r.plan.planned.len(),
        reported = r.plan.reported.len(),
        expired = r.plan.expired.len(),
        "scheduling round"
    );
    let Round { now_ms, ops, .. } = &r;
    // Decisions of a newer format are written as the cluster's format reads them.
    let format = cluster.reader.format()?;
    let proposed = cluster
        .propose(Request::Deliver {
            now_ms: *now_ms,
            mta: planner.cfg().mta_name.clone(),
            ops: ops
                .iter()
                .filter_map(|op| op.clone().for_format(format))
                .collect(),
        })
        .await;
    let (leased, applied, dsns) = match proposed.map(|w| w.data) {
        Ok(Response::Delivered {
            leased,
            applied,
            dsns,
        }) => (leased, applied, dsns),
        Ok(other) => {
            planner.failed(r);
            return Err(crate::ClusterError::Raft(format!(
                "unexpected response {other:?}"
            )));
        }
        Err(e) => {
            planner.failed(r);
            return Err(e);
        }
    };
    let progressed = !applied.is_empty() || leased.iter().any(|(_, k)| !k.is_empty());
    let now_ms = r.now_ms;
    let reported = r.plan.reported.clone();
    let expired = r.plan.expired.clone();
    {
        let applied: std::collections::HashSet<&str> = applied.iter().map(String::as_str).collect();
        for (rec, attempt, _) in &reported {
            if applied.contains(rec.key.as_str()) {
                crate::metrics::ATTEMPTS[crate::metrics::result_index(attempt.result)].inc();
                let provider = r.plan.providers.get(&rec.key).map_or("", String::as_str);
                crate::metrics::DELIVERIES.add(
                    &[
                        crate::metrics::RESULTS[crate::metrics::result_index(attempt.result)],
                        &attempt.source_ip,
                        provider,
                    ],
                    1,
                );
            }
        }
        let gone = expired.iter().filter(|r| applied.contains(r.key.as_str()));
        crate::metrics::EXPIRED.add(gone.count() as u64);
        crate::metrics::DSNS.add(dsns.len() as u64);
    }
    for s in planner.committed(r, leased) {
        if !send(cluster, sessions, &s)? {
            planner.not_sent(s);
        }
    }
    events.write(&events::round_events(
        &cluster.reader,
        now_ms,
        &applied,
        reported,
        expired,
        &dsns,
    ));
    Ok(progressed)
}

/// Forgets messages that finished more than `keep_finished` ago, at most [`PURGE_LIMIT`];
/// proposes nothing when there are none.
async fn purge(
    cluster: &Cluster,
    cfg: &DeliveryConfig,
    now: i64,
) -> Result<u32, crate::ClusterError> {
    let before_ms = now.saturating_sub(cfg.keep_finished.0.as_millis() as i64);
    match cluster.reader.oldest_finished_ms()? {
        Some(at) if at < before_ms => {}
        _ => return Ok(0),
    }
    let r = cluster
        .propose(Request::Purge {
            before_ms,
            limit: PURGE_LIMIT,
        })
        .await?;
    match r.data {
        Response::Purged(n) => {
            tracing::debug!(purged = n, before_ms, "forgot finished messages");
            Ok(n)
        }
        other => Err(crate::ClusterError::Raft(format!(
            "unexpected response {other:?}"
        ))),
    }
}

/// Builds and sends the assignment for the granted recipients of a planned one; false if its
/// session is gone.
fn send(cluster: &Cluster, sessions: &Sessions, s: &Send) -> Result<bool, crate::ClusterError> {
    let (p, keys) = (&s.planned, &s.keys);
    let Some((msg, Some(body))) = cluster.reader.get_message(&p.message_id, true)? else {
        tracing::warn!(id = %p.message_id, "leased recipients of a message without a body");
        return Ok(false);
    };
    let cx = trace::start(
        "queue schedule",
        trace::SpanKind::Internal,
        &cluster.traces.get(&p.message_id),
        vec![
            trace::KeyValue::new("skein.queue_id", p.message_id.clone()),
            trace::KeyValue::new("skein.lease", p.lease.to_string()),
            trace::KeyValue::new("skein.source_ip", p.slot.source_ip.clone()),
            trace::KeyValue::new("skein.recipients", keys.len() as i64),
        ],
    );
    let traceparent = trace::traceparent(&cx);
    trace::end(&cx);
    let a = Assignment {
        lease: p.lease,
        message_id: msg.id,
        tenant: msg.tenant,
        mail_from: msg.mail_from,
        domain: p.domain.clone(),
        rcpts: p
            .rcpts
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(key, address)| Recipient {
                key: key.clone(),
                address: address.clone(),
            })
            .collect(),
        source_ip: p.slot.source_ip.clone(),
        ehlo: p.slot.ehlo.clone(),
        data: body.into(),
        smtputf8: msg.smtputf8,
        body_8bit: msg.body_8bit,
        expires_ms: p.expires_ms,
        // Set as the assignment leaves its session's channel.
        lease_ms: 0,
        provider: p
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        max_connections: p.provider.as_ref().map_or(0, |p| p.max_connections),
        max_per_connection: p.provider.as_ref().map_or(0, |p| p.max_per_connection),
        edge: msg.edge,
        traceparent,
    };
    Ok(sessions.send(p.slot.conn, a))
}
