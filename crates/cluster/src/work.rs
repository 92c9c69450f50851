//! `skein.work.v1.Work`: the sessions of connected senders, served by the leader.
//!
//! [`Senders`] is the registry the scheduler hands work through: who is connected, which source
//! IPs each owns, and how many assignments each has in flight.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_config::sender::is_hostname;
use skein_proto::work::sender_message::Msg;
use skein_proto::work::work_server::Work;
use skein_proto::work::{Assignment, Hello, Report, SenderMessage};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::node::{NodeCtx, Route};

/// gRPC metadata naming the leader's address on a refused session.
pub const LEADER_HINT: &str = "x-skein-leader";
/// How long a new session may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected sender.
#[derive(Debug)]
struct Conn {
    name: String,
    ips: Vec<(String, String)>,
    max_in_flight: usize,
    in_flight: HashSet<u64>,
    next_ip: usize,
    tx: mpsc::Sender<Result<Held, Status>>,
}

/// Body bytes of assignments waiting in sessions' channels.
#[derive(Debug, Default)]
struct Backlog {
    bytes: AtomicU64,
    /// Set by the scheduler when the backlog held work back: it then wants to hear of every
    /// assignment that leaves.
    starved: AtomicBool,
    drained: Notify,
}

/// An assignment waiting in a session's channel; its body counts in [`Senders::held_bytes`]
/// until the stream hands it to gRPC, or until it is dropped with a session that ended.
#[derive(Debug)]
pub struct Held {
    assignment: Assignment,
    bytes: u64,
    backlog: Arc<Backlog>,
}

impl Held {
    fn new(assignment: Assignment, backlog: Arc<Backlog>) -> Self {
        let bytes = assignment.data.len() as u64;
        backlog.bytes.fetch_add(bytes, Ordering::Relaxed);
        Self {
            assignment,
            bytes,
            backlog,
        }
    }

    fn take(mut self) -> Assignment {
        std::mem::take(&mut self.assignment)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Taken or dropped, its body no longer waits here.
        self.backlog.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        if self.backlog.starved.load(Ordering::Relaxed) {
            self.backlog.drained.notify_one();
        }
    }
}

/// A slot reserved on a sender for one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Session id.
    pub conn: u64,
    /// Sender name.
    pub sender: String,
    /// Source IP chosen.
    pub source_ip: String,
    /// Its EHLO name.
    pub ehlo: String,
}

/// The connected senders.
#[derive(Debug, Default)]
pub struct Senders {
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: Mutex<u64>,
    /// Body bytes of assignments in sessions' channels.
    backlog: Arc<Backlog>,
    /// Woken when a sender connects or a slot frees up.
    pub changed: Notify,
}

impl Senders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, hello: &Hello, tx: mpsc::Sender<Result<Held, Status>>) -> u64 {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let conn = Conn {
            name: hello.sender.clone(),
            ips: hello
                .source_ips
                .iter()
                .map(|s| (s.ip.clone(), s.ehlo.clone()))
                .collect(),
            max_in_flight: hello.max_in_flight as usize,
            // Work from an earlier session still occupies its slots until reported.
            in_flight: hello.active_leases.iter().copied().collect(),
            next_ip: 0,
            tx,
        };
        self.lock().insert(id, conn);
        self.changed.notify_one();
        id
    }

    fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The sender is shutting down: give it nothing more.
    fn drain(&self, id: u64) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.max_in_flight = 0;
        }
    }

    /// Drops every session (this node stopped leading): senders reconnect to the new leader.
    pub fn disconnect_all(&self) {
        let conns: Vec<Conn> = self.lock().drain().map(|(_, c)| c).collect();
        for c in conns {
            let _ = c.tx.try_send(Err(Status::unavailable("leader changed")));
        }
    }

    /// Connected senders.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no sender is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Free assignment slots over all senders.
    pub fn free(&self) -> usize {
        self.lock()
            .values()
            .map(|c| c.max_in_flight.saturating_sub(c.in_flight.len()))
            .sum()
    }

    /// Reserves a slot for lease `lease` on the sender with the most room, rotating through its
    /// source IPs.
    pub fn reserve(&self, lease: u64) -> Option<Slot> {
        let mut conns = self.lock();
        let (&id, conn) = conns
            .iter_mut()
            .filter(|(_, c)| c.in_flight.len() < c.max_in_flight && !c.ips.is_empty())
            .max_by_key(|(id, c)| (c.max_in_flight - c.in_flight.len(), std::cmp::Reverse(**id)))?;
        let (ip, ehlo) = conn.ips[conn.next_ip % conn.ips.len()].clone();
        conn.next_ip = conn.next_ip.wrapping_add(1);
        conn.in_flight.insert(lease);
        Some(Slot {
            conn: id,
            sender: conn.name.clone(),
            source_ip: ip,
            ehlo,
        })
    }

    /// Frees the slot of `lease` on session `conn`.
    pub fn release(&self, conn: u64, lease: u64) {
        if let Some(c) = self.lock().get_mut(&conn) {
            c.in_flight.remove(&lease);
        }
        self.changed.notify_one();
    }

    /// Sends an assignment; false if the session is gone.
    pub fn send(&self, conn: u64, a: Assignment) -> bool {
        let tx = match self.lock().get(&conn) {
            Some(c) => c.tx.clone(),
            None => return false,
        };
        // The channel holds max_in_flight + slack, and slots bound what is sent.
        tx.try_send(Ok(Held::new(a, self.backlog.clone()))).is_ok()
    }

    /// Body bytes of the assignments sessions have not taken yet.
    pub fn held_bytes(&self) -> u64 {
        self.backlog.bytes.load(Ordering::Relaxed)
    }

    /// Records whether the backlog held work back: while it did, every assignment a session
    /// takes wakes [`Senders::drained`].
    pub fn set_starved(&self, starved: bool) {
        self.backlog.starved.store(starved, Ordering::Relaxed);
    }

    /// Completes when an assignment leaves the backlog while it is starved.
    pub async fn drained(&self) {
        self.backlog.drained.notified().await
    }
}

