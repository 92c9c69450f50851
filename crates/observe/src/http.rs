//! The operational HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz` (and `HEAD`). One
//! request per connection, read within 5 seconds and 8 KiB, answered, closed: enough for
//! Prometheus and kubelet probes, and nothing a client can hold open.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Probe;

/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// How long a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP response: status code, reason, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: &'static str,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Answer {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// The bytes on the wire (no body for `HEAD`).
    pub fn bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request head (everything up to the blank line), and whether it was a
/// `HEAD`. Pure: the server below only moves bytes.
pub fn answer(head: &[u8], probe: &dyn Probe) -> (Answer, bool) {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return (
            Answer::text(400, "Bad Request", "malformed request line\n"),
            false,
        );
    };
    if !version.starts_with("HTTP/1.") {
        return (
            Answer::text(505, "HTTP Version Not Supported", "HTTP/1.x only\n"),
            false,
        );
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (
            Answer::text(405, "Method Not Allowed", "GET or HEAD only\n"),
            false,
        );
    }
    let path = target.split('?').next().unwrap_or(target);
    let a = match path {
        "/metrics" => Answer {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: probe.metrics(),
        },
        "/healthz" | "/livez" => match probe.live() {
            Ok(()) => Answer::text(200, "OK", "ok\n"),
            Err(why) => Answer::text(503, "Service Unavailable", format!("{why}\n")),
        },
        "/readyz" => match probe.ready() {
            Ok(()) => Answer::text(200, "OK", "ready\n"),
            Err(why) => Answer::text(503, "Service Unavailable", format!("{why}\n")),
        },
        _ => Answer::text(404, "Not Found", "try /metrics, /healthz or /readyz\n"),
    };
    (a, head_only)
}

/// Serves `probe` on `listener` until the process ends.
pub fn spawn(listener: TcpListener, probe: Arc<dyn Probe>) {
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                // Out of descriptors, say: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let probe = probe.clone();
            tokio::spawn(async move {
                if let Err(e) = one(sock, probe.as_ref()).await {
                    tracing::debug!(%e, "operational HTTP request");
                }
            });
        }
    });
}

async fn one(mut sock: TcpStream, probe: &dyn Probe) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let (a, head_only) = match complete {
        Ok(Ok(true)) => answer(&head, probe),
        Ok(Ok(false)) if head.len() > MAX_HEAD => (
            Answer::text(
                431,
                "Request Header Fields Too Large",
                "request too large\n",
            ),
            false,
        ),
        _ => return Ok(()),
    };
    sock.write_all(&a.bytes(head_only)).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);

    impl Probe for Fixed {
        fn metrics(&self) -> String {
            "skein_up 1\n".into()
        }
        fn live(&self) -> Result<(), String> {
            Ok(())
        }
        fn ready(&self) -> Result<(), String> {
            if self.0 {
                Ok(())
            } else {
                Err("no leader yet".into())
            }
        }
    }

    #[test]
    fn requests_get_their_answers() {
        let ask = |req: &str, ready: bool| answer(req.as_bytes(), &Fixed(ready));
        let (a, _) = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", true);
        assert_eq!((a.status, a.body.as_str()), (200, "skein_up 1\n"));
        assert!(a.content_type.contains("version=0.0.4"));
        assert_eq!(ask("GET /readyz HTTP/1.1\r\n\r\n", true).0.status, 200);
        let (a, _) = ask("GET /readyz?verbose HTTP/1.0\r\n\r\n", false);
        assert_eq!((a.status, a.body.as_str()), (503, "no leader yet\n"));
        assert_eq!(ask("GET /healthz HTTP/1.1\r\n\r\n", false).0.status, 200);
        let (a, head) = ask("HEAD /healthz HTTP/1.1\r\n\r\n", true);
        assert!(head && !String::from_utf8(a.bytes(true)).unwrap().ends_with("ok\n"));
        assert_eq!(ask("POST /metrics HTTP/1.1\r\n\r\n", true).0.status, 405);
        assert_eq!(ask("GET /nope HTTP/1.1\r\n\r\n", true).0.status, 404);
        assert_eq!(ask("GET /metrics SPDY/3\r\n\r\n", true).0.status, 505);
        assert_eq!(ask("\u{0}\u{1}\r\n\r\n", true).0.status, 400);
    }

    #[tokio::test]
    async fn the_server_answers_and_refuses_oversized_heads() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        spawn(l, Arc::new(Fixed(true)));
        let fetch = |req: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&req).await.unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out
        };
        let r = fetch(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nskein_up 1\n"));
        assert!(r.contains("Content-Length: 11\r\n"), "{r}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(vec![b'a'; 10_000]);
        let r = fetch(big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }
}
