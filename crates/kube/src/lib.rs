//! Raft membership that follows a Kubernetes StatefulSet (`[node.kubernetes]`).
//!
//! Every queue node runs a [`Reconciler`]; only the leader's acts. Each round it reads the
//! StatefulSet (its `replicas` is the intent) and its pods from the API server, the members
//! and their replication from its own node, lets [`decide::decide`] pick one step, and takes
//! it through its node's Admin service (the same checks as `skeinctl add-learner`,
//! `promote` and `remove-node`). Every change and failure is logged and kept for
//! `skeinctl status`.

pub mod decide;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::api::{Api, ListParams};
use skein_config::KubernetesMembership;
use skein_core::SharedClock;
use skein_proto::admin::admin_server::Admin;
use skein_proto::admin::{
    AddLearnerRequest, ClusterStatusRequest, MembershipReconciler, NodeRef, ReconcilerEvent,
};
use tonic::Request;

use decide::{Decision, View};

/// Events kept for `skeinctl status`.
const EVENTS_KEPT: usize = 20;
/// Longest a round's calls to the API server may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the reconciler cannot start or a round failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The client configuration (in-cluster, or `api_server` and its files).
    #[error("kubernetes configuration: {0}")]
    Config(String),
    /// A call to the API server failed.
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The API server did not answer in time.
    #[error("kubernetes API: no answer within {} s", API_TIMEOUT.as_secs())]
    Timeout,
}

/// A client for the API server `cfg` names (in-cluster by default), and the namespace to
/// read.
pub async fn connect(cfg: &KubernetesMembership) -> Result<(kube::Client, String), KubeError> {
    let config = match &cfg.api_server {
        None => kube::Config::incluster().map_err(|e| {
            KubeError::Config(format!(
                "not in a pod ({e}): set [node.kubernetes] api_server, token_file and ca_file"
            ))
        })?,
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| KubeError::Config(format!("api_server {url:?}: {e}")))?;
            let mut config = kube::Config::new(uri);
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| KubeError::Config(format!("ca_file {}: {e}", ca.display())))?;
                config.root_cert =
                    Some(pem_certificates(&pem).map_err(|e| {
                        KubeError::Config(format!("ca_file {}: {e}", ca.display()))
                    })?);
            }
            if let Some(t) = &cfg.token_file {
                config.auth_info.token_file = Some(t.display().to_string());
            }
            config.default_namespace = "default".into();
            config
        }
    };
    let namespace = cfg
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
    Ok((client, namespace))
}

/// The DER certificates in a PEM file.
fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    Ok(certs)
}

/// One node's membership reconciler.
pub struct Reconciler<A> {
    admin: A,
    client: kube::Client,
    namespace: String,
    cfg: KubernetesMembership,
    max_lag: u64,
    clock: SharedClock,
    report: Arc<Mutex<Option<MembershipReconciler>>>,
    events: VecDeque<ReconcilerEvent>,
    rounds: u64,
    /// The last wait reason logged (a wait is logged when it changes, not every round).
    last_wait: String,
}

impl<A: Admin> Reconciler<A> {
    /// A reconciler acting through `admin` (its node's Admin service), reading the API server
    /// through `client` in `namespace`, promoting learners at most `max_lag` entries behind,
    /// and reporting to `report` (what `ClusterStatus` returns).
    pub fn new(
        admin: A,
        client: kube::Client,
        namespace: String,
        cfg: KubernetesMembership,
        max_lag: u64,
        clock: SharedClock,
        report: Arc<Mutex<Option<MembershipReconciler>>>,
    ) -> Self {
        Self {
            admin,
            client,
            namespace,
            cfg,
            max_lag,
            clock,
            report,
            events: VecDeque::new(),
            rounds: 0,
            last_wait: String::new(),
        }
    }

    /// Runs rounds every `interval` for ever.
    pub async fn run(mut self) {
        tracing::info!(
            statefulset = %self.cfg.statefulset,
            namespace = %self.namespace,
            "membership follows the StatefulSet"
        );
        loop {
            let waiting = match self.round().await {
                Ok(w) => w,
                Err(e) => {
                    let what = format!("round failed: {e}");
                    if what != self.last_wait {
                        tracing::warn!("membership: {what}");
                        self.event(what.clone());
                    }
                    what
                }
            };
            self.last_wait = waiting.clone();
            self.rounds += 1;
            self.publish(waiting);
            tokio::time::sleep(self.cfg.interval.0).await;
        }
    }

