//! Resolving a plan's groups to VMs: names and tag selectors, looked up on
//! connectors when a run (or a readiness check) starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use haven_connector::{Connector, PowerState, Vm};
use haven_plan::{GroupId, Plan, VmRef};
use haven_store::Store;

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

/// Resolves groups through live connectors: explicit names are checked
/// against the group's connector's inventory, tag selectors match the tags
/// connectors report (the group's connector, or every instance when the group
/// names none). One `list-vms` per connector, whatever the number of VMs.
pub struct ConnectorResolver {
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    catalog: Option<Arc<Store>>,
}

/// The VMs each connector reported, by instance name.
pub type Inventories = BTreeMap<String, Vec<Vm>>;

impl ConnectorResolver {
    /// A resolver over `connectors`, by instance name.
    pub fn new(connectors: BTreeMap<String, Arc<dyn Connector>>) -> Self {
        Self {
            connectors,
            catalog: None,
        }
    }

    /// Falls back to the replica catalog in `store` for a connector that
    /// cannot answer: a disaster takes the production site's API down with
    /// it, and failover must still know the protected VMs (names, tags).
    pub fn with_catalog(mut self, store: Arc<Store>) -> Self {
        self.catalog = Some(store);
        self
    }

    /// The VMs the catalog protects on `connector`, as an inventory.
    fn catalog_inventory(&self, connector: &str) -> Option<Vec<Vm>> {
        let store = self.catalog.as_ref()?;
        let records = crate::catalog::all(store).ok()?;
        let vms: Vec<Vm> = records
            .into_values()
            .map(|r| r.value)
            .filter(|r| r.vm.connector == connector)
            .map(|r| Vm {
                id: r.vm_id,
                name: r.vm.name,
                power_state: PowerState::Unknown,
                cpus: r.machine.cpus,
                memory_mib: r.machine.memory_mib,
                guest_os: r.machine.guest_os,
                location: String::new(),
                tags: r.machine.tags,
                disks: Vec::new(),
                nics: r.machine.nics,
            })
            .collect();
        (!vms.is_empty()).then_some(vms)
    }

    /// The connector instances `plan` needs inventories of.
    pub fn needed(&self, plan: &Plan) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for g in &plan.groups {
            match &g.connector {
                Some(c) => {
                    names.insert(c.clone());
                }
                None if !g.tags.is_empty() => names.extend(self.connectors.keys().cloned()),
                None => {}
            }
        }
        names
    }

    /// Lists the VMs of `names` concurrently. A connector that is not
    /// configured or fails is reported by name with its error.
    pub async fn inventories(
        &self,
        names: &BTreeSet<String>,
    ) -> (Inventories, BTreeMap<String, String>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut failed = BTreeMap::new();
        for name in names {
            match self.connectors.get(name) {
                Some(c) => {
                    let (c, name) = (c.clone(), name.clone());
                    tasks.spawn(async move { (name, c.list_vms().await) });
                }
                None => {
                    failed.insert(
                        name.clone(),
                        format!(
                            "connector instance {name:?} is not configured (configured: {:?})",
                            self.connectors.keys().collect::<Vec<_>>()
                        ),
                    );
                }
            }
        }
        let mut inventories = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((name, Ok(vms))) => {
                    inventories.insert(name, vms);
                }
                Ok((name, Err(e))) => {
                    failed.insert(name.clone(), format!("listing VMs of {name}: {e}"));
                }
                Err(e) => tracing::error!(error = %e, "inventory task failed"),
            }
        }
        (inventories, failed)
    }

    /// Resolves every group against `inventories`, collecting every problem
    /// (`failed` are connectors whose inventory could not be read).
    pub fn resolve_all(
        &self,
        plan: &Plan,
        inventories: &Inventories,
        failed: &BTreeMap<String, String>,
    ) -> (BTreeMap<GroupId, Vec<VmRef>>, Vec<ResolveError>) {
        let mut resolved = BTreeMap::new();
        let mut errors = Vec::new();
        for (i, g) in plan.groups.iter().enumerate() {
            let mut vms = Vec::new();
            let sources: Vec<String> = match &g.connector {
                Some(c) => vec![c.clone()],
                None if !g.tags.is_empty() => self.connectors.keys().cloned().collect(),
                None => {
                    if !g.vms.is_empty() {
                        errors.push(ResolveError {
                            path: format!("groups.{i}.connector"),
                            message: "the group names VMs but no connector to find them on".into(),
                        });
                    }
                    Vec::new()
                }
            };
            for source in &sources {
                if let Some(message) = failed.get(source) {
                    errors.push(ResolveError {
                        path: format!("groups.{i}.connector"),
                        message: message.clone(),
                    });
                }
            }
            if let Some(c) = &g.connector {
                if let Some(inventory) = inventories.get(c) {
                    for (j, name) in g.vms.iter().enumerate() {
                        if inventory.iter().any(|v| &v.name == name) {
                            vms.push(VmRef {
                                connector: c.clone(),
                                name: name.clone(),
                            });
                        } else {
                            errors.push(ResolveError {
                                path: format!("groups.{i}.vms.{j}"),
                                message: format!("connector {c} has no VM named {name:?}"),
                            });
                        }
                    }
                }
            }
            if !g.tags.is_empty() {
                for source in &sources {
                    let Some(inventory) = inventories.get(source) else {
                        continue;
                    };
                    vms.extend(
                        inventory
                            .iter()
                            .filter(|vm| {
                                g.tags.iter().all(|t| {
                                    vm.tags
                                        .iter()
                                        .any(|have| have.key == t.key && have.value == t.value)
                                })
                            })
                            .map(|vm| VmRef {
                                connector: source.clone(),
                                name: vm.name.clone(),
                            }),
                    );
                }
            }
            let mut seen = BTreeSet::new();
            vms.retain(|v| seen.insert(v.clone()));
            resolved.insert(g.id.clone(), vms);
        }
        (resolved, errors)
    }
}

#[async_trait]
impl Resolver for ConnectorResolver {
    async fn resolve(&self, plan: &Plan) -> Result<BTreeMap<GroupId, Vec<VmRef>>, ResolveError> {
        let (mut inventories, mut failed) = self.inventories(&self.needed(plan)).await;
        for name in failed.keys().cloned().collect::<Vec<_>>() {
            if let Some(vms) = self.catalog_inventory(&name) {
                tracing::warn!(connector = %name, reason = %failed[&name], "resolving from the replica catalog");
                failed.remove(&name);
                inventories.insert(name, vms);
            }
        }
        let (resolved, mut errors) = self.resolve_all(plan, &inventories, &failed);
        if errors.is_empty() {
            Ok(resolved)
        } else {
            Err(errors.swap_remove(0))
        }
    }
}
