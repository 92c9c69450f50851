//! `skein.ingest.v1.Ingest` and group commit.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use skein_core::SharedClock;
use skein_proto::ingest::ingest_client::IngestClient;
use skein_proto::ingest::ingest_server::Ingest;
use skein_proto::ingest::{
    CredentialsRequest, CredentialsResponse, EnqueueRequest, EnqueueResponse, SigningKey,
    TenantCredential,
};
use skein_queue::{NewMessage, QueueReader, Request, Response, TypeConfig};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use skein_observe::trace;

use crate::error::ClusterError;
use crate::events::{Event, EventLog};
use crate::route::{Cluster, Route, FORWARDED};

/// Most recipients in one message.
pub const MAX_RECIPIENTS: usize = 10_000;
/// Largest message accepted over Ingest.
pub use skein_core::MAX_MESSAGE_BYTES;
/// Batches proposed and not yet committed, at most.
const MAX_IN_FLIGHT: usize = 1;

type Done = oneshot::Sender<Result<(String, u64), NotCommitted>>;

/// Longest a submission id is remembered: far beyond any edge's retries of one submission.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(3600);
/// Longest submission id accepted.
pub const MAX_SUBMISSION_ID: usize = 64;

/// One message to store, with the submission id its edge chose (empty for none): a retry of
/// a submission that was stored already gets the first one's queue id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The edge's submission id.
    pub id: Vec<u8>,
    /// The message.
    pub message: NewMessage,
}

/// Why the batcher did not commit a message.
#[derive(Debug)]
pub enum NotCommitted {
    /// This node is not the leader (any more): the message was never proposed and comes back
    /// whole, so the caller can hand it to the leader.
    NotLeader(Submission),
    /// It was proposed, or could not be: the error says whether it may still be applied
    /// ([`ClusterError::CommitTimeout`]) or certainly was not.
    Failed(ClusterError),
}

impl From<ClusterError> for NotCommitted {
    fn from(e: ClusterError) -> Self {
        Self::Failed(e)
    }
}

/// Collects messages into group commits on the leader.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Submission, Done)>,
}

impl Batcher {
    /// Starts the batching task for `raft`. A batch that is not committed within
    /// `commit_timeout` is given up (its waiters hear [`ClusterError::CommitTimeout`]) so the
    /// next one can go; recipients suppressed at enqueue go to `events`.
    pub fn spawn(
        raft: Raft<TypeConfig>,
        clock: SharedClock,
        max_messages: usize,
        max_bytes: usize,
        commit_timeout: Duration,
        reader: QueueReader,
        events: Arc<EventLog>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_messages * MAX_IN_FLIGHT * 2);
        let limits = Limits {
            max_messages,
            max_bytes,
            commit_timeout,
        };
        tokio::spawn(run(raft, clock, rx, limits, reader, events));
        Self { tx }
    }

    /// Proposes `msg` in the next batch and waits for its commit: the queue id and log index.
    pub async fn enqueue(
        &self,
        msg: Submission,
        timeout: Duration,
    ) -> Result<(String, u64), NotCommitted> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((msg, done))
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClusterError::ShuttingDown.into()),
            Err(_) => Err(ClusterError::CommitTimeout {
                ms: timeout.as_millis() as u64,
            }
            .into()),
        }
    }
}

/// How big a batch may grow and how long its commit may take.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_messages: usize,
    max_bytes: usize,
    commit_timeout: Duration,
}

