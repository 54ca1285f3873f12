//! The runner that drives real systems: every built-in action through
//! [`Connector`]s (by instance name), the block transport for replication and
//! restores, and the [catalog](crate::catalog) for what is protected where.
//!
//! Roles: a run moves a VM from a *source* site to a *target* site. For
//! drills, failover, migration and undo the source is production (the
//! connector the plan names) and the target is the recovery connector the
//! catalog records for the VM; failback swaps them.
//!
//! Idempotency: what a step did is recorded in the store under the execution
//! and VM before and after the side effect (collections
//! `recovery-choices` and `recovered-vms`), and side effects first look at the
//! object's state, so a step repeated after a crash adopts what the first
//! attempt made (a created VM, a chosen point) instead of doing it twice.
//! Every connector call runs in [`fence::scope`] with the attempt's token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use haven_connector::{
    fence, files, Connector, ConnectorError, DiskLocation, DiskSpec, FileLocation, PowerState,
    StopMode, Vm, VmSpec,
};
use haven_plan::{
    Action, ExecutionGraph, HealthCheck, Mode, Origin, ReIpRule, StepInstance, VmRef,
};
use haven_store::{Command, CommandLog};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::time::Instant;

use crate::catalog::{self, MachineSpec, RecoveredVm, ReplicaDisk, ReplicaRecord, VmPoint};
use crate::jobs;
use crate::network::{self, Side};
use crate::notify::{Notification, Notifier};
use crate::probe;
use crate::replication::{self, ProtectRequest, Replicator};
use crate::runner::{StepContext, StepFailure, StepRunner};
use crate::scripts::{Direction, HostCommands, PointInfo, ScriptContext, WasmScripts};

/// Tries of one long operation within a step attempt (passing failures).
const JOB_TRIES: u32 = 4;
/// Pause before the first repeat, doubled for each further one.
const JOB_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Store collection: the recovery point chosen per execution and VM.
pub const CHOICES: &str = "recovery-choices";
/// Store collection: the VM created per execution and VM.
pub const RECOVERED: &str = "recovered-vms";

/// Timing of the runner's waits.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Longest wait for one connector job (power, create, delete, snapshot).
    pub job_timeout: Duration,
    /// How long heartbeats and probes are retried when the step sets no timeout.
    pub wait_timeout: Duration,
    /// Pause between two heartbeat or probe attempts.
    pub poll_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            job_timeout: Duration::from_secs(300),
            wait_timeout: Duration::from_secs(540),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// The recovery point an execution uses for a VM, with where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    /// The point.
    pub point: VmPoint,
    /// Repository of its replicas.
    pub repository: std::path::PathBuf,
    /// The replicas, one per disk.
    pub disks: Vec<ReplicaDisk>,
    /// Shape of the VM to create.
    pub machine: MachineSpec,
}

/// A disk image restored for a recovered VM, in a granted directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredImage {
    /// Granted directory name.
    pub granted_dir: String,
    /// Path relative to it.
    pub path: String,
}

/// The VM an execution creates for a production VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    /// Idempotency key of the create-vm step.
    pub step: String,
    /// Connector instance it is created on.
    pub connector: String,
    /// Its name.
    pub name: String,
    /// Its id, once created.
    pub vm_id: Option<String>,
    /// Images restored for its disks.
    pub images: Vec<RestoredImage>,
    /// Deleted by cleanup or undo.
    pub deleted: bool,
}

fn doc_key(execution: &str, vm: &VmRef) -> String {
    format!("{execution}/{vm}")
}

/// Runs steps against connectors.
pub struct ConnectorRunner {
    log: Arc<dyn CommandLog>,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    replicator: Arc<Replicator>,
    scripts: Option<Arc<dyn WasmScripts>>,
    host_commands: Option<HostCommands>,
    notifier: Notifier,
    config: RunnerConfig,
}

/// A step failure from a connector error (retryable as the error says).
fn fail(context: &str, e: ConnectorError) -> StepFailure {
    StepFailure {
        message: format!("{context}: {e}"),
        retryable: e.is_retryable(),
    }
}

fn store_failure(e: impl std::fmt::Display) -> StepFailure {
    StepFailure::retryable(format!("state store: {e}"))
}

impl ConnectorRunner {
    /// A runner over `connectors` (by instance name), writing through `log`.
    pub fn new(
        log: Arc<dyn CommandLog>,
        connectors: BTreeMap<String, Arc<dyn Connector>>,
        replicator: Arc<Replicator>,
    ) -> Self {
        Self {
            log,
            connectors,
            replicator,
            scripts: None,
            host_commands: None,
            notifier: Notifier::default(),
            config: RunnerConfig::default(),
        }
    }

