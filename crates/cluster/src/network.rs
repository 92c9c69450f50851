//! Raft's transport over gRPC.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Entry, LogId, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use skein_core::SharedClock;
use skein_proto::raft::raft_client::RaftClient;
use skein_proto::raft::raft_server::Raft as RaftRpc;
use skein_proto::raft::RaftPayload;
use skein_queue::{NodeId, TypeConfig};
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::staging::{
    upload_deadline, Part, Staged, StagedAppend, STAGED_BUDGET, STAGED_TTL, STAGE_ENTRY_ABOVE,
    STAGE_REQUEST_ABOVE,
};

/// Largest gRPC message between nodes (a batch of messages, a snapshot chunk).
pub const MAX_RAFT_MESSAGE: usize = 256 * 1024 * 1024;

/// Lazily connected gRPC channels to other nodes, by address.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<ClientTlsConfig>,
    identity: Option<Arc<crate::identity::ClusterIdentity>>,
}

impl Channels {
    /// This node's cluster identity, when its calls carry one.
    pub fn identity(&self) -> Option<&Arc<crate::identity::ClusterIdentity>> {
        self.identity.as_ref()
    }

    /// Channels over mutual TLS with `tls` (this node's certificate), or plaintext without;
    /// Raft calls carry `identity`'s cluster id.
    pub fn new(
        tls: Option<ClientTlsConfig>,
        identity: Option<Arc<crate::identity::ClusterIdentity>>,
    ) -> Self {
        Self {
            inner: Arc::default(),
            tls,
            identity,
        }
    }

    /// Adds this node's cluster id to a Raft call.
    fn stamp<T>(&self, req: &mut Request<T>) {
        if let Some(id) = &self.identity {
            id.stamp(req);
        }
    }

    /// A channel to `addr` (`host:port`), created on first use and then shared.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.get_keyed(addr, addr)
    }

    /// A second channel to `addr`, its own TCP connection, for bulk transfers (staged log
    /// entries): what waits in its buffers never delays a heartbeat or a vote.
    pub fn bulk(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.get_keyed(&format!("{addr} bulk"), addr)
    }

    fn get_keyed(&self, key: &str, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(skein_pki::uri(addr, self.tls.is_some()))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let ch = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(key.to_string(), ch.clone());
        Ok(ch)
    }
}

/// Creates a [`Connection`] per target node.
#[derive(Debug, Clone, Default)]
pub struct Network {
    channels: Channels,
}

impl Network {
    /// A network sharing `channels` with the rest of the node.
    pub fn new(channels: Channels) -> Self {
        Self { channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Connection {
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
            uploads: BTreeMap::new(),
            no_staging: false,
        }
    }
}

/// Raft's connection to one node.
#[derive(Debug)]
pub struct Connection {
    target: NodeId,
    addr: String,
    channels: Channels,
    /// Entries being or already staged at the target (see [`crate::staging`]).
    uploads: BTreeMap<LogId<NodeId>, watch::Receiver<Upload>>,
    /// The target answered `StageEntry` with UNIMPLEMENTED (an older release).
    no_staging: bool,
}

/// Where the upload of one staged entry stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Upload {
    Running,
    Done,
    Failed,
    /// The target does not have the `StageEntry` call.
    Unsupported,
}

impl Connection {
    /// Sends `req`, of `entries` log entries when it is an AppendEntries.
    async fn call<Req, Resp, E>(
        &self,
        which: Rpc,
        req: &Req,
        entries: usize,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = skein_queue::types::encode(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(hint) = fewer_entries(data.len(), entries, MAX_RAFT_MESSAGE) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send(which, data, option.hard_ttl()).await
    }

    fn client(&self) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(raft_client(self.channels.get(&self.addr)?))
    }