async fn run(
    raft: Raft<TypeConfig>,
    clock: SharedClock,
    mut rx: mpsc::Receiver<(Submission, Done)>,
    limits: Limits,
    reader: QueueReader,
    events: Arc<EventLog>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Wait for a free slot first: while all slots are busy, arrivals pile up in the
        // channel and form the next, larger batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = first.0.message.data.len();
        let mut batch = vec![first];
        while batch.len() < limits.max_messages && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.0.message.data.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        // Leadership may have moved while these waited: hand them back untouched rather than
        // propose them here, so they go to the leader instead of failing.
        if !crate::propose::is_leader(&raft) {
            for (msg, done) in batch {
                let _ = done.send(Err(NotCommitted::NotLeader(msg)));
            }
            continue;
        }
        // Submission ids travel only once every node can read them (format 2).
        let once = reader.format().unwrap_or(1) >= 2;
        let raft = raft.clone();
        let now = clock.now_ms();
        let events = events.clone();
        tokio::spawn(async move {
            let (batch, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let (submissions, messages): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|s| (s.id, s.message)).unzip();
            let n = messages.len();
            let envelopes: Vec<(String, String)> = messages
                .iter()
                .map(|m| (m.tenant.clone(), m.mail_from.clone()))
                .collect();
            let cmd = if once {
                Request::EnqueueOnce {
                    received_at_ms: now,
                    dedup_window_ms: DEDUP_WINDOW.as_millis() as i64,
                    messages,
                    submissions,
                }
            } else {
                Request::Enqueue {
                    received_at_ms: now,
                    messages,
                }
            };
            let proposal = crate::propose::propose(&raft, cmd, limits.commit_timeout);
            let started = std::time::Instant::now();
            let result = hold_while_leading(&raft, permit, proposal).await;
            match &result {
                Ok(_) => {
                    crate::metrics::COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
                    crate::metrics::COMMITTED_BATCHES.inc();
                    crate::metrics::COMMITTED_MESSAGES.add(n as u64);
                }
                Err(_) => crate::metrics::FAILED_MESSAGES.add(n as u64),
            }
            match result {
                Ok(r) => match r.data {
                    Response::Enqueued {
                        ids,
                        suppressed,
                        repeats,
                    } if ids.len() == n => {
                        if !repeats.is_empty() {
                            tracing::info!(
                                repeats = repeats.len(),
                                "retried submissions answered with their first queue ids"
                            );
                        }
                        if !suppressed.is_empty() {
                            events.write(&suppressed_events(now, &ids, &envelopes, suppressed));
                        }
                        for (w, id) in waiters.into_iter().zip(ids) {
                            let _ = w.send(Ok((id, r.log_id.index)));
                        }
                    }
                    other => {
                        for w in waiters {
                            let _ = w.send(Err(ClusterError::Raft(format!(
                                "unexpected response to enqueue: {other:?}"
                            ))
                            .into()));
                        }
                    }
                },
                Err(e) => {
                    if !matches!(e, ClusterError::LeaderChanged) {
                        tracing::warn!(%e, messages = n, "group commit failed");
                    }
                    for w in waiters {
                        let _ = w.send(Err(e.duplicate().into()));
                    }
                }
            }
        });
    }
}

/// Waits for `proposal`, holding the in-flight `slot` until it answers, its deadline passes
/// or this node stops leading, whichever comes first. openraft does not always answer (a
/// snapshot can swallow the entry unanswered), and a node that no longer leads must hand the
/// messages arriving meanwhile to the new leader at once: one silent proposal never stops
/// this node's intake.
async fn hold_while_leading<T>(
    raft: &Raft<TypeConfig>,
    slot: OwnedSemaphorePermit,
    proposal: impl std::future::Future<Output = T>,
) -> T {
    let mut slot = Some(slot);
    let mut metrics = raft.metrics();
    tokio::pin!(proposal);
    loop {
        tokio::select! {
            r = &mut proposal => return r,
            changed = metrics.changed(), if slot.is_some() => {
                if changed.is_err() || !crate::propose::is_leader(raft) {
                    slot = None;
                }
            }
        }
    }
}

/// The `suppressed` events of one committed batch.
fn suppressed_events(
    now: i64,
    ids: &[String],
    envelopes: &[(String, String)],
    suppressed: Vec<(u32, String)>,
) -> Vec<Event> {
    suppressed
        .into_iter()
        .filter_map(|(pos, recipient)| {
            let (tenant, sender) = envelopes.get(pos as usize)?;
            Some(Event {
                kind: "suppressed",
                ts_ms: now,
                message_id: ids.get(pos as usize)?.clone(),
                tenant: tenant.clone(),
                sender: sender.clone(),
                domain: skein_queue::domain_of(&recipient),
                recipient,
                text: "on the tenant's suppression list: not attempted".into(),
                received_ms: now,
                ..Event::default()
            })
        })
        .collect()
}