    /// Runs `run-script` steps with `scripts`.
    pub fn with_scripts(mut self, scripts: Arc<dyn WasmScripts>) -> Self {
        self.scripts = Some(scripts);
        self
    }

    /// Runs `run-host-command` steps with `host_commands` (which enforces the
    /// administrator's permission file).
    pub fn with_host_commands(mut self, host_commands: HostCommands) -> Self {
        self.host_commands = Some(host_commands);
        self
    }

    /// Sends `notify` steps through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Overrides the timing.
    pub fn with_config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    fn connector(&self, name: &str) -> Result<&Arc<dyn Connector>, StepFailure> {
        self.connectors.get(name).ok_or_else(|| {
            StepFailure::permanent(format!(
                "connector instance {name:?} is not configured (configured: {:?})",
                self.connectors.keys().collect::<Vec<_>>()
            ))
        })
    }

    fn read<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<T>, StepFailure> {
        self.log
            .store()
            .get_as::<T>(collection, key)
            .map(|v| v.map(|v| v.value))
            .map_err(store_failure)
    }

    async fn write<T: Serialize>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StepFailure> {
        self.log
            .commit(vec![Command::Put {
                collection: collection.into(),
                key: key.into(),
                value: serde_json::to_value(value).expect("documents serialize"),
                expected_version: None,
            }])
            .await
            .map_err(store_failure)?;
        Ok(())
    }

    fn record(&self, vm: &VmRef) -> Result<ReplicaRecord, StepFailure> {
        catalog::get(self.log.store(), vm)
            .map_err(store_failure)?
            .map(|v| v.value)
            .ok_or_else(|| {
                StepFailure::permanent(format!(
                    "{vm} has no replica in the catalog: protect it first (`haven protect --vm {vm} ...`)"
                ))
            })
    }

    async fn update_record(
        &self,
        vm: &VmRef,
        change: impl FnMut(&mut ReplicaRecord) -> bool,
    ) -> Result<(), StepFailure> {
        catalog::update(self.log.as_ref(), vm, change)
            .await
            .map_err(store_failure)?;
        Ok(())
    }

    async fn dispatch(
        &self,
        graph: &ExecutionGraph,
        step: &StepInstance,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let vm = || {
            step.vm.clone().ok_or_else(|| {
                StepFailure::permanent(format!(
                    "{} acts on a VM but the step has none",
                    step.action.kind()
                ))
            })
        };
        match &step.action {
            Action::ChooseRecoveryPoint => self.choose_point(graph, &vm()?, ctx).await,
            Action::StopReplication => self.stop_replication(&vm()?).await,
            Action::FinalizeReplication => self.finalize(&vm()?, ctx).await,
            Action::CreateVm => self.create_vm(graph, step, &vm()?, ctx).await,
            Action::ApplyNetwork => self.apply_network(graph, &vm()?, ctx).await,
            Action::PowerOn => self.power_on(&vm()?, ctx).await,
            Action::PowerOff => self.power_off(step, &vm()?, ctx).await,
            Action::DeleteVm => self.delete_vm(&vm()?, ctx).await,
            Action::WaitHeartbeat => self.wait_heartbeat(step, &vm()?, ctx, None).await,
            Action::Probe { check } => self.probe(step, check, ctx).await,
            Action::RunScript { component, args } => {
                let scripts = self.scripts.as_ref().ok_or_else(|| {
                    StepFailure::permanent("WebAssembly scripts are not configured on this host")
                })?;
                let context = self.script_context(graph, step, ctx, args)?;
                scripts
                    .run(component, &context, self.deadline(step, None))
                    .await
            }
            Action::RunHostCommand { command, args } => {
                let host = self.host_commands.as_ref().ok_or_else(|| {
                    StepFailure::permanent(format!(
                        "host commands are not configured on this host (cannot run {command:?})"
                    ))
                })?;
                let context = self.script_context(graph, step, ctx, args)?;
                host.run(command, args, &context, self.deadline(step, None))
                    .await
            }
            Action::Notify { channel, message } => {
                self.notifier
                    .send(&Notification {
                        channel: channel.clone(),
                        message: message.clone(),
                        plan: graph.plan.to_string(),
                        execution: ctx.execution.clone(),
                        mode: ctx.mode.to_string(),
                        step: step.key.clone(),
                        at_ms: replication::now_ms(),
                    })
                    .await
            }
            Action::Approval { .. } => Err(StepFailure::permanent(
                "approval steps are handled by the executor, not a runner",
            )),
        }
    }

    /// The step's own deadline: its timeout, else the check's, else the default.
    fn deadline(&self, step: &StepInstance, check: Option<&HealthCheck>) -> Duration {
        step.timeout
            .or_else(|| check.and_then(HealthCheck::timeout))
            .map_or(self.config.wait_timeout, |t| t.to_std())
    }