    /// Sends an encoded request and decodes the reply, all within `limit`.
    async fn send<Resp, E>(
        &self,
        which: Rpc,
        data: Vec<u8>,
        limit: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.client().map_err(|e| unreachable(&e))?;
        let mut request = Request::new(RaftPayload { data: data.into() });
        request.set_timeout(limit);
        self.channels.stamp(&mut request);
        // Bounded here too, not only by openraft's own timers: the transport never waits on
        // a peer that does not answer longer than openraft allowed.
        let reply = skein_proto::call_within(limit, async {
            match which {
                Rpc::Vote => client.vote(request).await,
                Rpc::Append => client.append_entries(request).await,
                Rpc::Snapshot => client.install_snapshot(request).await,
                Rpc::AppendStaged => client.append_staged(request).await,
            }
        })
        .await;
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                return Err(unreachable(&s));
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE)
}

/// How many entries to send instead when `entries` of them encode to `len` bytes, more than
/// the transport carries (`max`): openraft shrinks the request to that and retries. Without
/// this, a lagging follower sent many large batches at once would fail the same way for ever.
/// `None` when it fits, or when a single entry does not (nothing smaller can be sent; entries
/// are capped well below the limit).
fn fewer_entries(len: usize, entries: usize, max: usize) -> Option<u64> {
    if len <= max || entries <= 1 {
        return None;
    }
    // Proportionally fewer, with a margin for entries of unequal sizes.
    let fit = (entries as u128 * max as u128 / len as u128 * 3 / 4) as usize;
    Some(fit.clamp(1, entries - 1) as u64)
}

fn unreachable<E, X>(e: &X) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>>
where
    E: std::error::Error,
    X: std::error::Error + 'static,
{
    RPCError::Unreachable(Unreachable::new(e))
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    Vote,
    Append,
    Snapshot,
    AppendStaged,
}

impl Connection {
    /// Sends an AppendEntries whose large entries go ahead by `StageEntry` (see
    /// [`crate::staging`]); `None` when it is small enough to go as it is.
    async fn append_staged(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Option<Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>>
    {
        if self.no_staging {
            return None;
        }
        let started = tokio::time::Instant::now();
        // Forget uploads this request no longer needs: the target holds them, or a new leader
        // truncated them.
        let wanted: BTreeSet<LogId<NodeId>> = rpc.entries.iter().map(|e| e.log_id).collect();
        self.uploads.retain(|id, _| wanted.contains(id));
        if self.uploads.is_empty() {
            // Not staging yet: only a large request is (measured without encoding it).
            let size = postcard::experimental::serialized_size(rpc).ok()?;
            if size <= STAGE_REQUEST_ABOVE {
                return None;
            }
        }
        let mut parts = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            if self.uploads.contains_key(&e.log_id) {
                parts.push(Part::Staged(e.log_id));
                continue;
            }
            // Measured first (no copy): only entries that are staged are encoded here.
            if postcard::experimental::serialized_size(e).is_ok_and(|n| n <= STAGE_ENTRY_ABOVE) {
                parts.push(Part::Inline(e.clone()));
                continue;
            }
            let data = match skein_queue::types::encode(e) {
                Ok(d) => d,
                Err(err) => return Some(Err(RPCError::Network(NetworkError::new(&err)))),
            };
            let client = match self.channels.bulk(&self.addr) {
                Ok(c) => raft_client(c),
                Err(err) => return Some(Err(unreachable(&err))),
            };
            self.uploads
                .insert(e.log_id, start_upload(client, data, &self.channels));
            parts.push(Part::Staged(e.log_id));
        }
        // Wait for the uploads for half of what openraft allows this call, keeping the other
        // half for the request that follows.
        let wait = option.hard_ttl() / 2;
        let mut all_done = true;
        for rx in self.uploads.values_mut() {
            let state = tokio::time::timeout_at(started + wait, async {
                rx.wait_for(|u| *u != Upload::Running)
                    .await
                    .map(|u| u.clone())
                    .unwrap_or(Upload::Failed)
            })
            .await
            .unwrap_or(Upload::Running);
            match state {
                Upload::Done => {}
                Upload::Unsupported => {
                    tracing::info!(
                        target = self.target,
                        "node has no StageEntry: entries go inline"
                    );
                    self.no_staging = true;
                    self.uploads.clear();
                    return None;
                }
                _ => all_done = false,
            }
        }
        // A failed upload starts again on the next call.
        self.uploads
            .retain(|_, rx| !matches!(*rx.borrow(), Upload::Failed));
        let left = option.hard_ttl().saturating_sub(started.elapsed());
        if !all_done {
            // Keep the target's election timer reset meanwhile, and tell openraft only what
            // the target already matched.
            let heartbeat = AppendEntriesRequest::<TypeConfig> {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                leader_commit: rpc.leader_commit,
                entries: Vec::new(),
            };
            let data = match skein_queue::types::encode(&heartbeat) {
                Ok(d) => d,
                Err(err) => return Some(Err(RPCError::Network(NetworkError::new(&err)))),
            };
            let r = self.send(Rpc::Append, data, left).await;
            return Some(r.map(|resp| match resp {
                AppendEntriesResponse::Success => {
                    AppendEntriesResponse::PartialSuccess(rpc.prev_log_id)
                }
                other => other,
            }));
        }
        let req = StagedAppend {
            vote: rpc.vote,
            prev_log_id: rpc.prev_log_id,
            leader_commit: rpc.leader_commit,
            entries: parts,
        };
        let data = match skein_queue::types::encode(&req) {
            Ok(d) => d,
            Err(err) => return Some(Err(RPCError::Network(NetworkError::new(&err)))),
        };
        let r = self.send(Rpc::AppendStaged, data, left).await;
        if let Err(RPCError::Network(e)) = &r {
            if e.to_string().contains(STAGED_MISSING) {
                // The target dropped them (restarted, or its budget ran out): upload again.
                self.uploads.clear();
            }
        }
        Some(r)
    }
}