/// Checks an Enqueue request against the limits; the error names the field.
pub fn validate(r: &EnqueueRequest) -> Result<(), ClusterError> {
    let bad = |field, reason: &str| {
        Err(ClusterError::Invalid {
            field,
            reason: reason.into(),
        })
    };
    if r.rcpt_to.is_empty() {
        return bad("rcpt_to", "at least one recipient is required");
    }
    if r.rcpt_to.len() > MAX_RECIPIENTS {
        return bad("rcpt_to", "more than 10000 recipients");
    }
    // Addresses go into SMTP commands as they are: only what the SMTP grammar allows (no
    // CR, LF, NUL, spaces, '<' or '>' that would end the path and smuggle in a command or a
    // parameter), parsed as the edge parses them.
    let address = |field, i: Option<usize>, a: &str| {
        skein_smtp::address::parse_mailbox(a, r.smtputf8)
            .map(|_| ())
            .map_err(|e| ClusterError::Invalid {
                field,
                reason: format!(
                    "{}{:?}: {e}",
                    i.map(|i| format!("[{i}] ")).unwrap_or_default(),
                    a.chars().take(80).collect::<String>()
                ),
            })
    };
    for (i, a) in r.rcpt_to.iter().enumerate() {
        address("rcpt_to", Some(i), a)?;
    }
    if !r.mail_from.is_empty() {
        address("mail_from", None, &r.mail_from)?;
    }
    if r.data.is_empty() {
        return bad("data", "the message is empty");
    }
    if r.submission_id.len() > MAX_SUBMISSION_ID {
        return bad("submission_id", "longer than 64 bytes");
    }
    if r.data.len() > MAX_MESSAGE_BYTES {
        return bad("data", "larger than 64 MiB");
    }
    for (field, v, max) in [
        ("tenant", &r.tenant, 64),
        ("client_ip", &r.client_ip, 64),
        ("helo", &r.helo, 255),
        ("edge", &r.edge, 255),
    ] {
        if v.len() > max {
            return Err(ClusterError::Invalid {
                field,
                reason: format!("longer than {max} bytes"),
            });
        }
        // These end up in the Received: header and in logs: one line of printable text.
        if v.chars().any(|c| c.is_control()) {
            return Err(ClusterError::Invalid {
                field,
                reason: "control characters (CR, LF, NUL...) are not accepted".into(),
            });
        }
    }
    if !r.tenant.is_empty() {
        skein_config::node::check_tenant_name(&r.tenant).map_err(|reason| {
            ClusterError::Invalid {
                field: "tenant",
                reason,
            }
        })?;
    }
    if !r.pool.is_empty() {
        if r.tenant.is_empty() {
            return bad("pool", "only a tenant's mail may choose a pool");
        }
        skein_shaping::check_name("pool", &r.pool).map_err(|e| ClusterError::Invalid {
            field: "pool",
            reason: e.reason,
        })?;
    }
    if !r.client_ip.is_empty() && r.client_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(ClusterError::Invalid {
            field: "client_ip",
            reason: format!("{:?} is not an IP address", r.client_ip),
        });
    }
    Ok(())
}

/// The Ingest service of one node.
#[derive(Clone)]
pub struct IngestService {
    ctx: Arc<Cluster>,
    /// Group commit (used while leader).
    batcher: Batcher,
    /// Message bytes held in Enqueue calls, at most (one permit per byte).
    memory: Arc<Semaphore>,
    memory_limit: u64,
}