    fn script_context(
        &self,
        graph: &ExecutionGraph,
        step: &StepInstance,
        ctx: &StepContext,
        args: &[String],
    ) -> Result<ScriptContext, StepFailure> {
        let (recovered_vm, recovery_point) = match &step.vm {
            Some(vm) => {
                let key = doc_key(&ctx.execution, vm);
                let rec: Option<Recovered> = self.read(RECOVERED, &key)?;
                let choice: Option<Choice> = self.read(CHOICES, &key)?;
                (
                    rec.and_then(|r| r.vm_id),
                    choice.map(|c| PointInfo {
                        id: c.point.id,
                        taken_at_ms: c.point.taken_at_ms,
                    }),
                )
            }
            None => (None, None),
        };
        Ok(ScriptContext {
            execution: ctx.execution.clone(),
            plan: graph.plan.to_string(),
            mode: ctx.mode,
            direction: Direction::of(ctx.mode),
            test: ctx.mode.is_test(),
            step: step.key.clone(),
            group: step.group.as_ref().map(ToString::to_string),
            vm: step.vm.clone(),
            recovered_vm,
            recovery_point,
            args: args.to_vec(),
            attempt: ctx.attempt,
            fence: ctx.fence,
        })
    }

    // ---- recovery point and replication ------------------------------------

    async fn choose_point(
        &self,
        graph: &ExecutionGraph,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let key = doc_key(&ctx.execution, vm);
        if let Some(c) = self.read::<Choice>(CHOICES, &key)? {
            return Ok(format!("{} (chosen by an earlier attempt)", c.point.id));
        }
        let record = self.record(vm)?;
        let point = record
            .choose(&graph.recovery.recovery_point)
            .map_err(StepFailure::permanent)?
            .clone();
        for disk in &record.disks {
            let wanted = point.disks.get(&disk.id).copied().ok_or_else(|| {
                StepFailure::permanent(format!(
                    "{} of {vm} has no copy of disk {}",
                    point.id, disk.id
                ))
            })?;
            let retained = self
                .replicator
                .points(&record.repository, &disk.replica)
                .await
                .map_err(|e| StepFailure {
                    retryable: e.is_retryable(),
                    message: format!("reading replica {}: {e}", disk.replica),
                })?;
            if !retained.contains(&wanted) {
                return Err(StepFailure::permanent(format!(
                    "{} of {vm}: transport point {wanted} of replica {} is no longer retained",
                    point.id, disk.replica
                )));
            }
        }
        let age_ms = replication::now_ms().saturating_sub(point.taken_at_ms);
        let rpo = match graph.recovery.rpo {
            Some(rpo) if age_ms > rpo.as_millis() => format!("; RPO {rpo} EXCEEDED"),
            Some(rpo) => format!("; within RPO {rpo}"),
            None => String::new(),
        };
        let choice = Choice {
            point,
            repository: record.repository.clone(),
            disks: record.disks.clone(),
            machine: record.machine.clone(),
        };
        self.write(CHOICES, &key, &choice).await?;
        Ok(format!(
            "{} (age {}{rpo})",
            choice.point.id,
            haven_plan::HumanDuration::from_millis(age_ms / 1000 * 1000)
        ))
    }

    async fn stop_replication(&self, vm: &VmRef) -> Result<String, StepFailure> {
        self.record(vm)?;
        self.update_record(vm, |r| !std::mem::replace(&mut r.stopped, true))
            .await?;
        Ok(format!("replication of {vm} stopped"))
    }

