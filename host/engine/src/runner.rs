//! What executes a step.

use async_trait::async_trait;
use haven_plan::{ExecutionGraph, Mode, StepInstance};

/// Everything a runner knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Execution id.
    pub execution: String,
    /// The plan's mode (test, failover, ...).
    pub mode: Mode,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Fencing token of this attempt: the term of the primary running it.
    /// Every step of one primary shares it and every later primary's is
    /// higher, so a system that remembers the highest token it saw refuses a
    /// deposed primary still acting on an older one.
    pub fence: u64,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// What went wrong, for the journal and the operator.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl StepFailure {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Performs steps. Implementations must make a step safe to repeat under the
/// same `step.key`: after a crash the engine runs an in-flight step again.
#[async_trait]
pub trait StepRunner: Send + Sync + 'static {
    /// Runs one attempt of `step`; returns a one-line result for the journal.
    async fn run(
        &self,
        graph: &ExecutionGraph,
        step: &StepInstance,
        ctx: &StepContext,
    ) -> Result<String, StepFailure>;
}
