//! One outbound SMTP connection: the sans-I/O [`ClientConn`] driven over TCP (and TLS after
//! STARTTLS) with the RFC 5321 section 4.5.3.2 timeouts, plus a pool of idle connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use skein_config::sender::SmtpTimeouts;
use skein_smtp::client::{
    ClientConn, ClientEvent, TlsWish, Transaction, TransactionResult, Waiting,
};
use skein_smtp::outcome::{Failure, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::gate::Permit;

/// Bytes written per write call, each with its own timeout (the RFC's "data block").
const WRITE_CHUNK: usize = 64 * 1024;
/// How long to wait for the reply to QUIT before just closing.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// The timeouts, as durations.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting.
    pub greeting: Duration,
    /// EHLO, STARTTLS (and its handshake), MAIL, RCPT.
    pub command: Duration,
    /// The reply to DATA.
    pub data_init: Duration,
    /// Each block of the message written.
    pub data_block: Duration,
    /// The reply after the final dot.
    pub data_end: Duration,
}

impl From<&SmtpTimeouts> for Timeouts {
    fn from(t: &SmtpTimeouts) -> Self {
        Self {
            connect: t.connect.0,
            greeting: t.greeting.0,
            command: t.command.0,
            data_init: t.data_init.0,
            data_block: t.data_block.0,
            data_end: t.data_end.0,
        }
    }
}

impl Timeouts {
    fn for_reply(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Greeting => self.greeting,
            Stage::Data => self.data_init,
            Stage::Dot => self.data_end,
            Stage::Quit => QUIT_WAIT,
            Stage::Dns
            | Stage::Connect
            | Stage::Ehlo
            | Stage::StartTls
            | Stage::Mail
            | Stage::Rcpt => self.command,
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(buf).await,
            Self::Tls(s) => s.write_all(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush().await,
            Self::Tls(s) => s.flush().await,
        }
    }
}

/// Where a connection goes, from where: the pool's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Source address to bind.
    pub source: IpAddr,
    /// Server address.
    pub peer: SocketAddr,
    /// The host name the address belongs to (for TLS SNI and the report).
    pub host: String,
    /// EHLO name.
    pub ehlo: String,
    /// STARTTLS policy.
    pub tls: TlsWish,
    /// The provider it counts against, when the leader's sending limits apply ("" if not).
    pub provider: String,
}

impl Endpoint {
    /// `host[ip]:port`, as reported with attempts.
    pub fn describe(&self) -> String {
        if self.host == self.peer.ip().to_string() {
            format!("[{}]:{}", self.peer.ip(), self.peer.port())
        } else {
            format!("{}[{}]:{}", self.host, self.peer.ip(), self.peer.port())
        }
    }
}

/// An open SMTP connection, ready for a transaction between calls.
pub struct Connection {
    endpoint: Endpoint,
    stream: Option<Stream>,
    smtp: ClientConn,
    timeouts: Timeouts,
    tls: Arc<ClientConfig>,
    /// Transactions completed on it.
    pub transactions: u32,
    idle_since: Instant,
    /// Its right to be open, under a (source IP, provider) limit.
    permit: Option<Permit>,
    /// Most transactions it may carry (its provider's limit).
    max_transactions: u32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("transactions", &self.transactions)
            .field("tls", &self.smtp.tls_active())
            .finish()
    }
}

fn io_failure(stage: Stage, e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionAborted => Failure::Closed { stage },
        _ => Failure::Protocol {
            stage,
            message: e.to_string(),
        },
    }
}

impl Connection {
    /// Connects from `endpoint.source` (bound before connecting), reads the greeting, says
    /// EHLO and does STARTTLS per policy: on `Ok` the connection is ready for a transaction.
    pub async fn open(
        endpoint: Endpoint,
        timeouts: Timeouts,
        tls: Arc<ClientConfig>,
    ) -> Result<Self, Failure> {
        let socket = match endpoint.peer {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| Failure::Connect(format!("socket: {e}")))?;
        socket
            .bind(SocketAddr::new(endpoint.source, 0))
            .map_err(|e| Failure::Connect(format!("bind to {}: {e}", endpoint.source)))?;
        let tcp = match timeout(timeouts.connect, socket.connect(endpoint.peer)).await {
            Err(_) => {
                return Err(Failure::Timeout {
                    stage: Stage::Connect,
                })
            }
            Ok(Err(e)) => return Err(Failure::Connect(format!("{}: {e}", endpoint.peer))),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let smtp = ClientConn::new(&endpoint.ehlo, endpoint.tls);
        let mut c = Self {
            endpoint,
            stream: Some(Stream::Plain(tcp)),
            smtp,
            timeouts,
            tls,
            transactions: 0,
            idle_since: Instant::now(),
            permit: None,
            max_transactions: u32::MAX,
        };
        match c.pump().await? {
            ClientEvent::Ready => Ok(c),
            other => Err(Failure::Protocol {
                stage: Stage::Ehlo,
                message: format!("unexpected {other:?} while opening"),
            }),
        }
    }

    /// Puts it under a (source IP, provider) limit: it holds `permit` while open and carries
    /// at most `max_transactions` transactions (0: no limit of its own).
    pub fn limit(&mut self, permit: Permit, max_transactions: u32) {
        self.permit = Some(permit);
        if max_transactions > 0 {
            self.max_transactions = max_transactions;
        }
    }

    /// Where it goes.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.smtp.tls_active()
    }

