//! A runner that simulates connectors, for dry runs and fault tests.
//!
//! Every outcome is drawn from a generator seeded by the run's seed, the
//! step's idempotency key and the attempt number — not by the order in which
//! steps happen to run — so a seed reproduces the same faults on every run.
//! Durations are slept on tokio's clock: with paused time (a current-thread
//! runtime started paused) a dry run of hours of plan takes milliseconds and
//! its journal is identical run after run.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use haven_plan::{ExecutionGraph, StepInstance};
use sha2::{Digest, Sha256};

use crate::runner::{StepContext, StepFailure, StepRunner};

/// Faults to inject, as probabilities per attempt (0.0 to 1.0).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// An attempt fails with a retryable error.
    pub transient: f64,
    /// An attempt fails for good.
    pub permanent: f64,
    /// An attempt hangs until its deadline.
    pub hang: f64,
    /// Connector instances whose site is lost: every step on their VMs fails for good.
    pub lost_connectors: BTreeSet<String>,
}

/// Simulated connectors.
pub struct SimulatedRunner {
    seed: u64,
    faults: Faults,
    /// Duration of a step's simulated work, before jitter.
    pub step_time: Duration,
    effects: Mutex<Vec<(String, u32)>>,
}

impl SimulatedRunner {
    /// A runner with `seed` and `faults`; steps take about a second.
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            seed,
            faults,
            step_time: Duration::from_secs(1),
            effects: Mutex::new(Vec::new()),
        }
    }

    /// The side effects performed, as (step key, attempt), in order.
    pub fn effects(&self) -> Vec<(String, u32)> {
        self.effects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Uniform draws in [0, 1) for this step attempt.
    fn draws(&self, key: &str, attempt: u32) -> [f64; 4] {
        let digest = Sha256::digest(format!("{}\n{key}\n{attempt}", self.seed));
        let mut out = [0.0; 4];
        for (i, chunk) in digest.chunks_exact(8).enumerate() {
            let n = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            out[i] = (n >> 11) as f64 / (1u64 << 53) as f64;
        }
        out
    }
}

#[async_trait]
impl StepRunner for SimulatedRunner {
    async fn run(
        &self,
        _graph: &ExecutionGraph,
        step: &StepInstance,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let [jitter, transient, permanent, hang] = self.draws(&step.key, ctx.attempt);
        let took = self.step_time.mul_f64(0.5 + jitter);
        tokio::time::sleep(took).await;
        if let Some(vm) = &step.vm {
            if self.faults.lost_connectors.contains(&vm.connector) {
                return Err(StepFailure::permanent(format!(
                    "site of `{}` lost",
                    vm.connector
                )));
            }
        }
        if hang < self.faults.hang {
            std::future::pending::<()>().await;
        }
        if permanent < self.faults.permanent {
            return Err(StepFailure::permanent("simulated permanent failure"));
        }
        if transient < self.faults.transient {
            return Err(StepFailure::retryable("simulated transient failure"));
        }
        self.effects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((step.key.clone(), ctx.attempt));
        Ok(format!(
            "simulated {} in {} ms",
            step.action.kind(),
            took.as_millis()
        ))
    }
}
