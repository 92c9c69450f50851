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
    /// Message sizes (approximate bytes) and their weights.
    pub sizes: Vec<(usize, u32)>,
    /// Recipients per message and their weights.
    pub rcpts: Vec<(usize, u32)>,
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
    /// The recipients of message `n`: the same for every run with the same mixes. Each has
    /// its own domain and fate: `u-N@` (delivered), `tempfail-N@` or `permfail-N@`, with
    /// `-J` after N for the recipients past the first.
    pub fn recipients(&self, n: u64) -> Vec<String> {
        let count = pick(&self.rcpts, &mut fastrand::Rng::with_seed(!n))
            .copied()
            .unwrap_or(1);
        (0..count.max(1))
            .map(|j| {
                let mut rng = fastrand::Rng::with_seed(n.wrapping_add((j as u64) << 48));
                let domain = pick(&self.domains, &mut rng).map_or("example.test", String::as_str);
                let roll = rng.f64();
                let local = if roll < self.permfail {
                    "permfail"
                } else if roll < self.permfail + self.tempfail {
                    "tempfail"
                } else {
                    "u"
                };
                match j {
                    0 => format!("{local}-{n}@{domain}"),
                    j => format!("{local}-{n}-{j}@{domain}"),
                }
            })
            .collect()
    }

    /// Message `n` to `rcpts`, its size drawn from the mix.
    fn message(&self, n: u64, rcpts: &[String]) -> Vec<u8> {
        let size = pick(
            &self.sizes,
            &mut fastrand::Rng::with_seed(n.rotate_left(17)),
        )
        .copied()
        .unwrap_or(0);
        let mut m = format!(
            "From: <load@{d}>\r\nTo: {}\r\nSubject: load {n}\r\n\
             Message-ID: <{n}.load@{d}>\r\nX-Load-Id: {n}\r\n\r\n",
            rcpts
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(", "),
            d = self.return_domain
        )
        .into_bytes();
        let line = format!("{}\r\n", "x".repeat(76));
        while m.len() + line.len() <= size {
            m.extend_from_slice(line.as_bytes());
        }
        m
    }
}

/// A weighted pick from `mix`.
fn pick<'a, T>(mix: &'a [(T, u32)], rng: &mut fastrand::Rng) -> Option<&'a T> {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut at = rng.u32(0..total.max(1));
    for (v, w) in mix {
        if at < *w {
            return Some(v);
        }
        at -= w;
    }
    mix.first().map(|(v, _)| v)
}