    /// Runs one transaction. `Err` with a local failure (the message needs what the server
    /// lacks) leaves the connection usable; any other `Err` means it is gone.
    pub async fn send(&mut self, t: Transaction) -> Result<TransactionResult, Failure> {
        self.smtp.start(t)?;
        let result = match self.pump().await? {
            ClientEvent::Done(r) => r,
            other => {
                return Err(Failure::Protocol {
                    stage: Stage::Mail,
                    message: format!("unexpected {other:?} in a transaction"),
                })
            }
        };
        self.transactions += 1;
        // A failed transaction leaves a QUIT to send; a good one a Ready event to consume.
        let _ = self.smtp.poll();
        let pending = self.smtp.output();
        if !pending.is_empty() {
            if let Some(s) = self.stream.as_mut() {
                let _ = timeout(QUIT_WAIT, s.write_all(&pending)).await;
            }
            self.stream = None;
        }
        self.idle_since = Instant::now();
        Ok(result)
    }

    /// Whether another transaction may run on it.
    pub fn reusable(&self) -> bool {
        self.stream.is_some() && self.smtp.waiting() == Waiting::Nothing
    }

    /// Says QUIT and closes.
    pub async fn quit(mut self) {
        self.smtp.quit();
        let out = self.smtp.output();
        if let Some(mut s) = self.stream.take() {
            let _ = timeout(QUIT_WAIT, async {
                s.write_all(&out).await?;
                s.flush().await?;
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                std::io::Result::Ok(())
            })
            .await;
        }
    }

    async fn write_out(&mut self, stage: Stage) -> Result<(), Failure> {
        let out = self.smtp.output();
        if out.is_empty() {
            return Ok(());
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(Failure::Closed { stage });
        };
        let per_chunk = if out.len() > WRITE_CHUNK {
            self.timeouts.data_block
        } else {
            self.timeouts.command
        };
        for chunk in out.chunks(WRITE_CHUNK) {
            match timeout(per_chunk, s.write_all(chunk)).await {
                Err(_) => return Err(Failure::Timeout { stage }),
                Ok(Err(e)) => return Err(io_failure(stage, &e)),
                Ok(Ok(())) => {}
            }
        }
        match timeout(per_chunk, s.flush()).await {
            Err(_) => Err(Failure::Timeout { stage }),
            Ok(Err(e)) => Err(io_failure(stage, &e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Writes, reads and upgrades until the protocol core reports something.
    async fn pump(&mut self) -> Result<ClientEvent, Failure> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let stage = match self.smtp.waiting() {
                Waiting::Reply(s) => s,
                Waiting::Nothing => Stage::Mail,
            };
            self.write_out(stage).await?;
            match self.smtp.poll() {
                Some(ClientEvent::StartTls) => {
                    let r = self.start_tls().await;
                    self.smtp.tls_done(r);
                    continue;
                }
                Some(ClientEvent::Failed(f)) => {
                    let _ = self.write_out(stage).await;
                    self.stream = None;
                    return Err(f);
                }
                Some(ev) => return Ok(ev),
                None => {}
            }
            let Waiting::Reply(stage) = self.smtp.waiting() else {
                return Err(Failure::Protocol {
                    stage,
                    message: "client stalled".into(),
                });
            };
            let Some(s) = self.stream.as_mut() else {
                return Err(Failure::Closed { stage });
            };
            match timeout(self.timeouts.for_reply(stage), s.read(&mut buf)).await {
                Err(_) => {
                    self.stream = None;
                    return Err(Failure::Timeout { stage });
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    return Err(io_failure(stage, &e));
                }
                Ok(Ok(0)) => self.smtp.eof(),
                Ok(Ok(n)) => self.smtp.feed(&buf[..n]),
            }
        }
    }

    async fn start_tls(&mut self) -> Result<(), String> {
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            return Err("STARTTLS on a connection that is not plain TCP".into());
        };
        let name = match self.endpoint.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.endpoint.host.clone())
                .unwrap_or_else(|_| ServerName::IpAddress(self.endpoint.peer.ip().into())),
        };
        let connector = TlsConnector::from(self.tls.clone());
        match timeout(self.timeouts.command, connector.connect(name, tcp)).await {
            Err(_) => Err("handshake timed out".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(s)) => {
                self.stream = Some(Stream::Tls(Box::new(s)));
                Ok(())
            }
        }
    }
}

/// Idle connections kept for reuse, per endpoint.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<Endpoint, Vec<Connection>>>,
    idle_timeout: Duration,
    max_transactions: u32,
}

