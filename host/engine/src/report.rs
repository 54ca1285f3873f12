//! Execution reports and evidence packs, built from the journal.
//!
//! - [`ExecutionReport`]: per step its timeline (start, end, attempts,
//!   outcome), the measured RTO (start until the last health gate passed)
//!   against the plan's target, the recovery point used for each VM and its
//!   age (the RPO achieved) against the plan's RPO, as JSON ([`serde`]) and
//!   as a printable HTML page ([`to_html`]).
//! - [`EvidencePack`]: the journal's entries with their hash chain, the chain
//!   check and the graph; [`EvidencePack::verify`] re-checks it offline, so an
//!   auditor can tell that nothing was edited after the fact.
//! - [`PlanDefinition`]: what a plan will do (groups in recovery order, steps
//!   per mode, RTO/RPO targets, networks, re-IP), as JSON and printable HTML
//!   ([`plan_definition_html`]).

use std::fmt::Write as _;

use haven_plan::{ExecutionGraph, Origin};
use haven_store::{entry_hash, ChainCheck, Store, StoreError, StreamEntry, GENESIS_HASH};
use serde::{Deserialize, Serialize};

use crate::connector_runner::{Choice, CHOICES};
use crate::journal::{stream_name, Event};

/// One step's line in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step index.
    pub index: usize,
    /// Idempotency key.
    pub key: String,
    /// Name.
    pub name: String,
    /// `succeeded`, `failed`, `skipped`, `awaiting-approval` or `not-run`.
    pub outcome: String,
    /// Attempts made.
    pub attempts: u32,
    /// First start, ms after the execution began.
    pub started_ms: Option<u64>,
    /// End, ms after the execution began.
    pub finished_ms: Option<u64>,
    /// Last result or error.
    pub detail: String,
}

/// What an execution did and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionReport {
    /// Execution id.
    pub execution: String,
    /// Plan id.
    pub plan: String,
    /// Mode.
    pub mode: String,
    /// `succeeded`, `failed` or `running`.
    pub outcome: String,
    /// Unix ms of the first event.
    pub started_at_ms: u64,
    /// Time from the first to the last event (cleanup included).
    pub duration_ms: u64,
    /// The measured RTO of a succeeded execution: from its start until the
    /// last health gate passed (the last recovery step, for plans without
    /// gates).
    pub measured_rto_ms: Option<u64>,
    /// The plan's RTO target, ms.
    pub rto_target_ms: Option<u64>,
    /// The plan's RPO target, ms.
    pub rpo_target_ms: Option<u64>,
    /// The recovery point used for each VM, in VM order.
    pub recovery_points: Vec<PointUsed>,
    /// Steps, in graph order.
    pub steps: Vec<StepReport>,
}

/// The recovery point an execution restored a VM from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointUsed {
    /// The production VM (`connector/name`).
    pub vm: String,
    /// Recovery point id.
    pub point: String,
    /// When the point was captured, Unix ms.
    pub taken_at_ms: u64,
    /// Its age when the execution started: the RPO achieved for this VM.
    pub age_ms: u64,
    /// Whether it is a planned migration's final sync (no data lost).
    pub final_sync: bool,
}

