//! The execution journal: events appended to the stream `journal/<execution>`
//! in the state store, and their replay into the state of every step.
//!
//! Each transition is one store command (one durable write), appended before
//! the side effect (`step-started`) and after it (`step-succeeded`,
//! `step-failed`, ...), so a crash at any moment leaves a journal from which
//! the exact state can be rebuilt.

use serde::{Deserialize, Serialize};

/// One journal event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The execution began (first event), with its graph's identity.
    ExecutionStarted {
        /// Plan id.
        plan: String,
        /// Mode.
        mode: String,
        /// Number of step instances.
        steps: usize,
        /// SHA-256 of the graph's JSON: a resume must run the same graph.
        graph_sha256: String,
    },
    /// The host (re)started work on the execution after a restart.
    ExecutionResumed,
    /// An attempt starts; its side effect follows.
    StepStarted {
        /// Step index.
        step: usize,
        /// Idempotency key.
        key: String,
        /// Attempt number (1, 2, ...).
        attempt: u32,
    },
    /// The attempt succeeded.
    StepSucceeded {
        /// Step index.
        step: usize,
        /// Attempt number.
        attempt: u32,
        /// One-line result.
        detail: String,
    },
    /// The attempt failed; `final` when no retry follows.
    StepFailed {
        /// Step index.
        step: usize,
        /// Attempt number.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether this ends the step.
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// The step will not run (a dependency failed, or a critical failure stopped the plan).
    StepSkipped {
        /// Step index.
        step: usize,
        /// Why.
        reason: String,
    },
    /// An approval step waits for an operator.
    ApprovalRequested {
        /// Step index.
        step: usize,
        /// Text for the operator.
        message: String,
    },
    /// An operator approved.
    ApprovalGranted {
        /// Step index.
        step: usize,
        /// Who approved.
        by: String,
    },
    /// An operator cancelled the execution: no new step starts except
    /// cleanup steps; steps in flight finish.
    CancelRequested {
        /// Who cancelled.
        by: String,
    },
    /// The execution ended.
    ExecutionFinished {
        /// `succeeded`, `failed` or `cancelled`.
        outcome: String,
    },
}

/// Where a step stands, rebuilt from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum StepState {
    /// Not started.
    Pending,
    /// An attempt started and has not ended (in flight, or interrupted by a crash).
    Running {
        /// The attempt.
        attempt: u32,
    },
    /// Waiting before retry `attempt` (the previous one failed).
    Retrying {
        /// The next attempt.
        attempt: u32,
    },
    /// Waiting for an operator.
    AwaitingApproval,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed {
        /// The last error.
        error: String,
    },
    /// Will not run.
    Skipped,
}

impl StepState {
    /// Whether the step is over (succeeded, failed or skipped).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed { .. } | Self::Skipped)
    }
}

/// The state of every step after replaying `events` over `steps` steps.
pub fn replay(steps: usize, events: &[Event]) -> Vec<StepState> {
    let mut states = vec![StepState::Pending; steps];
    for event in events {
        let (step, state) = match event {
            Event::StepStarted { step, attempt, .. } => {
                (*step, StepState::Running { attempt: *attempt })
            }
            Event::StepSucceeded { step, .. } => (*step, StepState::Succeeded),
            Event::StepFailed {
                step,
                attempt,
                error,
                is_final,
            } => (
                *step,
                if *is_final {
                    StepState::Failed {
                        error: error.clone(),
                    }
                } else {
                    StepState::Retrying {
                        attempt: attempt + 1,
                    }
                },
            ),
            Event::StepSkipped { step, .. } => (*step, StepState::Skipped),
            Event::ApprovalRequested { step, .. } => (*step, StepState::AwaitingApproval),
            Event::ApprovalGranted { step, .. } => (*step, StepState::Succeeded),
            Event::ExecutionStarted { .. }
            | Event::ExecutionResumed
            | Event::CancelRequested { .. }
            | Event::ExecutionFinished { .. } => continue,
        };
        if let Some(slot) = states.get_mut(step) {
            *slot = state;
        }
    }
    states
}

/// Whether the journal holds a cancel request.
pub fn is_cancelled(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::CancelRequested { .. }))
}

/// The stream name of an execution's journal.
pub fn stream_name(execution: &str) -> String {
    format!("journal/{execution}")
}