/// Idle connections kept per endpoint: enough for a burst's worth, so the next burst reuses
/// them. (At 16, a sender at full speed to one host quit and reopened a connection for one
/// message in three: 18% of `skein dev`'s CPU per message, issue 17.) The reaper closes them
/// after the idle timeout.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

impl Pool {
    /// A pool keeping connections idle for at most `idle_timeout`, and closing each after
    /// `max_transactions`.
    pub fn new(idle_timeout: Duration, max_transactions: u32) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            max_transactions,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Endpoint, Vec<Connection>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `endpoint` that is still fresh.
    pub fn take(&self, endpoint: &Endpoint) -> Option<Connection> {
        let mut idle = self.lock();
        let list = idle.get_mut(endpoint)?;
        while let Some(c) = list.pop() {
            if c.idle_since.elapsed() < self.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection after a transaction: kept if it may take more, else closed (also
    /// when a delivery waits for its provider's connection limit).
    pub async fn put(&self, c: Connection) {
        let wanted = c.permit.as_ref().is_some_and(|p| p.gate.contended());
        if !c.reusable()
            || c.transactions >= self.max_transactions.min(c.max_transactions)
            || wanted
        {
            if c.reusable() {
                c.quit().await;
            }
            return;
        }
        let surplus = {
            let mut idle = self.lock();
            let list = idle.entry(c.endpoint.clone()).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(c);
                None
            } else {
                Some(c)
            }
        };
        if let Some(c) = surplus {
            c.quit().await;
        }
    }

    /// Takes an idle connection from `source` counting against `provider`, to any host.
    pub fn evict(&self, source: IpAddr, provider: &str) -> Option<Connection> {
        let mut idle = self.lock();
        idle.iter_mut()
            .filter(|(e, _)| e.source == source && e.provider == provider)
            .find_map(|(_, list)| list.pop())
    }

    /// Closes connections idle for longer than the idle timeout, politely; runs forever.
    pub async fn reap(self: Arc<Self>) {
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(period).await;
            let stale: Vec<Connection> = {
                let mut idle = self.lock();
                let mut stale = Vec::new();
                for list in idle.values_mut() {
                    let (keep, old): (Vec<_>, Vec<_>) = list
                        .drain(..)
                        .partition(|c| c.idle_since.elapsed() < self.idle_timeout);
                    *list = keep;
                    stale.extend(old);
                }
                idle.retain(|_, l| !l.is_empty());
                stale
            };
            for c in stale {
                tokio::spawn(c.quit());
            }
        }
    }

    /// Idle connections held.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A minimal SMTP server on 127.0.0.1: greets, answers EHLO and QUIT; counts connections.
    async fn server() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 test ESMTP\r\n").await;
                    while let Ok(Some(l)) = lines.next_line().await {
                        let reply: &[u8] = if l.starts_with("QUIT") {
                            b"221 bye\r\n"
                        } else {
                            b"250 test\r\n"
                        };
                        if w.write_all(reply).await.is_err() || reply.starts_with(b"221") {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// A burst of deliveries to one host opens as many connections as run at once; the pool
    /// keeps them (up to its cap) for the deliveries that follow, instead of quitting all but
    /// 16 and opening them again for the next burst (a third of all messages paid a new
    /// connection in `bench-relay`, issue 17).
    #[tokio::test]
    async fn a_burst_keeps_its_connections_for_the_next() {
        let (peer, accepted) = server().await;
        let endpoint = Endpoint {
            source: "127.0.0.1".parse().unwrap(),
            peer,
            host: "127.0.0.1".into(),
            ehlo: "test.example".into(),
            tls: TlsWish::Never,
            provider: String::new(),
        };
        let s = Duration::from_secs(5);
        let timeouts = Timeouts {
            connect: s,
            greeting: s,
            command: s,
            data_init: s,
            data_block: s,
            data_end: s,
        };
        let tls = crate::tls::client_config().unwrap();
        let pool = Pool::new(Duration::from_secs(60), 100);
        let burst = 40;
        // Held all at once, as concurrent deliveries hold them.
        let mut conns = Vec::new();
        for _ in 0..burst {
            conns.push(Connection::open(endpoint.clone(), timeouts, tls.clone()).await);
        }
        for c in conns {
            pool.put(c.unwrap()).await;
        }
        assert_eq!(pool.idle_count(), burst, "the whole burst is kept");
        // The next burst takes them all: no new connection.
        let again: Vec<Connection> = (0..burst).filter_map(|_| pool.take(&endpoint)).collect();
        assert_eq!(again.len(), burst);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), burst);
        for c in again {
            pool.put(c).await;
        }
        // Past the cap, connections are closed (politely) rather than kept.
        let mut extra = Vec::new();
        for _ in 0..MAX_IDLE_PER_ENDPOINT + 5 - burst {
            extra.push(Connection::open(endpoint.clone(), timeouts, tls.clone()).await);
        }
        for c in extra {
            pool.put(c.unwrap()).await;
        }
        assert_eq!(pool.idle_count(), MAX_IDLE_PER_ENDPOINT);
    }
}
