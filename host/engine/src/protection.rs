//! Protection of VMs, run by the primary: protect a list of VMs now, and the
//! replication schedules (protection policies) the primary runs.
//!
//! A policy lives in the store collection `protections` ([`COLLECTION`]),
//! one document per production VM keyed `<connector>/<vm>` like the replica
//! catalog, so it is replicated with the rest of the state. A policy with an
//! interval is a schedule: while its node is the primary, a [`Protector`]'s
//! supervisor takes a new point of every VM whose last point (or last
//! attempt) is older than the interval. VMs whose replication is stopped
//! (failed over, migrated) are skipped. Replication itself is
//! [`Replicator::protect`]'s job.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_connector::{Connector, Vm};
use haven_plan::VmRef;
use haven_store::{Command, CommandLog, CommitError, Outcome, Store};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::catalog::{self, CatalogError, ReplicaRecord, VmPoint};
use crate::executor::Clock;
use crate::replication::{ProtectRequest, ReplicationError, Replicator};

/// Store collection of protection policies.
pub const COLLECTION: &str = "protections";
/// The shortest schedule interval: a point a minute is already more than a
/// block-level replication of a whole VM should be asked for.
pub const MIN_EVERY_MS: u64 = 60_000;
/// How long a replication waits for a connector job.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A protection policy: where a production VM is replicated, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The production VM.
    pub vm: VmRef,
    /// Connector instance of the recovery site.
    pub recovery_connector: String,
    /// Transport repository directory on the primary's host (absolute).
    pub repository: PathBuf,
    /// Take a new point this often (ms); `None`: only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// Who created or last changed it.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: u64,
}

impl Policy {
    /// Its key in [`COLLECTION`]: `<connector>/<vm>`.
    pub fn key(&self) -> String {
        catalog::ReplicaRecord::key(&self.vm)
    }
}

/// A request the policy rules refuse, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// The field (`vms.1`, `to`, `repository`, `every`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses `<connector>/<vm>`; `field` names it in the error.
pub fn parse_vm(text: &str, field: &str) -> Result<VmRef, PolicyError> {
    match text.split_once('/') {
        Some((c, n)) if !c.is_empty() && !n.is_empty() && !n.contains('/') => Ok(VmRef {
            connector: c.to_owned(),
            name: n.to_owned(),
        }),
        _ => Err(invalid(
            field,
            format!("{text:?} is not <connector>/<vm name>, e.g. lab-prod/web-01"),
        )),
    }
}

/// Checks a protection request against the rules and the connector
/// instances this host has (`known`): every VM's connector and the recovery
/// connector exist, the repository is an absolute path, the interval is at
/// least [`MIN_EVERY_MS`].
pub fn validate(
    vms: &[VmRef],
    to: &str,
    repository: &Path,
    every_ms: Option<u64>,
    known: &[String],
) -> Result<(), PolicyError> {
    let unknown = |name: &str| {
        format!("connector instance {name:?} is not available (configured and ready: {known:?})")
    };
    if vms.is_empty() {
        return Err(invalid("vms", "name at least one VM as <connector>/<vm>"));
    }
    for (i, vm) in vms.iter().enumerate() {
        if !known.contains(&vm.connector) {
            return Err(invalid(format!("vms.{i}"), unknown(&vm.connector)));
        }
    }
    if !known.iter().any(|k| k == to) {
        return Err(invalid("to", unknown(to)));
    }
    if !repository.is_absolute() {
        return Err(invalid(
            "repository",
            format!(
                "{} is relative; give the repository's absolute path on the server",
                repository.display()
            ),
        ));
    }
    if let Some(every) = every_ms {
        if every < MIN_EVERY_MS {
            return Err(invalid(
                "every",
                format!(
                    "{every} ms is too short; a schedule runs at most every {} s",
                    MIN_EVERY_MS / 1000
                ),
            ));
        }
    }
    Ok(())
}

/// Every stored policy, by key.
pub fn policies(store: &Store) -> Result<BTreeMap<String, Policy>, CatalogError> {
    store
        .list(COLLECTION)?
        .into_iter()
        .map(|(key, v)| match serde_json::from_value(v.value) {
            Ok(p) => Ok((key, p)),
            Err(e) => Err(CatalogError::Corrupt {
                key: format!("{COLLECTION}/{key}"),
                message: e.to_string(),
            }),
        })
        .collect()
}

/// Stores `policies` (replacing those of the same VMs) in one commit.
pub async fn put_policies(log: &dyn CommandLog, policies: &[Policy]) -> Result<(), CommitError> {
    let commands = policies
        .iter()
        .map(|p| Command::Put {
            collection: COLLECTION.into(),
            key: p.key(),
            value: serde_json::to_value(p).expect("policies serialize"),
            expected_version: None,
        })
        .collect();
    log.commit(commands).await.map(drop)
}

