//! The generator: SMTP sessions that submit messages on a fixed arrival schedule (open loop:
//! message `n` is due at `n / rate` seconds whether or not earlier ones were answered, so a
//! slow server shows in the latency instead of slowing the load), to a weighted mix of
//! recipient domains, each message carrying its `X-Load-Id`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::smtp::{connect_as, reply, Login, Reader, Writer};

/// What the generator sends.
#[derive(Debug, Clone)]
pub struct Load {
    /// The edge's SMTP address.
    pub target: String,
    /// The first message's load id (the next ones count up from it).
    pub first_id: u64,
    /// Messages in total.
    pub messages: u64,
    /// Arrivals per second; 0: as fast as the sessions are answered (closed loop).
    pub rate: f64,
    /// Sessions at once.
    pub sessions: usize,
    /// Messages per connection before reconnecting.
    pub per_connection: u64,
    /// Approximate message size.
    pub size: usize,
    /// Recipient domains and their weights.
    pub domains: Vec<(String, u32)>,
    /// Share of recipients that fail temporarily once (`tempfail-N@`), and permanently
    /// (`permfail-N@`).
    pub tempfail: f64,
    /// See `tempfail`.
    pub permfail: f64,
    /// Domain of the reverse paths (where DSNs go).
    pub return_domain: String,
    /// Tenants the sessions log in as (STARTTLS, then AUTH PLAIN), taking turns with
    /// sessions that relay by address: with two tenants, a third of the sessions each.
    pub logins: Vec<Login>,
}

impl Load {
    /// The recipient of message `n`: the same for every run with the same mix.
    pub fn recipient(&self, n: u64) -> String {
        let mut rng = fastrand::Rng::with_seed(n);
        let total: u32 = self.domains.iter().map(|(_, w)| w).sum();
        let mut pick = rng.u32(0..total.max(1));
        let mut domain = self.domains.first().map_or("example.test", |d| &d.0);
        for (d, w) in &self.domains {
            if pick < *w {
                domain = d;
                break;
            }
            pick -= w;
        }
        let roll = rng.f64();
        let local = if roll < self.permfail {
            "permfail"
        } else if roll < self.permfail + self.tempfail {
            "tempfail"
        } else {
            "u"
        };
        format!("{local}-{n}@{domain}")
    }

    fn message(&self, n: u64, rcpt: &str) -> Vec<u8> {
        let mut m = format!(
            "From: <load@{d}>\r\nTo: <{rcpt}>\r\nSubject: load {n}\r\n\
             Message-ID: <{n}.load@{d}>\r\nX-Load-Id: {n}\r\n\r\n",
            d = self.return_domain
        )
        .into_bytes();
        let line = format!("{}\r\n", "x".repeat(76));
        while m.len() + line.len() <= self.size {
            m.extend_from_slice(line.as_bytes());
        }
        m
    }
}

/// A message the edge acknowledged.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its load id.
    pub id: u64,
    /// Its recipient.
    pub rcpt: String,
    /// When the `250` came (ms since the run started).
    pub at_ms: u64,
    /// The queue id the reply named ("" if it named none).
    pub queue_id: String,
    /// The tenant it was submitted as ("" when relayed by address).
    pub tenant: Arc<str>,
}

/// What the generator saw.
#[derive(Debug)]
pub struct Generated {
    /// Messages it tried.
    pub submitted: u64,
    /// Those acknowledged with `250`.
    pub accepted: Vec<Accepted>,
    /// Refused with a reply (`4xx`/`5xx`) at any step.
    pub refused: u64,
    /// Lost to connection errors before a reply to the final dot (neither acked nor refused).
    pub errors: u64,
    /// Final dot to `250`, µs.
    pub dot_to_250: Histogram<u64>,
    /// Scheduled arrival to `250`, µs (what an application waiting in line would see).
    pub arrival_to_250: Histogram<u64>,
    /// Seconds the load took.
    pub seconds: f64,
}

impl Generated {
    /// Takes in a later phase's messages and time (its latencies stay its own).
    pub fn absorb(&mut self, later: Generated) {
        self.seconds += later.seconds;
        self.submitted += later.submitted;
        self.accepted.extend(later.accepted);
        self.refused += later.refused;
        self.errors += later.errors;
    }

    fn empty() -> Self {
        Self {
            submitted: 0,
            accepted: Vec::new(),
            refused: 0,
            errors: 0,
            dot_to_250: histogram(),
            arrival_to_250: histogram(),
            seconds: 0.0,
        }
    }
}

/// Counts while the load runs, for the progress line.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    submitted: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Progress {
    /// Messages tried so far.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Messages acknowledged so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Runs `load`, counting in `progress`; `at_ms` gives the run's clock.
