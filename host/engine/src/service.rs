//! The execution lifecycle shared by the web API and the embedded CLI: start
//! a plan's execution, approve, cancel, resume, read, and follow its journal.
//!
//! An [`Orchestrator`] drives executions only while its node is the primary
//! ([`Role::Primary`]): on becoming primary it resumes every unfinished
//! execution (the journal says where each stood), on losing the role it stops
//! driving them (the new primary resumes them; a step in flight runs again
//! under its idempotency key). Reads work on every node.
//!
//! Stored state: the plan documents `plans/<id>` ([`PlanRecord`]), one
//! document `executions/<id>` per execution ([`ExecutionRecord`], with the
//! compiled graph it runs) and the journal stream `journal/<id>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use haven_plan::{ExecutionGraph, GroupId, Mode, Plan, PlanError, VmRef};
use haven_store::{Applied, Command, CommandLog, CommitError, Outcome, Role, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::executor::{Clock, ExecutionOutcome, Executor, ExecutorError};
use crate::journal::{is_cancelled, replay, stream_name, Event, StepState};
use crate::resolve::{ResolveError, Resolver};
use crate::runner::StepRunner;

/// Collection of plan documents ([`PlanRecord`]).
pub const PLANS: &str = "plans";
/// Collection of execution documents ([`ExecutionRecord`]).
pub const EXECUTIONS: &str = "executions";
/// How often a follower of a journal re-reads it when no local commit woke
/// it (commits replicated from another node do not pass through this log).
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Pause before driving an execution again after the cluster did not commit
/// one of its journal events.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// A stored plan: its canonical TOML (the source of truth, exact round trip)
/// and what the API lists without parsing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Canonical TOML ([`Plan::to_toml`]).
    pub toml: String,
    /// Plan set (auth scope).
    pub plan_set: String,
    /// Human name.
    pub name: String,
    /// [`Plan::digest`] of the text: a readiness check verified this digest.
    pub digest: String,
    /// Who wrote this version.
    pub updated_by: String,
    /// When, Unix ms.
    pub updated_at_ms: u64,
}

impl PlanRecord {
    /// The record of `plan` written by `by` at `at_ms`.
    pub fn new(plan: &Plan, by: &str, at_ms: u64) -> Self {
        Self {
            toml: plan.to_toml(),
            plan_set: plan.plan_set.clone(),
            name: plan.name.clone(),
            digest: plan.digest(),
            updated_by: by.to_owned(),
            updated_at_ms: at_ms,
        }
    }

    /// The plan itself.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        Plan::from_toml(&self.toml)
    }
}

/// A stored execution: what was started, by whom, and the graph it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Execution id (`<plan>-<n>`).
    pub id: String,
    /// Plan id.
    pub plan: String,
    /// Plan set of the plan when it started (auth scope).
    pub plan_set: String,
    /// Version of the plan document that was compiled.
    pub plan_version: u64,
    /// Digest of that plan.
    pub plan_digest: String,
    /// Mode.
    pub mode: Mode,
    /// Who started it.
    pub started_by: String,
    /// When, Unix ms.
    pub created_at_ms: u64,
    /// The plan's RTO target, ms.
    pub rto_target_ms: Option<u64>,
    /// The compiled graph the executor runs.
    pub graph: ExecutionGraph,
}

/// Where an execution stands, from its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionStatus {
    /// Created; the executor has not journaled anything yet.
    Pending,
    /// Steps are running (or the execution waits for a primary to resume it).
    Running,
    /// An approval step waits for an operator.
    AwaitingApproval,
    /// A cancel was requested; cleanup steps may still run.
    Cancelling,
    /// Finished: every critical step succeeded.
    Succeeded,
    /// Finished: a critical step failed.
    Failed,
    /// Finished after a cancel request.
    Cancelled,
}

impl ExecutionStatus {
    /// The status of an execution with `steps` steps and this journal.
    pub fn of(steps: usize, events: &[Event]) -> Self {
        if let Some(Event::ExecutionFinished { outcome }) = events.last() {
            return match outcome.as_str() {
                "succeeded" => Self::Succeeded,
                "cancelled" => Self::Cancelled,
                _ => Self::Failed,
            };
        }
        if events.is_empty() {
            Self::Pending
        } else if is_cancelled(events) {
            Self::Cancelling
        } else if replay(steps, events).contains(&StepState::AwaitingApproval) {
            Self::AwaitingApproval
        } else {
            Self::Running
        }
    }

