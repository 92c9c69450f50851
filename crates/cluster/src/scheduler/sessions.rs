//! The senders' open sessions as the driver sends to them: one channel of assignments per
//! session, and the body bytes waiting in those channels ([`Sessions::held_bytes`]). Who may
//! get work is the planner's business; this is only the wire.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use skein_core::SharedClock;
use skein_proto::work::Assignment;
use tokio::sync::{mpsc, Notify};
use tonic::Status;

/// Body bytes of assignments waiting in sessions' channels.
#[derive(Debug, Default)]
struct Backlog {
    bytes: AtomicU64,
    /// Set by the scheduler when the backlog held work back: it then wants to hear of every
    /// assignment that leaves.
    starved: AtomicBool,
    drained: Notify,
}

/// An assignment waiting in a session's channel; its body counts in [`Sessions::held_bytes`]
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

    /// The assignment, as it leaves at `now_ms` (leader's clock): its lease is handed over as
    /// the time it has left, which the sender times on its own monotonic clock.
    pub fn take(mut self, now_ms: i64) -> Assignment {
        let mut a = std::mem::take(&mut self.assignment);
        a.lease_ms = a.expires_ms.saturating_sub(now_ms).max(1) as u64;
        a
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

/// What a session's stream yields: assignments, or the status that ends it.
pub type Outbound = Result<Held, Status>;

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    channels: Mutex<HashMap<u64, mpsc::Sender<Outbound>>>,
    /// Which session announced each source IP (one spelling: see `canonical_ip`), and its
    /// sender's name.
    announced: Mutex<HashMap<String, (u64, String)>>,
    next_id: AtomicU64,
    backlog: Arc<Backlog>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Outbound>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for sender `name`, which can bind `ips`, whose channel holds
    /// `capacity` assignments; returns its id and the receiving end of its channel. Refused,
    /// naming the other sender, when another sender's open session announced one of the IPs: an
    /// address can be bound by one host only, and two senders counting one IP's budget would
    /// send past it.
    pub fn open(
        &self,
        capacity: usize,
        name: &str,
        ips: &[String],
    ) -> Result<(u64, mpsc::Receiver<Outbound>), String> {
        let ips: Vec<String> = ips
            .iter()
            .map(|ip| super::planner::canonical_ip(ip))
            .collect();
        let mut announced = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        // The same sender reconnecting (its old stream not yet seen to end) takes them over.
        if let Some((ip, (_, other))) = ips
            .iter()
            .find_map(|ip| announced.get(ip).map(|o| (ip, o)))
            .filter(|(_, (_, other))| other != name)
        {
            return Err(format!(
                "source IP {ip} is already announced by sender {other:?}: each IP belongs to one \
                 sender"
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        for ip in ips {
            announced.insert(ip, (id, name.to_string()));
        }
        let (tx, rx) = mpsc::channel(capacity);
        self.lock().insert(id, tx);
        Ok((id, rx))
    }

    /// Forgets session `id` (its stream ended).
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (conn, _)| *conn != id);
    }

    /// Ends every session (this node stopped leading): senders reconnect to the new leader.
    pub fn disconnect_all(&self) {
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let all: Vec<_> = self.lock().drain().map(|(_, tx)| tx).collect();
        for tx in all {
            let _ = tx.try_send(Err(Status::unavailable("leader changed")));
        }
    }

    /// Sends an assignment; false if the session is gone or its channel is full.
    pub fn send(&self, id: u64, a: Assignment) -> bool {
        let tx = match self.lock().get(&id) {
            Some(tx) => tx.clone(),
            None => return false,
        };
        // The channel holds max_in_flight + slack, and the planner's slots bound what is sent.
        tx.try_send(Ok(Held::new(a, self.backlog.clone()))).is_ok()
    }

    /// Body bytes of the assignments sessions have not taken yet.
    pub fn held_bytes(&self) -> u64 {
        self.backlog.bytes.load(Ordering::Relaxed)
    }

    /// Records whether the backlog held work back: while it did, every assignment a session
    /// takes wakes [`Sessions::drained`].
    pub fn set_starved(&self, starved: bool) {
        self.backlog.starved.store(starved, Ordering::Relaxed);
    }

    /// Completes when an assignment leaves the backlog while it is starved.
    pub async fn drained(&self) {
        self.backlog.drained.notified().await
    }
}

/// A session's stream of assignments: each leaves with the time its lease has left by
/// `clock`.
pub fn stream(
    rx: mpsc::Receiver<Outbound>,
    clock: SharedClock,
) -> impl tokio_stream::Stream<Item = Result<Assignment, Status>> {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), move |o| {
        o.map(|h| h.take(clock.now_ms()))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skein_core::ManualClock;
    use tokio_stream::StreamExt as _;

    use super::*;

    fn assignment(lease: u64, size: usize) -> Assignment {
        Assignment {
            lease,
            data: vec![b'x'; size].into(),
            expires_ms: 60_000,
            ..Default::default()
        }
    }

    /// Bodies count while they wait in a session's channel, and stop counting when the
    /// session's stream takes them or when the session ends with them unsent. The lease
    /// leaves as the time it has left when the stream takes it.
    #[tokio::test]
    async fn held_bytes_follow_assignments_until_taken_or_dropped() {
        let sessions = Sessions::default();
        let (id, rx) = sessions.open(16, "s1", &[]).unwrap();
        assert!(sessions.send(id, assignment(1, 1000)));
        assert!(sessions.send(id, assignment(2, 500)));
        assert_eq!(sessions.held_bytes(), 1500);
        let clock: SharedClock = Arc::new(ManualClock::new(45_000));
        let mut out = Box::pin(stream(rx, clock));
        let first = out.next().await.unwrap().unwrap();
        assert_eq!(
            (first.lease, first.data.len()),
            (1, 1000),
            "the body goes out whole"
        );
        assert_eq!(first.lease_ms, 15_000, "60 s lease taken at 45 s");
        assert_eq!(sessions.held_bytes(), 500);
        // The session ends with one assignment unsent.
        sessions.close(id);
        drop(out);
        assert_eq!(sessions.held_bytes(), 0);
        assert!(!sessions.send(id, assignment(3, 1)), "closed");
    }

    /// One IP, one sender: a second session announcing an IP another holds is refused,
    /// whatever the spelling, until the first one closes.
    #[test]
    fn an_ip_announced_twice_is_refused() {
        let sessions = Sessions::default();
        let (a, _rx) = sessions
            .open(4, "s1", &["2001:db8::1".into(), "192.0.2.1".into()])
            .unwrap();
        let e = sessions
            .open(4, "s2", &["2001:db8:0::1".into()])
            .unwrap_err();
        assert!(e.contains("2001:db8::1") && e.contains("\"s1\""), "{e}");
        assert!(sessions.open(4, "s2", &["192.0.2.2".into()]).is_ok());
        // s1 reconnecting before its old session is seen to end takes its IPs over.
        let (b, _rx2) = sessions.open(4, "s1", &["192.0.2.1".into()]).unwrap();
        sessions.close(a);
        assert!(
            sessions.open(4, "s3", &["192.0.2.1".into()]).is_err(),
            "still s1's"
        );
        sessions.close(b);
        assert!(sessions.open(4, "s3", &["192.0.2.1".into()]).is_ok());
    }

    /// While the backlog holds work back, each assignment that leaves wakes the scheduler.
    #[tokio::test]
    async fn a_starved_scheduler_hears_of_each_drained_assignment() {
        let sessions = Arc::new(Sessions::default());
        let (id, mut rx) = sessions.open(16, "s1", &[]).unwrap();
        sessions.send(id, assignment(1, 10));
        sessions.set_starved(true);
        let waiter = {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.drained().await })
        };
        tokio::task::yield_now().await;
        drop(rx.recv().await);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