/// Deletes the policy of `key`; `false` when there was none.
pub async fn delete_policy(log: &dyn CommandLog, key: &str) -> Result<bool, CatalogError> {
    let Some(current) = log.store().get(COLLECTION, key)? else {
        return Ok(false);
    };
    let applied = log
        .commit(vec![Command::Delete {
            collection: COLLECTION.into(),
            key: key.to_owned(),
            expected_version: Some(current.version),
        }])
        .await?;
    if applied
        .iter()
        .any(|a| matches!(a.outcome, Outcome::Conflict { .. }))
    {
        return Err(CatalogError::Conflict(format!("{COLLECTION}/{key}")));
    }
    Ok(true)
}

/// Why one VM was not protected.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// This node is not the primary.
    #[error("this node is not the primary; only the primary replicates")]
    NotPrimary,
    /// A connector instance is not available on this host.
    #[error("connector instance {0:?} is not available on this host")]
    UnknownConnector(String),
    /// The production connector could not list its VMs.
    #[error("listing the VMs of {connector}: {message}")]
    Inventory {
        /// The connector instance.
        connector: String,
        /// Its error.
        message: String,
    },
    /// The replication failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The replication task ended abnormally.
    #[error("the replication task of {0} ended abnormally")]
    Task(String),
}

/// What protecting one VM came to.
#[derive(Debug)]
pub struct Protected {
    /// The VM.
    pub vm: VmRef,
    /// Its catalog entry and the point just taken, or why not.
    pub result: Result<(ReplicaRecord, VmPoint), ProtectError>,
}

/// One VM to protect: where to, and into which repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The production VM.
    pub vm: VmRef,
    /// Connector instance of the recovery site.
    pub recovery_connector: String,
    /// Repository directory (absolute).
    pub repository: PathBuf,
}

impl From<&Policy> for Target {
    fn from(p: &Policy) -> Self {
        Self {
            vm: p.vm.clone(),
            recovery_connector: p.recovery_connector.clone(),
            repository: p.repository.clone(),
        }
    }
}

/// Protects VMs through their connectors: now on request, and on schedule
/// while this node is the primary.
pub struct Protector {
    log: Arc<dyn CommandLog>,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    replicator: Arc<Replicator>,
    clock: Clock,
    parallel: usize,
    /// How often the supervisor looks for due schedules.
    tick: Duration,
    /// When a scheduled pass last tried each VM (key → Unix ms), so a
    /// failing VM waits a full interval before the next attempt.
    attempts: Mutex<HashMap<String, u64>>,
}

impl Protector {
    /// A protector writing through `log`, with these connector instances;
    /// at most 4 VMs are replicated at once.
    pub fn new(
        log: Arc<dyn CommandLog>,
        connectors: BTreeMap<String, Arc<dyn Connector>>,
        replicator: Arc<Replicator>,
        clock: Clock,
    ) -> Self {
        Self {
            log,
            connectors,
            replicator,
            clock,
            parallel: 4,
            tick: Duration::from_secs(5),
            attempts: Mutex::default(),
        }
    }

