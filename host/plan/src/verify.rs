//! Static verification of a plan: everything that can be checked without connectors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::is_valid_id;
use crate::model::{Action, Group, HealthCheck, Mode, OnTimeout, Plan, RecoveryPoint, Step};

/// How serious an [`Issue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// The plan cannot run (compilation refuses it).
    Error,
    /// The plan can run but something deserves attention.
    Warning,
}

/// One finding of [`Plan::verify`], with the field path it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// Field path, e.g. `groups.2.depends_on.0` (empty for the plan as a whole).
    pub path: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl Issue {
    /// Whether this issue is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.path, self.message)
        }
    }
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path.into(), message.into());
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path.into(), message.into());
    }

    fn push(&mut self, severity: Severity, path: String, message: String) {
        self.0.push(Issue {
            severity,
            path,
            message,
        });
    }
}

impl Plan {
    /// Checks the plan statically and returns every error and warning found, each with the
    /// field path it concerns, in a deterministic order (plan fields, networks, steps,
    /// groups). An empty list means the plan is clean. Never panics.
    pub fn verify(&self) -> Vec<Issue> {
        let mut out = Issues::default();
        self.verify_header(&mut out);
        self.verify_networks(&mut out);
        let mut step_ids: BTreeMap<&str, String> = BTreeMap::new();
        for (i, s) in self.pre_steps.iter().enumerate() {
            verify_step(s, &format!("pre_steps.{i}"), true, &mut step_ids, &mut out);
        }
        for (i, s) in self.post_steps.iter().enumerate() {
            verify_step(s, &format!("post_steps.{i}"), true, &mut step_ids, &mut out);
        }
        self.verify_groups(&mut step_ids, &mut out);
        out.0
    }

    fn verify_header(&self, out: &mut Issues) {
        if !is_valid_id(self.id.as_str()) {
            out.error("id", format!("bad plan id {:?}: use 1-64 characters a-z 0-9 _ . - starting with a letter or digit", self.id.as_str()));
        }
        if self.name.trim().is_empty() {
            out.error("name", "the plan needs a name");
        }
        if self.plan_set.trim().is_empty() {
            out.error("plan_set", "the plan set must not be empty");
        }
        for (field, value) in [("rto", self.rto), ("rpo", self.rpo)] {
            match value {
                None => out.error(field, format!("missing target {}", field.to_uppercase())),
                Some(d) if d.is_zero() => out.error(
                    field,
                    format!("target {} must be greater than zero", field.to_uppercase()),
                ),
                Some(_) => {}
            }
        }
        if self.parallelism == Some(0) {
            out.error("parallelism", "must be at least 1");
        }
        match &self.recovery_point {
            RecoveryPoint::Latest => {}
            RecoveryPoint::LatestBefore(t) => {
                if t.as_str() < "1970" {
                    out.error(
                        "recovery_point.latest_before",
                        format!("{t} is before any possible recovery point"),
                    );
                }
            }
            RecoveryPoint::Point(p) => {
                if p.trim().is_empty() || p.chars().any(char::is_whitespace) {
                    out.error(
                        "recovery_point.point",
                        format!("bad recovery point id {p:?}"),
                    );
                } else {
                    out.warn(
                        "recovery_point.point",
                        "a fixed recovery point expires with retention; prefer choosing it when starting the run",
                    );
                }
            }
        }
        if self.groups.is_empty() {
            out.warn("groups", "the plan recovers no VM group");
        } else if self.network_map.is_empty() {
            out.warn(
                "network_map",
                "no network mapping: recovered VMs keep their production network names, and drills are not isolated",
            );
        }
    }

