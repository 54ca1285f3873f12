//! Test support (feature `test-util`): an embedded log whose role a test
//! switches, standing in for an HA node that is elected or deposed.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Applied, Command, CommandLog, CommitError, LocalLog, Role, Store};

/// The embedded log with a role the test sets (`role.send_replace(..)`): as
/// on an HA follower, commits are refused with [`CommitError::NotPrimary`]
/// while the role is `Follower`.
pub struct SwitchableLog {
    local: LocalLog,
    /// The role; set it to make the node a follower or a primary again.
    pub role: watch::Sender<Role>,
}

impl SwitchableLog {
    /// A log over `store` starting in `role`.
    pub fn new(store: Arc<Store>, role: Role) -> Self {
        Self {
            local: LocalLog::new(store),
            role: watch::Sender::new(role),
        }
    }
}

#[async_trait]
impl CommandLog for SwitchableLog {
    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Applied>, CommitError> {
        if let Role::Follower { primary } = self.role.borrow().clone() {
            return Err(CommitError::NotPrimary { primary });
        }
        self.local.commit(commands).await
    }

    fn store(&self) -> &Arc<Store> {
        self.local.store()
    }

    fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }
}
