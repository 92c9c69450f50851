//! `grpc.health.v1.Health`: whether this node can serve. A queue node serves (Admin, Ingest,
//! Raft, and Work on the leader) while it knows a leader: a node cut off from its quorum, or
//! one that has not joined a cluster yet, answers NOT_SERVING, so probes and load balancers
//! steer clients to the others.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skein_proto::health::health_check_response::ServingStatus;
use skein_proto::health::health_server::Health;
use skein_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::route::{Cluster, Route};

/// The services a queue node serves, as health checks name them.
const SERVICES: [&str; 4] = [
    "skein.admin.v1.Admin",
    "skein.ingest.v1.Ingest",
    "skein.raft.v1.Raft",
    "skein.work.v1.Work",
];

/// How often Watch looks again.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The health service of one node.
#[derive(Debug, Clone)]
pub struct HealthService {
    cluster: Arc<Cluster>,
}

impl HealthService {
    /// Reports on `cluster`'s node.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

/// The status of `service` on the node: `None` for a service it does not serve.
fn status(cluster: &Cluster, service: &str) -> Option<ServingStatus> {
    if !service.is_empty() && !SERVICES.contains(&service) {
        return None;
    }
    let serving = match (cluster.route(false), service) {
        // Sender sessions are served by the leader only.
        (Ok(Route::Local), _) => true,
        (Ok(Route::Forward(_)), "skein.work.v1.Work") => false,
        (Ok(Route::Forward(_)), _) => true,
        (Err(_), _) => false,
    };
    Some(if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    })
}

fn response(s: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: s as i32 }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &req.get_ref().service;
        match status(&self.cluster, service) {
            Some(s) => Ok(Response::new(response(s))),
            None => Err(Status::not_found(format!(
                "this node does not serve {service:?}; it serves {}",
                SERVICES.join(", ")
            ))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = req.into_inner().service;
        let cluster = self.cluster.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status(&cluster, &service).unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(now) {
                    if tx.send(Ok(response(now))).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
