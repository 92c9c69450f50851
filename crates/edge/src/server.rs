//! Listeners and the per-connection driver.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use rustls::ServerConfig;
use skein_config::{EdgeConfig, TlsMode};
use skein_core::SharedClock;
use skein_observe::trace;
use skein_proto::ingest::{EnqueueRequest, EnqueueResponse};
use skein_smtp::reply::canned;
use skein_smtp::{ConnectionInfo, Event, Reply, Session, SessionConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::auth::Credentials;
use crate::limits::{ConnectionLimiter, RateLimiter};
use crate::queue::QueueClient;

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Certificate or key problem.
    #[error("tls: {0}")]
    Tls(String),
    /// A queue address is unusable.
    #[error("queue address: {0}")]
    Queue(#[from] tonic::transport::Error),
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running edge's shared state.
#[derive(Debug)]
pub struct Edge {
    cfg: EdgeConfig,
    session: SessionConfig,
    tls: Arc<ServerConfig>,
    queue: QueueClient,
    credentials: Credentials,
    connections: Arc<ConnectionLimiter>,
    ip_rate: RateLimiter,
    /// Failed AUTH attempts per client.
    auth_failures: RateLimiter,
    tenant_rate: RateLimiter,
    clock: SharedClock,
}

impl Edge {
    /// An edge for `cfg` using `tls` for STARTTLS and implicit-TLS listeners, and `cluster`
    /// (its `[cluster_tls]` certificate, role `edge`) to reach the queue nodes.
    pub fn new(
        cfg: EdgeConfig,
        tls: Arc<ServerConfig>,
        cluster: Option<&tonic::transport::ClientTlsConfig>,
        clock: SharedClock,
    ) -> Result<Arc<Self>, EdgeError> {
        let l = &cfg.limits;
        let session = SessionConfig {
            hostname: cfg.hostname.clone(),
            max_message_size: l.max_message_size.0,
            max_recipients: l.max_recipients,
            max_command_line: l.max_command_line,
            max_data_line: l.max_data_line,
            max_bad_commands: l.max_bad_commands,
            max_junk_commands: l.max_junk_commands,
            max_auth_failures: l.max_auth_failures,
        };
        let queue = QueueClient::new(&cfg.queue, cfg.commit_timeout.0, cluster)?;
        Ok(Arc::new(Self {
            session,
            tls,
            credentials: Credentials::new(queue.clone()),
            queue,
            connections: ConnectionLimiter::new(l.max_connections, l.max_connections_per_ip),
            ip_rate: RateLimiter::new(l.messages_per_minute_per_ip, clock.clone()),
            auth_failures: RateLimiter::new(l.auth_failures_per_minute_per_ip, clock.clone()),
            tenant_rate: RateLimiter::new(l.messages_per_minute_per_tenant, clock.clone()),
            clock,
            cfg,
        }))
    }

    /// Serves one listener until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mode: TlsMode) {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let edge = self.clone();
            tokio::spawn(async move {
                if let Err(e) = edge.connection(sock, peer, mode).await {
                    tracing::debug!(%peer, %e, "connection ended");
                }
            });
        }
    }

    /// Keeps the credential cache fresh until the task is dropped.
    /// Says so (once, until it changes) when no queue node answers: mail is then refused
    /// with a temporary error, and an operator should know why from the edge's own log.
    pub async fn refresh_credentials(self: Arc<Self>) {
        let mut reachable: Option<bool> = None;
        loop {
            match self.credentials.refresh().await {
                Ok(()) => {
                    crate::metrics::QUEUE_REACHABLE
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if reachable == Some(false) {
                        tracing::info!("a queue node answers again");
                    }
                    reachable = Some(true);
                }
                Err(e) => {
                    crate::metrics::QUEUE_REACHABLE
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if reachable != Some(false) {
                        tracing::warn!(
                            nodes = %self.cfg.queue.join(", "),
                            error = %e.message(),
                            "no queue node answers: mail is refused with 451 until one does \
                             (check [edge] queue, the nodes, and [cluster_tls])"
                        );
                    }
                    reachable = Some(false);
                }
            }
            tokio::time::sleep(self.cfg.credentials_refresh.0).await;
        }
    }

    fn in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        nets.iter().any(|n| n.contains(&ip))
    }

    async fn connection(
        &self,
        sock: TcpStream,
        peer: SocketAddr,
        mode: TlsMode,
    ) -> std::io::Result<()> {
        let _ = sock.set_nodelay(true);
        let Some(_slot) = self.connections.acquire(peer.ip()) else {
            crate::metrics::REFUSED_CONNECTIONS.inc();
            let mut sock = sock;
            let r = canned::too_many_connections(&self.cfg.hostname);
            let _ =
                tokio::time::timeout(Duration::from_secs(5), sock.write_all(&r.to_bytes())).await;
            return Ok(());
        };
        let _open = crate::metrics::session();
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let (mut conn, tls) = match mode {
            TlsMode::Starttls => (Conn::Plain(sock), None),
            TlsMode::Implicit => {
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake")
                    })??;
                let info = crate::tls::describe(tls.get_ref().1);
                (Conn::Tls(Box::new(tls)), Some(info))
            }
        };
        let info = ConnectionInfo {
            client_ip: peer.ip(),
            tls,
            starttls_available: mode == TlsMode::Starttls,
            auth_available: true,
            auth_without_tls: Self::in_nets(&self.cfg.plaintext_auth_networks, peer.ip()),
            relay_by_ip: Self::in_nets(&self.cfg.relay_networks, peer.ip()),
        };
        let mut session = Session::new(self.session.clone(), info);
        // A client that stops reading its replies is dropped after as long as one that stops
        // writing commands: its session can't hold a connection slot for ever.
        let write_limit = self.cfg.limits.command_timeout.0;
        let ends = tokio::time::Instant::now() + self.cfg.limits.max_session_duration.0;
        let mut out = session.greeting().to_bytes();
        let mut buf = vec![0u8; READ_BUFFER_FIRST];
        loop {
            while let Some(ev) = session.poll() {
                match ev {
                    Event::Reply(r) => r.write_to(&mut out),
                    Event::Close => {
                        send(&mut conn, &out, write_limit).await?;
                        let _ = conn.shutdown().await;
                        return Ok(());
                    }
                    Event::StartTls => {
                        send(&mut conn, &out, write_limit).await?;
                        out.clear();
                        let Conn::Plain(tcp) = conn else {
                            return Err(std::io::Error::other("STARTTLS on a TLS connection"));
                        };
                        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                            .map_err(|_| {
                                std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake")
                            })??;
                        session.tls_done(crate::tls::describe(tls.get_ref().1));
                        conn = Conn::Tls(Box::new(tls));
                    }
                    Event::Authenticate {
                        username, password, ..
                    } => {
                        // A client guessing passwords gets no more checks this minute.
                        let client = crate::limits::client_of(peer.ip()).to_string();
                        let res = if self.auth_failures.exhausted(&client) {
                            tracing::info!(%client, "AUTH refused: too many failures");
                            Err(skein_smtp::session::AuthFailure::Temporary)
                        } else {
                            let res = self.credentials.verify(&username, &password).await;
                            if matches!(res, Err(skein_smtp::session::AuthFailure::Invalid)) {
                                self.auth_failures.allow(&client);
                            }
                            res
                        };
                        session.auth_done(res);
                    }
                    Event::Mail { .. } => {
                        let ip = crate::limits::client_of(peer.ip()).to_string();
                        let res = if !self.ip_rate.allow(&ip) {
                            Err(Reply::new(
                                421,
                                "4.7.0",
                                format!(
                                    "{} Too many messages from {ip}, try again later",
                                    self.cfg.hostname
                                ),
                            ))
                        } else if let Some(t) =
                            session.tenant().filter(|t| !self.tenant_rate.allow(t))
                        {
                            Err(Reply::new(
                                451,
                                "4.7.1",
                                format!(
                                    "Message rate limit of tenant {t} exceeded, try again later"
                                ),
                            ))
                        } else {
                            Ok(())
                        };
                        session.mail_done(res);
                    }
                    Event::Message { envelope, data } => {
                        // Let the client see its pipelined replies while the commit runs.
                        if !out.is_empty() {
                            send(&mut conn, &out, write_limit).await?;
                            out.clear();
                        }
                        let reply = self.store(envelope, data, peer.ip()).await;
                        crate::metrics::dot_reply(reply.code);
                        session.message_done(reply);
                    }
                }
            }
            if !out.is_empty() {
                send(&mut conn, &out, write_limit).await?;
                out.clear();
            }
            // Past the session's end, the next command is answered 421 (a message being
            // received is finished first).
            let left = ends.saturating_duration_since(tokio::time::Instant::now());
            let too_long = !session.in_data() && left.is_zero();
            let limit = if session.in_data() {
                self.cfg.limits.data_timeout.0
            } else {
                self.cfg.limits.command_timeout.0.min(left)
            };
            let read = if too_long {
                Err(())
            } else {
                tokio::time::timeout(limit, conn.read(&mut buf))
                    .await
                    .map_err(|_| ())
            };
            match read {
                Err(()) => {
                    let r = if !session.in_data() && tokio::time::Instant::now() >= ends {
                        tracing::info!(client = %peer.ip(), "session too long: closed");
                        canned::session_too_long(&self.cfg.hostname)
                    } else {
                        canned::timeout(&self.cfg.hostname)
                    };
                    let _ = send(&mut conn, &r.to_bytes(), write_limit).await;
                    let _ = conn.shutdown().await;
                    return Ok(());
                }
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => {
                    session.feed(&buf[..n]);
                    let len = read_buffer_len(buf.len(), n);
                    buf.resize(len, 0);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// The DKIM-Signature header for a tenant's message, if it has a key for the From: domain.
    /// Signing (RSA above all) is CPU work: it runs off the connection tasks' threads.
    async fn dkim_signature(&self, tenant: &str, data: &[u8]) -> Option<String> {
        let signer = self.credentials.signing().signer_for(tenant, data)?;
        let (tenant, data) = (tenant.to_string(), data.to_vec());
        tokio::task::spawn_blocking(move || crate::dkim::sign(&signer, &tenant, &data))
            .await
            .ok()
            .flatten()
    }

    /// Enqueues one message; the reply for the final dot.
    async fn store(&self, env: skein_smtp::Envelope, data: Vec<u8>, ip: IpAddr) -> Reply {
        // Each relay adds a Received: field; past the limit the message is going round in
        // circles (a route or MX pointing back here, say): stop it (RFC 5321 section 6.3).
        let hops = skein_smtp::header::count_fields(&data, "Received");
        if hops > self.cfg.limits.max_received_headers {
            tracing::warn!(hops, "mail loop: message refused");
            return Reply::new(
                554,
                "5.4.6",
                format!("Routing loop detected: {hops} Received: header fields"),
            );
        }
        // The pool a tenant's message asks for is for Skein only: taken out before signing,
        // never delivered.
        let (pool, data) = skein_smtp::header::take_header(data, POOL_HEADER);
        let date = skein_core::date::rfc5322(self.clock.now_ms());
        let header = skein_smtp::received::received_header(&env, ip, &self.cfg.hostname, &date);
        let signature = match &env.tenant {
            Some(t) => self.dkim_signature(t, &data).await,
            None => None,
        };
        let signature = signature.unwrap_or_default();
        let mut message = Vec::with_capacity(signature.len() + header.len() + data.len());
        message.extend_from_slice(signature.as_bytes());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(&data);
        let req = EnqueueRequest {
            tenant: env.tenant.clone().unwrap_or_default(),
            mail_from: env
                .mail_from
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            rcpt_to: env.rcpt_to.iter().map(|a| a.to_string()).collect(),
            data: message.into(),
            client_ip: ip.to_string(),
            helo: env.helo.clone(),
            smtputf8: env.smtputf8,
            body_8bit: env.body_8bit,
            edge: self.cfg.hostname.clone(),
            // The same on every retry of this submission: if an attempt was stored after
            // all (the leader died before answering), the retry gets its queue id back
            // instead of storing the message twice.
            submission_id: fastrand::u128(..).to_be_bytes().to_vec(),
            // Pool names are lower-case.
            pool: pool.map(|p| p.to_ascii_lowercase()).unwrap_or_default(),
        };
        // The message's trace starts here (one per message, not per session).
        let cx = trace::start(
            "smtp receive",
            trace::SpanKind::Server,
            &trace::Context::new(),
            vec![
                trace::KeyValue::new("client.address", req.client_ip.clone()),
                trace::KeyValue::new("skein.tenant", req.tenant.clone()),
                trace::KeyValue::new("skein.recipients", req.rcpt_to.len() as i64),
                trace::KeyValue::new("skein.message_bytes", req.data.len() as i64),
            ],
        );
        let started = std::time::Instant::now();
        let answer = self.queue.enqueue(req, &cx).await;
        crate::metrics::ENQUEUE_SECONDS.observe(started.elapsed().as_secs_f64());
        match &answer {
            Ok(r) => trace::set(&cx, trace::KeyValue::new("skein.queue_id", r.id.clone())),
            Err(s) => trace::fail(&cx, s.message()),
        }
        let reply = Self::enqueue_reply(answer);
        trace::set(
            &cx,
            trace::KeyValue::new("smtp.reply", reply.to_string().trim_end().to_string()),
        );
        trace::end(&cx);
        reply
    }

    /// The reply to the final dot, from what the queue answered.
    fn enqueue_reply(answer: Result<EnqueueResponse, tonic::Status>) -> Reply {
        match answer {
            Ok(r) => Reply::new(250, "2.0.0", format!("Ok: queued as {}", r.id)),
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                tracing::warn!(status = %s, "queue refused message");
                Reply::new(554, "5.6.0", format!("Message refused: {}", s.message()))
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                Reply::new(550, "5.7.1", format!("Message refused: {}", s.message()))
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tracing::warn!(status = %s, "queue busy");
                canned::queue_busy()
            }
            Err(s) => {
                tracing::warn!(status = %s, "enqueue failed");
                canned::queue_unavailable()
            }
        }
    }
}

/// The header a tenant's message names the pool to send it from with (stripped).
pub const POOL_HEADER: &str = "X-Skein-Pool";

/// Writes `out` to the client and flushes it, within `limit`.
/// A connection's first read buffer: commands and small messages fit. Most connections
/// never need more (zeroing 64 KiB for each, when a client sends one message per connection,
/// cost more than the rest of its reads).
const READ_BUFFER_FIRST: usize = 4 * 1024;
/// The read buffer of a connection whose reads fill it (a large message) grows to this.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// The read buffer's next length after a read of `n` bytes into `len`: doubled while reads
/// fill it, up to [`READ_BUFFER_MAX`].
fn read_buffer_len(len: usize, n: usize) -> usize {
    if n == len {
        (len * 2).min(READ_BUFFER_MAX).max(len)
    } else {
        len
    }
}

async fn send(conn: &mut Conn, out: &[u8], limit: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(limit, async {
        conn.write_all(out).await?;
        conn.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its replies in time",
        )),
    }
}

/// A client connection, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_buffer_doubles_while_reads_fill_it_up_to_its_maximum() {
        assert_eq!(read_buffer_len(READ_BUFFER_FIRST, 10), READ_BUFFER_FIRST);
        assert_eq!(read_buffer_len(4096, 4096), 8192);
        assert_eq!(read_buffer_len(32 * 1024, 32 * 1024), READ_BUFFER_MAX);
        assert_eq!(
            read_buffer_len(READ_BUFFER_MAX, READ_BUFFER_MAX),
            READ_BUFFER_MAX
        );
        assert_eq!(read_buffer_len(8192, 100), 8192, "a short read keeps it");
    }
}
