//! Errors of the HA service.

use haven_store::{CommitError, StoreError};

use crate::types::NodeId;

/// What can go wrong running or operating a cluster node.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// The configuration cannot be used.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// No such node.
    #[error("node {id} is not a member (members: {known:?})")]
    UnknownNode {
        /// The id asked for.
        id: NodeId,
        /// The ids there are.
        known: Vec<NodeId>,
    },
    /// The operation must run on the primary.
    #[error("this node is not the primary{}", .leader.map(|l| format!("; node {l} is")).unwrap_or_default())]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The operation is refused; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The raft log or snapshot storage failed.
    #[error("raft storage: {0}")]
    Storage(String),
    /// The consensus layer failed.
    #[error("raft: {0}")]
    Raft(String),
    /// A write failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
}
