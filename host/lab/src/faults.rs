//! Injected faults: failing operations, latency, silent guests, host loss,
//! and random failures drawn from a seeded generator (deterministic).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::model::OpKind;

/// Fails the next `remaining` operations that match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRule {
    /// Only operations on this VM (any VM when absent).
    #[serde(default)]
    pub vm: Option<String>,
    /// Only operations of this kind (any kind when absent).
    #[serde(default)]
    pub op: Option<OpKind>,
    /// How many more operations fail.
    pub remaining: u32,
    /// The error code the failed task reports (default `injected`; `unavailable`
    /// and `timeout` read as transient to the connector).
    #[serde(default = "default_code")]
    pub code: String,
}

fn default_code() -> String {
    "injected".to_owned()
}

/// Adds latency to matching operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyRule {
    /// Only operations on this VM (any VM when absent).
    #[serde(default)]
    pub vm: Option<String>,
    /// Only operations of this kind (any kind when absent).
    #[serde(default)]
    pub op: Option<OpKind>,
    /// Extra milliseconds before the task completes.
    pub ms: u64,
}

/// Random failures, deterministic for a given seed and order of operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomFaults {
    /// Probability (0..=1) that an operation fails.
    pub rate: f64,
    /// Only operations of this kind (any kind when absent).
    #[serde(default)]
    pub op: Option<OpKind>,
    /// State of the generator (splitmix64); set from the seed.
    pub rng: u64,
}

/// Every injected fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Fail-next rules, in the order given.
    #[serde(default)]
    pub fail: Vec<FailRule>,
    /// Latency rules (all matching ones add up).
    #[serde(default)]
    pub latency: Vec<LatencyRule>,
    /// VMs whose guest never produces a heartbeat.
    #[serde(default)]
    pub no_heartbeat: BTreeSet<String>,
    /// Random failures.
    #[serde(default)]
    pub random: Option<RandomFaults>,
}

fn matches(vm: &Option<String>, op: &Option<OpKind>, on_vm: &str, kind: OpKind) -> bool {
    vm.as_deref().is_none_or(|v| v == on_vm) && op.is_none_or(|o| o == kind)
}

/// One step of splitmix64.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Faults {
    /// Decides, at submission, whether an operation of `kind` on `vm` fails;
    /// consumes one use of the first matching fail rule.
    pub fn take_failure(&mut self, vm: &str, kind: OpKind) -> Option<ApiError> {
        if let Some(i) = self
            .fail
            .iter()
            .position(|r| r.remaining > 0 && matches(&r.vm, &r.op, vm, kind))
        {
            let rule = &mut self.fail[i];
            rule.remaining -= 1;
            let code = rule.code.clone();
            if rule.remaining == 0 {
                self.fail.remove(i);
            }
            return Some(ApiError::new(
                &code,
                format!("injected fault: {} on {vm} fails", kind.name()),
            ));
        }
        let random = self.random.as_mut()?;
        if random.op.is_some_and(|o| o != kind) {
            return None;
        }
        let draw = (splitmix64(&mut random.rng) >> 11) as f64 / (1u64 << 53) as f64;
        (draw < random.rate).then(|| {
            ApiError::new(
                "injected",
                format!("injected random fault: {} on {vm} fails", kind.name()),
            )
        })
    }

    /// Extra latency for an operation, in milliseconds.
    pub fn latency_ms(&self, vm: &str, kind: OpKind) -> u64 {
        self.latency
            .iter()
            .filter(|r| matches(&r.vm, &r.op, vm, kind))
            .map(|r| r.ms)
            .fold(0, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rules_count_down_and_random_is_deterministic() {
        let mut f = Faults {
            fail: vec![FailRule {
                vm: Some("vm-1".into()),
                op: Some(OpKind::PowerOn),
                remaining: 2,
                code: default_code(),
            }],
            ..Faults::default()
        };
        assert!(f.take_failure("vm-2", OpKind::PowerOn).is_none());
        assert!(f.take_failure("vm-1", OpKind::PowerOff).is_none());
        assert!(f.take_failure("vm-1", OpKind::PowerOn).is_some());
        assert!(f.take_failure("vm-1", OpKind::PowerOn).is_some());
        assert!(f.take_failure("vm-1", OpKind::PowerOn).is_none());
        assert!(f.fail.is_empty());

        let draws = |seed| {
            let mut f = Faults {
                random: Some(RandomFaults {
                    rate: 0.3,
                    op: None,
                    rng: seed,
                }),
                ..Faults::default()
            };
            (0..200)
                .map(|_| f.take_failure("vm-1", OpKind::PowerOn).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let failures = draws(7).iter().filter(|x| **x).count();
        assert!((30..90).contains(&failures), "{failures}");
    }
}
