//! Connection limits and message rates, per client: an IPv4 address, or an IPv6 /64 (one
//! host usually holds a whole /64, and would otherwise get a fresh limit per address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use skein_core::SharedClock;

/// The client an address counts as: itself for IPv4 (and IPv4-mapped IPv6), its /64 for IPv6.
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Counts open connections, in total and per client ([`client_of`]).
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Holds one connection slot until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    /// At most `max_total` connections, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `ip`, or `None` when a limit is reached.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let ip = client_of(ip);
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let per_ip = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.max_total || per_ip >= self.max_per_ip {
            return None;
        }
        g.0 += 1;
        *g.1.entry(ip).or_insert(0) += 1;
        Some(ConnectionSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut g = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// Events per key in any 60 s (a sliding-window estimate); `0` disables the limit.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    clock: SharedClock,
    /// Per key: the minute counted in, its count and the previous minute's.
    windows: Mutex<HashMap<String, Window>>,
}

/// Counts of one key in the current and the previous minute.
#[derive(Debug, Clone, Copy)]
struct Window {
    minute: i64,
    previous: u32,
    current: u32,
}

impl Window {
    /// The window moved on to `minute` (counts of minutes that are over shift or drop).
    fn at(self, minute: i64) -> Self {
        match minute - self.minute {
            0 => self,
            1 => Window {
                minute,
                previous: self.current,
                current: 0,
            },
            _ => Window {
                minute,
                previous: 0,
                current: 0,
            },
        }
    }

    /// Events in the last 60 s, estimated: the previous minute's weighted by how much of it
    /// is still within 60 s of `now_ms`, plus this minute's. (Fixed minutes would let a client
    /// make twice the limit across a minute's turn.)
    fn last_60s(self, now_ms: i64) -> f64 {
        let into = now_ms.rem_euclid(60_000) as f64 / 60_000.0;
        f64::from(self.previous) * (1.0 - into) + f64::from(self.current)
    }
}

impl RateLimiter {
    /// At most `per_minute` events per key in any 60 s of `clock` (a sliding window).
    pub fn new(per_minute: u32, clock: SharedClock) -> Self {
        Self {
            per_minute,
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has had its `per_minute` events in the last minute (nothing is counted).
    pub fn exhausted(&self, key: &str) -> bool {
        if self.per_minute == 0 {
            return false;
        }
        let now = self.clock.now_ms();
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        w.get(key).is_some_and(|w| {
            w.at(now.div_euclid(60_000)).last_60s(now) >= f64::from(self.per_minute)
        })
    }

    /// Records an event for `key`; `false` when it is over the limit (and not counted).
    pub fn allow(&self, key: &str) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let now = self.clock.now_ms();
        let minute = now.div_euclid(60_000);
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, v| v.minute >= minute - 1);
        }
        let e = w.entry(key.to_string()).or_insert(Window {
            minute,
            previous: 0,
            current: 0,
        });
        *e = e.at(minute);
        if e.last_60s(now) >= f64::from(self.per_minute) {
            return false;
        }
        e.current += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_core::ManualClock;
    use std::time::Duration;

    #[test]
    fn connection_slots() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none(), "per-IP limit");
        let _s3 = l.acquire(b).unwrap();
        assert!(l.acquire(b).is_none(), "total limit");
        drop(s1);
        let _s4 = l.acquire(a).expect("a slot was freed");
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
        let l = ConnectionLimiter::new(10, 2);
        let _a = l.acquire(ip("2001:db8::1")).unwrap();
        let _b = l.acquire(ip("2001:db8::2")).unwrap();
        assert!(
            l.acquire(ip("2001:db8::ffff:3")).is_none(),
            "one /64, one client"
        );
        assert!(l.acquire(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }

    #[test]
    fn rate_windows_follow_the_clock() {
        let clock = Arc::new(ManualClock::new(0));
        let r = RateLimiter::new(2, clock.clone());
        assert!(r.allow("t"));
        assert!(r.allow("t"));
        assert!(!r.allow("t"));
        assert!(r.allow("other"));
        // Across the minute's turn the last minute still counts, fading out over the next.
        clock.advance(Duration::from_secs(60));
        assert!(!r.allow("t"), "2 in the last 60 s");
        clock.advance(Duration::from_secs(15));
        assert!(
            r.allow("t"),
            "1.5 of them left 15 s into the minute: room for one"
        );
        assert!(!r.allow("t"));
        clock.advance(Duration::from_secs(120));
        assert!(r.allow("t") && r.allow("t"), "all forgotten two minutes on");
        assert!(RateLimiter::new(0, clock.clone()).allow("x"));
        let r = RateLimiter::new(1, clock.clone());
        assert!(!r.exhausted("t"));
        assert!(r.allow("t"));
        assert!(
            r.exhausted("t") && r.exhausted("t"),
            "looking counts nothing"
        );
        assert!(!r.exhausted("u"));
        assert!(!RateLimiter::new(0, clock).exhausted("t"));
    }
}
