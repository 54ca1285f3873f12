//! Compilation of a plan into the deterministic execution graph of one mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::model::{
    Action, Group, GroupId, HealthCheck, Mode, NetworkMapping, Plan, PlanId, ReIpRule,
    RecoveryPoint, Step, StepId, VmRef,
};
use crate::PlanError;

/// Where a [`StepInstance`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// A plan-level pre-step.
    PlanPre,
    /// A group pre-step.
    GroupPre,
    /// A built-in per-VM action of the mode (create-vm, power-on, …).
    Builtin,
    /// A group health gate; dependents wait for it.
    Gate,
    /// A group post-step.
    GroupPost,
    /// A plan-level post-step.
    PlanPost,
    /// Automatic drill cleanup (power-off and delete of the test VMs). The engine runs
    /// cleanup even when earlier steps failed or the drill was cancelled.
    Cleanup,
}

/// One step to execute: a plan step or built-in action, for one VM when the action is
/// per-VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInstance {
    /// Position in [`ExecutionGraph::steps`]; dependencies always point to lower indices.
    pub index: usize,
    /// Idempotency key journalled by the engine with each side effect:
    /// `<plan id>:<mode>:<step id>:<connector>/<vm>` (`-` instead of the VM for steps
    /// that act on no VM). Unique within the graph and stable across compilations; the
    /// engine combines it with its execution id when journalling.
    pub key: String,
    /// The plan step's id, or for built-in actions and gates a derived id such as
    /// `db/create-vm`, `db/gate.0`, `db/cleanup.delete-vm`, `db/shutdown.power-off`
    /// (the `/` cannot occur in plan step ids, so they never collide).
    pub step: StepId,
    /// Human name.
    pub name: String,
    /// Where the instance comes from.
    pub origin: Origin,
    /// The group the instance belongs to (`None` for plan-level steps).
    pub group: Option<GroupId>,
    /// The VM acted on, for per-VM actions.
    pub vm: Option<VmRef>,
    /// What to do.
    pub action: Action,
    /// Maximum duration of one attempt (`None`: engine default for the action).
    pub timeout: Option<HumanDuration>,
    /// Additional attempts after a failure.
    pub retries: u32,
    /// Delay before the first retry, doubled for each further retry (`None`: 10s).
    pub retry_backoff: Option<HumanDuration>,
    /// Whether a failure stops the plan.
    pub critical: bool,
    /// Indices of the instances that must have completed before this one starts.
    pub depends_on: Vec<usize>,
}

/// The compiled plan for one mode: step instances in a deterministic topological order,
/// with their dependency edges and parallelism limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionGraph {
    /// The plan compiled.
    pub plan: PlanId,
    /// The mode compiled for.
    pub mode: Mode,
    /// Maximum number of instances running at once (`None`: unlimited).
    pub parallelism: Option<u32>,
    /// Per group: maximum number of that group's instances running at once.
    pub group_parallelism: BTreeMap<GroupId, u32>,
    /// The instances, in topological order.
    pub steps: Vec<StepInstance>,
    /// What per-VM actions need of the plan: recovery point policy, RPO, network map
    /// and re-IP rules.
    #[serde(default)]
    pub recovery: RecoverySettings,
}

/// The plan-wide settings that per-VM actions apply, carried by the graph so a runner
/// needs nothing but the graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoverySettings {
    /// Which recovery point to restore from.
    #[serde(default)]
    pub recovery_point: RecoveryPoint,
    /// The plan's RPO: the oldest acceptable recovery point.
    #[serde(default)]
    pub rpo: Option<HumanDuration>,
    /// Production network → recovery and test networks.
    #[serde(default)]
    pub network_map: Vec<NetworkMapping>,
    /// Re-IP rules for recovered VMs.
    #[serde(default)]
    pub re_ip: Vec<ReIpRule>,
}

impl ExecutionGraph {
    /// A human-readable listing, one instance per line, as printed by `haven plan graph`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "plan {} · mode {} · {} step instance(s) · parallelism {}",
            self.plan,
            self.mode,
            self.steps.len(),
            self.parallelism
                .map_or_else(|| "unlimited".to_string(), |p| p.to_string())
        );
        for (g, p) in &self.group_parallelism {
            let _ = write!(out, " · {g}: {p}");
        }
        out.push('\n');
        let width = self.steps.len().saturating_sub(1).to_string().len();
        for s in &self.steps {
            let scope = s.group.as_ref().map_or("plan", GroupId::as_str);
            let vm = s.vm.as_ref().map(|v| format!(" [{v}]")).unwrap_or_default();
            let deps = if s.depends_on.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = s.depends_on.iter().map(|d| format!("#{d}")).collect();
                format!(" after {}", list.join(","))
            };
            let optional = if s.critical { "" } else { " (optional)" };
            let _ = writeln!(
                out,
                "#{:<width$} {:<10} {scope}: {} — {}{vm}{optional}{deps}",
                s.index,
                origin_label(s.origin),
                s.step,
                s.action.kind(),
            );
        }
        out
    }
}

