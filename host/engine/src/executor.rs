//! The executor: schedules step attempts, journals every transition, resumes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use haven_plan::{Action, ExecutionGraph, Origin, StepInstance};
use haven_store::{Command, CommandLog, CommitError, Role, StoreError};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use tokio::sync::watch;

use crate::journal::{is_cancelled, replay, stream_name, Event, StepState};
use crate::runner::{StepContext, StepFailure, StepRunner};

/// Deadline of an attempt whose step sets none.
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Why steps are skipped after a critical failure.
const STOPPED: &str = "the plan stopped after a critical failure";
/// Why steps are skipped after a cancel request.
const CANCELLED: &str = "the execution was cancelled";
/// First retry delay when a step sets none; doubled for each further retry.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);

/// Why the executor could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The journal could not be read or written; the execution is unchanged
    /// from the last event written and can be resumed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A journal event could not be committed (in a cluster: this node is
    /// no longer the primary, or no quorum answered). The execution is
    /// unchanged from the last event committed and the primary resumes it.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The execution exists with a different graph (the plan changed since).
    #[error("execution `{0}` was started from a different plan graph; start a new execution")]
    GraphChanged(String),
    /// A journal entry is not an event of this engine.
    #[error("journal of `{execution}` is unreadable at entry {seq}: {message}")]
    Journal {
        /// Execution id.
        execution: String,
        /// Entry.
        seq: u64,
        /// Decoder message.
        message: String,
    },
    /// `cancel` named an execution that has already finished.
    #[error("execution `{0}` has already finished")]
    Finished(String),
    /// `approve` named a step that is not waiting for approval.
    #[error("step {step} of execution `{execution}` is not waiting for approval")]
    NotAwaitingApproval {
        /// Execution id.
        execution: String,
        /// Step index.
        step: usize,
    },
}

/// How a run of the executor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// Every step succeeded (or failed optionally, or was cleaned up).
    Succeeded,
    /// A critical step failed; these steps failed.
    Failed {
        /// Indices of the failed steps.
        failed: Vec<usize>,
    },
    /// Waiting for operators to approve these steps; call
    /// [`Executor::approve`], then [`Executor::run`] again.
    AwaitingApproval {
        /// Indices of the approval steps.
        steps: Vec<usize>,
    },
    /// An operator cancelled the execution ([`Executor::cancel`]); cleanup
    /// steps ran, nothing else started after the request.
    Cancelled,
}

