//! The executor: schedules step attempts, journals every transition, resumes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use haven_plan::{Action, ExecutionGraph, Origin, StepInstance};
use haven_store::{Command, CommandLog, CommitError, StoreError};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::journal::{replay, stream_name, Event, StepState};
use crate::runner::{StepContext, StepFailure, StepRunner};

/// Deadline of an attempt whose step sets none.
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Why steps are skipped after a critical failure.
const STOPPED: &str = "the plan stopped after a critical failure";
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

    fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Runs execution graphs with a runner, journalling through a command log
/// (the embedded store, or the HA cluster).
pub struct Executor {
    log: Arc<dyn CommandLog>,
    runner: Arc<dyn StepRunner>,
    clock: Clock,
}

struct Attempt {
    step: usize,
    attempt: u32,
    result: Result<String, StepFailure>,
}

impl Executor {
    /// An executor journalling through `log`, running steps with `runner`.
    pub fn new(log: Arc<dyn CommandLog>, runner: Arc<dyn StepRunner>, clock: Clock) -> Self {
        Self { log, runner, clock }
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

    /// Commits one journal event; returns its position in the store's
    /// history (the fencing token of a `step-started` event).
    async fn append(&self, execution: &str, event: &Event) -> Result<u64, ExecutorError> {
        let applied = self
            .log
            .commit(vec![Command::Append {
                stream: stream_name(execution),
                at_ms: self.clock.now_ms(),
                entry: serde_json::to_value(event).expect("events serialize"),
            }])
            .await?;
        Ok(applied.first().map_or(0, |a| a.index))
    }

    /// Journals a step that will never run after a critical failure.
    async fn skip_if_pending(
        &self,
        execution: &str,
        step: usize,
        state: &mut StepState,
    ) -> Result<(), ExecutorError> {
        if !state.is_terminal() {
            let reason = STOPPED.into();
            self.append(execution, &Event::StepSkipped { step, reason })
                .await?;
            *state = StepState::Skipped;
        }
        Ok(())
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
                .map(drop),
            _ => Err(ExecutorError::NotAwaitingApproval {
                execution: execution.into(),
                step,
            }),
        }
    }

    /// Runs (or resumes) `execution` of `graph` until it finishes or waits
    /// for approvals.
    pub async fn run(
        &self,
        execution: &str,
        graph: &ExecutionGraph,
    ) -> Result<ExecutionOutcome, ExecutorError> {
        let graph = Arc::new(graph.clone());
        let digest = hex_sha256(&serde_json::to_vec(&*graph).expect("graphs serialize"));
        let events = self.events(execution)?;
        match events.first() {
            None => self
                .append(
                    execution,
                    &Event::ExecutionStarted {
                        plan: graph.plan.to_string(),
                        mode: graph.mode.as_str().to_owned(),
                        steps: graph.steps.len(),
                        graph_sha256: digest,
                    },
                )
                .await
                .map(drop)?,
            Some(Event::ExecutionStarted { graph_sha256, .. }) if *graph_sha256 == digest => {
                if matches!(events.last(), Some(Event::ExecutionFinished { .. })) {
                    return Ok(outcome_of(&graph, &replay(graph.steps.len(), &events)));
                }
                self.append(execution, &Event::ExecutionResumed).await?;
            }
            Some(_) => return Err(ExecutorError::GraphChanged(execution.into())),
        }
        let mut states = replay(graph.steps.len(), &events);
        let mut stopping = critical_failure(&graph, &states);
        let mut in_flight: BTreeSet<usize> = BTreeSet::new();
        let mut tasks: JoinSet<Attempt> = JoinSet::new();
        let mut spawned: HashMap<tokio::task::Id, (usize, u32)> = HashMap::new();

        loop {
            if stopping {
                // Nothing but cleanup starts after a critical failure; what
                // will never run is settled now, so cleanup can follow it.
                for step in graph.steps.iter().filter(|s| s.origin != Origin::Cleanup) {
                    if !in_flight.contains(&step.index) {
                        self.skip_if_pending(execution, step.index, &mut states[step.index])
                            .await?;
                    }
                }
            }
            for step in &graph.steps {
                let i = step.index;
                if in_flight.contains(&i) {
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
                        self.append(execution, &Event::StepSkipped { step: i, reason })
                            .await?;
                        states[i] = StepState::Skipped;
                        continue;
                    }
                    Readiness::Ready => {}
                }
                if !has_capacity(&graph, step, &in_flight) {
                    continue;
                }
                if let Action::Approval { message, .. } = &step.action {
                    self.append(
                        execution,
                        &Event::ApprovalRequested {
                            step: i,
                            message: message.clone(),
                        },
                    )
                    .await?;
                    states[i] = StepState::AwaitingApproval;
                    continue;
                }
                let backoff = match states[i] {
                    StepState::Retrying { attempt } => backoff(step, attempt),
                    _ => Duration::ZERO,
                };
                let fence = self
                    .append(
                        execution,
                        &Event::StepStarted {
                            step: i,
                            key: step.key.clone(),
                            attempt,
                        },
                    )
                    .await?;
                states[i] = StepState::Running { attempt };
                in_flight.insert(i);
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

            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            // A runner that panics fails its attempt; the executor goes on.
            let Attempt {
                step: i,
                attempt,
                result,
            } = match joined {
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
            };
            in_flight.remove(&i);
            let step = &graph.steps[i];
            match result {
                Ok(detail) => {
                    tracing::debug!(execution, step = %step.key, attempt, "step succeeded: {detail}");
                    self.append(
                        execution,
                        &Event::StepSucceeded {
                            step: i,
                            attempt,
                            detail,
                        },
                    )
                    .await?;
                    states[i] = StepState::Succeeded;
                }
                Err(failure) => {
                    let is_final = !failure.retryable || attempt > step.retries;
                    tracing::warn!(execution, step = %step.key, attempt, is_final, "step failed: {}", failure.message);
                    self.append(
                        execution,
                        &Event::StepFailed {
                            step: i,
                            attempt,
                            error: failure.message.clone(),
                            is_final,
                        },
                    )
                    .await?;
                    states[i] = if is_final {
                        StepState::Failed {
                            error: failure.message,
                        }
                    } else {
                        StepState::Retrying {
                            attempt: attempt + 1,
                        }
                    };
                    stopping |= is_final && step.critical;
                }
            }
        }

        let awaiting: Vec<usize> = (0..states.len())
            .filter(|&i| states[i] == StepState::AwaitingApproval)
            .collect();
        if !awaiting.is_empty() && !stopping {
            return Ok(ExecutionOutcome::AwaitingApproval { steps: awaiting });
        }
        for (i, state) in states.iter_mut().enumerate() {
            self.skip_if_pending(execution, i, state).await?;
        }
        let outcome = outcome_of(&graph, &states);
        let label = if outcome == ExecutionOutcome::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        self.append(
            execution,
            &Event::ExecutionFinished {
                outcome: label.into(),
            },
        )
        .await?;
        Ok(outcome)
    }
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

fn outcome_of(graph: &ExecutionGraph, states: &[StepState]) -> ExecutionOutcome {
    let failed: Vec<usize> = states
        .iter()
        .zip(&graph.steps)
        .filter(|(s, step)| step.critical && matches!(s, StepState::Failed { .. }))
        .map(|(_, step)| step.index)
        .collect();
    if failed.is_empty() {
        ExecutionOutcome::Succeeded
    } else {
        ExecutionOutcome::Failed { failed }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
