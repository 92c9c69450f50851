//! Provider simulators: SMTP servers on loopback addresses that behave like the mailbox
//! providers Skein sends to, and count what they receive independently of Skein.
//!
//! Each simulator stands for one provider. Per source IP it allows `hourly_per_ip` recipients
//! an hour and `max_connections_per_ip` connections at once; past either it answers as the
//! provider does (a `421`/`451` with the provider's text) and records a limit violation: a
//! sender that shapes its traffic right never sees one. Local parts drive failures:
//! `tempfail-*` is refused with `450 4.2.0` the first time per message and accepted on retry,
//! `permfail-*` gets `550 5.1.1`. A provider may greylist (the first try of each source IP,
//! sender and recipient gets `451 4.7.1 Greylisted`, a retry after the wait is taken) and answer the
//! final dot slowly. Every accepted recipient is recorded with the message's
//! `X-Load-Id`, the source IP and the time, so duplicates and losses are counted by the
//! receiving side. The `returns` simulator takes DSNs (null reverse path) and records which
//! message and recipient each one reports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One provider's behaviour.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Its name (gmail, yahoo, ...), as Skein's provider table names it.
    pub name: String,
    /// Recipients accepted per source IP per hour; 0: no limit.
    pub hourly_per_ip: u64,
    /// Connections at once per source IP; 0: no limit.
    pub max_connections_per_ip: u32,
    /// The reply past the hourly limit (`{ip}` is replaced by the source IP).
    pub throttle_reply: String,
    /// Greylisting: the first try of each (source network, sender, recipient) is refused
    /// with `451 4.7.1 Greylisted`; one at least `GREYLIST_MS` later is taken. The network is
    /// the source IP's /24 (IPv6: /64), as postgrey keys by default, so a retry from another
    /// IP of the same pool is not greylisted again.
    pub greylist: bool,
    /// How long the reply to a final dot takes (a slow provider).
    pub reply_delay: Duration,
}

/// How long a greylisted triple must wait before its retry is taken (real ms).
pub const GREYLIST_MS: u64 = 500;

impl Provider {
    /// A provider named `name` with the reply its real servers give past their limits.
    pub fn new(name: &str, hourly_per_ip: u64, max_connections_per_ip: u32) -> Self {
        let throttle_reply = match name {
            "gmail" => {
                "421 4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited \
                        mail originating from your IP address; it has been temporarily rate limited"
            }
            "yahoo" => {
                "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to \
                        unexpected volume or user complaints"
            }
            "outlook" => {
                "451 4.7.650 The mail server [{ip}] has been temporarily rate limited \
                          due to IP reputation"
            }
            _ => "421 4.7.0 [{ip}] Too much mail from your address: try again later",
        }
        .to_string();
        Self {
            name: name.into(),
            hourly_per_ip,
            max_connections_per_ip,
            throttle_reply,
            greylist: false,
            reply_delay: Duration::ZERO,
        }
    }
}

/// A recipient a simulator accepted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    /// When (ms since the run started).
    pub at_ms: u64,
    /// The provider.
    pub provider: String,
    /// The source IP it came from.
    pub source_ip: String,
}

/// A limit a sender went past.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// `hourly` or `connections`.
    pub kind: &'static str,
    /// The provider.
    pub provider: String,
    /// The source IP.
    pub source_ip: String,
    /// The hour (Unix hours) for `hourly`.
    pub hour: i64,
    /// The limit.
    pub limit: u64,
    /// When (ms since the run started).
    pub at_ms: u64,
}

/// What every simulator saw, shared.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Accepted recipients by (load id, address).
    pub deliveries: HashMap<(u64, String), Vec<Delivery>>,
    /// DSNs received: (load id, address) each one reported as failed.
    pub bounces: HashSet<(u64, String)>,
    /// Recipients accepted (or refused past the limit) per (source IP, provider, Unix hour).
    pub hourly: BTreeMap<(String, String, i64), u64>,
    /// Recipients accepted (DSNs included) per (source IP, Unix day), every provider
    /// together: what a warm-up schedule caps.
    pub daily: BTreeMap<(String, i64), u64>,
    /// Limits gone past.
    pub violations: Vec<Violation>,
    /// Temporary failures given (tempfail, limits).
    pub deferrals: u64,
    /// `tempfail-*` recipients already refused once: (load id, address).
    tempfailed: HashSet<(u64, String)>,
    /// When each (source IP, sender, recipient) was first seen, for greylisting.
    greylisted: HashMap<(IpAddr, String, String), u64>,
    /// Connections open per (provider, source IP).
    open: HashMap<(String, IpAddr), u32>,
}