    /// Whether the execution is over.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// One step of an execution as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepView {
    /// Index in the graph.
    pub index: usize,
    /// Idempotency key.
    pub key: String,
    /// Name.
    pub name: String,
    /// Group, for group steps.
    pub group: Option<String>,
    /// Whether this is an approval step.
    pub approval: bool,
    /// Where it stands.
    #[serde(flatten)]
    pub state: StepState,
}

/// An execution with its status and the state of every step.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionView {
    /// Execution id.
    pub id: String,
    /// Plan id.
    pub plan: String,
    /// Plan set.
    pub plan_set: String,
    /// Mode.
    pub mode: Mode,
    /// Who started it.
    pub started_by: String,
    /// When, Unix ms.
    pub created_at_ms: u64,
    /// Where it stands.
    pub status: ExecutionStatus,
    /// Steps, in graph order.
    pub steps: Vec<StepView>,
}

/// A journal entry as followers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEvent {
    /// Sequence number in the journal (1, 2, ...); resume after it.
    pub seq: u64,
    /// When, Unix ms.
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Why an orchestrator request failed.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// No plan with this id.
    #[error("no plan `{0}`; list plans to see the ids")]
    PlanNotFound(String),
    /// No execution with this id.
    #[error("no execution `{0}`; list executions to see the ids")]
    ExecutionNotFound(String),
    /// The plan does not compile (verification errors, missing test network).
    #[error("plan cannot run: {0}")]
    Plan(#[from] PlanError),
    /// A group could not be resolved to VMs.
    #[error("plan groups cannot be resolved: {0}")]
    Resolve(#[from] ResolveError),
    /// The execution is over; nothing to approve, cancel or resume.
    #[error("execution `{0}` has already finished")]
    Finished(String),
    /// A step that is not waiting for approval.
    #[error("step {step} of execution `{execution}` is not waiting for approval")]
    NotAwaitingApproval {
        /// Execution id.
        execution: String,
        /// Step index.
        step: usize,
    },
    /// This node is not the primary.
    #[error("this node is not the primary{}", .primary.as_ref().map(|p| format!("; the primary is {p}")).unwrap_or_else(|| "; no primary is known yet, retry shortly".into()))]
    NotPrimary {
        /// The primary's API URL, when known.
        primary: Option<String>,
    },
    /// The cluster did not commit the write (the outcome is unknown).
    #[error("the cluster did not commit the write: {0}")]
    Unavailable(String),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The executor failed.
    #[error(transparent)]
    Executor(ExecutorError),
}

impl From<CommitError> for OrchestratorError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => Self::Store(e),
            CommitError::NotPrimary { primary } => Self::NotPrimary { primary },
            CommitError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

impl From<ExecutorError> for OrchestratorError {
    fn from(e: ExecutorError) -> Self {
        match e {
            ExecutorError::Commit(e) => e.into(),
            ExecutorError::Store(e) => Self::Store(e),
            ExecutorError::Finished(id) => Self::Finished(id),
            ExecutorError::NotAwaitingApproval { execution, step } => {
                Self::NotAwaitingApproval { execution, step }
            }
            other => Self::Executor(other),
        }
    }
}

/// The command log the orchestrator writes through: the node's log, plus a
/// signal after every local commit so journal followers wake at once.
struct Signalling {
    inner: Arc<dyn CommandLog>,
    committed: watch::Sender<u64>,
}

#[async_trait]
impl CommandLog for Signalling {
    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Applied>, CommitError> {
        let applied = self.inner.commit(commands).await?;
        if let Some(last) = applied.last() {
            self.committed.send_replace(last.index);
        }
        Ok(applied)
    }

    fn store(&self) -> &Arc<Store> {
        self.inner.store()
    }

    fn role(&self) -> watch::Receiver<Role> {
        self.inner.role()
    }
}

/// Starts, drives and answers for executions.
pub struct Orchestrator {
    log: Arc<Signalling>,
    resolver: Arc<dyn Resolver>,
    executor: Arc<Executor>,
    clock: Clock,
    drivers: Arc<Drivers>,
}

/// The task driving each execution this node runs now.
#[derive(Default)]
struct Drivers {
    running: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Bumped whenever a driver ends, for [`Orchestrator::wait_idle`].
    ended: watch::Sender<u64>,
}

impl Drivers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Orchestrator {
    /// An orchestrator writing through `log`, resolving groups with
    /// `resolver`, running steps with `runner`. Call [`Orchestrator::supervise`]
    /// to have it follow the node's role.
    pub fn new(
        log: Arc<dyn CommandLog>,
        resolver: Arc<dyn Resolver>,
        runner: Arc<dyn StepRunner>,
        clock: Clock,
    ) -> Arc<Self> {
        let log = Arc::new(Signalling {
            inner: log,
            committed: watch::Sender::new(0),
        });
        Arc::new(Self {
            executor: Arc::new(Executor::new(log.clone(), runner, clock)),
            log,
            resolver,
            clock,
            drivers: Arc::default(),
        })
    }

    /// The VMs each group of `plan` holds now (as a run would resolve them).
    pub async fn resolve(
        &self,
        plan: &Plan,
    ) -> Result<BTreeMap<GroupId, Vec<VmRef>>, ResolveError> {
        self.resolver.resolve(plan).await
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        self.log.store()
    }

    /// The command log this orchestrator writes through (local commits wake
    /// journal followers at once).
    pub fn log(&self) -> Arc<dyn CommandLog> {
        self.log.clone()
    }

    /// Now, Unix ms, on the executor's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Follows the node's role until the role channel closes: resumes every
    /// unfinished execution on becoming primary, stops driving them all on
    /// becoming a follower.
    pub fn supervise(self: &Arc<Self>) -> JoinHandle<()> {
        let this = self.clone();
        let mut role = self.log.role();
        tokio::spawn(async move {
            let mut was_primary = false;
            loop {
                let primary = role.borrow_and_update().is_primary();
                if primary && !was_primary {
                    if let Err(e) = this.resume_all() {
                        tracing::error!("cannot resume executions: {e}");
                    }
                } else if !primary && was_primary {
                    this.stop_all();
                }
                was_primary = primary;
                if role.changed().await.is_err() {
                    break;
                }
            }
        })
    }

    /// Starts an execution of plan `plan` in `mode`, on behalf of `by`.
    /// Returns once it is recorded; it runs in the background.
    pub async fn start(
        &self,
        plan_id: &str,
        mode: Mode,
        by: &str,
    ) -> Result<ExecutionRecord, OrchestratorError> {
        self.require_primary()?;
        let stored = self
            .store()
            .get_as::<PlanRecord>(PLANS, plan_id)?
            .ok_or_else(|| OrchestratorError::PlanNotFound(plan_id.into()))?;
        let plan = stored.value.plan()?;
        let resolved = self.resolver.resolve(&plan).await?;
        let graph = plan.compile(mode, &resolved)?;
        loop {
            let id = format!("{}-{}", plan.id, self.store().applied_index()? + 1);
            let record = ExecutionRecord {
                id: id.clone(),
                plan: plan.id.to_string(),
                plan_set: plan.plan_set.clone(),
                plan_version: stored.version,
                plan_digest: stored.value.digest.clone(),
                mode,
                started_by: by.to_owned(),
                created_at_ms: self.now_ms(),
                rto_target_ms: plan.rto.map(|r| r.as_millis()),
                graph: graph.clone(),
            };
            let applied = self
                .log
                .commit(vec![Command::Put {
                    collection: EXECUTIONS.into(),
                    key: id.clone(),
                    value: serde_json::to_value(&record).expect("records serialize"),
                    expected_version: Some(0),
                }])
                .await?;
            // Another writer took the id meanwhile: take the next one.
            if applied
                .iter()
                .any(|a| matches!(a.outcome, Outcome::Conflict { .. }))
            {
                continue;
            }
            tracing::info!(execution = %id, plan = %plan.id, mode = mode.as_str(), by, "execution started");
            self.ensure_driver(&record);
            return Ok(record);
        }
    }

    /// Approves approval step `step` of `execution` and continues the run.
    pub async fn approve(
        &self,
        execution: &str,
        step: usize,
        by: &str,
    ) -> Result<(), OrchestratorError> {
        self.require_primary()?;
        let record = self.record(execution)?;
        self.executor
            .approve(execution, &record.graph, step, by)
            .await?;
        self.ensure_driver(&record);
        Ok(())
    }

    /// Cancels `execution`: no new step starts except cleanup steps.
    pub async fn cancel(&self, execution: &str, by: &str) -> Result<(), OrchestratorError> {
        self.require_primary()?;
        let record = self.record(execution)?;
        self.executor.cancel(execution, by).await?;
        self.ensure_driver(&record);
        Ok(())
    }

    /// Drives `execution` again if nothing on this node does (after an
    /// interrupted run); a no-op if it is being driven.
    pub fn resume(&self, execution: &str) -> Result<(), OrchestratorError> {
        self.require_primary()?;
        let record = self.record(execution)?;
        if self.status(&record)?.is_finished() {
            return Err(OrchestratorError::Finished(execution.into()));
        }
        self.ensure_driver(&record);
        Ok(())
    }

    /// The stored record of `execution`.
    pub fn record(&self, execution: &str) -> Result<ExecutionRecord, OrchestratorError> {
        self.store()
            .get_as::<ExecutionRecord>(EXECUTIONS, execution)?
            .map(|v| v.value)
            .ok_or_else(|| OrchestratorError::ExecutionNotFound(execution.into()))
    }

    /// Every execution, newest first.
    pub fn list(&self) -> Result<Vec<ExecutionView>, OrchestratorError> {
        let mut views = Vec::new();
        for (key, _) in self.store().list(EXECUTIONS)? {
            views.push(self.get(&key)?);
        }
        views.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| b.id.cmp(&a.id))
        });
        Ok(views)
    }

    /// An execution with its status and steps.
    pub fn get(&self, execution: &str) -> Result<ExecutionView, OrchestratorError> {
        let record = self.record(execution)?;
        let events = self.executor.events(execution)?;
        let states = replay(record.graph.steps.len(), &events);
        Ok(ExecutionView {
            status: ExecutionStatus::of(record.graph.steps.len(), &events),
            steps: record
                .graph
                .steps
                .iter()
                .zip(states)
                .map(|(s, state)| StepView {
                    index: s.index,
                    key: s.key.clone(),
                    name: s.name.clone(),
                    group: s.group.as_ref().map(ToString::to_string),
                    approval: matches!(s.action, haven_plan::Action::Approval { .. }),
                    state,
                })
                .collect(),
            id: record.id,
            plan: record.plan,
            plan_set: record.plan_set,
            mode: record.mode,
            started_by: record.started_by,
            created_at_ms: record.created_at_ms,
        })
    }

    /// The journal of `execution` after sequence number `after`, then every
    /// new entry as it is written (see [`JournalFollower::next`]).
    pub fn subscribe(
        &self,
        execution: &str,
        after: u64,
    ) -> Result<JournalFollower, OrchestratorError> {
        self.record(execution)?;
        Ok(JournalFollower {
            store: self.store().clone(),
            stream: stream_name(execution),
            after,
            committed: self.log.committed.subscribe(),
            finished: false,
        })
    }

    /// Waits until no task drives `execution` on this node (it finished, waits
    /// for approval, or this node stopped driving it). For the embedded CLI,
    /// whose process must not exit under a running execution.
    pub async fn wait_idle(&self, execution: &str) {
        let mut ended = self.drivers.ended.subscribe();
        loop {
            if !self.drivers.lock().contains_key(execution) {
                return;
            }
            if ended.changed().await.is_err() {
                return;
            }
        }
    }

    fn status(&self, record: &ExecutionRecord) -> Result<ExecutionStatus, OrchestratorError> {
        let events = self.executor.events(&record.id)?;
        Ok(ExecutionStatus::of(record.graph.steps.len(), &events))
    }

    fn require_primary(&self) -> Result<(), OrchestratorError> {
        match self.log.role().borrow().clone() {
            Role::Primary { .. } => Ok(()),
            Role::Follower { primary } => Err(OrchestratorError::NotPrimary { primary }),
        }
    }

    /// Resumes every unfinished execution (this node just became primary).
    fn resume_all(&self) -> Result<(), OrchestratorError> {
        let mut resumed = 0;
        for (key, _) in self.store().list(EXECUTIONS)? {
            let record = self.record(&key)?;
            let status = self.status(&record)?;
            if !status.is_finished() && status != ExecutionStatus::AwaitingApproval {
                self.ensure_driver(&record);
                resumed += 1;
            }
        }
        if resumed > 0 {
            tracing::info!(resumed, "resumed unfinished executions");
        }
        Ok(())
    }

    /// Stops every driver (this node is no longer primary).
    fn stop_all(&self) {
        let drivers: Vec<_> = self.drivers.lock().drain().collect();
        for (id, handle) in drivers {
            tracing::info!(execution = %id, "no longer primary: stopped driving the execution");
            handle.abort();
        }
        self.drivers.bump();
    }

    /// Spawns a task running `record` unless one runs already.
    fn ensure_driver(&self, record: &ExecutionRecord) {
        let mut running = self.drivers.lock();
        if running.get(&record.id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let task = drive(self.executor.clone(), record.clone(), self.drivers.clone());
        running.insert(record.id.clone(), tokio::spawn(task));
    }
}