    fn verify_networks(&self, out: &mut Issues) {
        let mut seen = BTreeMap::new();
        for (i, m) in self.network_map.iter().enumerate() {
            let path = format!("network_map.{i}");
            if m.production.trim().is_empty() {
                out.error(format!("{path}.production"), "empty network name");
            }
            if m.recovery.trim().is_empty() {
                out.error(format!("{path}.recovery"), "empty network name");
            }
            if let Some(j) = seen.insert(m.production.as_str(), i) {
                out.error(
                    format!("{path}.production"),
                    format!(
                        "network {:?} is already mapped by network_map.{j}",
                        m.production
                    ),
                );
            }
            match &m.test {
                None => out.warn(
                    format!("{path}.test"),
                    "no isolated test network: drills will be refused",
                ),
                Some(t) if t.trim().is_empty() => {
                    out.error(format!("{path}.test"), "empty network name")
                }
                Some(t) if t == &m.recovery || t == &m.production => out.error(
                    format!("{path}.test"),
                    format!("test network {t:?} is not isolated: it is also a production or recovery network"),
                ),
                Some(_) => {}
            }
        }
        for (i, r) in self.re_ip.iter().enumerate() {
            let path = format!("re_ip.{i}");
            let same_family = r.source.addr().is_ipv4() == r.target.addr().is_ipv4();
            if !same_family {
                out.error(
                    format!("{path}.target"),
                    format!("{} and {} are not the same IP family", r.source, r.target),
                );
            } else if r.source.prefix_len() != r.target.prefix_len() {
                out.error(
                    format!("{path}.target"),
                    format!(
                        "prefix length /{} differs from the source's /{}: host parts cannot be kept",
                        r.target.prefix_len(),
                        r.source.prefix_len()
                    ),
                );
            }
            for (field, net) in [("source", r.source), ("target", r.target)] {
                if net.trunc() != net {
                    out.warn(
                        format!("{path}.{field}"),
                        format!("{net} has host bits set; the subnet is {}", net.trunc()),
                    );
                }
            }
            if let Some(gw) = r.gateway {
                if !r.target.contains(&gw) {
                    out.error(
                        format!("{path}.gateway"),
                        format!("gateway {gw} is outside the target subnet {}", r.target),
                    );
                } else if gw == r.target.network()
                    && r.target.prefix_len() < r.target.max_prefix_len() - 1
                {
                    out.error(
                        format!("{path}.gateway"),
                        format!("gateway {gw} is the subnet's network address"),
                    );
                }
            }
            for (j, other) in self.re_ip.iter().enumerate().take(i) {
                if other.source.contains(&r.source.network())
                    || r.source.contains(&other.source.network())
                {
                    out.error(
                        format!("{path}.source"),
                        format!("{} overlaps re_ip.{j}.source {}", r.source, other.source),
                    );
                }
            }
        }
    }

    fn verify_groups<'a>(&'a self, step_ids: &mut BTreeMap<&'a str, String>, out: &mut Issues) {
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, g) in self.groups.iter().enumerate() {
            let path = format!("groups.{i}");
            if !is_valid_id(g.id.as_str()) {
                out.error(format!("{path}.id"), format!("bad group id {:?}: use 1-64 characters a-z 0-9 _ . - starting with a letter or digit", g.id.as_str()));
            } else if let Some(j) = ids.insert(g.id.as_str(), i) {
                out.error(
                    format!("{path}.id"),
                    format!("duplicate group id {:?} (also groups.{j})", g.id.as_str()),
                );
            }
            if g.name.trim().is_empty() {
                out.error(format!("{path}.name"), "the group needs a name");
            } else if let Some(j) = names.insert(g.name.as_str(), i) {
                out.error(
                    format!("{path}.name"),
                    format!("duplicate group name {:?} (also groups.{j})", g.name),
                );
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            let path = format!("groups.{i}");
            verify_group_body(g, &path, out);
            let mut deps = BTreeSet::new();
            for (j, d) in g.depends_on.iter().enumerate() {
                let dpath = format!("{path}.depends_on.{j}");
                if !ids.contains_key(d.as_str()) {
                    out.error(dpath, format!("unknown group {:?}", d.as_str()));
                } else if d == &g.id {
                    out.error(dpath, "a group cannot depend on itself");
                } else if !deps.insert(d.as_str()) {
                    out.warn(dpath, format!("group {:?} is listed twice", d.as_str()));
                }
            }
            for (j, s) in g.pre_steps.iter().enumerate() {
                verify_step(s, &format!("{path}.pre_steps.{j}"), false, step_ids, out);
            }
            for (j, s) in g.post_steps.iter().enumerate() {
                verify_step(s, &format!("{path}.post_steps.{j}"), false, step_ids, out);
            }
        }
        for cycle in self.cycles() {
            let names: Vec<&str> = cycle.iter().map(|&i| self.groups[i].id.as_str()).collect();
            let first = names.first().copied().unwrap_or_default();
            out.error(
                format!(
                    "groups.{}.depends_on",
                    cycle.first().copied().unwrap_or_default()
                ),
                format!("dependency cycle: {} → {first}", names.join(" → ")),
            );
        }
    }

    /// Dependency cycles between groups (self-dependencies excluded), each as the group
    /// indices along the cycle, starting at its lowest index. Deterministic.
    pub(crate) fn cycles(&self) -> Vec<Vec<usize>> {
        let index: BTreeMap<&str, usize> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.id.as_str(), i))
            .collect();
        let edges: Vec<Vec<usize>> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                g.depends_on
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .filter(|&j| j != i)
                    .collect()
            })
            .collect();
        // 0 = unvisited, 1 = on stack, 2 = done
        let mut state = vec![0u8; self.groups.len()];
        let mut found: BTreeSet<Vec<usize>> = BTreeSet::new();
        for start in 0..self.groups.len() {
            if state[start] != 0 {
                continue;
            }
            // Iterative DFS: (node, next edge index)
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if let Some(&to) = edges[node].get(*next) {
                    *next += 1;
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            stack.push((to, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[pos..].iter().map(|&(n, _)| n).collect();
                            // `depends_on` points backwards in run order: reverse so the
                            // cycle reads in run order, then rotate to its lowest index.
                            cycle.reverse();
                            if let Some(min_pos) = cycle
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, n)| **n)
                                .map(|(p, _)| p)
                            {
                                cycle.rotate_left(min_pos);
                            }
                            found.insert(cycle);
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
        found.into_iter().collect()
    }
}