/// Builds the report of `execution` from its journal.
pub fn execution_report(
    store: &Store,
    execution: &str,
    graph: &ExecutionGraph,
    rto_target_ms: Option<u64>,
) -> Result<ExecutionReport, StoreError> {
    let entries = store.stream(&stream_name(execution), 0)?;
    let start = entries.first().map_or(0, |e| e.at_ms);
    let end = entries.last().map_or(0, |e| e.at_ms);
    let mut steps: Vec<StepReport> = graph
        .steps
        .iter()
        .map(|s| StepReport {
            index: s.index,
            key: s.key.clone(),
            name: s.name.clone(),
            outcome: "not-run".into(),
            attempts: 0,
            started_ms: None,
            finished_ms: None,
            detail: String::new(),
        })
        .collect();
    let mut outcome = "running".to_owned();
    for entry in &entries {
        let Ok(event) = serde_json::from_value::<Event>(entry.entry.clone()) else {
            continue;
        };
        let at = entry.at_ms - start;
        let mut update = |step: usize, f: &mut dyn FnMut(&mut StepReport)| {
            if let Some(report) = steps.get_mut(step) {
                f(report);
            }
        };
        match event {
            Event::StepStarted { step, attempt, .. } => update(step, &mut |r| {
                r.started_ms.get_or_insert(at);
                r.attempts = r.attempts.max(attempt);
                r.outcome = "running".into();
            }),
            Event::StepSucceeded { step, detail, .. } => update(step, &mut |r| {
                r.finished_ms = Some(at);
                r.outcome = "succeeded".into();
                r.detail = detail.clone();
            }),
            Event::StepFailed {
                step,
                error,
                is_final,
                ..
            } => update(step, &mut |r| {
                r.detail = error.clone();
                if is_final {
                    r.finished_ms = Some(at);
                    r.outcome = "failed".into();
                }
            }),
            Event::StepSkipped { step, reason } => update(step, &mut |r| {
                r.outcome = "skipped".into();
                r.detail = reason.clone();
            }),
            Event::ApprovalRequested { step, .. } => update(step, &mut |r| {
                r.started_ms.get_or_insert(at);
                r.outcome = "awaiting-approval".into();
            }),
            Event::ApprovalGranted { step, by } => update(step, &mut |r| {
                r.finished_ms = Some(at);
                r.outcome = "succeeded".into();
                r.detail = format!("approved by {by}");
            }),
            Event::ExecutionFinished { outcome: o } => outcome = o,
            Event::ExecutionStarted { .. }
            | Event::ExecutionResumed
            | Event::CancelRequested { .. } => {}
        }
    }
    let measured_rto_ms = (outcome == "succeeded")
        .then(|| recovered_at(graph, &steps))
        .flatten();
    Ok(ExecutionReport {
        execution: execution.into(),
        plan: graph.plan.to_string(),
        mode: graph.mode.as_str().into(),
        outcome,
        started_at_ms: start,
        duration_ms: end - start,
        measured_rto_ms,
        rto_target_ms,
        rpo_target_ms: graph.recovery.rpo.map(|d| d.as_millis()),
        recovery_points: points_used(store, execution, start)?,
        steps,
    })
}

/// When the last health gate passed (or, without gates, the last recovery
/// step ended), ms after the start.
fn recovered_at(graph: &ExecutionGraph, steps: &[StepReport]) -> Option<u64> {
    let end_of = |origins: &[Origin]| {
        graph
            .steps
            .iter()
            .filter(|s| origins.contains(&s.origin))
            .filter_map(|s| steps[s.index].finished_ms)
            .max()
    };
    end_of(&[Origin::Gate]).or_else(|| end_of(&[Origin::Builtin]))
}

/// The points the runner chose for this execution's VMs.
fn points_used(store: &Store, execution: &str, start: u64) -> Result<Vec<PointUsed>, StoreError> {
    let prefix = format!("{execution}/");
    let mut used = Vec::new();
    for (key, doc) in store.list(CHOICES)? {
        let Some(vm) = key.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(choice) = serde_json::from_value::<Choice>(doc.value) else {
            continue;
        };
        used.push(PointUsed {
            vm: vm.to_owned(),
            point: choice.point.id,
            taken_at_ms: choice.point.taken_at_ms,
            age_ms: start.saturating_sub(choice.point.taken_at_ms),
            final_sync: choice.point.final_sync,
        });
    }
    Ok(used)
}