fn origin_label(o: Origin) -> &'static str {
    match o {
        Origin::PlanPre => "plan-pre",
        Origin::GroupPre => "pre",
        Origin::Builtin => "builtin",
        Origin::Gate => "gate",
        Origin::GroupPost => "post",
        Origin::PlanPost => "plan-post",
        Origin::Cleanup => "cleanup",
    }
}

/// The built-in per-VM chain of a mode (the shutdown phase of migration and failback is
/// added separately).
fn builtin_chain(mode: Mode) -> &'static [Action] {
    match mode {
        Mode::Test => &[
            Action::ChooseRecoveryPoint,
            Action::CreateVm,
            Action::ApplyNetwork,
            Action::PowerOn,
        ],
        Mode::Failover => &[
            Action::ChooseRecoveryPoint,
            Action::StopReplication,
            Action::CreateVm,
            Action::ApplyNetwork,
            Action::PowerOn,
        ],
        Mode::Migration | Mode::Failback => &[
            Action::FinalizeReplication,
            Action::CreateVm,
            Action::ApplyNetwork,
            Action::PowerOn,
        ],
        Mode::Undo => &[Action::PowerOff, Action::DeleteVm],
    }
}

struct Builder<'a> {
    plan: &'a Plan,
    mode: Mode,
    steps: Vec<StepInstance>,
}

struct Spec<'s> {
    step: StepId,
    name: String,
    origin: Origin,
    group: Option<&'s GroupId>,
    vm: Option<&'s VmRef>,
    action: Action,
    timeout: Option<HumanDuration>,
    retries: u32,
    retry_backoff: Option<HumanDuration>,
    critical: bool,
}

impl Spec<'_> {
    fn builtin<'s>(
        group: &'s GroupId,
        vm: &'s VmRef,
        action: Action,
        origin: Origin,
        label: &str,
    ) -> Spec<'s> {
        Spec {
            step: StepId(format!("{group}/{label}{}", action.kind())),
            name: format!("{} {}", action.kind(), vm.name),
            origin,
            group: Some(group),
            vm: Some(vm),
            action,
            timeout: None,
            retries: 0,
            retry_backoff: None,
            critical: true,
        }
    }
}

impl Builder<'_> {
    fn add(&mut self, spec: Spec<'_>, deps: &[usize]) -> usize {
        let index = self.steps.len();
        let vm_key = spec.vm.map_or_else(|| "-".to_string(), ToString::to_string);
        let deps: BTreeSet<usize> = deps.iter().copied().collect();
        self.steps.push(StepInstance {
            index,
            key: format!("{}:{}:{}:{vm_key}", self.plan.id, self.mode, spec.step),
            step: spec.step,
            name: spec.name,
            origin: spec.origin,
            group: spec.group.cloned(),
            vm: spec.vm.cloned(),
            action: spec.action,
            timeout: spec.timeout,
            retries: spec.retries,
            retry_backoff: spec.retry_backoff,
            critical: spec.critical,
            depends_on: deps.into_iter().collect(),
        });
        index
    }

    /// Adds the plan steps of `steps` that run in this mode, sequentially after
    /// `frontier`; per-VM actions fan out over `vms`. Returns the new frontier.
    fn user_steps(
        &mut self,
        steps: &[Step],
        origin: Origin,
        group: Option<&GroupId>,
        vms: &[VmRef],
        mut frontier: Vec<usize>,
    ) -> Vec<usize> {
        let mode = self.mode;
        for s in steps.iter().filter(|s| s.modes.contains(&mode)) {
            let spec = |vm| Spec {
                step: s.id.clone(),
                name: s.name.clone(),
                origin,
                group,
                vm,
                action: s.action.clone(),
                timeout: s.timeout,
                retries: s.retries,
                retry_backoff: s.retry_backoff,
                critical: s.critical,
            };
            if s.action.is_per_vm() {
                if vms.is_empty() {
                    continue;
                }
                frontier = vms
                    .iter()
                    .map(|vm| self.add(spec(Some(vm)), &frontier))
                    .collect();
            } else {
                frontier = vec![self.add(spec(None), &frontier)];
            }
        }
        frontier
    }
}

