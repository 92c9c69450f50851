//! `skein.work.v1.Work`: the sessions of connected senders, served by the leader.
//!
//! A session is a stream each way: the sender's hello, reports and drain come in and go to the
//! scheduler as [`Input`]s; assignments go out through [`Sessions`].

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skein_config::sender::is_hostname;
use skein_proto::work::sender_message::Msg;
use skein_proto::work::work_server::Work;
use skein_proto::work::{Assignment, Hello, SenderMessage};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::transport::CertificateDer;
use tonic::{Request, Response, Status, Streaming};

use crate::route::{Cluster, Route};
use crate::scheduler::{sessions, Input, SessionReport, Sessions};

/// gRPC metadata naming the leader's address on a refused session.
pub const LEADER_HINT: &str = "x-skein-leader";
/// How long a new session may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The Work service.
#[derive(Debug)]
pub struct WorkService {
    cluster: Arc<Cluster>,
    sessions: Arc<Sessions>,
    inputs: mpsc::Sender<Input>,
}

impl WorkService {
    /// A service opening sessions in `sessions` and telling the scheduler through `inputs`.
    pub fn new(
        cluster: Arc<Cluster>,
        sessions: Arc<Sessions>,
        inputs: mpsc::Sender<Input>,
    ) -> Self {
        Self {
            cluster,
            sessions,
            inputs,
        }
    }
}

/// Checks a sender's hello.
pub fn validate_hello(h: &Hello) -> Result<(), Status> {
    if h.sender.is_empty() || h.sender.len() > 64 {
        return Err(Status::invalid_argument(
            "hello.sender must be 1-64 characters",
        ));
    }
    if h.source_ips.is_empty() || h.source_ips.len() > 4096 {
        return Err(Status::invalid_argument(
            "hello.source_ips must list 1-4096 addresses",
        ));
    }
    for s in &h.source_ips {
        if s.ip.parse::<IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "hello.source_ips: {:?} is not an IP address",
                s.ip
            )));
        }
        if !is_hostname(&s.ehlo) {
            return Err(Status::invalid_argument(format!(
                "hello.source_ips: {:?} is not a host name",
                s.ehlo
            )));
        }
    }
    if !(1..=10_000).contains(&h.max_in_flight) {
        return Err(Status::invalid_argument(
            "hello.max_in_flight must be 1-10000",
        ));
    }
    if h.active_leases.len() > h.max_in_flight as usize {
        return Err(Status::invalid_argument(
            "hello.active_leases lists more leases than max_in_flight",
        ));
    }
    Ok(())
}

/// Refuses a hello announcing a source IP the sender's certificate does not name: one
/// sender's certificate cannot take the work of another's IPs.
fn certified_ips(h: &Hello, cert: &CertificateDer<'_>) -> Result<(), Status> {
    for s in &h.source_ips {
        let ip: IpAddr =
            s.ip.parse()
                .map_err(|_| Status::invalid_argument("source IP"))?;
        if !skein_pki::certifies_ip(cert, ip) {
            return Err(Status::permission_denied(format!(
                "hello.source_ips: {ip} is not named in this sender's certificate \
                 (issue it with `skein certs issue --role sender --ip {ip}`)"
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Work for WorkService {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<Assignment, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<SenderMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        match self.cluster.route(false) {
            Ok(Route::Local) => {}
            Ok(Route::Forward(addr)) => {
                let mut s = Status::unavailable(format!("not the leader; the leader is {addr}"));
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_HINT, v);
                }
                return Err(s);
            }
            Err(e) => return Err(e.into()),
        }
        // Over TLS the auth layer let only a sender certificate through; it names the source
        // IPs this sender may announce.
        let cert = req.peer_certs().and_then(|c| c.first().cloned());
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
            Ok(Err(s)) => return Err(s),
            Ok(Ok(Some(SenderMessage {
                msg: Some(Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be a hello",
                ))
            }
        };
        validate_hello(&hello)?;
        if let Some(cert) = &cert {
            certified_ips(&hello, cert)?;
        }
        let ips: Vec<String> = hello.source_ips.iter().map(|s| s.ip.clone()).collect();
        let (id, rx) = self
            .sessions
            .open(hello.max_in_flight as usize + 16, &hello.sender, &ips)
            .map_err(Status::already_exists)?;
        tracing::info!(sender = %hello.sender, ips = hello.source_ips.len(), "sender connected");
        let name = hello.sender.clone();
        if self
            .inputs
            .send(Input::Joined { conn: id, hello })
            .await
            .is_err()
        {
            self.sessions.close(id);
            return Err(Status::unavailable("the node is shutting down"));
        }
        let sessions = self.sessions.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            loop {
                let input = match inbound.message().await {
                    Ok(Some(SenderMessage {
                        msg: Some(Msg::Report(report)),
                    })) => Input::Report(SessionReport {
                        conn: id,
                        sender: name.clone(),
                        report,
                    }),
                    Ok(Some(SenderMessage {
                        msg: Some(Msg::Drain(_)),
                    })) => {
                        tracing::info!(sender = %name, "sender draining");
                        Input::Draining { conn: id }
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                };
                if inputs.send(input).await.is_err() {
                    break;
                }
            }
            sessions.close(id);
            let _ = inputs.send(Input::Left { conn: id }).await;
            tracing::info!(sender = %name, "sender disconnected");
        });
        Ok(Response::new(Box::pin(sessions::stream(
            rx,
            self.cluster.clock.clone(),
        ))))
    }
}
