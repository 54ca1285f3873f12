//! The readiness check: could this plan run now?
//!
//! Every reference resolves through live connectors, every connector's
//! `check` passes, every VM has a replica in the catalog whose chosen
//! recovery point exists and is within the plan's RPO, the recovery and test
//! networks exist at the recovery site (test networks isolated), re-IP rules
//! are valid, and scripts, host commands and notification channels are
//! available. Problems carry the plan field they concern.
//!
//! Cost: one `check`, one `list-vms` and (recovery sites) one
//! `list-networks` per connector, one read of the catalog, and one listing
//! of points per replica, all batched; nothing per VM crosses a connector.
//! The result is kept in store collection `readiness` under the plan id,
//! with the plan document version it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use haven_connector::{CheckItem, Connector, Network};
use haven_plan::{Action, HealthCheck, Plan, Step, VmRef};
use haven_store::{Command, CommandLog, CommitError, Store};
use haven_transport::repo::Repository;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, ReplicaRecord};
use crate::network;
use crate::notify::Notifier;
use crate::replication::now_ms;
use crate::report::escape;
use crate::resolve::ConnectorResolver;
use crate::scripts::HostCommands;

/// Store collection of readiness results.
pub const COLLECTION: &str = "readiness";

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Dotted plan field (`groups.0.vms.1`, `rpo`, `network_map.0.test`),
    /// or `connectors.<name>` for a connector.
    pub path: String,
    /// What it concerns (a VM, a connector, a network).
    pub subject: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A connector's health as its `check` reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorHealth {
    /// Instance name.
    pub name: String,
    /// Whether every item passed.
    pub ok: bool,
    /// The items.
    pub items: Vec<CheckItem>,
}

/// One VM's protection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReadiness {
    /// The production VM.
    pub vm: VmRef,
    /// Its group.
    pub group: String,
    /// Recovery connector from the catalog.
    pub recovery_connector: Option<String>,
    /// The recovery point the plan's policy selects now.
    pub point: Option<String>,
    /// Its age, ms.
    pub point_age_ms: Option<u64>,
    /// Whether everything about this VM passed.
    pub ok: bool,
}

/// The result of a readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessReport {
    /// Plan id.
    pub plan: String,
    /// Plan name.
    pub plan_name: String,
    /// Version of the plan document checked (a newer version is unverified).
    pub plan_version: u64,
    /// When the check started, Unix ms.
    pub checked_at_ms: u64,
    /// How long it took, ms.
    pub duration_ms: u64,
    /// Whether no problem was found.
    pub ready: bool,
    /// The plan's RPO, ms.
    pub rpo_ms: Option<u64>,
    /// Connector checks.
    pub connectors: Vec<ConnectorHealth>,
    /// VMs.
    pub vms: Vec<VmReadiness>,
    /// Problems, in plan order.
    pub problems: Vec<Problem>,
}

/// Whether a `run-script` component can run here, or why not.
pub type ScriptAvailable = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the host offers that plan steps may need.
#[derive(Clone, Default)]
pub struct ReadinessOptions {
    /// Whether a script component is available (`None`: scripts cannot run here).
    pub scripts: Option<ScriptAvailable>,
    /// The host-command permission (`None`: host commands cannot run here).
    pub host_commands: Option<HostCommands>,
    /// Configured notification channels.
    pub notifier: Notifier,
}

/// Runs readiness checks against live connectors.
pub struct ReadinessChecker {
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    resolver: ConnectorResolver,
}

impl ReadinessChecker {
    /// A checker over `connectors`, by instance name.
    pub fn new(connectors: BTreeMap<String, Arc<dyn Connector>>) -> Self {
        Self {
            resolver: ConnectorResolver::new(connectors.clone()),
            connectors,
        }
    }

