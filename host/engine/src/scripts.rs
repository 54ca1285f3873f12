//! Script steps: the typed context a script is given, the seam through
//! which WebAssembly scripts run (implemented by the plugin runtime, so the
//! engine stays free of wasmtime), and host commands ([`HostCommands`]).

use std::time::Duration;

use async_trait::async_trait;
use haven_plan::{Mode, VmRef};
use serde::{Deserialize, Serialize};

use crate::runner::StepFailure;

mod host_commands;

pub use host_commands::{
    context_env, HostCommandError, HostCommands, HostCommandsConfig, EXIT_RETRY,
    HOST_COMMANDS_FILE, HOST_COMMAND_PATH,
};

/// Which way a run moves workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Production site → recovery site (test, failover, migration, undo).
    ToRecovery,
    /// Recovery site → production site (failback).
    ToProduction,
}

impl Direction {
    /// The direction a mode moves workloads in.
    pub fn of(mode: Mode) -> Self {
        match mode {
            Mode::Failback => Direction::ToProduction,
            _ => Direction::ToRecovery,
        }
    }
}

/// The recovery point a VM is (being) recovered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointInfo {
    /// Recovery point id.
    pub id: String,
    /// When it was taken, Unix milliseconds.
    pub taken_at_ms: u64,
}

/// Everything a script (WebAssembly or host command) is told about the step
/// it runs in. Documented for script authors in `docs/scripts.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptContext {
    /// Execution id.
    pub execution: String,
    /// Plan id.
    pub plan: String,
    /// Mode of the run.
    pub mode: Mode,
    /// Which way the run moves workloads.
    pub direction: Direction,
    /// Whether this is a drill (nothing in production may change).
    pub test: bool,
    /// The step's idempotency key.
    pub step: String,
    /// The step's group id, for group steps.
    pub group: Option<String>,
    /// The VM, for per-VM steps.
    pub vm: Option<VmRef>,
    /// The recovered VM's id at the recovery site, once created.
    pub recovered_vm: Option<String>,
    /// The recovery point used for `vm`, once chosen.
    pub recovery_point: Option<PointInfo>,
    /// Arguments from the plan.
    pub args: Vec<String>,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
    /// Fencing token of the attempt (see [`crate::StepContext::fence`]).
    pub fence: u64,
}

/// Runs WebAssembly script components in the plugin sandbox.
#[async_trait]
pub trait WasmScripts: Send + Sync + 'static {
    /// Runs `component` (as named in the plan) with `context`; returns its
    /// one-line result. Must stop the script at `deadline`.
    async fn run(
        &self,
        component: &str,
        context: &ScriptContext,
        deadline: Duration,
    ) -> Result<String, StepFailure>;
}