/// Part of the NOT_FOUND message of an `AppendStaged` naming entries the node does not hold.
const STAGED_MISSING: &str = "staged entries not held";

/// Uploads one encoded entry in the background, with a deadline sized to it: it goes on when
/// the AppendEntries that started it times out.
fn start_upload(
    mut client: RaftClient<Channel>,
    data: Vec<u8>,
    channels: &Channels,
) -> watch::Receiver<Upload> {
    let (tx, rx) = watch::channel(Upload::Running);
    let limit = upload_deadline(data.len());
    let mut request = Request::new(RaftPayload { data: data.into() });
    request.set_timeout(limit);
    channels.stamp(&mut request);
    tokio::spawn(async move {
        let r = skein_proto::call_within(limit, client.stage_entry(request)).await;
        let state = match r {
            Ok(_) => Upload::Done,
            Err(s) if s.code() == tonic::Code::Unimplemented => Upload::Unsupported,
            Err(s) => {
                tracing::warn!(error = %s, "staging a log entry failed; it will be sent again");
                Upload::Failed
            }
        };
        let _ = tx.send(state);
    });
    rx
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if let Some(r) = self.append_staged(&rpc, &option).await {
            return r;
        }
        let entries = rpc.entries.len();
        self.call(Rpc::Append, &rpc, entries, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, 0, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, 0, &option).await
    }
}

/// The `skein.raft.v1.Raft` service: hands incoming RPCs to the local Raft.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig>,
    staged: Arc<Mutex<Staged>>,
    clock: SharedClock,
    identity: Option<Arc<crate::identity::ClusterIdentity>>,
}

