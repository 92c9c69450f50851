//! A throttled link: a TCP proxy in front of one queue node, which the other nodes, the edge
//! and the sender reach it through (the node advertises the proxy's address). On demand it
//! holds every chunk of traffic back for a delay and caps the bandwidth, as a congested or
//! distant path between nodes would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a throttled link behaves.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Added to every chunk, each way.
    pub delay: Duration,
    /// Bytes a second, each way.
    pub bytes_per_s: u64,
}

impl Throttle {
    /// What the harness uses: 100 ms each way and 256 KiB/s.
    pub const DEFAULT: Throttle = Throttle {
        delay: Duration::from_millis(100),
        bytes_per_s: 256 * 1024,
    };
}

/// Turns a running link's throttle on and off.
#[derive(Debug, Clone)]
pub struct Link {
    on: Arc<AtomicBool>,
    /// The throttle it applies when on.
    pub throttle: Throttle,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Link {
    /// Starts a link on `listen` to `to`, open (not throttled).
    pub async fn start(
        listen: SocketAddr,
        to: SocketAddr,
        throttle: Throttle,
    ) -> anyhow::Result<Link> {
        let listener = TcpListener::bind(listen).await?;
        let link = Link {
            on: Arc::new(AtomicBool::new(false)),
            throttle,
            addr: listener.local_addr()?,
        };
        let on = link.on.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let on = on.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, on.clone(), throttle));
                    pump(sr, cw, on, throttle).await;
                });
            }
        });
        Ok(link)
    }

    /// Throttles (`true`) or opens the link.
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Whether it is throttled.
    pub fn throttled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }
}

/// Copies one direction, throttled while `on`: each chunk waits the delay, and then as long
/// as the bandwidth takes to carry it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    on: Arc<AtomicBool>,
    t: Throttle,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if on.load(Ordering::Relaxed) {
            let carry = Duration::from_secs_f64(n as f64 / t.bytes_per_s.max(1) as f64);
            tokio::time::sleep(t.delay + carry).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes go through either way; throttled, a round trip takes at least twice the delay.
    #[tokio::test]
    async fn the_link_carries_traffic_and_slows_it_when_throttled() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let t = Throttle {
            delay: Duration::from_millis(150),
            bytes_per_s: 1 << 20,
        };
        let link = Link::start("127.0.0.1:0".parse().unwrap(), to, t)
            .await
            .unwrap();
        let mut c = TcpStream::connect(link.addr).await.unwrap();
        let round_trip = async |c: &mut TcpStream| {
            let start = std::time::Instant::now();
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            start.elapsed()
        };
        round_trip(&mut c).await;
        link.set(true);
        assert!(link.throttled());
        assert!(round_trip(&mut c).await >= Duration::from_millis(300));
        link.set(false);
        round_trip(&mut c).await;
    }
}