/// Escapes text for HTML.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn clock(ms: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The report as a self-contained HTML page, laid out for printing.
pub fn to_html(report: &ExecutionReport) -> String {
    let rto = match (report.measured_rto_ms, report.rto_target_ms) {
        (Some(rto), Some(target)) => format!(
            "{} against a target of {} — {}",
            clock(rto),
            clock(target),
            if rto <= target { "met" } else { "missed" }
        ),
        (None, Some(target)) => format!("not reached (target {})", clock(target)),
        (Some(rto), None) => format!("{} (no target set)", clock(rto)),
        (None, None) => "not reached (no target set)".to_owned(),
    };
    let worst = report.recovery_points.iter().map(|p| p.age_ms).max();
    let rpo = match (worst, report.rpo_target_ms) {
        (Some(age), Some(target)) => format!(
            "oldest point used was {} old against a target of {} — {}",
            clock(age),
            clock(target),
            if age <= target { "met" } else { "missed" }
        ),
        (Some(age), None) => format!("oldest point used was {} old (no target set)", clock(age)),
        (None, _) => "no recovery point used".to_owned(),
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Haven execution {id}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}\
         td,th{{border:1px solid #bbb;padding:4px 6px;text-align:left;vertical-align:top}}\
         .succeeded{{color:#176317}}.failed{{color:#a11}}.skipped,.not-run{{color:#777}}\
         @media print{{body{{margin:0}}}}</style></head><body>\
         <h1>Execution {id}</h1><p>Plan <b>{plan}</b>, mode <b>{mode}</b>: <b class=\"{outcome}\">{outcome}</b></p>\
         <p>Measured RTO: {rto}</p><p>Achieved RPO: {rpo}</p>",
        id = escape(&report.execution),
        plan = escape(&report.plan),
        mode = escape(&report.mode),
        outcome = escape(&report.outcome),
        rto = escape(&rto),
        rpo = escape(&rpo),
    );
    if !report.recovery_points.is_empty() {
        html.push_str("<table><tr><th>VM</th><th>Recovery point</th><th>Age at start</th></tr>");
        for p in &report.recovery_points {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}{}</td><td>{}</td></tr>",
                escape(&p.vm),
                escape(&p.point),
                if p.final_sync { " (final sync)" } else { "" },
                clock(p.age_ms)
            );
        }
        html.push_str("</table><p></p>");
    }
    html.push_str(
        "<table><tr><th>#</th><th>Step</th><th>Outcome</th><th>Attempts</th>\
         <th>Start</th><th>End</th><th>Detail</th></tr>",
    );
    for s in &report.steps {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}<br><small>{}</small></td><td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.index,
            escape(&s.name),
            escape(&s.key),
            s.attempts,
            s.started_ms.map(clock).unwrap_or_default(),
            s.finished_ms.map(clock).unwrap_or_default(),
            escape(&s.detail),
            o = escape(&s.outcome),
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

/// A tamper-evident record of an execution: the journal with its hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidencePack {
    /// Execution id.
    pub execution: String,
    /// The executed graph.
    pub graph: serde_json::Value,
    /// Every journal entry, with `prev_hash` and `hash`.
    pub journal: Vec<StreamEntry>,
    /// Hash of the last entry: quote it to pin the record.
    pub head: String,
}

/// Why an evidence pack does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evidence pack does not verify at entry {seq}: {reason}")]
pub struct EvidenceError {
    /// First entry that does not verify.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

impl EvidencePack {
    /// Collects the evidence of `execution`; fails if the stored chain is already broken.
    pub fn collect(
        store: &Store,
        execution: &str,
        graph: &ExecutionGraph,
    ) -> Result<Self, StoreError> {
        let stream = stream_name(execution);
        let head = match store.verify_stream(&stream)? {
            ChainCheck::Intact { head, .. } => head,
            ChainCheck::Broken { seq, reason } => {
                return Err(StoreError::Decode {
                    collection: "streams".into(),
                    key: stream,
                    message: format!("hash chain broken at entry {seq}: {reason}"),
                })
            }
        };
        Ok(Self {
            execution: execution.into(),
            graph: serde_json::to_value(graph).expect("graphs serialize"),
            journal: store.stream(&stream, 0)?,
            head,
        })
    }

    /// Re-checks the chain and the head, offline.
    pub fn verify(&self) -> Result<(), EvidenceError> {
        let mut prev = GENESIS_HASH.to_owned();
        for (i, entry) in self.journal.iter().enumerate() {
            let fail = |reason: &str| EvidenceError {
                seq: entry.seq,
                reason: reason.into(),
            };
            if entry.seq != i as u64 + 1 {
                return Err(fail("sequence gap"));
            }
            if entry.prev_hash != prev {
                return Err(fail("does not link to the previous entry"));
            }
            let json = serde_json::to_string(&entry.entry).expect("JSON serializes");
            let hash = entry_hash(&entry.prev_hash, entry.seq, entry.at_ms, &json);
            if hash != entry.hash {
                return Err(fail("content does not match its hash"));
            }
            prev = hash;
        }
        if prev != self.head {
            return Err(EvidenceError {
                seq: self.journal.len() as u64,
                reason: "the head does not match the last entry".into(),
            });
        }
        Ok(())
    }
}

/// One step instance of a mode, as the plan-definition report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinedStep {
    /// Position in the mode's graph.
    pub index: usize,
    /// Group id (`None` for plan-level steps).
    pub group: Option<String>,
    /// Human name.
    pub name: String,
    /// Action kind (`create-vm`, `notify`, ...).
    pub action: String,
    /// VM acted on.
    pub vm: Option<String>,
    /// Whether a failure stops the plan.
    pub critical: bool,
    /// Steps it waits for.
    pub depends_on: Vec<usize>,
}

/// What one mode runs, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinedMode {
    /// Mode.
    pub mode: String,
    /// Its steps in execution order (empty when it does not compile).
    pub steps: Vec<DefinedStep>,
    /// Why the mode does not compile (a drill without test networks, ...).
    pub error: Option<String>,
}