    /// Replicates at most `parallel` VMs at once (at least 1).
    pub fn with_parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel.max(1);
        self
    }

    /// Looks for due schedules every `tick`.
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// The connector instances it can protect from and to.
    pub fn connector_names(&self) -> Vec<String> {
        self.connectors.keys().cloned().collect()
    }

    /// The command log it writes through.
    pub fn log(&self) -> &Arc<dyn CommandLog> {
        &self.log
    }

    /// Takes a new point of every target now, at most `parallel` at once;
    /// one result per target, in the order given. Only the primary writes.
    pub async fn protect(&self, targets: &[Target]) -> Vec<Protected> {
        if !self.log.role().borrow().is_primary() {
            return targets
                .iter()
                .map(|t| Protected {
                    vm: t.vm.clone(),
                    result: Err(ProtectError::NotPrimary),
                })
                .collect();
        }
        // One inventory listing per production connector, however many VMs.
        let mut inventories: BTreeMap<String, Result<Arc<Vec<Vm>>, String>> = BTreeMap::new();
        for t in targets {
            if inventories.contains_key(&t.vm.connector) {
                continue;
            }
            if let Some(c) = self.connectors.get(&t.vm.connector) {
                let listed = c.list_vms().await.map(Arc::new).map_err(|e| e.to_string());
                inventories.insert(t.vm.connector.clone(), listed);
            }
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.parallel));
        let mut tasks = tokio::task::JoinSet::new();
        let mut results: Vec<Option<Protected>> = targets.iter().map(|_| None).collect();
        for (i, t) in targets.iter().enumerate() {
            let refused = |error| {
                Some(Protected {
                    vm: t.vm.clone(),
                    result: Err(error),
                })
            };
            let inventory = match inventories.get(&t.vm.connector) {
                Some(Ok(list)) => list.clone(),
                Some(Err(message)) => {
                    results[i] = refused(ProtectError::Inventory {
                        connector: t.vm.connector.clone(),
                        message: message.clone(),
                    });
                    continue;
                }
                None => {
                    results[i] = refused(ProtectError::UnknownConnector(t.vm.connector.clone()));
                    continue;
                }
            };
            let production = self.connectors[&t.vm.connector].clone();
            let (log, replicator, semaphore, target) = (
                self.log.clone(),
                self.replicator.clone(),
                semaphore.clone(),
                t.clone(),
            );
            tasks.spawn(async move {
                let _permit = semaphore.acquire().await;
                let result = replicator
                    .protect(
                        log.as_ref(),
                        ProtectRequest {
                            production: production.as_ref(),
                            vm: &target.vm.name,
                            recovery_connector: &target.recovery_connector,
                            repository: &target.repository,
                            final_sync: false,
                            job_timeout: JOB_TIMEOUT,
                            inventory: Some(&inventory),
                        },
                    )
                    .await;
                (i, result)
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((i, result)) => {
                    results[i] = Some(Protected {
                        vm: targets[i].vm.clone(),
                        result: result.map_err(ProtectError::from),
                    });
                }
                Err(e) => tracing::error!("a replication task ended abnormally: {e}"),
            }
        }
        results
            .into_iter()
            .zip(targets)
            .map(|(r, t)| {
                r.unwrap_or_else(|| Protected {
                    vm: t.vm.clone(),
                    result: Err(ProtectError::Task(t.vm.to_string())),
                })
            })
            .collect()
    }

    /// The scheduled policies due at `now_ms`: the last point (or last
    /// attempt) is at least the interval old, and replication is not stopped.
    pub fn due(&self, now_ms: u64) -> Result<Vec<Policy>, CatalogError> {
        let store = self.log.store();
        let catalog = catalog::all(store)?;
        let stored = policies(store)?;
        let attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(stored
            .into_values()
            .filter(|p| {
                let Some(every) = p.every_ms else {
                    return false;
                };
                let entry = catalog.get(&p.key());
                if entry.is_some_and(|e| e.value.stopped) {
                    return false;
                }
                let last_point = entry
                    .and_then(|e| e.value.last_point())
                    .map_or(0, |pt| pt.taken_at_ms);
                let last_attempt = attempts.get(&p.key()).copied().unwrap_or(0);
                now_ms >= last_point.max(last_attempt).saturating_add(every)
            })
            .collect())
    }

    /// One scheduled pass: protects every due VM, if this node is primary.
    pub async fn run_due(&self) -> Vec<Protected> {
        if !self.log.role().borrow().is_primary() {
            return Vec::new();
        }
        let now = self.clock.now_ms();
        let due = match self.due(now) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("cannot read the protection schedules: {e}");
                return Vec::new();
            }
        };
        {
            let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            for p in &due {
                attempts.insert(p.key(), now);
            }
        }
        let targets: Vec<Target> = due.iter().map(Target::from).collect();
        let done = self.protect(&targets).await;
        for p in &done {
            match &p.result {
                Ok((_, point)) => {
                    tracing::info!(vm = %p.vm, point = %point.id, "scheduled point taken")
                }
                Err(e) => tracing::warn!(vm = %p.vm, "scheduled point failed: {e}"),
            }
        }
        done
    }

    /// Follows the node's role until the role channel closes: while this
    /// node is the primary, runs the due schedules every tick; on losing the
    /// role, abandons the pass in flight (the new primary's schedules take
    /// over; the catalog only records points whose disks all committed).
    pub fn supervise(self: &Arc<Self>) -> JoinHandle<()> {
        let this = self.clone();
        let mut role = self.log.role();
        tokio::spawn(async move {
            loop {
                let primary = role.borrow_and_update().is_primary();
                if primary {
                    let pass = async {
                        loop {
                            this.run_due().await;
                            tokio::time::sleep(this.tick).await;
                        }
                    };
                    tokio::select! {
                        () = pass => {}
                        changed = role.changed() => if changed.is_err() { break },
                    }
                } else if role.changed().await.is_err() {
                    break;
                }
            }
        })
    }
}