    /// Checks `plan` (document version `plan_version`).
    pub async fn check(
        &self,
        store: &Store,
        plan: &Plan,
        plan_version: u64,
        options: &ReadinessOptions,
    ) -> ReadinessReport {
        let started = now_ms();
        let clock = std::time::Instant::now();
        let mut problems = Vec::new();
        let mut problem = |path: String, subject: String, message: String| {
            problems.push(Problem {
                path,
                subject,
                message,
            })
        };

        // Inventories and resolution (one list-vms per connector).
        let needed = self.resolver.needed(plan);
        let (inventories, failed) = self.resolver.inventories(&needed).await;
        let (resolved, errors) = self.resolver.resolve_all(plan, &inventories, &failed);
        for e in errors {
            problem(e.path, String::new(), e.message);
        }

        // The catalog, read once.
        let records: BTreeMap<String, ReplicaRecord> = match catalog::all(store) {
            Ok(all) => all.into_iter().map(|(k, v)| (k, v.value)).collect(),
            Err(e) => {
                problem(
                    "-".into(),
                    "catalog".into(),
                    format!("cannot read the catalog: {e}"),
                );
                BTreeMap::new()
            }
        };
        let recovery: BTreeSet<String> = records
            .values()
            .map(|r| r.recovery_connector.clone())
            .collect();

        // Connector checks and recovery-site networks, concurrently.
        let mut checked: BTreeSet<String> = needed.clone();
        checked.extend(recovery.iter().cloned());
        let (health, networks) = self.probe_connectors(&checked, &recovery).await;
        for h in &health {
            if !h.ok {
                let failing: Vec<String> = h
                    .items
                    .iter()
                    .filter(|i| !i.ok)
                    .map(|i| format!("{}: {}", i.name, i.detail))
                    .collect();
                problem(
                    format!("connectors.{}", h.name),
                    h.name.clone(),
                    format!("check failed: {}", failing.join("; ")),
                );
            }
        }

        // Per VM: replica, recovery point, RPO, network mappings.
        let rpo_ms = plan.rpo.map(|r| r.as_millis());
        let mut vms = Vec::new();
        let mut wanted_points: BTreeMap<PathBuf, Vec<(usize, String, u64)>> = BTreeMap::new();
        let mut vm_problems: Vec<Vec<Problem>> = Vec::new();
        for (i, g) in plan.groups.iter().enumerate() {
            for vm in resolved.get(&g.id).into_iter().flatten() {
                let path = g
                    .vms
                    .iter()
                    .position(|n| g.connector.as_ref() == Some(&vm.connector) && n == &vm.name)
                    .map_or_else(
                        || format!("groups.{i}.tags"),
                        |j| format!("groups.{i}.vms.{j}"),
                    );
                let mut mine = Vec::new();
                let mut row = VmReadiness {
                    vm: vm.clone(),
                    group: g.id.to_string(),
                    recovery_connector: None,
                    point: None,
                    point_age_ms: None,
                    ok: true,
                };
                let subject = vm.to_string();
                match records.get(&ReplicaRecord::key(vm)) {
                    None => mine.push(Problem {
                        path: path.clone(),
                        subject: subject.clone(),
                        message: format!(
                            "{vm} has no replica in the catalog: protect it (`haven protect --vm {vm} --to <recovery connector> --repo <dir>`)"
                        ),
                    }),
                    Some(record) => {
                        row.recovery_connector = Some(record.recovery_connector.clone());
                        if !self.connectors.contains_key(&record.recovery_connector) {
                            mine.push(Problem {
                                path: path.clone(),
                                subject: subject.clone(),
                                message: format!(
                                    "its recovery connector {} is not configured",
                                    record.recovery_connector
                                ),
                            });
                        }
                        if record.stopped {
                            mine.push(Problem {
                                path: path.clone(),
                                subject: subject.clone(),
                                message: "replication is stopped (the VM was failed over or migrated)".into(),
                            });
                        }
                        match record.choose(&plan.recovery_point) {
                            Err(message) => mine.push(Problem {
                                path: "recovery_point".into(),
                                subject: subject.clone(),
                                message,
                            }),
                            Ok(point) => {
                                let age = started.saturating_sub(point.taken_at_ms);
                                row.point = Some(point.id.clone());
                                row.point_age_ms = Some(age);
                                if let Some(rpo) = plan.rpo.filter(|r| age > r.as_millis()) {
                                    mine.push(Problem {
                                        path: "rpo".into(),
                                        subject: subject.clone(),
                                        message: format!(
                                            "{vm}: recovery point {} is {} old, older than the RPO {rpo}",
                                            point.id,
                                            haven_plan::HumanDuration::from_millis(age / 1000 * 1000)
                                        ),
                                    });
                                }
                                for disk in &record.disks {
                                    match point.disks.get(&disk.id) {
                                        Some(p) => wanted_points
                                            .entry(record.repository.clone())
                                            .or_default()
                                            .push((vms.len(), disk.replica.clone(), *p)),
                                        None => mine.push(Problem {
                                            path: "recovery_point".into(),
                                            subject: subject.clone(),
                                            message: format!("{} has no copy of disk {}", point.id, disk.id),
                                        }),
                                    }
                                }
                            }
                        }
                        let nics = inventories
                            .get(&vm.connector)
                            .and_then(|inv| inv.iter().find(|v| v.name == vm.name))
                            .map_or(&record.machine.nics, |v| &v.nics);
                        for nic in nics {
                            if !plan.network_map.iter().any(|m| m.production == nic.network) {
                                mine.push(Problem {
                                    path: "network_map".into(),
                                    subject: subject.clone(),
                                    message: format!(
                                        "no mapping for production network {:?} (adapter {})",
                                        nic.network, nic.id
                                    ),
                                });
                            }
                        }
                    }
                }
                row.ok = mine.is_empty();
                vms.push(row);
                vm_problems.push(mine);
            }
        }

        // Transport points still retained (one blocking pass per repository).
        for (repo, wanted) in wanted_points {
            for (index, message) in missing_points(repo, wanted).await {
                let row = &mut vms[index];
                row.ok = false;
                vm_problems[index].push(Problem {
                    path: "recovery_point".into(),
                    subject: row.vm.to_string(),
                    message,
                });
            }
        }
        for p in vm_problems.into_iter().flatten() {
            problem(p.path, p.subject, p.message);
        }

        // Recovery and test networks at every recovery site in use.
        let used: BTreeSet<&String> = vms
            .iter()
            .filter_map(|v| v.recovery_connector.as_ref())
            .collect();
        for site in used {
            let Some(list) = networks.get(site) else {
                continue;
            };
            for (i, m) in plan.network_map.iter().enumerate() {
                if !has_network(list, &m.recovery) {
                    problem(
                        format!("network_map.{i}.recovery"),
                        site.clone(),
                        format!("{site} has no network {:?}", m.recovery),
                    );
                }
                match &m.test {
                    None => problem(
                        format!("network_map.{i}.test"),
                        site.clone(),
                        "no isolated test network: drills will be refused".into(),
                    ),
                    Some(t) => match list.iter().find(|n| &n.name == t || &n.id == t) {
                        None => problem(
                            format!("network_map.{i}.test"),
                            site.clone(),
                            format!("{site} has no network {t:?}"),
                        ),
                        Some(n) if !n.isolated => problem(
                            format!("network_map.{i}.test"),
                            site.clone(),
                            format!(
                                "{t:?} at {site} is not isolated: a drill could reach production"
                            ),
                        ),
                        Some(_) => {}
                    },
                }
            }
        }
        for (path, message) in network::check_re_ip(&plan.re_ip) {
            problem(path, String::new(), message);
        }
        for (path, step) in steps_with_paths(plan) {
            for (field, message) in step_problem(step, options) {
                problem(format!("{path}.action.{field}"), step.name.clone(), message);
            }
        }

        ReadinessReport {
            plan: plan.id.to_string(),
            plan_name: plan.name.clone(),
            plan_version,
            checked_at_ms: started,
            duration_ms: clock.elapsed().as_millis() as u64,
            ready: problems.is_empty(),
            rpo_ms,
            connectors: health,
            vms,
            problems,
        }
    }