    /// One round: returns what it waits for (empty when settled or not the leader's to do).
    async fn round(&mut self) -> Result<String, KubeError> {
        let status = self
            .admin
            .cluster_status(Request::new(ClusterStatusRequest {}))
            .await
            .map(|r| r.into_inner());
        let status = match status {
            Ok(s) => s,
            Err(e) => return Ok(format!("the node does not answer: {}", e.message())),
        };
        if status.leader_id == 0 {
            return Ok("no leader".into());
        }
        if status.leader_id != status.node_id {
            return Ok(format!("node {} leads and reconciles", status.leader_id));
        }
        let (replicas, selector) = self.statefulset().await?;
        let view = View {
            replicas,
            pods: self.pods(&selector).await?,
            members: status
                .members
                .iter()
                .map(|m| decide::Member {
                    id: m.id,
                    voter: m.voter,
                    replicating: m.replicating,
                    lag: m.lag,
                })
                .collect(),
            leader: status.node_id,
            max_lag: self.max_lag,
        };
        let decision = decide::decide(&view);
        let (what, result) = match &decision {
            Decision::Settled => return Ok(String::new()),
            Decision::Wait(why) => {
                if *why != self.last_wait {
                    tracing::info!("membership: waiting: {why}");
                }
                return Ok(why.clone());
            }
            Decision::Add { id, addr } => (
                format!("add node {id} ({addr}) as a learner"),
                self.admin
                    .add_learner(Request::new(AddLearnerRequest {
                        id: *id,
                        addr: addr.clone(),
                    }))
                    .await
                    .map(drop),
            ),
            Decision::Promote { id } => (
                format!("promote node {id} to voter"),
                self.admin
                    .promote_voter(Request::new(NodeRef { id: *id }))
                    .await
                    .map(drop),
            ),
            Decision::Remove { id } => (
                format!(
                    "remove node {id} (the StatefulSet has {} replicas)",
                    view.replicas
                ),
                self.admin
                    .remove_node(Request::new(NodeRef { id: *id }))
                    .await
                    .map(drop),
            ),
        };
        match result {
            Ok(()) => {
                tracing::info!("membership: {what}: done");
                self.event(format!("{what}: done"));
                Ok(String::new())
            }
            Err(s) => {
                let why = format!("{what}: {}", s.message());
                if why != self.last_wait {
                    tracing::warn!("membership: {why}");
                    self.event(why.clone());
                }
                Ok(why)
            }
        }
    }

    /// The StatefulSet's desired pod count, and its pods' label selector.
    async fn statefulset(&self) -> Result<(u64, String), KubeError> {
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let spec = timed(api.get(&self.cfg.statefulset)).await?.spec;
        let replicas = spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let selector = spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok((u64::try_from(replicas).unwrap_or(0), selector))
    }

    /// The StatefulSet's pods that exist (named `NAME-ORDINAL`, matching `selector`).
    async fn pods(&self, selector: &str) -> Result<Vec<decide::Pod>, KubeError> {
        let api: Api<KubePod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = timed(api.list(&ListParams::default().labels(selector))).await?;
        let prefix = format!("{}-", self.cfg.statefulset);
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| {
                let name = p.metadata.name.clone()?;
                let ordinal: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
                let status = p.status.as_ref();
                let ip = status
                    .and_then(|s| s.pod_ip.as_deref())
                    .filter(|ip| !ip.is_empty());
                let ready = status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                Some(decide::Pod {
                    id: ordinal + 1,
                    addr: self.cfg.address_of(&name, &self.namespace, ip),
                    ready,
                    terminating: p.metadata.deletion_timestamp.is_some(),
                })
            })
            .collect())
    }

    fn event(&mut self, what: String) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(ReconcilerEvent {
            at_ms: u64::try_from(self.clock.now_ms()).unwrap_or(0),
            what,
        });
    }

    fn publish(&self, waiting: String) {
        let report = MembershipReconciler {
            statefulset: format!("{}/{}", self.namespace, self.cfg.statefulset),
            events: self.events.iter().cloned().collect(),
            waiting,
            rounds: self.rounds,
        };
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    tokio::time::timeout(API_TIMEOUT, f)
        .await
        .map_err(|_| KubeError::Timeout)?
        .map_err(KubeError::Api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_certificates_are_read_and_a_file_without_one_named() {
        let pem = b"-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n\
                    junk\n-----BEGIN CERTIFICATE-----\nU2tlaW4h\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_certificates(pem).unwrap(),
            vec![b"hello".to_vec(), b"Skein!".to_vec()]
        );
        assert_eq!(
            pem_certificates(b"nothing").unwrap_err(),
            "no CERTIFICATE in it"
        );
    }
}