fn verify_group_body(g: &Group, path: &str, out: &mut Issues) {
    if g.parallelism == Some(0) {
        out.error(format!("{path}.parallelism"), "must be at least 1");
    }
    if let Some(c) = &g.connector {
        if c.trim().is_empty() {
            out.error(format!("{path}.connector"), "empty connector instance name");
        }
    } else if !g.vms.is_empty() {
        out.error(
            format!("{path}.connector"),
            "VMs chosen by name need the connector instance they live on",
        );
    }
    if g.vms.is_empty() && g.tags.is_empty() {
        out.warn(
            format!("{path}.vms"),
            "the group selects no VM (neither vms nor tags)",
        );
    }
    let mut seen = BTreeSet::new();
    for (j, vm) in g.vms.iter().enumerate() {
        if vm.trim().is_empty() {
            out.error(format!("{path}.vms.{j}"), "empty VM name");
        } else if !seen.insert(vm.as_str()) {
            out.error(
                format!("{path}.vms.{j}"),
                format!("VM {vm:?} is listed twice"),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (j, t) in g.tags.iter().enumerate() {
        if t.key.trim().is_empty() || t.key.contains('=') {
            out.error(
                format!("{path}.tags.{j}"),
                format!("bad tag key {:?}", t.key),
            );
        } else if !seen.insert(t) {
            out.warn(
                format!("{path}.tags.{j}"),
                format!("tag selector {t} is listed twice"),
            );
        }
    }
    for (j, gate) in g.gates.iter().enumerate() {
        verify_check(gate, &format!("{path}.gates.{j}"), out);
    }
}

fn verify_check(check: &HealthCheck, path: &str, out: &mut Issues) {
    if check.timeout().is_some_and(|t| t.is_zero()) {
        out.error(format!("{path}.timeout"), "must be greater than zero");
    }
    match check {
        HealthCheck::Heartbeat { .. } => {}
        HealthCheck::Tcp { host, port, .. } => {
            if host.trim().is_empty() || host.chars().any(char::is_whitespace) {
                out.error(format!("{path}.host"), format!("bad host {host:?}"));
            }
            if *port == 0 {
                out.error(format!("{path}.port"), "port must be between 1 and 65535");
            }
        }
        HealthCheck::Http {
            url, expect_status, ..
        } => {
            match url::Url::parse(url) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => out.error(
                    format!("{path}.url"),
                    format!("{url:?} is not an http:// or https:// URL"),
                ),
                Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                    out.error(format!("{path}.url"), format!("{url:?} has no host"))
                }
                Ok(_) => {}
                Err(e) => out.error(format!("{path}.url"), format!("bad URL {url:?}: {e}")),
            }
            if !(100..=599).contains(expect_status) {
                out.error(
                    format!("{path}.expect_status"),
                    format!("{expect_status} is not an HTTP status code"),
                );
            }
        }
    }
}

fn verify_step<'a>(
    s: &'a Step,
    path: &str,
    plan_level: bool,
    step_ids: &mut BTreeMap<&'a str, String>,
    out: &mut Issues,
) {
    if !is_valid_id(s.id.as_str()) {
        out.error(format!("{path}.id"), format!("bad step id {:?}: use 1-64 characters a-z 0-9 _ . - starting with a letter or digit", s.id.as_str()));
    } else if let Some(other) = step_ids.insert(s.id.as_str(), path.to_string()) {
        out.error(
            format!("{path}.id"),
            format!("duplicate step id {:?} (also {other})", s.id.as_str()),
        );
    }
    if s.name.trim().is_empty() {
        out.error(format!("{path}.name"), "the step needs a name");
    }
    if s.modes.is_empty() {
        out.error(format!("{path}.modes"), "the step runs in no mode");
    }
    let mut seen = BTreeSet::new();
    for (j, m) in s.modes.iter().enumerate() {
        if !seen.insert(*m) {
            out.warn(
                format!("{path}.modes.{j}"),
                format!("mode {m} is listed twice"),
            );
        }
    }
    if s.timeout.is_some_and(|t| t.is_zero()) {
        out.error(format!("{path}.timeout"), "must be greater than zero");
    }
    if s.retries == 0 && s.retry_backoff.is_some() {
        out.warn(
            format!("{path}.retry_backoff"),
            "has no effect with retries = 0",
        );
    } else if s.retries > 0 && s.retry_backoff.is_some_and(|b| b.is_zero()) {
        out.warn(format!("{path}.retry_backoff"), "retrying without delay");
    }
    if plan_level && s.action.is_per_vm() {
        out.error(
            format!("{path}.action.kind"),
            format!(
                "{} acts on a VM: put it in a group's steps",
                s.action.kind()
            ),
        );
    }
    let apath = format!("{path}.action");
    match &s.action {
        Action::Probe { check } => verify_check(check, &format!("{apath}.check"), out),
        Action::RunScript { component, .. } => {
            if component.trim().is_empty() {
                out.error(format!("{apath}.component"), "empty script id");
            } else if component.contains('/') || component.ends_with(".wasm") {
                out.error(
                    format!("{apath}.component"),
                    format!("{component:?} looks like a file; name an installed script by its id (e.g. \"pg-check\"), installed with `haven plugin install`"),
                );
            }
        }
        Action::RunHostCommand { command, .. } => {
            if command.trim().is_empty() {
                out.error(format!("{apath}.command"), "empty command");
            } else {
                out.warn(
                    format!("{apath}.command"),
                    format!("host command {command:?} runs outside the sandbox and needs the administrator's permission (host commands are off by default)"),
                );
            }
        }
        Action::Notify { channel, message } => {
            if channel.trim().is_empty() {
                out.error(format!("{apath}.channel"), "empty notification channel");
            }
            if message.trim().is_empty() {
                out.warn(format!("{apath}.message"), "empty notification message");
            }
        }
        Action::Approval {
            approvers,
            on_timeout,
            ..
        } => {
            for (j, a) in approvers.iter().enumerate() {
                if a.trim().is_empty() || a == "role:" {
                    out.error(format!("{apath}.approvers.{j}"), "empty approver");
                }
            }
            if s.timeout.is_none() {
                if s.modes.contains(&Mode::Failover) {
                    out.warn(
                        format!("{path}.timeout"),
                        "approval without a timeout in failover mode can stall a disaster recovery indefinitely",
                    );
                }
                if *on_timeout == OnTimeout::Continue {
                    out.warn(
                        format!("{apath}.on_timeout"),
                        "has no effect without a step timeout",
                    );
                }
            }
        }
        Action::ChooseRecoveryPoint
        | Action::StopReplication
        | Action::FinalizeReplication
        | Action::CreateVm
        | Action::ApplyNetwork
        | Action::PowerOn
        | Action::WaitHeartbeat
        | Action::PowerOff
        | Action::DeleteVm => {}
    }
}