    async fn probe_connectors(
        &self,
        names: &BTreeSet<String>,
        recovery: &BTreeSet<String>,
    ) -> (Vec<ConnectorHealth>, BTreeMap<String, Vec<Network>>) {
        let mut tasks = tokio::task::JoinSet::new();
        for name in names {
            let Some(c) = self.connectors.get(name).cloned() else {
                continue;
            };
            let networks = recovery.contains(name);
            let name = name.clone();
            tasks.spawn(async move {
                let items = match c.check().await {
                    Ok(items) => items,
                    Err(e) => vec![CheckItem {
                        name: "check".into(),
                        ok: false,
                        detail: e.to_string(),
                    }],
                };
                let nets = if networks {
                    Some(c.list_networks().await)
                } else {
                    None
                };
                (name, items, nets)
            });
        }
        let mut health = Vec::new();
        let mut networks = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((name, mut items, nets)) = done else {
                continue;
            };
            match nets {
                Some(Ok(list)) => {
                    networks.insert(name.clone(), list);
                }
                Some(Err(e)) => items.push(CheckItem {
                    name: "networks".into(),
                    ok: false,
                    detail: format!("listing networks: {e}"),
                }),
                None => {}
            }
            health.push(ConnectorHealth {
                ok: items.iter().all(|i| i.ok),
                name,
                items,
            });
        }
        health.sort_by(|a, b| a.name.cmp(&b.name));
        (health, networks)
    }
}

