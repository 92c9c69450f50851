//! Raft's transport over gRPC.

use std::collections::HashMap;
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
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use skein_proto::raft::raft_client::RaftClient;
use skein_proto::raft::raft_server::Raft as RaftRpc;
use skein_proto::raft::RaftPayload;
use skein_queue::{NodeId, TypeConfig};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// Largest gRPC message between nodes (a batch of messages, a snapshot chunk).
pub const MAX_RAFT_MESSAGE: usize = 256 * 1024 * 1024;

/// Lazily connected gRPC channels to other nodes, by address.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    /// A channel to `addr` (`host:port`), created on first use and then shared.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
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
        }
    }
}

/// Raft's connection to one node.
#[derive(Debug)]
pub struct Connection {
    target: NodeId,
    addr: String,
    channels: Channels,
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
        let channel = self.channels.get(&self.addr).map_err(|e| unreachable(&e))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        let data =
            postcard::to_allocvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(hint) = fewer_entries(data.len(), entries, MAX_RAFT_MESSAGE) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let mut request = Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        // Bounded here too, not only by openraft's own timers: the transport never waits on
        // a peer that does not answer longer than openraft allowed.
        let reply = skein_proto::call_within(option.hard_ttl(), async {
            match which {
                Rpc::Vote => client.vote(request).await,
                Rpc::Append => client.append_entries(request).await,
                Rpc::Snapshot => client.install_snapshot(request).await,
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
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
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
}

impl RaftService {
    /// Serves `raft`.
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        Self { raft }
    }
}

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    postcard::from_bytes(&p.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    postcard::to_allocvec(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r: VoteRequest<NodeId> = decode(req.get_ref())?;
        encode(&self.raft.vote(r).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let r: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.append_entries(r).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let r: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        encode(&self.raft.install_snapshot(r).await)
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
