//! Starting and running a queue node: the wiring of store, Raft, services and scheduler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Raft, SnapshotPolicy};
use skein_config::{NodeConfig, TenantSeed};
use skein_core::SharedClock;
use skein_proto::admin::admin_server::AdminServer;
use skein_proto::health::health_server::HealthServer;
use skein_proto::ingest::ingest_server::IngestServer;
use skein_proto::raft::raft_server::RaftServer;
use skein_proto::work::work_server::WorkServer;
use skein_queue::NodeId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::AdminService;
use crate::error::ClusterError;
use crate::ingest::{Batcher, IngestService, MAX_MESSAGE_BYTES};
use crate::network::{Channels, Network, RaftService, MAX_RAFT_MESSAGE};
use crate::route::{Cluster, Route};

/// A running node.
pub struct NodeHandle {
    /// The node's way to the cluster (for in-process callers such as `skein dev`).
    pub cluster: Arc<Cluster>,
    /// The address the gRPC server listens on.
    pub local_addr: std::net::SocketAddr,
    /// The node's Admin service, for in-process callers (the Kubernetes membership
    /// reconciler): calls made on it directly skip the gRPC port's authentication.
    pub admin: AdminService,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    was_removed: Arc<std::sync::atomic::AtomicBool>,
}

impl NodeHandle {
    /// Stops serving and shuts Raft down.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.cluster.raft.shutdown().await;
        let _ = (&mut self.server).await;
    }

    /// Whether the node stopped because it was removed from the cluster.
    pub fn was_removed(&self) -> bool {
        self.was_removed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the gRPC server ends (on error, shutdown, or removal from the cluster).
    pub async fn serve_forever(&mut self) -> Result<(), String> {
        match (&mut self.server).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn raft_config(cfg: &NodeConfig) -> Result<openraft::Config, ClusterError> {
    let r = &cfg.raft;
    let c = openraft::Config {
        cluster_name: "skein".into(),
        heartbeat_interval: r.heartbeat_interval.0.as_millis() as u64,
        election_timeout_min: r.election_timeout_min.0.as_millis() as u64,
        election_timeout_max: r.election_timeout_max.0.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
        max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
        // Entries are whole batches of messages: keep AppendEntries well under the RPC limit.
        max_payload_entries: 16,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    c.validate()
        .map_err(|e| ClusterError::Raft(format!("raft config: {e}")))
}

/// The resolver the scheduler classifies recipient domains by MX host with.
fn resolver(cfg: &NodeConfig) -> Option<Arc<dyn skein_dns::Resolve>> {
    let servers: Vec<_> = cfg
        .nameservers
        .iter()
        .filter_map(|n| skein_config::sender::parse_nameserver(n))
        .collect();
    match skein_dns::Resolver::new(&servers) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: recipient domains are classified without their MX host");
            None
        }
    }
}

/// Starts a node serving on `listener`: opens the store under `cfg.data_dir`, starts Raft and
/// the gRPC services, and initializes the cluster if this node is the lowest-id founder of an
/// uninitialized one.
/// With `tls` (the process's `[cluster_tls]` identity, which must name the `node` role) the
/// port speaks only mutual TLS and every call is checked ([`crate::auth`]), and calls to other
/// nodes present the same certificate.
pub async fn start(
    cfg: &NodeConfig,
    clock: SharedClock,
    listener: TcpListener,
    tls: Option<&skein_pki::Identity>,
) -> Result<NodeHandle, ClusterError> {
    if let Some(id) = tls {
        id.require(skein_pki::Role::Node)
            .map_err(|e| ClusterError::Invalid {
                field: "cluster_tls.cert",
                reason: e.to_string(),
            })?;
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ClusterError::Invalid {
        field: "node.data_dir",
        reason: format!("{}: {e}", cfg.data_dir.display()),
    })?;
    // A manual clock starts at the given clock's time and moves only by AdvanceClock.
    let manual = (cfg.clock == skein_config::node::ClockMode::Manual).then(|| {
        tracing::warn!("clock = \"manual\": time moves only by AdvanceClock (tests only)");
        Arc::new(skein_core::ManualClock::new(clock.now_ms()))
    });
    let clock: SharedClock = match &manual {
        Some(m) => m.clone(),
        None => clock,
    };
    let (log, sm, reader) = skein_queue::open(&cfg.data_dir)?;
    let identity = Arc::new(crate::identity::ClusterIdentity::load(reader.clone())?);
    let channels = Channels::new(tls.map(|id| id.client()), Some(identity.clone()));
    let raft = Raft::new(
        cfg.id,
        Arc::new(raft_config(cfg)?),
        Network::new(channels.clone()),
        log,
        sm,
    )
    .await
    .map_err(|e| ClusterError::Raft(e.to_string()))?;

    let events =
        crate::events::EventLog::open(cfg.delivery.events.as_deref(), cfg.delivery.log_outcomes)
            .map_err(|e| ClusterError::Invalid {
                field: "node.delivery.events",
                reason: e.to_string(),
            })?;
    let events = Arc::new(events);
    let batcher = Batcher::spawn(
        raft.clone(),
        clock.clone(),
        cfg.max_batch_messages,
        cfg.max_batch_bytes.0 as usize,
        cfg.commit_timeout.0,
        reader.clone(),
        events.clone(),
    );
    let cluster = Arc::new(Cluster::new(
        cfg.id,
        cfg.advertise_addr().to_string(),
        raft.clone(),
        reader,
        cfg.commit_timeout.0,
        clock,
        channels,
    ));

    if let Some(addr) = &cfg.http {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ClusterError::Invalid {
                field: "node.http",
                reason: format!("cannot listen on {addr}: {e}"),
            })?;
        tracing::info!(%addr, "metrics and probes: GET /metrics, /healthz, /readyz");
        skein_observe::http::spawn(l, Arc::new(crate::metrics::NodeProbe::new(cluster.clone())));
    }
    let sessions = Arc::new(crate::scheduler::Sessions::default());
    let held = Arc::new(crate::scheduler::HeldQueues::default());
    let (inputs_tx, inputs_rx) = tokio::sync::mpsc::channel(4096);
    let work = crate::work::WorkService::new(cluster.clone(), sessions.clone(), inputs_tx);
    tokio::spawn(crate::scheduler::run(
        cluster.clone(),
        sessions,
        inputs_rx,
        cfg.delivery.clone(),
        events,
        held.clone(),
        resolver(cfg),
        fastrand::Rng::new(),
    ));

    let local_addr = listener
        .local_addr()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
    let (stop, stopped) = oneshot::channel::<()>();
    // Removed from the cluster: stop serving (see `crate::removal`).
    let removed = Arc::new(tokio::sync::Notify::new());
    let was_removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(crate::removal::watch(cluster.clone(), removed.clone()));
    let on_removal = {
        let (removed, was_removed, raft) = (removed.clone(), was_removed.clone(), raft.clone());
        async move {
            removed.notified().await;
            was_removed.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = raft.shutdown().await;
        }
    };
    // (`Server::tcp_nodelay` only applies to listeners tonic binds itself.)
    let incoming = crate::incoming::incoming(listener, cfg.max_connections);
    // gRPC server reflection (v1 and the v1alpha older tools ask for), so `grpcurl` and the
    // like list and call the services without the .proto files.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(skein_proto::FILE_DESCRIPTOR_SET)
    };
    // Built into the binary by skein-proto's build script from the same protos as the code.
    const DESCRIPTORS: &str = "the compiled-in descriptor set is valid";
    let mut server = tonic::transport::Server::builder();
    if let Some(id) = tls {
        server = server
            .tls_config(id.server())
            .map_err(|e| ClusterError::Invalid {
                field: "cluster_tls",
                reason: e.to_string(),
            })?;
    }
    let admin = AdminService::new(
        cluster.clone(),
        manual,
        cfg.delivery.mta_name.clone(),
        held,
        cfg.promote_max_lag,
    );
    let auth = crate::auth::AuthLayer::new(tls.is_some(), cluster.clone());
    let server = server
        // A peer that stops answering HTTP/2 pings is dropped, freeing its place in
        // `max_connections`.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_frame_size(skein_proto::MAX_FRAME_BYTES)
        .layer(auth)
        .add_service(reflection().build_v1().expect(DESCRIPTORS))
        .add_service(reflection().build_v1alpha().expect(DESCRIPTORS))
        .add_service(
            RaftServer::new(RaftService::new(
                raft.clone(),
                cluster.clock.clone(),
                Some(identity.clone()),
            ))
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE),
        )
        .add_service(
            IngestServer::new(IngestService::new(
                cluster.clone(),
                batcher,
                cfg.ingest_memory.0,
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES + 1024 * 1024),
        )
        .add_service(
            AdminServer::new(admin.clone())
                .max_encoding_message_size(MAX_MESSAGE_BYTES + 1024 * 1024),
        )
        .add_service(HealthServer::new(crate::health::HealthService::new(
            cluster.clone(),
        )))
        .add_service(
            WorkServer::new(work)
                .max_encoding_message_size(MAX_MESSAGE_BYTES + 1024 * 1024)
                .max_decoding_message_size(4 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, async {
            tokio::select! {
                _ = stopped => {}
                _ = on_removal => {}
            }
        });
    let server = tokio::spawn(server);

    if !cfg.joins() {
        let founders = cfg.founders();
        let lowest = founders.iter().map(|m| m.id).min();
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        if lowest == Some(cfg.id) && !initialized {
            let members: BTreeMap<NodeId, BasicNode> = founders
                .iter()
                .map(|m| {
                    (
                        m.id,
                        BasicNode {
                            addr: m.addr.clone(),
                        },
                    )
                })
                .collect();
            let id = identity.found()?;
            tracing::info!(?members, cluster = %id, "initializing cluster");
            match raft.initialize(members).await {
                // A new cluster: every founder runs this release, so it writes its format.
                Ok(()) => {
                    tokio::spawn(finalize_new_cluster(cluster.clone()));
                }
                // Another path initialized it first: not an error.
                Err(e) => tracing::warn!(%e, "initialize"),
            }
        }
    }
    if !cfg.tenants.is_empty() {
        tokio::spawn(seed_tenants(cluster.clone(), cfg.tenants.clone()));
    }
    Ok(NodeHandle {
        cluster,
        local_addr,
        admin,
        stop: Some(stop),
        server,
        was_removed,
    })
}

/// Raises a newly founded cluster's format to this release's, once it has a leader.
async fn finalize_new_cluster(ctx: Arc<Cluster>) {
    loop {
        let res = match ctx.route(false) {
            Ok(Route::Local) => ctx.finalize_format().await,
            Ok(Route::Forward(addr)) => crate::admin::forward_finalize(&ctx, &addr).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(v) => {
                tracing::info!(format = v, "new cluster writes format {v}");
                return;
            }
            Err(e) => {
                tracing::debug!(%e, "format waits for a leader");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Creates the configured tenants once a leader exists (from whichever node has them).
async fn seed_tenants(ctx: Arc<Cluster>, seeds: Vec<TenantSeed>) {
    for seed in seeds {
        let username = seed.username.clone().unwrap_or_else(|| seed.name.clone());
        loop {
            let res = match ctx.route(false) {
                Ok(Route::Local) => {
                    crate::admin::create_tenant(&ctx, &seed.name, &username, &seed.password)
                        .await
                        .map(|_| ())
                }
                Ok(Route::Forward(addr)) => {
                    crate::admin::forward_create_tenant(
                        &ctx,
                        &addr,
                        &seed.name,
                        &username,
                        &seed.password,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    tracing::info!(tenant = %seed.name, "created tenant from configuration");
                    break;
                }
                Err(ClusterError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::debug!(%e, "tenant seed waits for a leader");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}