/// The ledger, shared by the simulators and the run.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The run's clock: real time since the start, and the virtual wall time the cluster and the
/// simulators count hours and days by, which runs `scale` times faster from the start's wall
/// time (1: the wall clock itself).
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    started: std::time::Instant,
    started_unix_ms: i64,
    scale: f64,
}

impl RunClock {
    /// Starts now, at `scale`.
    pub fn start(scale: f64) -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            started: std::time::Instant::now(),
            started_unix_ms: unix,
            scale: scale.max(1.0),
        }
    }

    /// Real milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Virtual wall time now (Unix ms).
    pub fn virtual_ms(&self) -> i64 {
        self.started_unix_ms + (self.elapsed_ms() as f64 * self.scale) as i64
    }

    /// The virtual Unix hour now.
    pub fn hour(&self) -> i64 {
        self.virtual_ms() / 3_600_000
    }

    /// The virtual Unix day now (UTC).
    pub fn day(&self) -> i64 {
        self.virtual_ms() / 86_400_000
    }
}

/// Starts provider `p`'s simulator on `addr`; it runs until the process ends.
pub async fn start(
    p: Provider,
    addr: SocketAddr,
    ledger: SharedLedger,
    clock: RunClock,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let p = Arc::new(p);
    tokio::spawn(async move {
        while let Ok((sock, peer)) = listener.accept().await {
            let (p, ledger) = (p.clone(), ledger.clone());
            tokio::spawn(async move {
                let mut slot = OpenSlot::take(&ledger, &p.name, peer.ip());
                let _ = session(&p, sock, peer.ip(), &ledger, clock, &mut slot).await;
            });
        }
    });
    Ok(local)
}

/// A connection counted against its source IP's connection limit, until released (at the
/// QUIT, before the `221`: a client may open the next connection as soon as it reads it) or
/// dropped (the client went away).
struct OpenSlot {
    ledger: SharedLedger,
    key: (String, IpAddr),
    /// Connections open from the IP, this one included, when it came.
    open: u32,
    released: bool,
}

impl OpenSlot {
    fn take(ledger: &SharedLedger, provider: &str, ip: IpAddr) -> Self {
        let key = (provider.to_string(), ip);
        let mut l = ledger.lock().unwrap();
        let n = l.open.entry(key.clone()).or_default();
        *n += 1;
        let open = *n;
        drop(l);
        Self {
            ledger: ledger.clone(),
            key,
            open,
            released: false,
        }
    }

