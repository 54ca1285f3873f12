//! Raft messages between nodes over HTTP (`/cluster/v1/raft/...`), sent by
//! the [`ClusterClient`]. Snapshots travel whole in one request: the meta as
//! length-prefixed JSON, then the store image.

use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::Snapshot;

use crate::client::{ClientError, ClusterClient};
use crate::types::{Member, NodeId, SnapshotMeta, TypeConfig, Vote};

/// Paths of the raft protocol.
pub(crate) const APPEND_PATH: &str = "/cluster/v1/raft/append";
pub(crate) const VOTE_PATH: &str = "/cluster/v1/raft/vote";
pub(crate) const SNAPSHOT_PATH: &str = "/cluster/v1/raft/snapshot";

/// Makes a [`NodeNetwork`] per peer.
pub struct Network {
    client: ClusterClient,
}

impl Network {
    /// Peers are reached with `client`.
    pub fn new(client: ClusterClient) -> Self {
        Self { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NodeNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        NodeNetwork {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The connection to one peer.
pub struct NodeNetwork {
    client: ClusterClient,
    target: NodeId,
    addr: String,
}

/// Encodes a snapshot for the wire.
pub(crate) fn encode_snapshot(
    vote: &Vote,
    meta: &SnapshotMeta,
    image: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    let head = serde_json::to_vec(&(vote, meta))?;
    let mut body = (head.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&head);
    body.extend_from_slice(image);
    Ok(body)
}

/// Decodes what [`encode_snapshot`] produced.
pub(crate) fn decode_snapshot(body: &[u8]) -> Result<(Vote, SnapshotMeta, Vec<u8>), String> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or("snapshot body truncated")?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err("snapshot body truncated".into());
    }
    let (vote, meta) = serde_json::from_slice(&rest[..len]).map_err(|e| e.to_string())?;
    Ok((vote, meta, rest[len..].to_vec()))
}

impl NodeNetwork {
    async fn rpc<Req, Resp>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId>> = self
            .client
            .post_json(&self.addr, path, request, timeout)
            .await
            .map_err(|e| to_rpc_error(&e))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn to_rpc_error<E: std::error::Error>(e: &ClientError) -> RPCError<NodeId, Member, E> {
    match e {
        ClientError::Connect { .. } => RPCError::Unreachable(Unreachable::new(e)),
        _ => RPCError::Network(NetworkError::new(e)),
    }
}

impl RaftNetwork<TypeConfig> for NodeNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(APPEND_PATH, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(VOTE_PATH, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let body = encode_snapshot(&vote, &snapshot.meta, &snapshot.snapshot)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        // A snapshot is the whole store: give it time proportional to its size.
        let timeout = Duration::from_secs(10 + (body.len() as u64 >> 20));
        let (status, bytes) = self
            .client
            .call(
                hyper::Method::POST,
                &self.addr,
                SNAPSHOT_PATH,
                body,
                timeout,
            )
            .await
            .map_err(|e| match to_rpc_error::<Fatal<NodeId>>(&e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                _ => StreamingError::Network(NetworkError::new(&e)),
            })?;
        if !status.is_success() {
            let e = ClientError::Status {
                addr: self.addr.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            };
            return Err(StreamingError::Network(NetworkError::new(&e)));
        }
        let answer: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            serde_json::from_slice(&bytes)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn backoff(&self) -> Backoff {
        // Retry an unreachable peer often enough that a returning node
        // catches up quickly, without flooding the log.
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