impl RaftService {
    /// Serves `raft`, to callers of `identity`'s cluster (when given).
    pub fn new(
        raft: Raft<TypeConfig>,
        clock: SharedClock,
        identity: Option<Arc<crate::identity::ClusterIdentity>>,
    ) -> Self {
        Self {
            raft,
            staged: Arc::new(Mutex::new(Staged::new(STAGED_BUDGET, STAGED_TTL))),
            clock,
            identity,
        }
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    skein_queue::types::decode_shared(&p.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    skein_queue::types::encode(v)
        .map(|data| Response::new(RaftPayload { data: data.into() }))
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

impl RaftService {
    /// Refuses a call from another cluster (see [`crate::identity`]).
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match &self.identity {
            Some(id) => id.check(req.metadata()),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let r: VoteRequest<NodeId> = decode(req.get_ref())?;
        encode(&self.raft.vote(r).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let r: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.append_entries(r).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let r: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(r).await)
    }

    async fn stage_entry(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let size = req.get_ref().data.len();
        let entry: Entry<TypeConfig> = decode(req.get_ref())?;
        let now = self.clock.now_ms();
        self.staged()
            .insert(entry, size, now)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        Ok(Response::new(RaftPayload::default()))
    }

    async fn append_staged(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&req)?;
        let r: StagedAppend = decode(req.get_ref())?;
        let entries = self.staged().resolve(r.entries).map_err(|missing| {
            let ids: Vec<String> = missing.iter().map(|id| id.to_string()).collect();
            Status::not_found(format!("{STAGED_MISSING}: {}", ids.join(", ")))
        })?;
        let r = AppendEntriesRequest {
            vote: r.vote,
            prev_log_id: r.prev_log_id,
            leader_commit: r.leader_commit,
            entries,
        };
        encode(&self.raft.append_entries(r).await)
    }
}

#[cfg(test)]
mod tests {
    use super::fewer_entries;

    #[test]
    fn oversized_appends_ask_for_fewer_entries() {
        assert_eq!(fewer_entries(100, 16, 100), None, "fits");
        assert_eq!(
            fewer_entries(1_000, 1, 100),
            None,
            "one entry cannot shrink"
        );
        // 16 entries in 400 bytes with 100 allowed: 4 would fit, ask for 3.
        assert_eq!(fewer_entries(400, 16, 100), Some(3));
        // Barely over: one fewer at least.
        assert_eq!(fewer_entries(101, 16, 100), Some(11));
        assert_eq!(fewer_entries(101, 2, 100), Some(1));
        // Far over: never zero.
        assert_eq!(fewer_entries(1 << 40, 16, 100), Some(1));
    }
}

/// The transport's staging against a scripted peer: which calls arrive, in which order, and
/// what openraft is told.
#[cfg(test)]
mod staging_tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use openraft::{CommittedLeaderId, EntryPayload, Vote};
    use skein_proto::raft::raft_server::RaftServer;
    use skein_queue::{NewMessage, Request as Cmd};

    use super::*;

    /// A peer that records calls. `staging`: whether it has StageEntry; `forget_once`: its
    /// first AppendStaged finds nothing staged; `slow_stage`: uploads take this long.
    #[derive(Clone, Default)]
    struct Peer {
        staging: bool,
        forget_once: Arc<AtomicBool>,
        slow_stage: Duration,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl Peer {
        fn log(&self, what: String) {
            self.calls.lock().unwrap().push(what);
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn ok(r: AppendEntriesResponse<NodeId>) -> Result<Response<RaftPayload>, Status> {
        encode(&Ok::<_, RaftError<NodeId>>(r))
    }

    #[tonic::async_trait]
    impl RaftRpc for Peer {
        async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("vote"))
        }

        async fn append_entries(
            &self,
            req: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            let r: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
            self.log(format!("append {}", r.entries.len()));
            ok(AppendEntriesResponse::Success)
        }

        async fn install_snapshot(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }

        async fn stage_entry(
            &self,
            req: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            if !self.staging {
                self.log("stage refused".into());
                return Err(Status::unimplemented("stage_entry"));
            }
            tokio::time::sleep(self.slow_stage).await;
            let e: Entry<TypeConfig> = decode(req.get_ref())?;
            self.log(format!("stage {}", e.log_id.index));
            Ok(Response::new(RaftPayload::default()))
        }

        async fn append_staged(
            &self,
            req: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            if self.forget_once.swap(false, Ordering::SeqCst) {
                self.log("append_staged missing".into());
                return Err(Status::not_found(format!("{STAGED_MISSING}: 1-1-1")));
            }
            let r: StagedAppend = decode(req.get_ref())?;
            let kinds: Vec<&str> = r
                .entries
                .iter()
                .map(|p| match p {
                    Part::Inline(_) => "inline",
                    Part::Staged(_) => "staged",
                })
                .collect();
            self.log(format!("append_staged {}", kinds.join(" ")));
            ok(AppendEntriesResponse::Success)
        }
    }

    async fn serve(peer: Peer) -> Connection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    RaftServer::new(peer)
                        .max_decoding_message_size(MAX_RAFT_MESSAGE)
                        .max_encoding_message_size(MAX_RAFT_MESSAGE),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Network::new(Channels::default())
            .new_client(2, &BasicNode { addr })
            .await
    }

    fn entry(index: u64, size: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Cmd::Enqueue {
                received_at_ms: 0,
                messages: vec![NewMessage {
                    tenant: String::new(),
                    mail_from: "a@example.com".into(),
                    rcpt_to: vec!["b@example.net".into()],
                    data: vec![b'x'; size].into(),
                    client_ip: String::new(),
                    helo: String::new(),
                    edge: String::new(),
                    smtputf8: false,
                    body_8bit: false,
                }],
            }),
        }
    }

    /// A 2 MB entry and a small one after it, following entry 1.
    fn large() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            leader_commit: None,
            entries: vec![entry(2, 2_000_000), entry(3, 100)],
        }
    }

    fn ttl(ms: u64) -> RPCOption {
        RPCOption::new(Duration::from_millis(ms))
    }

    #[tokio::test]
    async fn small_requests_go_inline_and_large_entries_go_ahead_staged() {
        let peer = Peer {
            staging: true,
            ..Default::default()
        };
        let mut c = serve(peer.clone()).await;
        let mut small = large();
        small.entries = vec![entry(2, 100)];
        let r = c.append_entries(small, ttl(5_000)).await.unwrap();
        assert_eq!(r, AppendEntriesResponse::Success);
        let r = c.append_entries(large(), ttl(5_000)).await.unwrap();
        assert_eq!(r, AppendEntriesResponse::Success);
        assert_eq!(
            peer.calls(),
            ["append 1", "stage 2", "append_staged staged inline"]
        );
    }

    /// While an upload runs, the follower gets heartbeats and openraft hears that only the
    /// entry before the request matches; once it is done, the staged append goes.
    #[tokio::test]
    async fn a_running_upload_sends_heartbeats_and_reports_partial_success() {
        let peer = Peer {
            staging: true,
            slow_stage: Duration::from_millis(600),
            ..Default::default()
        };
        let mut c = serve(peer.clone()).await;
        let prev = large().prev_log_id;
        let r = c.append_entries(large(), ttl(200)).await.unwrap();
        assert_eq!(r, AppendEntriesResponse::PartialSuccess(prev));
        assert_eq!(
            peer.calls(),
            ["append 0"],
            "a heartbeat, nothing staged yet"
        );
        let r = loop {
            match c.append_entries(large(), ttl(200)).await.unwrap() {
                AppendEntriesResponse::PartialSuccess(p) => assert_eq!(p, prev),
                done => break done,
            }
        };
        assert_eq!(r, AppendEntriesResponse::Success);
        let calls = peer.calls();
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("stage")).count(),
            1,
            "uploaded once: {calls:?}"
        );
        assert_eq!(calls.last().unwrap(), "append_staged staged inline");
    }

    /// A peer of the previous release has no StageEntry: entries go inline, and it is not
    /// asked again.
    #[tokio::test]
    async fn a_peer_without_staging_gets_entries_inline() {
        let peer = Peer::default();
        let mut c = serve(peer.clone()).await;
        for _ in 0..2 {
            let r = c.append_entries(large(), ttl(5_000)).await.unwrap();
            assert_eq!(r, AppendEntriesResponse::Success);
        }
        assert_eq!(peer.calls(), ["stage refused", "append 2", "append 2"]);
    }

    /// A peer that lost what was staged (restarted, or dropped it for room) says so; the next
    /// call uploads again.
    #[tokio::test]
    async fn entries_a_peer_no_longer_holds_are_uploaded_again() {
        let peer = Peer {
            staging: true,
            forget_once: Arc::new(AtomicBool::new(true)),
            ..Default::default()
        };
        let mut c = serve(peer.clone()).await;
        assert!(c.append_entries(large(), ttl(5_000)).await.is_err());
        let r = c.append_entries(large(), ttl(5_000)).await.unwrap();
        assert_eq!(r, AppendEntriesResponse::Success);
        assert_eq!(
            peer.calls(),
            [
                "stage 2",
                "append_staged missing",
                "stage 2",
                "append_staged staged inline"
            ]
        );
    }
}