/// A group as defined, in recovery order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinedGroup {
    /// Position in recovery order (1 = first).
    pub order: usize,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Groups that finish first.
    pub depends_on: Vec<String>,
    /// Connector instance.
    pub connector: Option<String>,
    /// Explicit VMs.
    pub vms: Vec<String>,
    /// Tag selectors.
    pub tags: Vec<String>,
    /// The VMs it resolved to.
    pub resolved: Vec<String>,
    /// Health gates.
    pub gates: Vec<String>,
}

/// The plan-definition report: what a plan will do, for review and audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDefinition {
    /// Plan id.
    pub plan: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// RTO target, ms.
    pub rto_ms: Option<u64>,
    /// RPO target, ms.
    pub rpo_ms: Option<u64>,
    /// Recovery point policy (`latest`, `latest before ...`, `point ...`).
    pub recovery_point: String,
    /// Network mappings: `(production, recovery, test)`.
    pub networks: Vec<(String, String, Option<String>)>,
    /// Re-IP rules as text (`10.0.10.0/24 → 172.16.10.0/24 via 172.16.10.1`).
    pub re_ip: Vec<String>,
    /// Groups in recovery order.
    pub groups: Vec<DefinedGroup>,
    /// Steps per mode.
    pub modes: Vec<DefinedMode>,
}

