//! Where writers send commands: straight into the local store, or through the
//! HA cluster, which applies them on every node once a quorum has them.
//!
//! Writers (the executor, the web API) hold an `Arc<dyn CommandLog>` and never
//! call [`Store::apply`] themselves, so the same code runs embedded and in a
//! cluster. Reads always come from the local replica ([`CommandLog::store`]).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Applied, Command, Store, StoreError};

/// A node's part in the cluster, as writers need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This node accepts writes and runs executions. `term` grows with every
    /// change of primary (always 0 for an embedded store).
    Primary {
        /// The consensus term this node leads.
        term: u64,
    },
    /// Another node is primary (or none is known yet).
    Follower {
        /// The primary's API base URL (`http://127.0.0.2:7400`), when known.
        primary: Option<String>,
    },
}

impl Role {
    /// Whether this node may write and act.
    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary { .. })
    }
}

/// Why commands were not committed. Nothing was applied in any of these cases
/// except where stated.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node is not the primary; send the write to `primary`.
    #[error("this node is not the primary{}", .primary.as_ref().map(|p| format!("; the primary is {p}")).unwrap_or_else(|| "; no primary is known yet, retry shortly".into()))]
    NotPrimary {
        /// The primary's API base URL, when known.
        primary: Option<String>,
    },
    /// No quorum answered in time. The commands may still commit later (the
    /// outcome is unknown); callers retry idempotent writes or re-read.
    #[error("the cluster did not commit the write: {0}")]
    Unavailable(String),
}

/// The write path of the state store.
#[async_trait]
pub trait CommandLog: Send + Sync + 'static {
    /// Applies `commands` in order, durably (in a cluster: once a quorum has
    /// them), and returns what each did. On success the local store already
    /// reflects them.
    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Applied>, CommitError>;

    /// The local replica, for reads.
    fn store(&self) -> &Arc<Store>;

    /// This node's role now and as it changes.
    fn role(&self) -> watch::Receiver<Role>;
}

/// The embedded, single-node log: commands go straight into the store, and
/// this node is always the primary.
pub struct LocalLog {
    store: Arc<Store>,
    role: watch::Sender<Role>,
}

impl LocalLog {
    /// A log writing into `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            role: watch::Sender::new(Role::Primary { term: 0 }),
        }
    }
}

#[async_trait]
impl CommandLog for LocalLog {
    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Applied>, CommitError> {
        // One redb transaction with an fsync: short enough to run in place
        // rather than pay a thread hop per journal event.
        Ok(self.store.apply_all(&commands)?)
    }

    fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }
}