    async fn finalize(&self, vm: &VmRef, ctx: &StepContext) -> Result<String, StepFailure> {
        let key = doc_key(&ctx.execution, vm);
        if let Some(c) = self.read::<Choice>(CHOICES, &key)? {
            return Ok(format!(
                "{} (final sync done by an earlier attempt)",
                c.point.id
            ));
        }
        let record = self.record(vm)?;
        let job_timeout = self.config.job_timeout;
        let choice = if ctx.mode == Mode::Failback {
            let recovered = record.recovered.clone().ok_or_else(|| {
                StepFailure::permanent(format!(
                    "{vm} is not running at the recovery site (no failover or migration recorded): nothing to fail back"
                ))
            })?;
            let conn = self.connector(&recovered.connector)?.clone();
            let source = conn
                .get_vm(&recovered.vm_id)
                .await
                .map_err(|e| fail(&format!("reading {}", recovered.name), e))?;
            ensure_off(&source, "recovered")?;
            let back = VmRef {
                connector: recovered.connector.clone(),
                name: recovered.name.clone(),
            };
            let disks: Vec<ReplicaDisk> = source
                .disks
                .iter()
                .map(|d| ReplicaDisk {
                    id: d.id.clone(),
                    replica: replication::replica_name(&back, &d.id),
                    capacity_bytes: d.capacity_bytes,
                })
                .collect();
            let taken_at_ms = replication::now_ms();
            let points = self
                .replicator
                .capture(
                    conn.as_ref(),
                    &source,
                    &disks,
                    &record.repository,
                    job_timeout,
                )
                .await
                .map_err(|e| StepFailure {
                    retryable: e.is_retryable(),
                    message: format!("reverse replication of {}: {e}", recovered.name),
                })?;
            Choice {
                point: VmPoint {
                    id: format!("failback-{}", short(&ctx.execution)),
                    taken_at_ms,
                    disks: points,
                    final_sync: true,
                },
                repository: record.repository.clone(),
                disks,
                machine: MachineSpec {
                    nics: source.nics.clone(),
                    ..record.machine.clone()
                },
            }
        } else {
            let conn = self.connector(&vm.connector)?.clone();
            let source = replication::find_vm(conn.as_ref(), &vm.name)
                .await
                .map_err(|e| StepFailure {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                })?;
            ensure_off(&source, "production")?;
            let (record, point) = self
                .replicator
                .protect(
                    self.log.as_ref(),
                    ProtectRequest {
                        production: conn.as_ref(),
                        vm: &vm.name,
                        recovery_connector: &record.recovery_connector,
                        repository: &record.repository,
                        final_sync: true,
                        job_timeout,
                        inventory: None,
                    },
                )
                .await
                .map_err(|e| StepFailure {
                    retryable: e.is_retryable(),
                    message: format!("final sync of {vm}: {e}"),
                })?;
            self.update_record(vm, |r| !std::mem::replace(&mut r.stopped, true))
                .await?;
            Choice {
                point,
                repository: record.repository,
                disks: record.disks,
                machine: record.machine,
            }
        };
        self.write(CHOICES, &key, &choice).await?;
        Ok(format!(
            "final sync of {vm} committed as {}",
            choice.point.id
        ))
    }

    // ---- creating the VM ---------------------------------------------------

    /// Source and target connector names and the network side of a run.
    fn roles(mode: Mode, record: &ReplicaRecord) -> (String, Side) {
        match mode {
            Mode::Test => (record.recovery_connector.clone(), Side::Test),
            Mode::Failback => (record.vm.connector.clone(), Side::Production),
            _ => (record.recovery_connector.clone(), Side::Recovery),
        }
    }

    fn target_name(mode: Mode, execution: &str, vm: &VmRef) -> String {
        if mode == Mode::Test {
            format!("{}-test-{}", vm.name, short(execution))
        } else {
            vm.name.clone()
        }
    }

    fn rules(graph: &ExecutionGraph, side: Side) -> Vec<ReIpRule> {
        if side == Side::Production {
            graph
                .recovery
                .re_ip
                .iter()
                .map(|r| ReIpRule {
                    source: r.target,
                    target: r.source,
                    gateway: None,
                    dns: Vec::new(),
                })
                .collect()
        } else {
            graph.recovery.re_ip.clone()
        }
    }

    async fn nics(
        &self,
        graph: &ExecutionGraph,
        target: &dyn Connector,
        machine: &MachineSpec,
        side: Side,
    ) -> Result<Vec<haven_connector::NicSpec>, StepFailure> {
        let networks = target
            .list_networks()
            .await
            .map_err(|e| fail(&format!("listing networks of {}", target.name()), e))?;
        network::map_nics(
            &machine.nics,
            &graph.recovery.network_map,
            &Self::rules(graph, side),
            side,
            &networks,
        )
        .map_err(|e| StepFailure::permanent(e.to_string()))
    }