impl IngestService {
    /// Serves `ctx`'s node, committing through `batcher` while it leads, holding at most
    /// `memory` message bytes in Enqueue calls at once.
    pub fn new(ctx: Arc<Cluster>, batcher: Batcher, memory: u64) -> Self {
        Self {
            ctx,
            batcher,
            memory: Arc::new(Semaphore::new(
                usize::try_from(memory).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            memory_limit: memory,
        }
    }

    /// Holds `bytes` of the memory budget until the returned permit is dropped, or refuses at
    /// once when the budget is spent: waiting would only pile up more calls in memory.
    fn hold(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ClusterError> {
        let busy = || ClusterError::Busy {
            what: "message bytes in Enqueue calls (node.ingest_memory)",
            limit: self.memory_limit,
        };
        let n = u32::try_from(bytes).map_err(|_| busy())?;
        self.memory
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| busy())
    }

    /// Hands `r` to the leader at `addr`, waiting no longer than a local commit may take: a
    /// leader that hangs (stopped, partitioned) must not hold this call, or the edge behind it,
    /// for ever.
    async fn forward(
        &self,
        addr: &str,
        r: EnqueueRequest,
        trace: &trace::Context,
    ) -> Result<tonic::Response<EnqueueResponse>, Status> {
        let ch = self.ctx.channel(addr)?;
        let mut c =
            IngestClient::new(ch).max_encoding_message_size(MAX_MESSAGE_BYTES + 1024 * 1024);
        let mut fwd = tonic::Request::new(r);
        // The edge's span stays the parent of the leader's.
        trace::inject(trace, fwd.metadata_mut());
        fwd.metadata_mut()
            .insert(FORWARDED, "1".parse().expect("ascii"));
        fwd.set_timeout(self.ctx.commit_timeout);
        skein_proto::call_within(self.ctx.commit_timeout, c.enqueue(fwd))
            .await
            .map_err(|s| forward_status(addr, s))
    }
}

impl IngestService {
    /// The tenant the message is queued under: its tenant, or the stream of the pool it chose
    /// (checked against the pools the tenant may use; from format 5).
    fn queue_tenant(&self, r: &EnqueueRequest) -> Result<String, ClusterError> {
        if r.pool.is_empty() {
            return Ok(r.tenant.clone());
        }
        ClusterError::require_format(
            self.ctx.reader.format()?,
            skein_queue::POOL_CHOICE_FORMAT,
            "pools chosen by header",
        )?;
        let (own, allowed) = self.ctx.reader.pools_of(&r.tenant)?;
        if r.pool == own {
            return Ok(r.tenant.clone());
        }
        if !allowed.contains(&r.pool) {
            return Err(ClusterError::PermissionDenied {
                reason: format!(
                    "tenant {:?} may not send from pool {:?} (skeinctl pool allow)",
                    r.tenant, r.pool
                ),
            });
        }
        Ok(skein_shaping::stream(&r.tenant, &r.pool))
    }
}

/// The request that carries `s` again (for forwarding a message the batcher handed back).
fn into_request(s: Submission) -> EnqueueRequest {
    let m = s.message;
    // A stream (`tenant+pool`) travels as its tenant and the pool it chose.
    let (tenant, pool) = match m.tenant.split_once(skein_shaping::STREAM_SEPARATOR) {
        Some((t, p)) => (t.to_string(), p.to_string()),
        None => (m.tenant, String::new()),
    };
    EnqueueRequest {
        submission_id: s.id,
        tenant,
        pool,
        mail_from: m.mail_from,
        rcpt_to: m.rcpt_to,
        data: m.data,
        client_ip: m.client_ip,
        helo: m.helo,
        edge: m.edge,
        smtputf8: m.smtputf8,
        body_8bit: m.body_8bit,
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn enqueue(
        &self,
        req: tonic::Request<EnqueueRequest>,
    ) -> Result<tonic::Response<EnqueueResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let parent = trace::extract(req.metadata());
        let r = req.into_inner();
        validate(&r)?;
        // Held until this call returns, whether it commits here or waits on the leader.
        let _held = self.hold(r.data.len())?;
        let addr = match self.ctx.route(forwarded)? {
            Route::Forward(addr) => addr,
            Route::Local => {
                let tenant = self.queue_tenant(&r)?;
                let message = NewMessage {
                    tenant,
                    mail_from: r.mail_from,
                    rcpt_to: r.rcpt_to,
                    // A slice of the received request: no copy.
                    data: r.data,
                    client_ip: r.client_ip,
                    helo: r.helo,
                    edge: r.edge,
                    smtputf8: r.smtputf8,
                    body_8bit: r.body_8bit,
                };
                let msg = Submission {
                    id: r.submission_id,
                    message,
                };
                let cx = trace::start(
                    "queue commit",
                    trace::SpanKind::Server,
                    &parent,
                    vec![trace::KeyValue::new("skein.node", self.ctx.id as i64)],
                );
                let committed = self.batcher.enqueue(msg, self.ctx.commit_timeout).await;
                match &committed {
                    Ok((id, log_index)) => {
                        trace::set(&cx, trace::KeyValue::new("skein.queue_id", id.clone()));
                        trace::set(
                            &cx,
                            trace::KeyValue::new("raft.log_index", *log_index as i64),
                        );
                        self.ctx.traces.remember(id, &cx);
                    }
                    Err(NotCommitted::Failed(e)) => trace::fail(&cx, e.to_string()),
                    Err(NotCommitted::NotLeader(_)) => trace::fail(&cx, "leadership moved"),
                }
                trace::end(&cx);
                match committed {
                    Ok((id, log_index)) => {
                        return Ok(tonic::Response::new(EnqueueResponse { id, log_index }))
                    }
                    Err(NotCommitted::Failed(e)) => return Err(e.into()),
                    // Leadership moved while the message waited for its batch: it was never
                    // proposed, so it can go to the new leader (once; a message forwarded
                    // to us already is refused instead, and its sender retries).
                    Err(NotCommitted::NotLeader(msg)) => match self.ctx.route(forwarded)? {
                        Route::Forward(addr) => {
                            return self.forward(&addr, into_request(msg), &parent).await;
                        }
                        Route::Local => return Err(ClusterError::LeaderChanged.into()),
                    },
                }
            }
        };
        self.forward(&addr, r, &parent).await
    }

    async fn credentials(
        &self,
        _req: tonic::Request<CredentialsRequest>,
    ) -> Result<tonic::Response<CredentialsResponse>, Status> {
        let tenants = self
            .ctx
            .reader
            .tenants()
            .map_err(ClusterError::from)?
            .into_iter()
            .map(|t| TenantCredential {
                name: t.name,
                username: t.username,
                password_hash: t.password_hash,
                enabled: t.enabled,
            })
            .collect();
        let signing_keys = self
            .ctx
            .reader
            .dkim_keys(None)
            .map_err(ClusterError::from)?
            .into_iter()
            .map(|k| SigningKey {
                tenant: k.tenant,
                domain: k.domain,
                selector: k.selector,
                private_key: k.private_key,
            })
            .collect();
        Ok(tonic::Response::new(CredentialsResponse {
            tenants,
            signing_keys,
        }))
    }
}

/// A status from the leader passes through (its code already says what happened); `Unknown`
/// means the forwarding hop itself failed (connection refused or reset) and becomes
/// Unavailable, which tells the edge to retry elsewhere.
pub(crate) fn forward_status(addr: &str, s: Status) -> Status {
    if s.code() == tonic::Code::Unknown {
        ClusterError::Forward {
            addr: addr.to_string(),
            message: s.message().to_string(),
        }
        .into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rcpt: &str) -> EnqueueRequest {
        EnqueueRequest {
            mail_from: "app@example.com".into(),
            rcpt_to: vec![rcpt.into()],
            data: b"Subject: x\r\n\r\nx\r\n".to_vec().into(),
            client_ip: "192.0.2.1".into(),
            tenant: "acme".into(),
            ..Default::default()
        }
    }

    fn refused(r: &EnqueueRequest) -> String {
        match validate(r) {
            Err(ClusterError::Invalid { field, reason }) => format!("{field}: {reason}"),
            other => panic!("{:?} accepted: {other:?}", r.rcpt_to),
        }
    }

    /// Every way an address or a header-bound field could carry a command, a parameter or
    /// a header into a delivery is refused, naming the field; plain addresses pass.
    #[test]
    fn envelope_fields_cannot_smuggle_commands_or_headers() {
        validate(&request("user+tag@example.net")).unwrap();
        validate(&request("\"john doe\"@example.net")).unwrap();
        for rcpt in [
            "a@x.test>\r\nRSET\r\nMAIL FROM:<evil@x.test",
            "b@sink.test>\r\nDATA",
            "b@sink.test> NOTIFY=NEVER",
            "b@sink.test\0",
            "b c@sink.test",
            "<b@sink.test>",
            "@relay.test:b@sink.test",
            "b%sink.test@relay.test",
            "",
        ] {
            assert!(
                refused(&request(rcpt)).starts_with("rcpt_to: [0] "),
                "{rcpt:?}"
            );
        }
        let mut r = request("b@sink.test");
        r.mail_from = "a@x.test> SIZE=1".into();
        assert!(refused(&r).starts_with("mail_from: "));
        r.mail_from = String::new();
        validate(&r).unwrap();
        let mut r = request("b@sink.test");
        r.helo = "client\r\nX-Injected: yes".into();
        assert!(refused(&r).contains("control characters"));
        let mut r = request("b@sink.test");
        r.tenant = "acme corp".into();
        assert!(refused(&r).starts_with("tenant: "));
        let mut r = request("b@sink.test");
        r.client_ip = "not-an-ip".into();
        assert!(refused(&r).starts_with("client_ip: "));
        // A pool is chosen by a tenant's mail only, and named as pools are.
        let mut r = request("b@sink.test");
        r.pool = "bulk".into();
        validate(&r).unwrap();
        r.pool = "Bulk Mail".into();
        assert!(refused(&r).starts_with("pool: "));
        r.pool = "bulk".into();
        r.tenant = String::new();
        assert!(refused(&r).contains("only a tenant's mail"));
        // Non-ASCII only with SMTPUTF8.
        let mut r = request("jörg@example.net");
        assert!(refused(&r).contains("SMTPUTF8"));
        r.smtputf8 = true;
        validate(&r).unwrap();
    }
}
