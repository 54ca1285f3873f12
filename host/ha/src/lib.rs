//! # haven-ha
//!
//! Haven's HA service: two data nodes and a witness act as one. The state
//! store is replicated through openraft (0.9): every write is a raft log entry
//! carrying store [`haven_store::Command`]s, acknowledged once a quorum holds
//! it durably, then applied in the same order on every node.
//!
//! | module | job |
//! |---|---|
//! | `config` | `cluster.toml`: members, secret, timeouts; checked with field names |
//! | `types` | openraft type configuration: [`Batch`] entries, [`Member`] nodes |
//! | `log_store` | raft log and vote in redb, durable before returning |
//! | `state_machine` | applies entries to the [`haven_store::Store`] with the raft bookkeeping in the same transaction; snapshots are whole-store images |
//! | `network`, `client` | raft RPCs and node-to-node calls over HTTP with the cluster secret |
//! | `node` | [`ClusterNode`]: role tracking (primary = leader confirmed by a quorum within its lease), the [`haven_store::CommandLog`] write path, switchover, membership, forced failover |
//! | `http` | the `/cluster/v1/...` routes |
//!
//! The leader is the primary. A witness votes and stores the log so that it
//! makes quorum, but never acts as primary: if it wins an election (because
//! it holds entries the surviving data node lacks) it replicates them and
//! hands over at once.

mod client;
mod config;
mod error;
mod http;
mod log_store;
mod network;
mod node;
mod state_machine;
mod types;

pub use client::{ClientError, ClusterClient, SECRET_HEADER};
pub use config::{ClusterConfig, ConfigError, NodeConfig, NodeRole, Timeouts};
pub use error::HaError;
pub use http::router;
pub use hyper::Method;
pub use node::{ClusterNode, MemberStatus, NodeStatus};
pub use types::{Batch, BatchResult, Member, NodeId};
