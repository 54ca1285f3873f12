//! The types openraft is instantiated with: what a log entry carries, what
//! applying it returns, and what a member is.

use haven_store::{Applied, Command};
use serde::{Deserialize, Serialize};

use crate::config::NodeRole;

/// A log entry's payload: commands applied together, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The commands.
    pub commands: Vec<Command>,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} commands", self.commands.len())
    }
}

/// What applying a [`Batch`] produced (empty for blank and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// One per command.
    pub applied: Vec<Applied>,
}

/// A member of the cluster as the replicated membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of its API and cluster protocol.
    pub addr: String,
    /// Data node or witness.
    pub role: NodeRole,
}

impl Member {
    /// Its base URL (`http://127.0.0.2:7400`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.addr, self.role)
    }
}

openraft::declare_raft_types!(
    /// Haven's openraft type configuration.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = Member,
        SnapshotData = Vec<u8>,
);

/// A node id.
pub type NodeId = u64;
/// A raft log id.
pub type LogId = openraft::LogId<NodeId>;
/// A raft vote.
pub type Vote = openraft::Vote<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// The raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
/// Membership as stored with its log id.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