/// Runs an execution until it finishes or waits for an approval nobody has
/// given yet, then deregisters itself.
async fn drive(executor: Arc<Executor>, record: ExecutionRecord, drivers: Arc<Drivers>) {
    let id = record.id.as_str();
    loop {
        let result = executor.run(id, &record.graph).await;
        // Decided under the drivers' lock: an operator's approval or cancel is
        // journaled before `ensure_driver` takes the lock, so either this
        // check sees it, or `ensure_driver` finds no driver and starts one.
        let mut running = drivers.lock();
        match result {
            Ok(ExecutionOutcome::AwaitingApproval { steps }) => {
                let events = executor.events(id).unwrap_or_default();
                let states = replay(record.graph.steps.len(), &events);
                if is_cancelled(&events)
                    || steps
                        .iter()
                        .any(|&s| states[s] != StepState::AwaitingApproval)
                {
                    continue;
                }
                tracing::info!(execution = id, ?steps, "waiting for approval");
            }
            Ok(outcome) => {
                tracing::info!(
                    execution = id,
                    outcome = outcome.label(),
                    "execution finished"
                );
            }
            // No quorum for a journal write: the outcome is unknown, the
            // journal says where the run stands; try again while primary.
            Err(ExecutorError::Commit(CommitError::Unavailable(e))) => {
                drop(running);
                tracing::warn!(
                    execution = id,
                    "journal write not committed ({e}); retrying"
                );
                tokio::time::sleep(UNAVAILABLE_RETRY).await;
                continue;
            }
            Err(e) => tracing::error!(execution = id, "execution stopped: {e}"),
        }
        running.remove(id);
        drop(running);
        drivers.bump();
        return;
    }
}