pub async fn run(
    load: Load,
    progress: Progress,
    at_ms: impl Fn() -> u64 + Send + Sync + 'static,
) -> Generated {
    let at_ms = Arc::new(at_ms);
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(load.messages.max(1) as usize);
    let rx = Arc::new(Mutex::new(rx));
    let load = Arc::new(load);
    let started = Instant::now();
    let schedule = {
        let load = load.clone();
        tokio::spawn(async move {
            for i in 0..load.messages {
                let n = load.first_id + i;
                let due = if load.rate > 0.0 {
                    started + Duration::from_secs_f64(i as f64 / load.rate)
                } else {
                    started
                };
                tokio::time::sleep_until(due.into()).await;
                if tx.send((n, due)).await.is_err() {
                    return;
                }
            }
        })
    };
    let workers: Vec<_> = (0..load.sessions)
        .map(|k| {
            let login = match k % (load.logins.len() + 1) {
                i if i < load.logins.len() => Some(load.logins[i].clone()),
                _ => None,
            };
            tokio::spawn(worker(
                load.clone(),
                login,
                rx.clone(),
                progress.clone(),
                at_ms.clone(),
            ))
        })
        .collect();
    let _ = schedule.await;
    let mut out = Generated::empty();
    for w in workers {
        if let Ok(g) = w.await {
            out.submitted += g.submitted;
            out.accepted.extend(g.accepted);
            out.refused += g.refused;
            out.errors += g.errors;
            let _ = out.dot_to_250.add(g.dot_to_250);
            let _ = out.arrival_to_250.add(g.arrival_to_250);
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

type Queue = Arc<Mutex<tokio::sync::mpsc::Receiver<(u64, Instant)>>>;

/// One session slot: takes due messages and sends them, reconnecting when needed.
async fn worker(
    load: Arc<Load>,
    login: Option<Login>,
    rx: Queue,
    progress: Progress,
    at_ms: Arc<impl Fn() -> u64 + Send + Sync>,
) -> Generated {
    let mut g = Generated::empty();
    let tenant: Arc<str> = login.as_ref().map_or("", |l| l.user.as_str()).into();
    let mut conn: Option<(Reader, Writer, u64)> = None;
    loop {
        let next = rx.lock().await.recv().await;
        let Some((n, due)) = next else {
            if let Some((_, mut wr, _)) = conn.take() {
                let _ = wr.write_all(b"QUIT\r\n").await;
            }
            return g;
        };
        g.submitted += 1;
        progress.submitted.fetch_add(1, Ordering::Relaxed);
        let rcpt = load.recipient(n);
        let body = load.message(n, &rcpt);
        let attempt = async |conn: &mut Option<_>| -> anyhow::Result<(u16, Duration, String)> {
            if conn.is_none() {
                let (rd, wr) = connect_as(&load.target, login.as_ref()).await?;
                *conn = Some((rd, wr, 0u64));
            }
            let (rd, wr, sent) = conn.as_mut().expect("connected");
            *sent += 1;
            wr.write_all(
                format!(
                    "MAIL FROM:<bounce-{n}@{}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n",
                    load.return_domain
                )
                .as_bytes(),
            )
            .await?;
            for want in [250, 250] {
                let (code, _) = reply(rd).await?;
                if code != want {
                    // The DATA reply still comes (503 or 554): read it, then reset.
                    let _ = reply(rd).await?;
                    wr.write_all(b"RSET\r\n").await?;
                    reply(rd).await?;
                    return Ok((code, Duration::ZERO, String::new()));
                }
            }
            let (code, _) = reply(rd).await?;
            if code != 354 {
                wr.write_all(b"RSET\r\n").await?;
                reply(rd).await?;
                return Ok((code, Duration::ZERO, String::new()));
            }
            let mut data = Vec::with_capacity(body.len() + 3);
            for line in body.split_inclusive(|b| *b == b'\n') {
                if line.starts_with(b".") {
                    data.push(b'.');
                }
                data.extend_from_slice(line);
            }
            wr.write_all(&data).await?;
            let t = Instant::now();
            wr.write_all(b".\r\n").await?;
            let (code, text) = reply(rd).await?;
            Ok((code, t.elapsed(), queue_id(&text)))
        };
        match attempt(&mut conn).await {
            Ok((250, dot, queue_id)) => {
                progress.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = g.dot_to_250.record(dot.as_micros().max(1) as u64);
                let _ = g
                    .arrival_to_250
                    .record(due.elapsed().as_micros().max(1) as u64);
                g.accepted.push(Accepted {
                    id: n,
                    rcpt: rcpt.to_ascii_lowercase(),
                    at_ms: at_ms(),
                    queue_id,
                    tenant: tenant.clone(),
                });
            }
            Ok((code, _, _)) => {
                g.refused += 1;
                // A 421 closes the session; so does any reply the server gives before closing.
                if code == 421 {
                    conn = None;
                }
            }
            Err(_) => {
                g.errors += 1;
                conn = None;
            }
        }
        if let Some((_, wr, sent)) = conn.as_mut() {
            if *sent >= load.per_connection {
                let _ = wr.write_all(b"QUIT\r\n").await;
                conn = None;
            }
        }
    }
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply.
fn queue_id(reply: &str) -> String {
    reply
        .rsplit_once("queued as ")
        .map(|(_, id)| id.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_weights_and_failure_shares() {
        let load = Load {
            target: String::new(),
            first_id: 0,
            messages: 0,
            rate: 1.0,
            sessions: 1,
            per_connection: 1,
            size: 100,
            domains: vec![("gmail.com".into(), 3), ("yahoo.com".into(), 1)],
            tempfail: 0.1,
            permfail: 0.1,
            return_domain: "load.test".into(),
            logins: Vec::new(),
        };
        let rcpts: Vec<String> = (0..4000).map(|n| load.recipient(n)).collect();
        let gmail = rcpts.iter().filter(|r| r.ends_with("@gmail.com")).count();
        assert!((2800..3200).contains(&gmail), "{gmail}");
        let perm = rcpts.iter().filter(|r| r.starts_with("permfail-")).count();
        assert!((300..500).contains(&perm), "{perm}");
        assert_eq!(load.recipient(7), load.recipient(7), "the same every run");
        let m = String::from_utf8(load.message(7, "u-7@gmail.com")).unwrap();
        assert!(m.contains("X-Load-Id: 7\r\n") && m.len() <= 100 + 80, "{m}");
        assert_eq!(
            queue_id("250 2.0.0 Ok: queued as 0000000000100000"),
            "0000000000100000"
        );
        assert_eq!(queue_id("250 2.0.0 Ok"), "");
    }
}