fn has_network(list: &[Network], name: &str) -> bool {
    list.iter().any(|n| n.name == name || n.id == name)
}

/// The transport points in `wanted` (row, replica, point) that `repo` no
/// longer holds, with a message per row.
async fn missing_points(repo: PathBuf, wanted: Vec<(usize, String, u64)>) -> Vec<(usize, String)> {
    tokio::task::spawn_blocking(move || {
        if !repo.join("repo.json").is_file() {
            let rows: BTreeSet<usize> = wanted.iter().map(|w| w.0).collect();
            return rows
                .into_iter()
                .map(|r| (r, format!("repository {} does not exist", repo.display())))
                .collect();
        }
        let repository = match Repository::open(&repo, None) {
            Ok(r) => r,
            Err(e) => {
                return wanted
                    .iter()
                    .map(|w| (w.0, format!("repository {}: {e}", repo.display())))
                    .collect()
            }
        };
        let mut missing = Vec::new();
        for (row, replica, point) in wanted {
            match repository.points(&replica) {
                Ok(points) if points.iter().any(|p| p.id == point) => {}
                Ok(_) => missing.push((
                    row,
                    format!("transport point {point} of replica {replica} is no longer retained"),
                )),
                Err(e) => missing.push((row, format!("replica {replica}: {e}"))),
            }
        }
        missing
    })
    .await
    .unwrap_or_default()
}

/// Every step of the plan with its dotted path.
fn steps_with_paths(plan: &Plan) -> Vec<(String, &Step)> {
    let mut lists: Vec<(String, &[Step])> = vec![
        ("pre_steps".into(), &plan.pre_steps),
        ("post_steps".into(), &plan.post_steps),
    ];
    for (g, group) in plan.groups.iter().enumerate() {
        lists.push((format!("groups.{g}.pre_steps"), &group.pre_steps));
        lists.push((format!("groups.{g}.post_steps"), &group.post_steps));
    }
    lists
        .into_iter()
        .flat_map(|(prefix, steps)| {
            steps
                .iter()
                .enumerate()
                .map(move |(i, s)| (format!("{prefix}.{i}"), s))
        })
        .collect()
}

