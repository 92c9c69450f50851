//! The Work session: one bidirectional stream to the queue leader.
//!
//! The sender says hello with its source IPs, takes assignments as they come, works on up to
//! `max_in_flight` at once and sends one report per assignment. When the stream breaks (the
//! leader stepped down or died) it reconnects, going where a refusal's leader hint points, and
//! keeps working on what it holds: reports of the last moments before a break are sent again
//! (the queue applies a lease's report once and ignores repeats), and the hello names the
//! leases still in flight so the new leader counts them.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_config::sender::SenderConfig;
use skein_core::SharedClock;
use skein_proto::work::sender_message::Msg;
use skein_proto::work::work_client::WorkClient;
use skein_proto::work::{
    Assignment, Drain, Hello, Outcome, RecipientResult, Report, SenderMessage, SourceIp,
};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::{Deliverer, SenderError};

/// gRPC metadata naming the leader on a refused session (set by the queue nodes).
pub const LEADER_HINT: &str = "x-skein-leader";
/// Reports sent this long before a break are sent again on the next session.
const RESEND_WINDOW: Duration = Duration::from_secs(5);
/// Largest assignment accepted (a message plus its envelope).
const MAX_ASSIGNMENT: usize = 80 << 20;
/// How long a shutdown waits for assignments in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// State shared by the session loop and the delivery tasks.
#[derive(Debug, Default)]
struct Shared {
    /// Reports not yet handed to a stream.
    outbox: Mutex<VecDeque<Report>>,
    /// Leases being worked on.
    active: Mutex<HashSet<u64>>,
    /// Woken when a report is queued.
    ready: Notify,
}

impl Shared {
    fn push(&self, r: Report) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.lease);
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(r);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Report> {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    fn requeue_front(&self, reports: impl DoubleEndedIterator<Item = Report>) {
        let mut q = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        for r in reports.rev() {
            q.push_front(r);
        }
    }

    fn active(&self) -> Vec<u64> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn idle(&self) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && self
                .outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }
}

/// Runs a sender until `shutdown` resolves; then it asks for no more work, finishes what it
/// holds (up to 30 s) and reports it.
///
/// `tls` (the sender's `[cluster_tls]` certificate, role `sender`) makes its calls to the
/// nodes mutual TLS.
pub async fn run(
    cfg: SenderConfig,
    clock: SharedClock,
    tls: Option<ClientTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SenderError> {
    for a in &cfg.cluster {
        endpoint(a, tls.as_ref()).map_err(|e| SenderError::Cluster {
            address: a.clone(),
            reason: e.to_string(),
        })?;
    }
    // Each source IP must be this host's: found now, not at the first delivery from it.
    for s in &cfg.source_ips {
        let socket = match s.ip {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        socket
            .and_then(|sock| sock.bind((s.ip, 0).into()))
            .map_err(|e| SenderError::SourceIp {
                ip: s.ip,
                reason: e.to_string(),
            })?;
    }
    if let Some(addr) = &cfg.http {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| SenderError::Http {
                address: addr.clone(),
                reason: e.to_string(),
            })?;
        tracing::info!(%addr, "metrics and probes: GET /metrics, /healthz, /readyz");
        skein_observe::http::spawn(l, Arc::new(crate::metrics::SenderProbe));
    }
    let deliverer = Deliverer::new(cfg.clone(), clock.clone())?;
    let shared = Arc::new(Shared::default());
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight as usize));
    let hello = Hello {
        sender: cfg.name.clone(),
        source_ips: cfg
            .source_ips
            .iter()
            .map(|s| SourceIp {
                ip: s.ip.to_string(),
                ehlo: s.ehlo.clone(),
            })
            .collect(),
        max_in_flight: cfg.max_in_flight,
        active_leases: Vec::new(),
    };
    tokio::pin!(shutdown);
    let mut target = cfg.cluster[0].clone();
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(100);
    let mut draining: Option<Instant> = None;
    loop {
        if let Some(since) = draining {
            if shared.idle() || since.elapsed() > DRAIN_GRACE {
                return Ok(());
            }
        }
        let mut hello = hello.clone();
        hello.active_leases = shared.active();
        let ctx = SessionCtx {
            tls: tls.as_ref(),
            deliverer: &deliverer,
            shared: &shared,
            slots: &slots,
            clock: &clock,
        };
        let end = ctx
            .session(&target, hello, draining.is_some(), &mut shutdown)
            .await;
        match end {
            SessionEnd::Shutdown => {
                tracing::info!("sender draining: no new assignments");
                draining = Some(Instant::now());
                backoff = Duration::from_millis(100);
                continue;
            }
            SessionEnd::Redirect(leader) => {
                tracing::info!(%leader, "following the leader");
                target = leader;
                backoff = Duration::from_millis(100);
                continue;
            }
            SessionEnd::Broken(why) => {
                tracing::warn!(node = %target, %why, "work session ended; reconnecting");
                next = (next + 1) % cfg.cluster.len();
                target = cfg.cluster[next].clone();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown, if draining.is_none() => {
                draining = Some(Instant::now());
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

enum SessionEnd {
    /// Shutdown was asked for during the session.
    Shutdown,
    /// Refused with a pointer to the leader.
    Redirect(String),
    /// Refused or broken otherwise.
    Broken(String),
}

/// The channel's settings for a node at `addr`.
fn endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(skein_pki::uri(addr, tls.is_some()))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()),
        None => Ok(endpoint),
    }
}

struct SessionCtx<'a> {
    tls: Option<&'a ClientTlsConfig>,
    deliverer: &'a Deliverer,
    shared: &'a Arc<Shared>,
    slots: &'a Arc<Semaphore>,
    clock: &'a SharedClock,
}