/// Follows an execution's journal: entries already written, then new ones.
pub struct JournalFollower {
    store: Arc<Store>,
    stream: String,
    after: u64,
    committed: watch::Receiver<u64>,
    finished: bool,
}

impl JournalFollower {
    /// The next entries (at least one), waiting for them if needed; `None`
    /// after the execution's `execution-finished` event has been returned.
    pub async fn next(&mut self) -> Result<Option<Vec<JournalEvent>>, StoreError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            // Marked before reading, so a commit during the read wakes us.
            self.committed.borrow_and_update();
            let entries = self.store.stream(&self.stream, self.after)?;
            if !entries.is_empty() {
                let mut out = Vec::with_capacity(entries.len());
                for entry in entries {
                    self.after = entry.seq;
                    let event: Event =
                        serde_json::from_value(entry.entry).map_err(|e| StoreError::Decode {
                            collection: "streams".into(),
                            key: self.stream.clone(),
                            message: e.to_string(),
                        })?;
                    self.finished |= matches!(event, Event::ExecutionFinished { .. });
                    out.push(JournalEvent {
                        seq: entry.seq,
                        at_ms: entry.at_ms,
                        event,
                    });
                }
                return Ok(Some(out));
            }
            let _ = tokio::time::timeout(FOLLOW_POLL, self.committed.changed()).await;
        }
    }
}