/// Builds the plan-definition report of `plan` with its groups resolved to
/// `resolved` (see [`haven_plan::Plan::compile`]).
pub fn plan_definition(
    plan: &haven_plan::Plan,
    resolved: &std::collections::BTreeMap<haven_plan::GroupId, Vec<haven_plan::VmRef>>,
) -> PlanDefinition {
    use haven_plan::{Mode, RecoveryPoint};
    let modes: Vec<DefinedMode> = Mode::ALL
        .iter()
        .map(|&mode| match plan.compile(mode, resolved) {
            Ok(graph) => DefinedMode {
                mode: mode.to_string(),
                steps: graph
                    .steps
                    .iter()
                    .map(|s| DefinedStep {
                        index: s.index,
                        group: s.group.as_ref().map(ToString::to_string),
                        name: s.name.clone(),
                        action: s.action.kind().into(),
                        vm: s.vm.as_ref().map(ToString::to_string),
                        critical: s.critical,
                        depends_on: s.depends_on.clone(),
                    })
                    .collect(),
                error: None,
            },
            Err(e) => DefinedMode {
                mode: mode.to_string(),
                steps: Vec::new(),
                error: Some(e.to_string()),
            },
        })
        .collect();
    // Recovery order: the order groups first appear in the failover graph.
    let mut order: Vec<String> = Vec::new();
    if let Some(failover) = modes.iter().find(|m| m.mode == "failover") {
        for s in &failover.steps {
            if let Some(g) = &s.group {
                if !order.contains(g) {
                    order.push(g.clone());
                }
            }
        }
    }
    let position = |id: &str| order.iter().position(|g| g == id).unwrap_or(order.len());
    let mut groups: Vec<DefinedGroup> = plan
        .groups
        .iter()
        .map(|g| DefinedGroup {
            order: 0,
            id: g.id.to_string(),
            name: g.name.clone(),
            depends_on: g.depends_on.iter().map(ToString::to_string).collect(),
            connector: g.connector.clone(),
            vms: g.vms.clone(),
            tags: g.tags.iter().map(ToString::to_string).collect(),
            resolved: resolved
                .get(&g.id)
                .map(|v| v.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            gates: g.gates.iter().map(ToString::to_string).collect(),
        })
        .collect();
    groups.sort_by_key(|g| position(&g.id));
    for (i, g) in groups.iter_mut().enumerate() {
        g.order = i + 1;
    }
    PlanDefinition {
        plan: plan.id.to_string(),
        name: plan.name.clone(),
        description: plan.description.clone(),
        rto_ms: plan.rto.map(|d| d.as_millis()),
        rpo_ms: plan.rpo.map(|d| d.as_millis()),
        recovery_point: match &plan.recovery_point {
            RecoveryPoint::Latest => "latest".into(),
            RecoveryPoint::LatestBefore(t) => format!("latest before {t}"),
            RecoveryPoint::Point(p) => format!("point {p}"),
        },
        networks: plan
            .network_map
            .iter()
            .map(|m| (m.production.clone(), m.recovery.clone(), m.test.clone()))
            .collect(),
        re_ip: plan
            .re_ip
            .iter()
            .map(|r| {
                let mut line = format!("{} → {}", r.source, r.target);
                if let Some(g) = r.gateway {
                    let _ = write!(line, " via {g}");
                }
                if !r.dns.is_empty() {
                    let dns: Vec<String> = r.dns.iter().map(ToString::to_string).collect();
                    let _ = write!(line, ", DNS {}", dns.join(", "));
                }
                line
            })
            .collect(),
        groups,
        modes,
    }
}

/// The plan-definition report as a self-contained HTML page, laid out for printing.
pub fn plan_definition_html(d: &PlanDefinition) -> String {
    let target = |ms: Option<u64>| ms.map_or_else(|| "not set".into(), clock);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Plan {id}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%;margin-bottom:1.5em}}\
         td,th{{border:1px solid #bbb;padding:4px 6px;text-align:left;vertical-align:top}}\
         .error{{color:#a11}}h2{{page-break-after:avoid}}@media print{{body{{margin:0}}}}</style></head><body>\
         <h1>{name}</h1><p>Plan <b>{id}</b>. {description}</p>\
         <p>RTO target: {rto}. RPO target: {rpo}. Recovery point: {point}.</p>",
        id = escape(&d.plan),
        name = escape(&d.name),
        description = escape(&d.description),
        rto = target(d.rto_ms),
        rpo = target(d.rpo_ms),
        point = escape(&d.recovery_point),
    );
    html.push_str("<h2>Networks</h2><table><tr><th>Production</th><th>Recovery</th><th>Test (isolated)</th></tr>");
    for (p, r, t) in &d.networks {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(p),
            escape(r),
            escape(t.as_deref().unwrap_or("—"))
        );
    }
    html.push_str("</table>");
    if !d.re_ip.is_empty() {
        html.push_str("<h2>Re-IP</h2><ul>");
        for r in &d.re_ip {
            let _ = write!(html, "<li>{}</li>", escape(r));
        }
        html.push_str("</ul>");
    }
    html.push_str("<h2>Groups in recovery order</h2><table><tr><th>#</th><th>Group</th><th>After</th><th>VMs</th><th>Gates</th></tr>");
    for g in &d.groups {
        let mut vms = g.resolved.join(", ");
        if !g.tags.is_empty() {
            let _ = write!(vms, " (tags {})", g.tags.join(", "));
        }
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{} <small>{}</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            g.order,
            escape(&g.name),
            escape(&g.id),
            escape(&g.depends_on.join(", ")),
            escape(&vms),
            escape(&g.gates.join("; "))
        );
    }
    html.push_str("</table>");
    for m in &d.modes {
        let _ = write!(html, "<h2>Mode {}</h2>", escape(&m.mode));
        if let Some(e) = &m.error {
            let _ = write!(html, "<p class=\"error\">Cannot run: {}</p>", escape(e));
            continue;
        }
        html.push_str("<table><tr><th>#</th><th>Group</th><th>Step</th><th>Action</th><th>VM</th><th>After</th></tr>");
        for s in &m.steps {
            let after: Vec<String> = s.depends_on.iter().map(|i| format!("#{i}")).collect();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.index,
                escape(s.group.as_deref().unwrap_or("plan")),
                escape(&s.name),
                if s.critical { "" } else { " (optional)" },
                escape(&s.action),
                escape(s.vm.as_deref().unwrap_or("")),
                after.join(", ")
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod plan_definition_tests {
    use super::*;

    #[test]
    fn the_example_plan_is_described_in_recovery_order() {
        let plan = haven_plan::Plan::from_toml(include_str!("../../plan/examples/three-tier.toml"))
            .unwrap();
        let resolved = std::collections::BTreeMap::from([(
            haven_plan::GroupId::from("app"),
            vec![haven_plan::VmRef {
                connector: "vcenter-prod".into(),
                name: "app-01".into(),
            }],
        )]);
        let d = plan_definition(&plan, &resolved);
        assert_eq!(d.rpo_ms, Some(15 * 60 * 1000));
        let order: Vec<&str> = d.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(order.first(), Some(&"db"), "{order:?}");
        let failover = d.modes.iter().find(|m| m.mode == "failover").unwrap();
        assert!(failover
            .steps
            .iter()
            .any(|s| s.action == "create-vm" && s.vm.as_deref() == Some("vcenter-prod/app-01")));
        assert_eq!(d.modes.len(), 5);
        let html = plan_definition_html(&d);
        assert!(
            html.contains("172.16.10.0/24") && html.contains("Mode undo"),
            "{html}"
        );
    }
}