/// A sender's report, tagged with its session.
#[derive(Debug)]
pub struct SessionReport {
    /// Session id.
    pub conn: u64,
    /// The sender that opened the session (its hello).
    pub sender: String,
    /// The report.
    pub report: Report,
}

/// The Work service.
#[derive(Debug)]
pub struct WorkService {
    ctx: Arc<NodeCtx>,
    senders: Arc<Senders>,
    reports: mpsc::Sender<SessionReport>,
}

impl WorkService {
    /// A service handing sessions to `senders` and reports to the scheduler.
    pub fn new(
        ctx: Arc<NodeCtx>,
        senders: Arc<Senders>,
        reports: mpsc::Sender<SessionReport>,
    ) -> Self {
        Self {
            ctx,
            senders,
            reports,
        }
    }
}

/// Checks a sender's hello.
pub fn validate_hello(h: &Hello) -> Result<(), Status> {
    if h.sender.is_empty() || h.sender.len() > 64 {
        return Err(Status::invalid_argument(
            "hello.sender must be 1-64 characters",
        ));
    }
    if h.source_ips.is_empty() || h.source_ips.len() > 4096 {
        return Err(Status::invalid_argument(
            "hello.source_ips must list 1-4096 addresses",
        ));
    }
    for s in &h.source_ips {
        if s.ip.parse::<IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "hello.source_ips: {:?} is not an IP address",
                s.ip
            )));
        }
        if !is_hostname(&s.ehlo) {
            return Err(Status::invalid_argument(format!(
                "hello.source_ips: {:?} is not a host name",
                s.ehlo
            )));
        }
    }
    if !(1..=10_000).contains(&h.max_in_flight) {
        return Err(Status::invalid_argument(
            "hello.max_in_flight must be 1-10000",
        ));
    }
    if h.active_leases.len() > h.max_in_flight as usize {
        return Err(Status::invalid_argument(
            "hello.active_leases lists more leases than max_in_flight",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl Work for WorkService {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<Assignment, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<SenderMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        match self.ctx.route(false) {
            Ok(Route::Local) => {}
            Ok(Route::Forward(addr)) => {
                let mut s = Status::unavailable(format!("not the leader; the leader is {addr}"));
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_HINT, v);
                }
                return Err(s);
            }
            Err(e) => return Err(e.into()),
        }
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
            Ok(Err(s)) => return Err(s),
            Ok(Ok(Some(SenderMessage {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be a hello",
                ))
            }
        };
        validate_hello(&hello)?;
        let (tx, rx) = mpsc::channel(hello.max_in_flight as usize + 16);
        let id = self.senders.register(&hello, tx);
        tracing::info!(sender = %hello.sender, ips = hello.source_ips.len(), "sender connected");
        let senders = self.senders.clone();
        let reports = self.reports.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(SenderMessage {
                        msg: Some(Msg::Report(report)),
                    })) => {
                        if reports
                            .send(SessionReport {
                                conn: id,
                                sender: hello.sender.clone(),
                                report,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Some(SenderMessage {
                        msg: Some(Msg::Drain(_)),
                    })) => {
                        tracing::info!(sender = %hello.sender, "sender draining");
                        senders.drain(id);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            senders.unregister(id);
            tracing::info!(sender = %hello.sender, "sender disconnected");
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|item| item.map(Held::take)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use skein_proto::work::SourceIp;

    use super::*;

    fn hello() -> Hello {
        Hello {
            sender: "s1".into(),
            source_ips: vec![SourceIp {
                ip: "127.0.0.9".into(),
                ehlo: "out.example.com".into(),
            }],
            max_in_flight: 10,
            active_leases: Vec::new(),
        }
    }

    fn assignment(lease: u64, size: usize) -> Assignment {
        Assignment {
            lease,
            data: vec![b'x'; size],
            ..Default::default()
        }
    }

    /// Bodies count while they wait in a session's channel, and stop counting when the
    /// session's stream takes them or when the session ends with them unsent.
    #[tokio::test]
    async fn held_bytes_follow_assignments_until_taken_or_dropped() {
        let senders = Senders::default();
        let (tx, rx) = mpsc::channel(16);
        let id = senders.register(&hello(), tx);
        assert!(senders.send(id, assignment(1, 1000)));
        assert!(senders.send(id, assignment(2, 500)));
        assert_eq!(senders.held_bytes(), 1500);
        let mut stream = ReceiverStream::new(rx).map(|item| item.map(Held::take));
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            (first.lease, first.data.len()),
            (1, 1000),
            "the body goes out whole"
        );
        assert_eq!(senders.held_bytes(), 500);
        // The session ends with one assignment unsent.
        senders.unregister(id);
        drop(stream);
        assert_eq!(senders.held_bytes(), 0);
    }

    /// While the backlog holds work back, each assignment that leaves wakes the scheduler.
    #[tokio::test]
    async fn a_starved_scheduler_hears_of_each_drained_assignment() {
        let senders = Arc::new(Senders::default());
        let (tx, mut rx) = mpsc::channel(16);
        let id = senders.register(&hello(), tx);
        senders.send(id, assignment(1, 10));
        senders.set_starved(true);
        let waiter = {
            let senders = senders.clone();
            tokio::spawn(async move { senders.drained().await })
        };
        tokio::task::yield_now().await;
        drop(rx.recv().await);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