    async fn create_vm(
        &self,
        graph: &ExecutionGraph,
        step: &StepInstance,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let key = doc_key(&ctx.execution, vm);
        let choice: Choice = self.read(CHOICES, &key)?.ok_or_else(|| {
            StepFailure::permanent(format!(
                "no recovery point chosen for {vm} in this execution (choose-recovery-point or \
                 finalize-replication runs first)"
            ))
        })?;
        let record = self.record(vm)?;
        let (target_name, side) = Self::roles(ctx.mode, &record);
        let target = self.connector(&target_name)?.clone();
        let name = Self::target_name(ctx.mode, &ctx.execution, vm);
        let mut rec: Recovered = self.read(RECOVERED, &key)?.unwrap_or(Recovered {
            step: step.key.clone(),
            connector: target_name.to_string(),
            name: name.clone(),
            vm_id: None,
            images: Vec::new(),
            deleted: false,
        });

        // An earlier attempt may have created it: adopt, never duplicate.
        if let Some(id) = &rec.vm_id {
            match target.get_vm(id).await {
                Ok(_) => return Ok(format!("{name} ({id}) created by an earlier attempt")),
                Err(ConnectorError::NotFound(_)) => rec.vm_id = None,
                Err(e) => return Err(fail(&format!("reading {id}"), e)),
            }
        }
        let existing = self.find_by_name(target.as_ref(), &name).await?;
        match existing {
            Some(found) if ctx.mode == Mode::Failback && found.id == record.vm_id => {
                // The original production VM, superseded by the failback copy.
                ensure_off(&found, "original production")?;
                let started = target
                    .delete_vm(&found.id)
                    .await
                    .map_err(|e| fail(&format!("removing the original {name}"), e))?;
                jobs::wait(target.as_ref(), started, self.config.job_timeout)
                    .await
                    .map_err(|e| fail(&format!("removing the original {name}"), e))?;
            }
            Some(found) => {
                rec.vm_id = Some(found.id.clone());
                self.write(RECOVERED, &key, &rec).await?;
                self.after_create(ctx, vm, &rec, &found.id).await?;
                return Ok(format!(
                    "{name} ({}) adopted: created by an earlier attempt",
                    found.id
                ));
            }
            None => {}
        }

        // Restore the point's disks into images at the target site.
        let mut disks = Vec::new();
        rec.images.clear();
        for disk in &choice.disks {
            let point = *choice.point.disks.get(&disk.id).ok_or_else(|| {
                StepFailure::permanent(format!(
                    "{} has no copy of disk {}",
                    choice.point.id, disk.id
                ))
            })?;
            let image = image_name(&target_name, &name, &disk.id);
            let desc = target
                .open_target(&image, disk.capacity_bytes)
                .await
                .map_err(|e| fail(&format!("opening an image for {image}"), e))?;
            if let DiskLocation::File(FileLocation {
                granted_dir, path, ..
            }) = &desc.location
            {
                rec.images.push(RestoredImage {
                    granted_dir: granted_dir.clone(),
                    path: path.clone(),
                });
            }
            // Record the image before writing it, so cleanup finds it after a crash.
            self.write(RECOVERED, &key, &rec).await?;
            let restored = async {
                let out = files::host_path(target.as_ref(), &desc.location)
                    .map_err(|e| fail(&format!("image {image}"), e))?;
                self.replicator
                    .export(&choice.repository, &disk.replica, point, &out)
                    .await
                    .map_err(|e| StepFailure {
                        retryable: e.is_retryable(),
                        message: format!("restoring {} point {point}: {e}", disk.replica),
                    })
            }
            .await;
            if let Err(e) = target.close_disk(&desc.session).await {
                tracing::warn!(session = %desc.session, error = %e, "could not close a disk session");
            }
            restored?;
            disks.push(DiskSpec {
                location: desc.location.clone(),
                capacity_bytes: desc.capacity_bytes.max(disk.capacity_bytes),
            });
        }
        let nics = self
            .nics(graph, target.as_ref(), &choice.machine, side)
            .await?;
        let spec = VmSpec {
            name: name.clone(),
            cpus: choice.machine.cpus,
            memory_mib: choice.machine.memory_mib,
            guest_os: choice.machine.guest_os.clone(),
            location: String::new(),
            disks,
            nics,
        };
        let created = match target.create_vm(&spec).await {
            Ok(started) => jobs::wait(target.as_ref(), started, self.config.job_timeout).await,
            Err(e) => Err(e),
        };
        let id = match created {
            Ok(Some(id)) => id,
            // No id in the answer, or the name is taken (by a concurrent
            // attempt): look it up.
            Ok(None) => {
                self.created_id(target.as_ref(), &name, "no id in the answer")
                    .await?
            }
            Err(ConnectorError::Conflict(message)) => {
                self.created_id(target.as_ref(), &name, &message).await?
            }
            Err(e) => return Err(fail(&format!("creating {name} at {target_name}"), e)),
        };
        rec.vm_id = Some(id.clone());
        self.write(RECOVERED, &key, &rec).await?;
        self.after_create(ctx, vm, &rec, &id).await?;
        Ok(format!(
            "created {name} ({id}) at {target_name} from {}",
            choice.point.id
        ))
    }

    /// Records in the catalog what a failover, migration or failback changed.
    async fn after_create(
        &self,
        ctx: &StepContext,
        vm: &VmRef,
        rec: &Recovered,
        id: &str,
    ) -> Result<(), StepFailure> {
        match ctx.mode {
            Mode::Failover | Mode::Migration => {
                let recovered = RecoveredVm {
                    connector: rec.connector.clone(),
                    vm_id: id.to_owned(),
                    name: rec.name.clone(),
                    execution: ctx.execution.clone(),
                };
                self.update_record(vm, |r| {
                    let changed = r.recovered.as_ref() != Some(&recovered);
                    r.recovered = Some(recovered.clone());
                    changed
                })
                .await
            }
            // Commit: the failback copy is production now; replication resumes.
            Mode::Failback => {
                self.update_record(vm, |r| {
                    r.vm_id = id.to_owned();
                    r.recovered = None;
                    r.stopped = false;
                    true
                })
                .await
            }
            Mode::Test | Mode::Undo => Ok(()),
        }
    }

