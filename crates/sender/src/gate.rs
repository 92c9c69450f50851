//! Connections open at once per (source IP, provider), as the leader's sending limits say.
//!
//! A connection holds its [`Permit`] for its whole life, idle in the pool included: providers
//! count open connections, not transactions. A delivery that needs a new connection when every
//! permit is taken first closes an idle connection of the same source IP and provider, and
//! otherwise waits; while anyone waits, connections finishing a transaction are closed instead
//! of pooled, so the wait ends as soon as one is done.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limit for one (source IP, provider).
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: u32,
    waiting: AtomicUsize,
}

impl Gate {
    /// Whether a delivery waits for one of its permits.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Connections it allows at once.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.max
            .saturating_sub(self.permits.available_permits() as u32)
    }
}

/// A connection's right to be open: given back when dropped.
#[derive(Debug)]
pub struct Permit {
    /// The gate it came from (to tell whether others wait for it).
    pub gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
}

/// Every gate, by (source IP, provider).
#[derive(Debug, Default)]
pub struct Gates {
    gates: Mutex<HashMap<(IpAddr, String), Arc<Gate>>>,
}

impl Gates {
    /// The gate for `source` and `provider` allowing `max` connections. An assignment carrying
    /// another limit (an operator changed it) replaces the gate: connections opened under the
    /// old one keep their permits until they close.
    pub fn get(&self, source: IpAddr, provider: &str, max: u32) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let g = gates
            .entry((source, provider.to_string()))
            .or_insert_with(|| new_gate(max));
        if g.max != max {
            *g = new_gate(max);
        }
        g.clone()
    }
}

fn new_gate(max: u32) -> Arc<Gate> {
    Arc::new(Gate {
        permits: Arc::new(Semaphore::new(max.max(1) as usize)),
        max: max.max(1),
        waiting: AtomicUsize::new(0),
    })
}

/// A permit at once, if one is free.
pub fn try_permit(gate: &Arc<Gate>) -> Option<Permit> {
    let p = gate.permits.clone().try_acquire_owned().ok()?;
    Some(Permit {
        gate: gate.clone(),
        _permit: p,
    })
}

/// A permit, waiting at most `limit` for one (counted as contention meanwhile).
pub async fn permit(gate: &Arc<Gate>, limit: Duration) -> Option<Permit> {
    if let Some(p) = try_permit(gate) {
        return Some(p);
    }
    gate.waiting.fetch_add(1, Ordering::Relaxed);
    let got = tokio::time::timeout(limit, gate.permits.clone().acquire_owned()).await;
    gate.waiting.fetch_sub(1, Ordering::Relaxed);
    match got {
        Ok(Ok(p)) => Some(Permit {
            gate: gate.clone(),
            _permit: p,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_bound_connections_and_waiters_show_as_contention() {
        let gates = Gates::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let g = gates.get(ip, "gmail", 2);
        let a = try_permit(&g).unwrap();
        let _b = try_permit(&g).unwrap();
        assert!(try_permit(&g).is_none());
        assert_eq!(g.open(), 2);
        assert!(!g.contended());
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { permit(&g, Duration::from_secs(5)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(g.contended(), "a delivery waits");
        drop(a);
        assert!(waiter.await.unwrap(), "the freed permit goes to the waiter");
        assert!(!g.contended());
        // Another provider, another gate; a changed limit, a new gate.
        assert!(try_permit(&gates.get(ip, "yahoo", 1)).is_some());
        assert_eq!(gates.get(ip, "gmail", 5).max(), 5);
        // Nobody gives one back: the wait ends empty.
        let g1 = gates.get(ip, "aol", 1);
        let _held = try_permit(&g1).unwrap();
        assert!(permit(&g1, Duration::from_millis(50)).await.is_none());
    }
}