impl Plan {
    /// Compiles the plan for `mode` into its execution graph.
    ///
    /// `resolved` gives the VMs of each group as resolved by connectors. A group absent
    /// from it uses its explicit `vms` on its `connector`; a group absent from it that
    /// selects by `tags` is an error ([`PlanError::Unresolved`]).
    ///
    /// Order: plan pre-steps; then the groups in dependency order (lowest position first
    /// among ready groups), each with its pre-steps, the mode's built-in per-VM actions,
    /// its health gates and its post-steps; then plan post-steps. A group starts when the
    /// groups it depends on are done. Drills (`test`) end with the automatic cleanup
    /// (power-off and delete of the test VMs, dependents first); `undo` walks the groups
    /// in reverse dependency order and skips gates. `migration` and `failback` first
    /// power the running VMs off (production for migration, the recovery site for
    /// failback) in reverse dependency order, then finalize replication (the final sync,
    /// reversed for failback) and bring the VMs up on the other side in dependency order.
    /// Failover and drills choose the recovery point per VM; failover stops replication
    /// first.
    ///
    /// Fails when [`Plan::verify`] reports errors, and for drills when a network mapping
    /// has no isolated test network.
    pub fn compile(
        &self,
        mode: Mode,
        resolved: &BTreeMap<GroupId, Vec<VmRef>>,
    ) -> Result<ExecutionGraph, PlanError> {
        let issues: Vec<_> = self.verify().into_iter().filter(|i| i.is_error()).collect();
        if !issues.is_empty() {
            return Err(PlanError::Invalid { issues });
        }
        if mode == Mode::Test {
            if let Some(i) = self.network_map.iter().position(|m| m.test.is_none()) {
                return Err(PlanError::NoTestNetwork {
                    path: format!("network_map.{i}"),
                });
            }
        }
        let vms = self.group_vms(resolved)?;
        let order = self.topo_order();
        let dependents: Vec<Vec<usize>> = (0..self.groups.len())
            .map(|i| {
                (0..self.groups.len())
                    .filter(|&j| self.groups[j].depends_on.contains(&self.groups[i].id))
                    .collect()
            })
            .collect();
        let mut b = Builder {
            plan: self,
            mode,
            steps: Vec::new(),
        };
        let start = b.user_steps(&self.pre_steps, Origin::PlanPre, None, &[], Vec::new());

        // Migration and failback: shut the running side down, dependents first.
        let mut shutdown: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
        if matches!(mode, Mode::Migration | Mode::Failback) {
            for &g in order.iter().rev() {
                let group = &self.groups[g];
                let mut deps = start.clone();
                deps.extend(dependents[g].iter().flat_map(|&d| shutdown[d].clone()));
                shutdown[g] = if vms[g].is_empty() {
                    deps
                } else {
                    vms[g]
                        .iter()
                        .map(|vm| {
                            let spec = Spec::builtin(
                                &group.id,
                                vm,
                                Action::PowerOff,
                                Origin::Builtin,
                                "shutdown.",
                            );
                            b.add(spec, &deps)
                        })
                        .collect()
                };
            }
        }

        let walk: Vec<usize> = if mode == Mode::Undo {
            order.iter().rev().copied().collect()
        } else {
            order.clone()
        };
        let mut done: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
        for &g in &walk {
            let group = &self.groups[g];
            let before: Vec<usize> = if mode == Mode::Undo {
                dependents[g].clone()
            } else {
                self.dependency_indices(group)
            };
            let mut entry = start.clone();
            entry.extend(before.iter().flat_map(|&d| done[d].clone()));
            entry.extend(shutdown[g].iter().copied());
            let frontier = b.user_steps(
                &group.pre_steps,
                Origin::GroupPre,
                Some(&group.id),
                &vms[g],
                entry,
            );
            let mut vm_ends = Vec::new();
            for vm in &vms[g] {
                let mut last = frontier.clone();
                for action in builtin_chain(mode) {
                    let spec = Spec::builtin(&group.id, vm, action.clone(), Origin::Builtin, "");
                    last = vec![b.add(spec, &last)];
                }
                vm_ends.push(last);
            }
            let after_vms: Vec<usize> = if vms[g].is_empty() {
                frontier
            } else {
                vm_ends.iter().flatten().copied().collect()
            };
            let mut gates = Vec::new();
            if mode != Mode::Undo {
                for (j, gate) in group.gates.iter().enumerate() {
                    let gate_id = StepId(format!("{}/gate.{j}", group.id));
                    let spec = |vm, action| Spec {
                        step: gate_id.clone(),
                        name: format!("gate: {gate}"),
                        origin: Origin::Gate,
                        group: Some(&group.id),
                        vm,
                        action,
                        timeout: gate.timeout(),
                        retries: 0,
                        retry_backoff: None,
                        critical: true,
                    };
                    if let HealthCheck::Heartbeat { .. } = gate {
                        for (vm, ends) in vms[g].iter().zip(&vm_ends) {
                            gates.push(b.add(spec(Some(vm), Action::WaitHeartbeat), ends));
                        }
                    } else {
                        let action = Action::Probe {
                            check: gate.clone(),
                        };
                        gates.push(b.add(spec(None, action), &after_vms));
                    }
                }
            }
            let frontier = if gates.is_empty() { after_vms } else { gates };
            done[g] = b.user_steps(
                &group.post_steps,
                Origin::GroupPost,
                Some(&group.id),
                &vms[g],
                frontier,
            );
        }
        // Plan post-steps wait for the groups nothing depends on (the others are
        // implied); with no group they follow the pre-steps.
        let mut end: Vec<usize> = (0..self.groups.len())
            .filter(|&g| {
                if mode == Mode::Undo {
                    self.groups[g].depends_on.is_empty()
                } else {
                    dependents[g].is_empty()
                }
            })
            .flat_map(|g| done[g].clone())
            .collect();
        if end.is_empty() {
            end = start;
        }
        let end = b.user_steps(&self.post_steps, Origin::PlanPost, None, &[], end);

        if mode == Mode::Test {
            let mut cleaned: Vec<Vec<usize>> = vec![Vec::new(); self.groups.len()];
            for &g in order.iter().rev() {
                let group = &self.groups[g];
                let mut deps = end.clone();
                deps.extend(dependents[g].iter().flat_map(|&d| cleaned[d].clone()));
                let mut ends = Vec::new();
                for vm in &vms[g] {
                    let mut last = deps.clone();
                    for action in [Action::PowerOff, Action::DeleteVm] {
                        let spec =
                            Spec::builtin(&group.id, vm, action, Origin::Cleanup, "cleanup.");
                        last = vec![b.add(spec, &last)];
                    }
                    ends.extend(last);
                }
                cleaned[g] = if ends.is_empty() { deps } else { ends };
            }
        }

        Ok(ExecutionGraph {
            plan: self.id.clone(),
            mode,
            parallelism: self.parallelism,
            group_parallelism: self
                .groups
                .iter()
                .filter_map(|g| g.parallelism.map(|p| (g.id.clone(), p)))
                .collect(),
            steps: b.steps,
            recovery: RecoverySettings {
                recovery_point: self.recovery_point.clone(),
                rpo: self.rpo,
                network_map: self.network_map.clone(),
                re_ip: self.re_ip.clone(),
            },
        })
    }

