//! The edge's client of the queue cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skein_proto::ingest::ingest_client::IngestClient;
use skein_proto::ingest::{
    CredentialsRequest, CredentialsResponse, EnqueueRequest, EnqueueResponse,
};
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// Longest sleep between rounds of retries over the nodes. A leader election leaves no node
/// able to commit for a second or two; a short sleep lets the message through soon after it
/// ends, and a failing attempt (no leader, connection refused) costs the nodes little.
const MAX_RETRY_SLEEP: Duration = Duration::from_millis(200);

/// How long fetching credentials from one node may take.
const CREDENTIALS_LIMIT: Duration = Duration::from_secs(2);

/// Talks to whichever queue node answers; nodes forward to the leader.
#[derive(Debug, Clone)]
pub struct QueueClient {
    nodes: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicUsize>,
    timeout: Duration,
}

impl QueueClient {
    /// A client of the nodes at `addrs` (`host:port`), over mutual TLS with `tls` (the edge's
    /// cluster certificate); calls give up after `timeout`.
    pub fn new(
        addrs: &[String],
        timeout: Duration,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut nodes = Vec::new();
        for a in addrs {
            let mut endpoint = Endpoint::from_shared(skein_pki::uri(a, tls.is_some()))?;
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            let ch = endpoint
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                // A node that stops answering (hung, cut off) has its connection closed, so
                // calls fail over to another node instead of waiting on it.
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true)
                .connect_lazy();
            nodes.push((a.clone(), ch));
        }
        Ok(Self {
            nodes: Arc::new(nodes),
            current: Arc::new(AtomicUsize::new(0)),
            timeout,
        })
    }

    fn node(&self, attempt: usize) -> (usize, &(String, Channel)) {
        let i = (self.current.load(Ordering::Relaxed) + attempt) % self.nodes.len();
        (i, &self.nodes[i])
    }

    /// Submits a message; returns once it is committed, or the last error once the deadline
    /// passes. Retries only where the message cannot have been stored (no leader, node down).
    /// Each attempt carries `trace` (the message's span) to the node.
    pub async fn enqueue(
        &self,
        req: EnqueueRequest,
        trace: &skein_observe::trace::Context,
    ) -> Result<EnqueueResponse, Status> {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0usize;
        let mut backoff = Duration::from_millis(20);
        loop {
            let (i, (addr, ch)) = self.node(attempt);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // The node tried last may be hung: the next message starts elsewhere.
                self.current.store(i, Ordering::Relaxed);
                return Err(Status::deadline_exceeded("queue did not commit in time"));
            }
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(remaining);
            skein_observe::trace::inject(trace, r.metadata_mut());
            let mut client = IngestClient::new(ch.clone()).max_encoding_message_size(80 << 20);
            match skein_proto::call_within(remaining, client.enqueue(r)).await {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Err(s) if retryable(&s) => {
                    tracing::debug!(node = %addr, status = %s, "enqueue retry");
                    attempt += 1;
                    if attempt.is_multiple_of(self.nodes.len()) {
                        tokio::time::sleep(
                            backoff.min(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                        backoff = (backoff * 2).min(MAX_RETRY_SLEEP);
                    }
                }
                Err(s) => {
                    if s.code() == Code::DeadlineExceeded {
                        // This node may be hung (stopped, cut off): the message may be stored
                        // there, so it is not retried, but the next one goes to another node.
                        self.current
                            .store((i + 1) % self.nodes.len(), Ordering::Relaxed);
                    }
                    return Err(s);
                }
            }
        }
    }

    /// Every tenant's login and DKIM key, from any node that answers.
    pub async fn credentials(&self) -> Result<CredentialsResponse, Status> {
        let mut last = Status::unavailable("no queue node configured");
        for attempt in 0..self.nodes.len() {
            let (_, (_, ch)) = self.node(attempt);
            let mut r = tonic::Request::new(CredentialsRequest {});
            r.set_timeout(CREDENTIALS_LIMIT);
            match skein_proto::call_within(
                CREDENTIALS_LIMIT,
                IngestClient::new(ch.clone()).credentials(r),
            )
            .await
            {
                Ok(c) => return Ok(c.into_inner()),
                Err(s) => last = s,
            }
        }
        Err(last)
    }
}

/// Whether a failed Enqueue may be retried on another node: the message was not stored.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_proto::ingest::ingest_server::{Ingest, IngestServer};

    /// A queue node that stores nothing: it answers every Enqueue with id `ok`, or, `hung`,
    /// never answers at all (a process stopped after the connection was made).
    struct Node {
        hung: bool,
    }

    #[tonic::async_trait]
    impl Ingest for Node {
        async fn enqueue(
            &self,
            _r: tonic::Request<EnqueueRequest>,
        ) -> Result<tonic::Response<EnqueueResponse>, Status> {
            if self.hung {
                std::future::pending::<()>().await;
            }
            Ok(tonic::Response::new(EnqueueResponse {
                id: "ok".into(),
                log_index: 1,
            }))
        }

        async fn credentials(
            &self,
            _r: tonic::Request<CredentialsRequest>,
        ) -> Result<tonic::Response<CredentialsResponse>, Status> {
            Ok(tonic::Response::new(CredentialsResponse::default()))
        }
    }

    async fn serve(hung: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IngestServer::new(Node { hung }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        addr
    }

    /// A node that takes the call and never answers costs the message in flight its deadline
    /// (it may have stored it: no retry); the next message goes to another node.
    #[tokio::test]
    async fn a_hung_node_is_left_for_the_next_message() {
        let q = QueueClient::new(
            &[serve(true).await, serve(false).await],
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let first = q
            .enqueue(EnqueueRequest::default(), &Default::default())
            .await
            .unwrap_err();
        assert_eq!(first.code(), Code::DeadlineExceeded, "{first:?}");
        let second = q
            .enqueue(EnqueueRequest::default(), &Default::default())
            .await
            .unwrap();
        assert_eq!(second.id, "ok");
    }
}
