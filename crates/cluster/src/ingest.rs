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
use skein_queue::{NewMessage, Request, Response, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use crate::error::ClusterError;
use crate::events::{Event, EventLog};
use crate::node::{NodeCtx, Route, FORWARDED};

/// Most recipients in one message.
pub const MAX_RECIPIENTS: usize = 10_000;
/// Largest message accepted over Ingest.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Batches proposed and not yet committed, at most.
const MAX_IN_FLIGHT: usize = 1;

type Done = oneshot::Sender<Result<(String, u64), ClusterError>>;

/// Collects messages into group commits on the leader.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(NewMessage, Done)>,
}

impl Batcher {
    /// Starts the batching task for `raft`; recipients suppressed at enqueue go to `events`.
    pub fn spawn(
        raft: Raft<TypeConfig>,
        clock: SharedClock,
        max_messages: usize,
        max_bytes: usize,
        events: Arc<EventLog>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_messages * MAX_IN_FLIGHT * 2);
        tokio::spawn(run(raft, clock, rx, max_messages, max_bytes, events));
        Self { tx }
    }

    /// Proposes `msg` in the next batch and waits for its commit: the queue id and log index.
    pub async fn enqueue(
        &self,
        msg: NewMessage,
        timeout: Duration,
    ) -> Result<(String, u64), ClusterError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((msg, done))
            .await
            .map_err(|_| ClusterError::ShuttingDown)?;
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClusterError::ShuttingDown),
            Err(_) => Err(ClusterError::CommitTimeout {
                ms: timeout.as_millis() as u64,
            }),
        }
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    clock: SharedClock,
    mut rx: mpsc::Receiver<(NewMessage, Done)>,
    max_messages: usize,
    max_bytes: usize,
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
        let mut bytes = first.0.data.len();
        let mut batch = vec![first];
        while batch.len() < max_messages && bytes < max_bytes {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.0.data.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let now = clock.now_ms();
        let events = events.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (messages, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let n = messages.len();
            let envelopes: Vec<(String, String)> = messages
                .iter()
                .map(|m| (m.tenant.clone(), m.mail_from.clone()))
                .collect();
            let result = raft
                .client_write(Request::Enqueue {
                    received_at_ms: now,
                    messages,
                })
                .await;
            match result {
                Ok(r) => match r.data {
                    Response::Enqueued { ids, suppressed } if ids.len() == n => {
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
                            ))));
                        }
                    }
                },
                Err(e) => {
                    let e = ClusterError::from(e);
                    let leader_changed = matches!(e, ClusterError::LeaderChanged);
                    let msg = e.to_string();
                    for w in waiters {
                        let _ = w.send(Err(if leader_changed {
                            ClusterError::LeaderChanged
                        } else {
                            ClusterError::Raft(msg.clone())
                        }));
                    }
                }
            }
        });
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
    if r.rcpt_to
        .iter()
        .any(|a| a.is_empty() || a.len() > 512 || !a.contains('@'))
    {
        return bad(
            "rcpt_to",
            "each recipient must be local@domain, at most 512 bytes",
        );
    }
    if r.mail_from.len() > 512 || (!r.mail_from.is_empty() && !r.mail_from.contains('@')) {
        return bad(
            "mail_from",
            "must be empty or local@domain, at most 512 bytes",
        );
    }
    if r.data.is_empty() {
        return bad("data", "the message is empty");
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
    }
    Ok(())
}

/// The Ingest service of one node.
#[derive(Clone)]
pub struct IngestService {
    ctx: Arc<NodeCtx>,
}

impl IngestService {
    /// Serves `ctx`'s node.
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn enqueue(
        &self,
        req: tonic::Request<EnqueueRequest>,
    ) -> Result<tonic::Response<EnqueueResponse>, Status> {
        let forwarded = req.metadata().contains_key(FORWARDED);
        let r = req.into_inner();
        validate(&r)?;
        match self.ctx.route(forwarded)? {
            Route::Local => {
                let msg = NewMessage {
                    tenant: r.tenant,
                    mail_from: r.mail_from,
                    rcpt_to: r.rcpt_to,
                    // Zero-copy when this request holds the only reference to the buffer.
                    data: Vec::from(r.data),
                    client_ip: r.client_ip,
                    helo: r.helo,
                    edge: r.edge,
                    smtputf8: r.smtputf8,
                    body_8bit: r.body_8bit,
                };
                let (id, log_index) = self
                    .ctx
                    .batcher
                    .enqueue(msg, self.ctx.commit_timeout)
                    .await?;
                Ok(tonic::Response::new(EnqueueResponse { id, log_index }))
            }
            Route::Forward(addr) => {
                let ch = self.ctx.channel(&addr)?;
                let mut c = IngestClient::new(ch)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES + 1024 * 1024);
                let mut fwd = tonic::Request::new(r);
                fwd.metadata_mut()
                    .insert(FORWARDED, "1".parse().expect("ascii"));
                fwd.set_timeout(self.ctx.commit_timeout);
                c.enqueue(fwd).await.map_err(|s| forward_status(&addr, s))
            }
        }
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