impl ExecutionOutcome {
    /// The outcome's name in the journal and the API (`succeeded`, `failed`,
    /// `awaiting-approval`, `cancelled`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed { .. } => "failed",
            Self::AwaitingApproval { .. } => "awaiting-approval",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Time as the journal records it: Unix milliseconds, advancing with tokio's
/// clock (so a simulation with paused time records virtual, reproducible times).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::starting_at(base_ms)
    }

    /// A clock that reads `base_ms` now (simulations).
    pub fn starting_at(base_ms: u64) -> Self {
        Self {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }

    /// Now, Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Runs execution graphs with a runner, journalling through a command log
/// (the embedded store, or the HA cluster).
pub struct Executor {
    log: Arc<dyn CommandLog>,
    runner: Arc<dyn StepRunner>,
    clock: Clock,
    /// Bumped whenever an operator event (approval, cancel) is journaled, so
    /// runs in progress re-read their journal instead of waiting for a step.
    nudge: watch::Sender<u64>,
}

struct Attempt {
    step: usize,
    attempt: u32,
    result: Result<String, StepFailure>,
}

impl Executor {
    /// An executor journalling through `log`, running steps with `runner`.
    pub fn new(log: Arc<dyn CommandLog>, runner: Arc<dyn StepRunner>, clock: Clock) -> Self {
        Self {
            log,
            runner,
            clock,
            nudge: watch::Sender::new(0),
        }
    }

    fn nudge_runs(&self) {
        self.nudge.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The journal of an execution.
    pub fn events(&self, execution: &str) -> Result<Vec<Event>, ExecutorError> {
        self.log
            .store()
            .stream(&stream_name(execution), 0)?
            .into_iter()
            .map(|e| {
                serde_json::from_value(e.entry).map_err(|err| ExecutorError::Journal {
                    execution: execution.into(),
                    seq: e.seq,
                    message: err.to_string(),
                })
            })
            .collect()
    }

    /// The state of every step of an execution of `graph`.
    pub fn states(
        &self,
        execution: &str,
        graph: &ExecutionGraph,
    ) -> Result<Vec<StepState>, ExecutorError> {
        Ok(replay(graph.steps.len(), &self.events(execution)?))
    }

    /// Commits one journal event.
    async fn append(&self, execution: &str, event: &Event) -> Result<(), ExecutorError> {
        self.append_all(execution, std::slice::from_ref(event))
            .await
    }

    /// Commits journal events in one write (group commit): every transition
    /// a scheduling round decides costs one durable write, not one each.
    async fn append_all(&self, execution: &str, events: &[Event]) -> Result<(), ExecutorError> {
        if events.is_empty() {
            return Ok(());
        }
        let (stream, at_ms) = (stream_name(execution), self.clock.now_ms());
        let commands = events
            .iter()
            .map(|event| Command::Append {
                stream: stream.clone(),
                at_ms,
                entry: serde_json::to_value(event).expect("events serialize"),
            })
            .collect();
        self.log.commit(commands).await?;
        Ok(())
    }

    /// The fencing token for side effects started now: the primary's term,
    /// the same for every step this primary runs and higher for any primary
    /// after it (so concurrent steps never fence each other out).
    fn fence(&self) -> Result<u64, ExecutorError> {
        match &*self.log.role().borrow() {
            Role::Primary { term } => Ok(*term),
            Role::Follower { primary } => Err(CommitError::NotPrimary {
                primary: primary.clone(),
            }
            .into()),
        }
    }

    /// Records an operator's approval of an approval step.
    pub async fn approve(
        &self,
        execution: &str,
        graph: &ExecutionGraph,
        step: usize,
        by: &str,
    ) -> Result<(), ExecutorError> {
        match self.states(execution, graph)?.get(step) {
            Some(StepState::AwaitingApproval) => self
                .append(
                    execution,
                    &Event::ApprovalGranted {
                        step,
                        by: by.to_owned(),
                    },
                )
                .await
                .map(|()| self.nudge_runs()),
            _ => Err(ExecutorError::NotAwaitingApproval {
                execution: execution.into(),
                step,
            }),
        }
    }

    /// Journals an operator's cancel request. A run in progress stops
    /// starting steps (cleanup steps still run) and finishes `cancelled`; an
    /// execution that is not being run (waiting for approval, or on a host
    /// that went down) finishes so on its next [`Executor::run`]. Cancelling
    /// twice is harmless.
    pub async fn cancel(&self, execution: &str, by: &str) -> Result<(), ExecutorError> {
        let events = self.events(execution)?;
        if matches!(events.last(), Some(Event::ExecutionFinished { .. })) {
            return Err(ExecutorError::Finished(execution.into()));
        }
        if !is_cancelled(&events) {
            self.append(execution, &Event::CancelRequested { by: by.to_owned() })
                .await?;
        }
        self.nudge_runs();
        Ok(())
    }

    /// Runs (or resumes) `execution` of `graph` until it finishes or waits
    /// for approvals.
    pub async fn run(
        &self,
        execution: &str,
        graph: &ExecutionGraph,
    ) -> Result<ExecutionOutcome, ExecutorError> {
        // Subscribed before the journal is read: nothing an operator does
        // after this point goes unnoticed.
        let mut nudged = self.nudge.subscribe();
        let graph = Arc::new(graph.clone());
        let digest = hex_sha256(&serde_json::to_vec(&*graph).expect("graphs serialize"));
        let events = self.events(execution)?;
        match events.first() {
            None => {
                self.append(
                    execution,
                    &Event::ExecutionStarted {
                        plan: graph.plan.to_string(),
                        mode: graph.mode.as_str().to_owned(),
                        steps: graph.steps.len(),
                        graph_sha256: digest,
                    },
                )
                .await?
            }
            Some(Event::ExecutionStarted { graph_sha256, .. }) if *graph_sha256 == digest => {
                if matches!(events.last(), Some(Event::ExecutionFinished { .. })) {
                    let states = replay(graph.steps.len(), &events);
                    return Ok(outcome_of(&graph, &states, is_cancelled(&events)));
                }
                self.append(execution, &Event::ExecutionResumed).await?;
            }
            Some(_) => return Err(ExecutorError::GraphChanged(execution.into())),
        }
        let mut states = replay(graph.steps.len(), &events);
        let mut cancelled = is_cancelled(&events);
        let mut stopping = cancelled || critical_failure(&graph, &states);
        let mut in_flight: BTreeSet<usize> = BTreeSet::new();
        let mut tasks: JoinSet<Attempt> = JoinSet::new();
        let mut spawned: HashMap<tokio::task::Id, (usize, u32)> = HashMap::new();
        // Only steps whose situation changed are looked at again, so a round
        // costs what changed, not the size of the plan.
        let dependents = dependents_of(&graph);
        let everything = || (0..graph.steps.len()).collect::<BTreeSet<usize>>();
        let mut candidates = everything();
        let mut capacity_blocked: BTreeSet<usize> = BTreeSet::new();

        loop {
            // One scheduling round: decide every transition that is possible
            // now, commit them together, and only then start side effects.
            let mut journal = Vec::new();
            let mut starts = Vec::new();
            let reason = if cancelled { CANCELLED } else { STOPPED };
            let mut worklist = std::mem::take(&mut candidates);
            // Ascending indices are a topological order: a step settled in
            // this round is seen before the steps that depend on it.
            while let Some(i) = worklist.pop_first() {
                let step = &graph.steps[i];
                if in_flight.contains(&i) {
                    continue;
                }
                if stopping && step.origin != Origin::Cleanup {
                    // Nothing but cleanup starts after a critical failure or
                    // a cancel; what will never run is settled now, so
                    // cleanup can follow it.
                    if skip_if_pending(&mut journal, i, &mut states[i], reason) {
                        worklist.extend(&dependents[i]);
                    }
                    continue;
                }
                let attempt = match states[i] {
                    StepState::Pending => 1,
                    StepState::Running { attempt } | StepState::Retrying { attempt } => attempt,
                    _ => continue,
                };
                match dependencies(&graph, &states, step) {
                    Readiness::Wait => continue,
                    Readiness::Blocked(reason) => {
                        journal.push(Event::StepSkipped { step: i, reason });
                        states[i] = StepState::Skipped;
                        worklist.extend(&dependents[i]);
                        continue;
                    }
                    Readiness::Ready => {}
                }
                if !has_capacity(&graph, step, &in_flight) {
                    capacity_blocked.insert(i);
                    continue;
                }
                if let Action::Approval { message, .. } = &step.action {
                    journal.push(Event::ApprovalRequested {
                        step: i,
                        message: message.clone(),
                    });
                    states[i] = StepState::AwaitingApproval;
                    continue;
                }
                journal.push(Event::StepStarted {
                    step: i,
                    key: step.key.clone(),
                    attempt,
                });
                let backoff = match states[i] {
                    StepState::Retrying { attempt } => backoff(step, attempt),
                    _ => Duration::ZERO,
                };
                states[i] = StepState::Running { attempt };
                in_flight.insert(i);
                starts.push((i, attempt, backoff));
            }
            let fence = if starts.is_empty() { 0 } else { self.fence()? };
            self.append_all(execution, &journal).await?;
            for (i, attempt, backoff) in starts {
                let (runner, graph, ctx) = (
                    self.runner.clone(),
                    graph.clone(),
                    StepContext {
                        execution: execution.to_owned(),
                        mode: graph.mode,
                        attempt,
                        fence,
                    },
                );
                let handle =
                    tasks.spawn(async move {
                        tokio::time::sleep(backoff).await;
                        let step = &graph.steps[i];
                        let deadline = step.timeout.map_or(DEFAULT_STEP_TIMEOUT, |t| t.to_std());
                        let result =
                            match tokio::time::timeout(deadline, runner.run(&graph, step, &ctx))
                                .await
                            {
                                Ok(result) => result,
                                Err(_) => Err(StepFailure::retryable(format!(
                                    "timed out after {deadline:?}"
                                ))),
                            };
                        Attempt {
                            step: i,
                            attempt,
                            result,
                        }
                    });
                spawned.insert(handle.id(), (i, attempt));
            }

            if tasks.is_empty() {
                break;
            }
            let joined = tokio::select! {
                joined = tasks.join_next_with_id() => joined.expect("the set is not empty"),
                Ok(()) = nudged.changed() => {
                    // An operator acted while steps run: take approvals and a
                    // cancel request from the journal, then schedule again.
                    let events = self.events(execution)?;
                    cancelled |= is_cancelled(&events);
                    stopping |= cancelled;
                    candidates = everything();
                    for (state, replayed) in states.iter_mut().zip(replay(graph.steps.len(), &events)) {
                        if *state == StepState::AwaitingApproval && replayed == StepState::Succeeded {
                            *state = StepState::Succeeded;
                        }
                    }
                    continue;
                }
            };
            // Every attempt that has ended by now is journaled in one write.
            let mut journal = Vec::new();
            let mut next = Some(joined);
            while let Some(joined) = next {
                let attempt = settle(joined, &mut spawned);
                let i = attempt.step;
                in_flight.remove(&i);
                if record(&graph, &mut states, &mut journal, attempt, execution) && !stopping {
                    stopping = true;
                    candidates = everything();
                }
                // A retry, the steps it unblocks, and those that waited for
                // a free slot.
                candidates.insert(i);
                candidates.extend(&dependents[i]);
                candidates.append(&mut capacity_blocked);
                next = tasks.try_join_next_with_id();
            }
            self.append_all(execution, &journal).await?;
        }

        let awaiting: Vec<usize> = (0..states.len())
            .filter(|&i| states[i] == StepState::AwaitingApproval)
            .collect();
        if !awaiting.is_empty() && !stopping {
            return Ok(ExecutionOutcome::AwaitingApproval { steps: awaiting });
        }
        let reason = if cancelled { CANCELLED } else { STOPPED };
        let mut journal = Vec::new();
        for (i, state) in states.iter_mut().enumerate() {
            skip_if_pending(&mut journal, i, state, reason);
        }
        let outcome = outcome_of(&graph, &states, cancelled);
        journal.push(Event::ExecutionFinished {
            outcome: outcome.label().into(),
        });
        self.append_all(execution, &journal).await?;
        Ok(outcome)
    }
}

/// The attempt a finished task carried; a runner that panicked fails its
/// attempt and the executor goes on.
fn settle(
    joined: Result<(tokio::task::Id, Attempt), tokio::task::JoinError>,
    spawned: &mut HashMap<tokio::task::Id, (usize, u32)>,
) -> Attempt {
    match joined {
        Ok((id, attempt)) => {
            spawned.remove(&id);
            attempt
        }
        Err(error) => {
            let (step, attempt) = spawned
                .remove(&error.id())
                .expect("every task is registered");
            Attempt {
                step,
                attempt,
                result: Err(StepFailure::permanent(format!(
                    "the step runner crashed: {error}"
                ))),
            }
        }
    }
}

/// Records the end of an attempt in `states` and `journal`; returns whether
/// it was a critical failure (the plan stops).
fn record(
    graph: &ExecutionGraph,
    states: &mut [StepState],
    journal: &mut Vec<Event>,
    Attempt {
        step: i,
        attempt,
        result,
    }: Attempt,
    execution: &str,
) -> bool {
    let step = &graph.steps[i];
    match result {
        Ok(detail) => {
            tracing::debug!(execution, step = %step.key, attempt, "step succeeded: {detail}");
            journal.push(Event::StepSucceeded {
                step: i,
                attempt,
                detail,
            });
            states[i] = StepState::Succeeded;
            false
        }
        Err(failure) => {
            let is_final = !failure.retryable || attempt > step.retries;
            tracing::warn!(execution, step = %step.key, attempt, is_final, "step failed: {}", failure.message);
            journal.push(Event::StepFailed {
                step: i,
                attempt,
                error: failure.message.clone(),
                is_final,
            });
            states[i] = if is_final {
                StepState::Failed {
                    error: failure.message,
                }
            } else {
                StepState::Retrying {
                    attempt: attempt + 1,
                }
            };
            is_final && step.critical
        }
    }
}

/// Journals a step that will never run after a critical failure or a
/// cancel; returns whether it did (the step was not over yet).
fn skip_if_pending(
    journal: &mut Vec<Event>,
    step: usize,
    state: &mut StepState,
    reason: &str,
) -> bool {
    if state.is_terminal() {
        return false;
    }
    journal.push(Event::StepSkipped {
        step,
        reason: reason.into(),
    });
    *state = StepState::Skipped;
    true
}

/// For each step, the steps that depend on it.
fn dependents_of(graph: &ExecutionGraph) -> Vec<Vec<usize>> {
    let mut dependents = vec![Vec::new(); graph.steps.len()];
    for step in &graph.steps {
        for &d in &step.depends_on {
            dependents[d].push(step.index);
        }
    }
    dependents
}

enum Readiness {
    Ready,
    Wait,
    Blocked(String),
}

/// Whether `step` may start: every dependency succeeded (an optional one may
/// have failed); cleanup steps only need their dependencies to be over.
fn dependencies(graph: &ExecutionGraph, states: &[StepState], step: &StepInstance) -> Readiness {
    let cleanup = step.origin == Origin::Cleanup;
    for &d in &step.depends_on {
        match &states[d] {
            StepState::Succeeded => {}
            s if cleanup && s.is_terminal() => {}
            StepState::Failed { .. } if !graph.steps[d].critical => {}
            StepState::Failed { .. } | StepState::Skipped => {
                return Readiness::Blocked(format!(
                    "dependency `{}` did not complete",
                    graph.steps[d].key
                ))
            }
            _ => return Readiness::Wait,
        }
    }
    Readiness::Ready
}

/// Whether the plan's and the step's group's parallelism limits allow one more.
fn has_capacity(graph: &ExecutionGraph, step: &StepInstance, in_flight: &BTreeSet<usize>) -> bool {
    if graph
        .parallelism
        .is_some_and(|cap| in_flight.len() >= cap as usize)
    {
        return false;
    }
    let Some(group) = &step.group else {
        return true;
    };
    let Some(cap) = graph.group_parallelism.get(group) else {
        return true;
    };
    let running: usize = in_flight
        .iter()
        .filter(|&&i| graph.steps[i].group.as_ref() == Some(group))
        .count();
    running < *cap as usize
}

fn backoff(step: &StepInstance, attempt: u32) -> Duration {
    let first = step.retry_backoff.map_or(DEFAULT_BACKOFF, |b| b.to_std());
    first.saturating_mul(1 << attempt.saturating_sub(2).min(16))
}

fn critical_failure(graph: &ExecutionGraph, states: &[StepState]) -> bool {
    states
        .iter()
        .zip(&graph.steps)
        .any(|(s, step)| step.critical && matches!(s, StepState::Failed { .. }))
}

fn outcome_of(graph: &ExecutionGraph, states: &[StepState], cancelled: bool) -> ExecutionOutcome {
    let failed: Vec<usize> = states
        .iter()
        .zip(&graph.steps)
        .filter(|(s, step)| step.critical && matches!(s, StepState::Failed { .. }))
        .map(|(_, step)| step.index)
        .collect();
    if !failed.is_empty() {
        ExecutionOutcome::Failed { failed }
    } else if cancelled {
        ExecutionOutcome::Cancelled
    } else {
        ExecutionOutcome::Succeeded
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