impl SessionCtx<'_> {
    async fn session<F: Future<Output = ()>>(
        &self,
        target: &str,
        hello: Hello,
        draining: bool,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> SessionEnd {
        let channel = match endpoint(target, self.tls) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .max_frame_size(skein_proto::MAX_FRAME_BYTES)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => return SessionEnd::Broken(format!("connect: {e}")),
        };
        let (out_tx, out_rx) = mpsc::channel::<SenderMessage>(256);
        let _ = out_tx
            .send(SenderMessage {
                msg: Some(Msg::Hello(hello)),
            })
            .await;
        if draining {
            let _ = out_tx
                .send(SenderMessage {
                    msg: Some(Msg::Drain(Drain {})),
                })
                .await;
        }
        let mut client = WorkClient::new(channel).max_decoding_message_size(MAX_ASSIGNMENT);
        let mut inbound = match client.session(ReceiverStream::new(out_rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let hint = s
                    .metadata()
                    .get(LEADER_HINT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return match hint {
                    Some(h) if h != target => SessionEnd::Redirect(h),
                    _ => SessionEnd::Broken(format!("{}: {}", s.code(), s.message())),
                };
            }
        };
        tracing::info!(node = %target, "work session open");
        crate::metrics::SESSION_OPEN.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut sent: VecDeque<(Instant, Report)> = VecDeque::new();
        let mut draining = draining;
        let end = loop {
            while let Some(r) = self.shared.pop() {
                let msg = SenderMessage {
                    msg: Some(Msg::Report(r.clone())),
                };
                if out_tx.send(msg).await.is_err() {
                    self.shared.requeue_front(std::iter::once(r));
                    break;
                }
                sent.push_back((Instant::now(), r));
            }
            while sent
                .front()
                .is_some_and(|(t, _)| t.elapsed() > RESEND_WINDOW)
            {
                sent.pop_front();
            }
            if draining && self.shared.idle() {
                break SessionEnd::Shutdown;
            }
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(a)) => self.start(a),
                    Ok(None) => break SessionEnd::Broken("closed by the node".into()),
                    Err(s) => break SessionEnd::Broken(format!("{}: {}", s.code(), s.message())),
                },
                _ = self.shared.ready.notified() => {}
                _ = shutdown.as_mut(), if !draining => {
                    draining = true;
                    let _ = out_tx.send(SenderMessage { msg: Some(Msg::Drain(Drain {})) }).await;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)), if draining => {}
            }
        };
        crate::metrics::SESSION_OPEN.store(false, std::sync::atomic::Ordering::Relaxed);
        if !matches!(end, SessionEnd::Shutdown) {
            // The stream broke: what was sent lately may not have arrived.
            self.shared.requeue_front(sent.into_iter().map(|(_, r)| r));
        }
        end
    }

    /// Starts working on an assignment.
    fn start(&self, a: Assignment) {
        let lease = a.lease;
        if !self
            .shared
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease)
        {
            tracing::warn!(lease, "duplicate assignment ignored");
            return;
        }
        let deliverer = self.deliverer.clone();
        let shared = self.shared.clone();
        let slots = self.slots.clone();
        let clock = self.clock.clone();
        // Stop at the lease's end: after that the queue gives the work to someone else. The
        // lease is timed on this host's monotonic clock from now (receipt), so a wall clock
        // that is off or jumps changes nothing; a leader before `lease_ms` only gives the end
        // on its own clock.
        let left = if a.lease_ms > 0 {
            a.lease_ms
        } else {
            (a.expires_ms - clock.now_ms()).max(0) as u64
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(left);
        tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let report = match tokio::time::timeout_at(deadline, deliverer.deliver(&a)).await {
                Ok(r) => r,
                Err(_) => lapsed(&a, clock.now_ms()),
            };
            shared.push(report);
        });
    }
}

/// The report for an assignment whose lease ran out before it finished.
fn lapsed(a: &Assignment, now_ms: i64) -> Report {
    Report {
        lease: a.lease,
        rcpts: a
            .rcpts
            .iter()
            .map(|r| RecipientResult {
                key: r.key.clone(),
                outcome: Outcome::Transient as i32,
                code: 451,
                enhanced: "4.4.7".into(),
                text: "delivery did not finish within the lease".into(),
            })
            .collect(),
        mx: String::new(),
        source_ip: a.source_ip.clone(),
        finished_ms: now_ms,
    }
}
