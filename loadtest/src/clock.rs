//! Scaled time: the queue nodes run `clock = "manual"`, and this moves each one to the run's
//! virtual time every 100 ms through the Admin API (AdvanceClock, a node at a time). A node
//! that was restarted starts again at the wall clock and is moved up at the next tick.

use std::time::Duration;

use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::AdvanceClockRequest;

use crate::sim::RunClock;

/// Keeps every node of `nodes` (gRPC addresses) at `clock`'s virtual time, until the process
/// ends.
pub async fn drive(nodes: Vec<String>, clock: RunClock) {
    // What each node said its time was, when known.
    let mut at: Vec<Option<i64>> = vec![None; nodes.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let target = clock.virtual_ms();
        for (i, addr) in nodes.iter().enumerate() {
            at[i] = advance(addr, at[i], target).await;
        }
    }
}

/// Moves the node at `addr` from `known` (its time, if known) to `target`: its time after,
/// or `None` when it did not answer.
async fn advance(addr: &str, known: Option<i64>, target: i64) -> Option<i64> {
    let mut c = AdminClient::connect(format!("http://{addr}")).await.ok()?;
    let now = match known {
        Some(t) => t,
        None => {
            c.advance_clock(AdvanceClockRequest { ms: 0 })
                .await
                .ok()?
                .into_inner()
                .now_ms
        }
    };
    let by = target.saturating_sub(now).max(0) as u64;
    let r = c.advance_clock(AdvanceClockRequest { ms: by }).await.ok()?;
    Some(r.into_inner().now_ms)
}