    /// Connections open from the IP now, this one included.
    fn now(&self) -> u32 {
        let l = self.ledger.lock().unwrap();
        l.open.get(&self.key).copied().unwrap_or(0)
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut l = self.ledger.lock().unwrap();
        if let Some(n) = l.open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// How long a connection over the limit waits for the ends of connections its client closed
/// just before, before it counts as a violation.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// Longest command line, and message, a simulator takes.
const MAX_LINE: usize = 4096;
const MAX_MESSAGE: usize = 64 << 20;

async fn session(
    p: &Provider,
    sock: TcpStream,
    ip: IpAddr,
    ledger: &SharedLedger,
    clock: RunClock,
    slot: &mut OpenSlot,
) -> anyhow::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let limit = p.max_connections_per_ip;
    // Over the limit as this connection came: the client may have closed one just before
    // opening this one, its end not read here yet. A moment later the count is what it is.
    if limit > 0 && slot.open > limit {
        tokio::time::sleep(CLOSE_GRACE).await;
    }
    if limit > 0 && slot.now() > limit {
        {
            let mut l = ledger.lock().unwrap();
            l.deferrals += 1;
            l.violations.push(Violation {
                kind: "connections",
                provider: p.name.clone(),
                source_ip: ip.to_string(),
                hour: clock.hour(),
                limit: u64::from(limit),
                at_ms: clock.elapsed_ms(),
            });
        }
        wr.write_all(
            format!("421 4.7.0 [{ip}] Too many connections from your address\r\n").as_bytes(),
        )
        .await?;
        return Ok(());
    }
    wr.write_all(format!("220 {}.sim ESMTP\r\n", p.name).as_bytes())
        .await?;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(
            Duration::from_secs(300),
            (&mut rd).take(MAX_LINE as u64).read_until(b'\n', &mut line),
        )
        .await??;
        if n == 0 {
            return Ok(());
        }
        let cmd = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let out = if upper.starts_with("EHLO") {
            format!("250-{}.sim\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n", p.name)
        } else if upper.starts_with("HELO") {
            format!("250 {}.sim\r\n", p.name)
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(path(&cmd[10..]));
            rcpts.clear();
            "250 2.1.0 Ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = path(&cmd[8..]).to_ascii_lowercase();
            if from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else if to.starts_with("permfail") {
                "550 5.1.1 No such user here\r\n".into()
            } else if p.greylist
                && greylisted(ledger, clock, ip, from.as_deref().unwrap_or(""), &to)
            {
                // As many greylisters answer: a 4.7.1 that a sender must not take for a
                // rate limit (Skein did, and held back the whole provider class).
                "451 4.7.1 Greylisted, please try again later\r\n".into()
            } else if let Some(refusal) = count_hourly(p, ip, ledger, clock) {
                refusal
            } else {
                rcpts.push(to);
                "250 2.1.5 Ok\r\n".into()
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 No valid recipients\r\n".into()
            } else {
                wr.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let data = read_data(&mut rd).await?;
                if !p.reply_delay.is_zero() {
                    tokio::time::sleep(p.reply_delay).await;
                }
                let reply = take(
                    p,
                    ip,
                    from.as_deref().unwrap_or(""),
                    &rcpts,
                    &data,
                    ledger,
                    clock,
                );
                from = None;
                rcpts.clear();
                reply
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            slot.release();
            wr.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 Command not recognized\r\n".into()
        };
        wr.write_all(out.as_bytes()).await?;
    }
}

/// Whether the triple is still greylisted: its first try, or one too soon after it.
fn greylisted(ledger: &SharedLedger, clock: RunClock, ip: IpAddr, from: &str, to: &str) -> bool {
    let now = clock.elapsed_ms();
    let ip = match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    };
    let mut l = ledger.lock().unwrap();
    let first = *l
        .greylisted
        .entry((ip, from.to_ascii_lowercase(), to.to_string()))
        .or_insert(now);
    let waiting = now < first + GREYLIST_MS;
    if waiting {
        l.deferrals += 1;
    }
    waiting
}

/// Counts one recipient against `ip`'s hourly limit: the refusal when it is past it.
fn count_hourly(
    p: &Provider,
    ip: IpAddr,
    ledger: &SharedLedger,
    clock: RunClock,
) -> Option<String> {
    let hour = clock.hour();
    let mut l = ledger.lock().unwrap();
    let n = l
        .hourly
        .entry((ip.to_string(), p.name.clone(), hour))
        .or_default();
    *n += 1;
    if p.hourly_per_ip == 0 || *n <= p.hourly_per_ip {
        return None;
    }
    l.deferrals += 1;
    l.violations.push(Violation {
        kind: "hourly",
        provider: p.name.clone(),
        source_ip: ip.to_string(),
        hour,
        limit: p.hourly_per_ip,
        at_ms: clock.elapsed_ms(),
    });
    Some(format!(
        "{}\r\n",
        p.throttle_reply.replace("{ip}", &ip.to_string())
    ))
}

/// The message after `DATA`, dot-unstuffed, up to the lone dot.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line).await? == 0 {
            anyhow::bail!("connection closed in DATA");
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let l = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + l.len() > MAX_MESSAGE {
            anyhow::bail!("message too large");
        }
        data.extend_from_slice(l);
    }
}