/// A recipient of a message the edge acknowledged.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its message's load id.
    pub id: u64,
    /// The recipient (lower case).
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
    /// Messages acknowledged with `250`.
    pub accepted_messages: u64,
    /// Of those, by the tenant their session logged in as ("" when relayed by address).
    pub by_tenant: std::collections::BTreeMap<String, u64>,
    /// Their recipients the edge took.
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
        self.accepted_messages += later.accepted_messages;
        for (t, n) in later.by_tenant {
            *self.by_tenant.entry(t).or_default() += n;
        }
        self.accepted.extend(later.accepted);
        self.refused += later.refused;
        self.errors += later.errors;
    }

    fn empty() -> Self {
        Self {
            submitted: 0,
            accepted_messages: 0,
            by_tenant: Default::default(),
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
        if let Ok(mut g) = w.await {
            let _ = out.dot_to_250.add(&g.dot_to_250);
            let _ = out.arrival_to_250.add(&g.arrival_to_250);
            g.seconds = 0.0;
            out.absorb(g);
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
        let rcpts = load.recipients(n);
        let body = load.message(n, &rcpts);
        // MAIL, every RCPT and DATA in one write (the edge offers PIPELINING), then their
        // replies: the code the message ended with, the time from its final dot, the queue
        // id, and the recipients taken.
        let attempt = async |conn: &mut Option<_>| -> anyhow::Result<Outcome> {
            if conn.is_none() {
                let (rd, wr) = connect_as(&load.target, login.as_ref()).await?;
                *conn = Some((rd, wr, 0u64));
            }
            let (rd, wr, sent) = conn.as_mut().expect("connected");
            *sent += 1;
            let mut out = format!("MAIL FROM:<bounce-{n}@{}>\r\n", load.return_domain);
            for r in &rcpts {
                out.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            out.push_str("DATA\r\n");
            wr.write_all(out.as_bytes()).await?;
            let (mail, _) = reply(rd).await?;
            let mut taken = Vec::new();
            for r in &rcpts {
                if reply(rd).await?.0 == 250 {
                    taken.push(r.to_ascii_lowercase());
                }
            }
            let (data_code, _) = reply(rd).await?;
            if mail != 250 || taken.is_empty() || data_code != 354 {
                // Refused somewhere (a DATA that got 354 anyway is ended empty).
                if data_code == 354 {
                    wr.write_all(b".\r\n").await?;
                    reply(rd).await?;
                }
                wr.write_all(b"RSET\r\n").await?;
                reply(rd).await?;
                let code = if mail != 250 { mail } else { data_code };
                return Ok((code, Duration::ZERO, String::new(), Vec::new()));
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
            Ok((code, t.elapsed(), queue_id(&text), taken))
        };
        match attempt(&mut conn).await {
            Ok((250, dot, queue_id, taken)) => {
                progress.accepted.fetch_add(1, Ordering::Relaxed);
                g.accepted_messages += 1;
                *g.by_tenant.entry(tenant.to_string()).or_default() += 1;
                let _ = g.dot_to_250.record(dot.as_micros().max(1) as u64);
                let _ = g
                    .arrival_to_250
                    .record(due.elapsed().as_micros().max(1) as u64);
                let at = at_ms();
                for rcpt in taken {
                    g.accepted.push(Accepted {
                        id: n,
                        rcpt,
                        at_ms: at,
                        queue_id: queue_id.clone(),
                        tenant: tenant.clone(),
                    });
                }
            }
            Ok((code, _, _, _)) => {
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

/// How a message ended: the code, final dot to reply, the queue id, the recipients taken.
type Outcome = (u16, Duration, String, Vec<String>);

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
            sizes: vec![(100, 1), (1000, 1)],
            rcpts: vec![(1, 3), (3, 1)],
            domains: vec![("gmail.com".into(), 3), ("yahoo.com".into(), 1)],
            tempfail: 0.1,
            permfail: 0.1,
            return_domain: "load.test".into(),
            logins: Vec::new(),
        };
        let per: Vec<Vec<String>> = (0..4000).map(|n| load.recipients(n)).collect();
        // 1 recipient 3 times in 4, else 3: 6,000 on average.
        let rcpts: Vec<&String> = per.iter().flatten().collect();
        assert!((5600..6400).contains(&rcpts.len()), "{}", rcpts.len());
        assert!(per.iter().all(|r| r.len() == 1 || r.len() == 3));
        let gmail = rcpts.iter().filter(|r| r.ends_with("@gmail.com")).count();
        let share = gmail as f64 / rcpts.len() as f64;
        assert!((0.7..0.8).contains(&share), "{share}");
        let perm = rcpts.iter().filter(|r| r.starts_with("permfail-")).count();
        let share = perm as f64 / rcpts.len() as f64;
        assert!((0.08..0.12).contains(&share), "{share}");
        // Each recipient of a message is its own address; the same every run.
        let three = per.iter().find(|r| r.len() == 3).unwrap();
        let n = three[0].split(['-', '@']).nth(1).unwrap();
        assert!(three[1].contains(&format!("-{n}-1@")) && three[2].contains(&format!("-{n}-2@")));
        assert_eq!(load.recipients(7), load.recipients(7), "the same every run");
        // Sizes from the mix: about half near 100 bytes, half near 1,000.
        let sizes: Vec<usize> = (0..400)
            .map(|n| load.message(n, &load.recipients(n)).len())
            .collect();
        let small = sizes.iter().filter(|s| **s < 500).count();
        assert!((150..250).contains(&small), "{small}");
        assert!(sizes.iter().all(|s| *s <= 1000 + 200), "{sizes:?}");
        let m = String::from_utf8(load.message(7, &["u-7@gmail.com".into()])).unwrap();
        assert!(m.contains("X-Load-Id: 7\r\n") && m.contains("To: <u-7@gmail.com>\r\n"));
        assert_eq!(
            queue_id("250 2.0.0 Ok: queued as 0000000000100000"),
            "0000000000100000"
        );
        assert_eq!(queue_id("250 2.0.0 Ok"), "");
    }
}