    fn dependency_indices(&self, group: &Group) -> Vec<usize> {
        group
            .depends_on
            .iter()
            .filter_map(|d| self.groups.iter().position(|g| &g.id == d))
            .collect()
    }

    /// Group indices in dependency order; among ready groups, the lowest position first.
    /// Groups on a cycle (rejected by verification) are appended in position order.
    fn topo_order(&self) -> Vec<usize> {
        let n = self.groups.len();
        let deps: Vec<Vec<usize>> = self
            .groups
            .iter()
            .map(|g| self.dependency_indices(g))
            .collect();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while order.len() < n {
            let next = (0..n).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d] || d == i));
            let Some(i) = next.or_else(|| (0..n).find(|&i| !placed[i])) else {
                break;
            };
            placed[i] = true;
            order.push(i);
        }
        order
    }

    fn group_vms(
        &self,
        resolved: &BTreeMap<GroupId, Vec<VmRef>>,
    ) -> Result<Vec<Vec<VmRef>>, PlanError> {
        self.groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let list = match resolved.get(&g.id) {
                    Some(list) => list.clone(),
                    None if !g.tags.is_empty() => {
                        return Err(PlanError::Unresolved {
                            path: format!("groups.{i}"),
                            group: g.id.clone(),
                        })
                    }
                    None => g
                        .vms
                        .iter()
                        .map(|name| VmRef {
                            connector: g.connector.clone().unwrap_or_default(),
                            name: name.clone(),
                        })
                        .collect(),
                };
                let mut seen = BTreeSet::new();
                Ok(list
                    .into_iter()
                    .filter(|vm| seen.insert(vm.clone()))
                    .collect())
            })
            .collect()
    }
}