/// Records a message's recipients (or a DSN's reports): the reply to its final dot.
fn take(
    p: &Provider,
    ip: IpAddr,
    from: &str,
    rcpts: &[String],
    data: &[u8],
    ledger: &SharedLedger,
    clock: RunClock,
) -> String {
    let text = String::from_utf8_lossy(data);
    let Some(id) = load_id(&text) else {
        return "554 5.6.0 No X-Load-Id: not a load test message\r\n".into();
    };
    let mut l = ledger.lock().unwrap();
    let day = (ip.to_string(), clock.day());
    if from.is_empty() {
        *l.daily.entry(day).or_default() += rcpts.len() as u64;
        // A DSN: the recipients it reports, from its delivery-status part.
        for line in text.lines() {
            if let Some(r) = line.strip_prefix("Final-Recipient:") {
                let addr = r
                    .rsplit(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                l.bounces.insert((id, addr));
            }
        }
        return "250 2.0.0 Ok: DSN taken\r\n".into();
    }
    for r in rcpts {
        if r.starts_with("tempfail") && l.tempfailed.insert((id, r.clone())) {
            l.deferrals += 1;
            // One try later is enough: every recipient of the transaction fails alike.
            return "450 4.2.0 Mailbox busy, try again later\r\n".into();
        }
    }
    *l.daily.entry(day).or_default() += rcpts.len() as u64;
    let at_ms = clock.elapsed_ms();
    for r in rcpts {
        l.deliveries
            .entry((id, r.clone()))
            .or_default()
            .push(Delivery {
                at_ms,
                provider: p.name.clone(),
                source_ip: ip.to_string(),
            });
    }
    "250 2.0.0 Ok: queued\r\n".into()
}

/// The `X-Load-Id` a message (or the original headers a DSN returns) carries.
pub fn load_id(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("X-Load-Id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The address in `<...>` (parameters after it ignored).
fn path(s: &str) -> String {
    let s = s.trim();
    match (s.find('<'), s.find('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].to_string(),
        _ => s.split_whitespace().next().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_load_ids_are_read_from_what_senders_send() {
        assert_eq!(path("<a@b.test> SIZE=12"), "a@b.test");
        assert_eq!(path("<>"), "");
        assert_eq!(load_id("Subject: x\r\nX-Load-Id: 42\r\n\r\nbody"), Some(42));
        assert_eq!(load_id("Subject: x\r\n\r\nbody"), None);
    }

    /// Past its hourly limit a simulator refuses with the provider's text and records a
    /// violation; under it, nothing.
    #[test]
    fn the_hourly_limit_is_counted_per_source_ip() {
        let ledger = SharedLedger::default();
        let clock = RunClock::start(1.0);
        let p = Provider::new("yahoo", 2, 0);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(count_hourly(&p, ip, &ledger, clock).is_none());
        assert!(count_hourly(&p, ip, &ledger, clock).is_none());
        assert!(count_hourly(&p, other, &ledger, clock).is_none());
        let r = count_hourly(&p, ip, &ledger, clock).unwrap();
        assert!(
            r.starts_with("421 4.7.0 [TSS04] Messages from 127.0.0.9"),
            "{r}"
        );
        let l = ledger.lock().unwrap();
        assert_eq!(l.violations.len(), 1);
        assert_eq!(l.violations[0].source_ip, "127.0.0.9");
    }

    /// Greylisting refuses a triple's first try and takes one after the wait; another
    /// sender, recipient or source network is a triple of its own, another IP of the same
    /// /24 is not.
    #[test]
    fn greylisting_refuses_first_contact_and_takes_a_later_retry() {
        let ledger = SharedLedger::default();
        let clock = RunClock::start(1.0);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(greylisted(&ledger, clock, ip, "a@x", "b@y"));
        assert!(greylisted(&ledger, clock, ip, "A@X", "b@y"), "too soon");
        assert!(
            greylisted(&ledger, clock, ip, "a@x", "c@y"),
            "another recipient"
        );
        let other_net: IpAddr = "127.0.1.9".parse().unwrap();
        assert!(greylisted(&ledger, clock, other_net, "a@x", "b@y"));
        std::thread::sleep(Duration::from_millis(GREYLIST_MS + 50));
        let same_net: IpAddr = "127.0.0.200".parse().unwrap();
        assert!(!greylisted(&ledger, clock, same_net, "a@x", "b@y"));
        assert!(!greylisted(&ledger, clock, ip, "a@x", "b@y"));
        assert_eq!(ledger.lock().unwrap().deferrals, 4);
    }
}