    /// Starts a long operation and waits for it; a passing failure (of the
    /// call or of the job) is repeated a few times within the attempt, with a
    /// doubling pause. A timed-out job is not repeated: it may still finish.
    async fn job<F, Fut>(
        &self,
        conn: &dyn Connector,
        mut start: F,
    ) -> Result<Option<String>, ConnectorError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<haven_connector::Started, ConnectorError>>,
    {
        let mut pause = JOB_RETRY_PAUSE;
        for attempt in 1.. {
            let result = match start().await {
                Ok(started) => jobs::wait(conn, started, self.config.job_timeout).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e)
                    if e.is_retryable()
                        && attempt < JOB_TRIES
                        && !matches!(e, ConnectorError::Timeout(_)) =>
                {
                    tracing::info!(connector = conn.name(), attempt, error = %e, "retrying a passing failure");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// The id of the VM named `name` just created; `why` says why it is
    /// looked up (for the failure when it is not there).
    async fn created_id(
        &self,
        conn: &dyn Connector,
        name: &str,
        why: &str,
    ) -> Result<String, StepFailure> {
        match self.find_by_name(conn, name).await? {
            Some(vm) => Ok(vm.id),
            None => Err(StepFailure::retryable(format!(
                "creating {name} at {}: {why}",
                conn.name()
            ))),
        }
    }

    async fn find_by_name(
        &self,
        conn: &dyn Connector,
        name: &str,
    ) -> Result<Option<Vm>, StepFailure> {
        Ok(conn
            .list_vms()
            .await
            .map_err(|e| fail(&format!("listing VMs of {}", conn.name()), e))?
            .into_iter()
            .find(|v| v.name == name))
    }

    // ---- acting on the created VM -----------------------------------------

    /// The VM this execution acts on at the target site: the one it created,
    /// or for undo the one the failover created; `None` when there is none.
    async fn target_vm(
        &self,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<Option<(Arc<dyn Connector>, Vm, String)>, StepFailure> {
        let (execution, rec) = if ctx.mode == Mode::Undo {
            let Some(recovered) = self.record(vm)?.recovered else {
                return Ok(None);
            };
            let key = doc_key(&recovered.execution, vm);
            let rec = self
                .read::<Recovered>(RECOVERED, &key)?
                .unwrap_or(Recovered {
                    step: String::new(),
                    connector: recovered.connector,
                    name: recovered.name,
                    vm_id: Some(recovered.vm_id),
                    images: Vec::new(),
                    deleted: false,
                });
            (recovered.execution, rec)
        } else {
            match self.read::<Recovered>(RECOVERED, &doc_key(&ctx.execution, vm))? {
                Some(rec) => (ctx.execution.clone(), rec),
                None => return Ok(None),
            }
        };
        let conn = self.connector(&rec.connector)?.clone();
        let found = match &rec.vm_id {
            Some(id) => match conn.get_vm(id).await {
                Ok(v) => Some(v),
                Err(ConnectorError::NotFound(_)) => None,
                Err(e) => return Err(fail(&format!("reading {id}"), e)),
            },
            // Created but not recorded (a crash in between): find it by name.
            None => self.find_by_name(conn.as_ref(), &rec.name).await?,
        };
        Ok(found.map(|v| (conn, v, execution)))
    }

    async fn require_target(
        &self,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<(Arc<dyn Connector>, Vm), StepFailure> {
        self.target_vm(vm, ctx)
            .await?
            .map(|(c, v, _)| (c, v))
            .ok_or_else(|| {
                StepFailure::permanent(format!("no VM was created for {vm} in this execution"))
            })
    }

    async fn apply_network(
        &self,
        graph: &ExecutionGraph,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let (conn, target) = self.require_target(vm, ctx).await?;
        let choice: Choice = self
            .read(CHOICES, &doc_key(&ctx.execution, vm))?
            .ok_or_else(|| StepFailure::permanent(format!("no recovery point chosen for {vm}")))?;
        let record = self.record(vm)?;
        let (_, side) = Self::roles(ctx.mode, &record);
        let nics = self
            .nics(graph, conn.as_ref(), &choice.machine, side)
            .await?;
        let readdressed = nics.iter().filter(|n| n.ip.is_some()).count();
        let networks: Vec<&str> = nics.iter().map(|n| n.network.as_str()).collect();
        self.job(conn.as_ref(), || conn.reconfigure_nics(&target.id, &nics))
            .await
            .map_err(|e| fail(&format!("reconfiguring {}", target.name), e))?;
        Ok(format!(
            "{} on {networks:?}, {readdressed} adapter(s) re-addressed",
            target.name
        ))
    }

    async fn power_on(&self, vm: &VmRef, ctx: &StepContext) -> Result<String, StepFailure> {
        let (conn, target) = self.require_target(vm, ctx).await?;
        if target.power_state == PowerState::PoweredOn {
            return Ok(format!("{} is already on", target.name));
        }
        let result = self.job(conn.as_ref(), || conn.power_on(&target.id)).await;
        match result {
            Ok(_) => Ok(format!("{} ({}) powered on", target.name, target.id)),
            Err(ConnectorError::Conflict(message)) => {
                // "Already on" is success; anything else (busy) is worth another try.
                let now = conn
                    .get_vm(&target.id)
                    .await
                    .map_err(|e| fail(&format!("reading {}", target.name), e))?;
                if now.power_state == PowerState::PoweredOn {
                    Ok(format!("{} is already on", target.name))
                } else {
                    Err(StepFailure::retryable(format!(
                        "powering on {}: {message}",
                        target.name
                    )))
                }
            }
            Err(e) => Err(fail(&format!("powering on {}", target.name), e)),
        }
    }

    async fn power_off(
        &self,
        step: &StepInstance,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let shutdown =
            step.origin == Origin::Builtin && step.step.as_str().ends_with("/shutdown.power-off");
        let (conn, target) = if shutdown {
            // Migration and failback: stop the side that runs now.
            match self.source_vm(vm, ctx).await? {
                Some(found) => found,
                None => return Ok(format!("{vm} is not running anywhere: nothing to stop")),
            }
        } else {
            match self.target_vm(vm, ctx).await? {
                Some((c, v, _)) => (c, v),
                None => return Ok(format!("no VM for {vm}: nothing to power off")),
            }
        };
        if target.power_state == PowerState::PoweredOff {
            return Ok(format!("{} is already off", target.name));
        }
        // Drill copies are cut; real VMs shut down cleanly, cut only when the guest cannot answer.
        let mut mode = if ctx.mode == Mode::Test {
            StopMode::Hard
        } else {
            StopMode::Graceful
        };
        loop {
            let result = self
                .job(conn.as_ref(), || conn.power_off(&target.id, mode))
                .await;
            match result {
                Ok(_) => {
                    return Ok(format!(
                        "{} ({}) powered off ({mode:?})",
                        target.name, target.id
                    ))
                }
                Err(ConnectorError::Conflict(message)) => {
                    let now = conn
                        .get_vm(&target.id)
                        .await
                        .map_err(|e| fail(&format!("reading {}", target.name), e))?;
                    if now.power_state == PowerState::PoweredOff {
                        return Ok(format!("{} is already off", target.name));
                    }
                    let guest_silent = conn
                        .guest_heartbeat(&target.id)
                        .await
                        .is_ok_and(|h| h == haven_connector::Heartbeat::None);
                    if mode == StopMode::Graceful && guest_silent {
                        mode = StopMode::Hard;
                        continue;
                    }
                    return Err(StepFailure::retryable(format!(
                        "powering off {}: {message}",
                        target.name
                    )));
                }
                Err(e) => return Err(fail(&format!("powering off {}", target.name), e)),
            }
        }
    }

    /// The VM running on the source side of a migration (production) or a
    /// failback (the recovered VM).
    async fn source_vm(
        &self,
        vm: &VmRef,
        ctx: &StepContext,
    ) -> Result<Option<(Arc<dyn Connector>, Vm)>, StepFailure> {
        if ctx.mode == Mode::Failback {
            let Some(r) = self.record(vm)?.recovered else {
                return Ok(None);
            };
            let conn = self.connector(&r.connector)?.clone();
            return match conn.get_vm(&r.vm_id).await {
                Ok(v) => Ok(Some((conn, v))),
                Err(ConnectorError::NotFound(_)) => Ok(None),
                Err(e) => Err(fail(&format!("reading {}", r.name), e)),
            };
        }
        let conn = self.connector(&vm.connector)?.clone();
        Ok(self
            .find_by_name(conn.as_ref(), &vm.name)
            .await?
            .map(|v| (conn, v)))
    }

    async fn delete_vm(&self, vm: &VmRef, ctx: &StepContext) -> Result<String, StepFailure> {
        let found = self.target_vm(vm, ctx).await?;
        let execution = match (&found, ctx.mode) {
            (Some((_, _, e)), _) => e.clone(),
            (None, Mode::Undo) => match self.record(vm)?.recovered {
                Some(r) => r.execution,
                None => return Ok(format!("{vm} has no recovered VM: nothing to delete")),
            },
            (None, _) => ctx.execution.clone(),
        };
        let mut outcome = match &found {
            Some((conn, target, _)) => {
                let result = self.job(conn.as_ref(), || conn.delete_vm(&target.id)).await;
                match result {
                    Ok(_) | Err(ConnectorError::NotFound(_)) => {
                        format!("deleted {} ({})", target.name, target.id)
                    }
                    Err(e) => return Err(fail(&format!("deleting {}", target.name), e)),
                }
            }
            None => format!("no VM for {vm}"),
        };
        // Remove the restored images (connectors keep registered images).
        let key = doc_key(&execution, vm);
        if let Some(mut rec) = self.read::<Recovered>(RECOVERED, &key)? {
            let conn = self.connector(&rec.connector)?.clone();
            for image in &rec.images {
                let location = DiskLocation::File(FileLocation {
                    granted_dir: image.granted_dir.clone(),
                    path: image.path.clone(),
                    format: "raw".into(),
                });
                let path = files::host_path(conn.as_ref(), &location)
                    .map_err(|e| fail(&format!("image {}", image.path), e))?;
                match std::fs::remove_file(&path) {
                    Ok(()) => outcome.push_str(&format!(", removed {}", image.path)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StepFailure::retryable(format!(
                            "removing {}: {e}",
                            path.display()
                        )))
                    }
                }
            }
            if !rec.deleted {
                rec.deleted = true;
                self.write(RECOVERED, &key, &rec).await?;
            }
        }
        if ctx.mode == Mode::Undo {
            // Production is authoritative again; replication resumes.
            self.update_record(vm, |r| {
                let changed = r.recovered.is_some() || r.stopped;
                r.recovered = None;
                r.stopped = false;
                changed
            })
            .await?;
        }
        Ok(outcome)
    }

    // ---- health ------------------------------------------------------------

    async fn wait_heartbeat(
        &self,
        step: &StepInstance,
        vm: &VmRef,
        ctx: &StepContext,
        check: Option<&HealthCheck>,
    ) -> Result<String, StepFailure> {
        let (conn, target) = self.require_target(vm, ctx).await?;
        let limit = self.deadline(step, check);
        let deadline = Instant::now() + limit;
        loop {
            match conn.guest_heartbeat(&target.id).await {
                Ok(haven_connector::Heartbeat::Ok) => {
                    return Ok(format!("{} heartbeat ok", target.name))
                }
                Ok(_) => {}
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(fail(&format!("heartbeat of {}", target.name), e)),
            }
            if Instant::now() + self.config.poll_interval > deadline {
                return Err(StepFailure::retryable(format!(
                    "{} sent no heartbeat within {limit:?}",
                    target.name
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn probe(
        &self,
        step: &StepInstance,
        check: &HealthCheck,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        if let HealthCheck::Heartbeat { .. } = check {
            let vm = step
                .vm
                .clone()
                .ok_or_else(|| StepFailure::permanent("a heartbeat probe needs a VM"))?;
            return self.wait_heartbeat(step, &vm, ctx, Some(check)).await;
        }
        let limit = self.deadline(step, Some(check));
        let deadline = Instant::now() + limit;
        let attempt_timeout = Duration::from_secs(5).min(limit);
        loop {
            let result = match check {
                HealthCheck::Tcp { host, port, .. } => {
                    probe::tcp(host, *port, attempt_timeout).await
                }
                HealthCheck::Http {
                    url, expect_status, ..
                } => probe::http(url, *expect_status, attempt_timeout).await,
                HealthCheck::Heartbeat { .. } => unreachable!("handled above"),
            };
            match result {
                Ok(line) => return Ok(line),
                Err(e) if Instant::now() + self.config.poll_interval > deadline => {
                    return Err(StepFailure::retryable(format!("{e} (for {limit:?})")))
                }
                Err(_) => tokio::time::sleep(self.config.poll_interval).await,
            }
        }
    }
}

fn ensure_off(vm: &Vm, role: &str) -> Result<(), StepFailure> {
    if vm.power_state == PowerState::PoweredOn {
        return Err(StepFailure::permanent(format!(
            "the {role} VM {} ({}) is still running: power it off first, or data written \
             after the sync would be lost",
            vm.name, vm.id
        )));
    }
    Ok(())
}

/// A short, stable tag of an execution id for names (`3f2a9c01`).
fn short(execution: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(execution.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A name for a restored disk image that connectors accept (with the
/// connector: two sites may share one image directory).
fn image_name(connector: &str, vm: &str, disk: &str) -> String {
    format!("{connector}-{vm}-{disk}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[async_trait]
impl StepRunner for ConnectorRunner {
    async fn run(
        &self,
        graph: &ExecutionGraph,
        step: &StepInstance,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        fence::scope(ctx.fence, self.dispatch(graph, step, ctx)).await
    }
}
