//! Resolving a plan's groups to VMs: names and tag selectors, looked up on
//! connectors when a run (or a readiness check) starts.

use std::collections::BTreeMap;

use async_trait::async_trait;
use haven_plan::{GroupId, Plan, VmRef};

/// Why a plan's groups could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ResolveError {
    /// Dotted path of the plan field that could not be resolved
    /// (`groups.1.tags`, `groups.0.vms.2`).
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// Turns a plan's group definitions into the VMs each group holds now.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The VMs of every group of `plan`, keyed by group id.
    async fn resolve(&self, plan: &Plan) -> Result<BTreeMap<GroupId, Vec<VmRef>>, ResolveError>;
}
