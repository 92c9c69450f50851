//! An in-process cluster: real openraft instances on real RocksDB stores (one temporary
//! directory each), joined by an in-memory transport whose links can be cut on demand, each
//! with its own group-commit [`Batcher`] and its own scheduler, which senders reach through
//! [`Node::sessions`] and [`Node::inputs`] as the Work service would.
//!
//! Faults are deterministic: a cut link fails every call at once (as a dead peer does), so a
//! test decides exactly which node sees what.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use skein_cluster::events::EventLog;
use skein_cluster::ingest::{Batcher, Submission};
use skein_cluster::network::Channels;
use skein_cluster::scheduler::{Input, Sessions};
use skein_config::DeliveryConfig;
use skein_core::{SharedClock, SystemClock};
use skein_queue::{NewMessage, NodeId, QueueReader, Request, TypeConfig, FORMAT};

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// The in-memory transport: which nodes exist and which links are cut.
#[derive(Clone, Default)]
pub struct Net {
    inner: Arc<Mutex<NetState>>,
}

#[derive(Default)]
struct NetState {
    rafts: HashMap<NodeId, Raft<TypeConfig>>,
    cut: HashSet<(NodeId, NodeId)>,
}

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Raft at `to`, unless the link from `from` is cut.
    fn route(&self, from: NodeId, to: NodeId) -> Result<Raft<TypeConfig>, Unreachable> {
        let s = self.lock();
        let why = if s.cut.contains(&(from, to)) {
            format!("link {from}->{to} cut")
        } else if let Some(r) = s.rafts.get(&to) {
            return Ok(r.clone());
        } else {
            format!("no node {to}")
        };
        Err(Unreachable::new(&std::io::Error::other(why)))
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut s = self.lock();
        let ids: Vec<NodeId> = s.rafts.keys().copied().collect();
        for other in ids.into_iter().filter(|&o| o != id) {
            s.cut.insert((id, other));
            s.cut.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }
}

struct Factory {
    from: NodeId,
    net: Net,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
        Conn {
            from: self.from,
            to: target,
            net: self.net.clone(),
        }
    }
}

