//! The node's accepted connections: at most `max` open at once (further clients wait in the
//! listen backlog until one closes), Nagle off (small gRPC replies would otherwise wait out
//! Nagle + delayed ACK, ~40 ms), and accept errors (EMFILE: out of file descriptors) backed
//! off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection, holding its place in the limit until it closes.
#[derive(Debug)]
pub struct Conn {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// Longest pause after failed accepts (it doubles from 10 ms per failure in a row).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The connections `listener` accepts, at most `max` open at once.
pub fn incoming(listener: TcpListener, max: usize) -> impl Stream<Item = io::Result<Conn>> {
    let open = Arc::new(Semaphore::new(max.max(1)));
    futures_util::stream::unfold((listener, open), |(listener, open)| async move {
        // The semaphore is never closed.
        let permit = open.clone().acquire_owned().await.ok()?;
        let mut backoff = Duration::from_millis(10);
        loop {
            match listener.accept().await {
                Ok((inner, _)) => {
                    let _ = inner.set_nodelay(true);
                    let conn = Conn {
                        inner,
                        _permit: permit,
                    };
                    return Some((Ok(conn), (listener, open)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, pause = ?backoff, "accepting a connection failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