/// Problems of one step's action: `(field, message)`.
fn step_problem(step: &Step, options: &ReadinessOptions) -> Vec<(String, String)> {
    match &step.action {
        Action::RunScript { component, .. } => match &options.scripts {
            None => vec![(
                "component".into(),
                "WebAssembly scripts cannot run on this host".into(),
            )],
            Some(available) => match available(component) {
                Ok(()) => Vec::new(),
                Err(why) => vec![("component".into(), why)],
            },
        },
        Action::RunHostCommand { command, .. } => match &options.host_commands {
            None => vec![(
                "command".into(),
                "host commands cannot run on this host".into(),
            )],
            Some(host) => match host.check(command) {
                Err(e) => vec![("command".into(), e.to_string())],
                Ok(_) if !Path::new(command).is_file() => {
                    vec![("command".into(), format!("{command} does not exist"))]
                }
                Ok(_) => Vec::new(),
            },
        },
        Action::Notify { channel, .. } if !options.notifier.has(channel) => vec![(
            "channel".into(),
            format!("notification channel {channel:?} is not configured in notify.toml"),
        )],
        Action::Probe {
            check: HealthCheck::Http { url, .. },
        } if !(url.starts_with("http://") || url.starts_with("https://")) => {
            vec![("check.url".into(), format!("{url:?} is not an http(s) URL"))]
        }
        _ => Vec::new(),
    }
}

/// Stores `report` in collection `readiness` under its plan id.
pub async fn record(log: &dyn CommandLog, report: &ReadinessReport) -> Result<(), CommitError> {
    log.commit(vec![Command::Put {
        collection: COLLECTION.into(),
        key: report.plan.clone(),
        value: serde_json::to_value(report).expect("reports serialize"),
        expected_version: None,
    }])
    .await?;
    Ok(())
}

fn age(ms: u64) -> String {
    haven_plan::HumanDuration::from_millis(ms / 1000 * 1000).to_string()
}

/// The report as a self-contained HTML page, laid out for printing.
pub fn to_html(report: &ReadinessReport) -> String {
    let mut html = String::new();
    let verdict = if report.ready { "ready" } else { "not ready" };
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Readiness of {name}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%;margin-bottom:1.5em}}\
         td,th{{border:1px solid #bbb;padding:4px 6px;text-align:left;vertical-align:top}}\
         .ok{{color:#176317}}.bad{{color:#a11}}@media print{{body{{margin:0}}}}</style></head><body>\
         <h1>Readiness of {name}</h1><p>Plan <b>{id}</b> version {version}: <b class=\"{class}\">{verdict}</b>, \
         {count} problem(s); checked at {at} (Unix ms) in {took} ms; RPO {rpo}.</p>",
        name = escape(&report.plan_name),
        id = escape(&report.plan),
        version = report.plan_version,
        class = if report.ready { "ok" } else { "bad" },
        count = report.problems.len(),
        at = report.checked_at_ms,
        took = report.duration_ms,
        rpo = report.rpo_ms.map_or_else(|| "not set".into(), age),
    );
    if !report.problems.is_empty() {
        html.push_str(
            "<h2>Problems</h2><table><tr><th>Field</th><th>Subject</th><th>Problem</th></tr>",
        );
        for p in &report.problems {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"bad\">{}</td></tr>",
                escape(&p.path),
                escape(&p.subject),
                escape(&p.message)
            );
        }
        html.push_str("</table>");
    }
    html.push_str(
        "<h2>Connectors</h2><table><tr><th>Instance</th><th>Check</th><th>Details</th></tr>",
    );
    for c in &report.connectors {
        let details: Vec<String> = c
            .items
            .iter()
            .map(|i| format!("{}: {}", escape(&i.name), escape(&i.detail)))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            escape(&c.name),
            if c.ok { "ok" } else { "bad" },
            if c.ok { "passed" } else { "failed" },
            details.join("<br>")
        );
    }
    html.push_str("</table><h2>VMs</h2><table><tr><th>VM</th><th>Group</th><th>Recovery site</th><th>Point</th><th>Age</th><th>Status</th></tr>");
    for v in &report.vms {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(&v.vm.to_string()),
            escape(&v.group),
            escape(v.recovery_connector.as_deref().unwrap_or("—")),
            escape(v.point.as_deref().unwrap_or("—")),
            v.point_age_ms.map(age).unwrap_or_default(),
            if v.ok { "ok" } else { "bad" },
            if v.ok { "ready" } else { "not ready" },
        );
    }
    html.push_str("</table></body></html>\n");
    html
}