/// One node's link to another.
pub struct Conn {
    from: NodeId,
    to: NodeId,
    net: Net,
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let raft = self
            .net
            .route(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let raft = self
            .net
            .route(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        let raft = self
            .net
            .route(self.from, self.to)
            .map_err(RPCError::Unreachable)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

/// One node of the in-process cluster.
pub struct Node {
    /// Its Raft.
    pub raft: Raft<TypeConfig>,
    /// Its group commit.
    pub batcher: Batcher,
    /// Reads over its applied state.
    pub reader: QueueReader,
    /// Its scheduler's sender sessions.
    #[allow(dead_code)] // not every test binary has senders
    pub sessions: Arc<Sessions>,
    /// Its scheduler's inputs.
    #[allow(dead_code)]
    pub inputs: tokio::sync::mpsc::Sender<Input>,
}

/// A cluster of `n` in-process nodes, ids 1..=n.
pub struct Cluster {
    /// The transport, for fault injection.
    pub net: Net,
    /// Nodes by id.
    pub nodes: BTreeMap<NodeId, Node>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Commit deadline the batchers are given.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Starts `n` nodes that snapshot every `snapshot_after` entries and keep no log behind a
    /// snapshot (so a lagging node catches up by snapshot), and founds a cluster that writes
    /// this release's format, as a new real cluster does.
    pub async fn start(n: u64, snapshot_after: u64) -> Self {
        let c = Self::start_at_format_1(n, snapshot_after).await;
        let l = c.leader(&(1..=n).collect::<Vec<_>>()).await;
        c.nodes[&l]
            .raft
            .client_write(Request::SetFormat { version: FORMAT })
            .await
            .expect("finalize the format");
        c
    }

    /// The same, as a cluster that began on release 0.1.0 (format 1) would be until an
    /// operator finalizes its upgrade.
    pub async fn start_at_format_1(n: u64, snapshot_after: u64) -> Self {
        let net = Net::default();
        let clock: SharedClock = Arc::new(SystemClock);
        let config = Arc::new(
            openraft::Config {
                cluster_name: "skein-test".into(),
                heartbeat_interval: 50,
                election_timeout_min: 300,
                election_timeout_max: 600,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_after),
                max_in_snapshot_log_to_keep: 0,
                purge_batch_size: 1,
                ..Default::default()
            }
            .validate()
            .expect("raft config"),
        );
        let mut nodes = BTreeMap::new();
        let mut dirs = Vec::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, sm, reader) = skein_queue::open(dir.path()).expect("open store");
            let raft = Raft::new(
                id,
                config.clone(),
                Factory {
                    from: id,
                    net: net.clone(),
                },
                log,
                sm,
            )
            .await
            .expect("raft");
            net.lock().rafts.insert(id, raft.clone());
            let batcher = Batcher::spawn(
                raft.clone(),
                clock.clone(),
                64,
                1 << 20,
                COMMIT_TIMEOUT,
                reader.clone(),
                Arc::new(EventLog::open(None, false).expect("no event log")),
            );
            let sessions = Arc::new(Sessions::default());
            let (inputs, inputs_rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(skein_cluster::scheduler::run(
                Arc::new(skein_cluster::route::Cluster::new(
                    id,
                    format!("node-{id}"),
                    raft.clone(),
                    reader.clone(),
                    COMMIT_TIMEOUT,
                    clock.clone(),
                    Channels::default(),
                )),
                sessions.clone(),
                inputs_rx,
                DeliveryConfig::default(),
                Arc::new(EventLog::open(None, false).expect("no event log")),
                Arc::default(),
                None,
                fastrand::Rng::with_seed(id),
            ));
            nodes.insert(
                id,
                Node {
                    raft,
                    batcher,
                    reader,
                    sessions,
                    inputs,
                },
            );
            dirs.push(dir);
        }
        let members: BTreeMap<NodeId, BasicNode> = (1..=n)
            .map(|id| {
                (
                    id,
                    BasicNode {
                        addr: format!("node-{id}"),
                    },
                )
            })
            .collect();
        nodes[&1]
            .raft
            .initialize(members)
            .await
            .expect("initialize");
        Self {
            net,
            nodes,
            _dirs: dirs,
        }
    }

    /// The metrics of node `id`.
    pub fn metrics(&self, id: NodeId) -> RaftMetrics<NodeId, BasicNode> {
        self.nodes[&id].raft.metrics().borrow().clone()
    }

    /// Waits (up to 10 s) until one of `among` is leader and the others in `among` follow it.
    pub async fn leader(&self, among: &[NodeId]) -> NodeId {
        self.until("a leader", || {
            let leaders: Vec<NodeId> = among
                .iter()
                .filter(|&&id| self.metrics(id).state == ServerState::Leader)
                .copied()
                .collect();
            let [l] = leaders[..] else { return None };
            among
                .iter()
                .all(|&id| self.metrics(id).current_leader == Some(l))
                .then_some(l)
        })
        .await
    }

    /// Polls `f` every 20 ms for up to 10 s; panics naming `what` if it never holds.
    pub async fn until<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = std::time::Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}; metrics: {:#?}",
                self.nodes
                    .keys()
                    .map(|&id| self.metrics(id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A small message numbered `i`, submission id `sub-i`.
pub fn message(i: usize) -> Submission {
    Submission {
        id: format!("sub-{i}").into_bytes(),
        message: new_message(i),
    }
}

fn new_message(i: usize) -> NewMessage {
    NewMessage {
        tenant: String::new(),
        mail_from: "app@example.com".into(),
        rcpt_to: vec![format!("r{i}@example.net")],
        data: format!("Subject: {i}\r\n\r\nbody {i}\r\n")
            .into_bytes()
            .into(),
        client_ip: "127.0.0.1".into(),
        helo: "client.test".into(),
        edge: "edge-test".into(),
        smtputf8: false,
        body_8bit: false,
    }
}
