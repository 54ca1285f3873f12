//! # haven-plan: recovery plans as code
//!
//! The plan model of Haven, its canonical TOML format, static verification, a diff by
//! stable ids, and compilation into a deterministic execution graph for one mode. Pure
//! library: no I/O except reading and writing text (in [`cli`]).
//!
//! ```
//! use haven_plan::{Mode, Plan};
//! let plan = Plan::from_toml(r#"
//!     name = "Shop"
//!     rto = "30m"
//!     rpo = "15m"
//!     [[groups]]
//!     name = "Database"
//!     connector = "vcenter-prod"
//!     vms = ["db-01"]
//! "#).unwrap();
//! assert!(plan.verify().iter().all(|i| !i.is_error()));
//! let text = plan.to_toml();
//! assert_eq!(Plan::from_toml(&text).unwrap().to_toml(), text); // exact round trip
//! let graph = plan.compile(Mode::Failover, &Default::default()).unwrap();
//! assert!(!graph.steps.is_empty());
//! ```
//!
//! ## The TOML format
//!
//! Keys are `snake_case`, enumerated values `kebab-case`. Top level: `id`, `name`,
//! `description`, `plan_set`, `rto`, `rpo`, `parallelism`, `recovery_point` (`"latest"`,
//! `{ latest_before = "<RFC 3339>" }` or `{ point = "<id>" }`), then arrays of tables
//! `[[network_map]]` (`production`, `recovery`, `test`), `[[re_ip]]` (`source`, `target`,
//! `gateway`, `dns`), `[[pre_steps]]`, `[[post_steps]]` and `[[groups]]`.
//!
//! A group has `id`, `name`, `description`, `depends_on` (group ids), `parallelism`,
//! `connector`, `vms` (names on `connector`), `tags` (`"key=value"` selectors), and arrays
//! `[[groups.gates]]` (`type = "heartbeat" | "tcp" | "http"`), `[[groups.pre_steps]]`,
//! `[[groups.post_steps]]`.
//!
//! A step has `id`, `name`, `modes` (default: all), `critical` (default `true`),
//! `timeout`, `retries`, `retry_backoff` and an `action` table with a `kind`
//! (see [`Action`]). Durations are humane (`"15m"`, `"1h30m"`, see [`HumanDuration`]).
//!
//! Ids: when a group or step has no `id`, [`Plan::from_toml`] derives one from its name
//! (slug plus a short hash, unique in the plan); [`Plan::to_toml`] writes it, so the ids
//! are stable from then on. [`Plan::to_toml`] output is canonical:
//! `to_toml(from_toml(to_toml(p))) == to_toml(p)` byte for byte, order of groups and
//! steps kept.

#![deny(missing_docs)]

pub mod cli;
mod compile;
mod diff;
mod duration;
mod ids;
mod model;
mod verify;

pub use compile::{ExecutionGraph, Origin, RecoverySettings, StepInstance};
pub use diff::{diff, Change, ChangeKind, GroupChange, PlanDiff, StepChange};
pub use duration::{DurationError, HumanDuration};
pub use ids::{is_valid_id, slug};
pub use model::{
    Action, Group, GroupId, HealthCheck, Mode, NetworkMapping, OnTimeout, Plan, PlanId, ReIpRule,
    RecoveryPoint, Step, StepId, TagSelector, Timestamp, VmRef,
};
pub use verify::{Issue, Severity};

/// Errors of this crate. Every message is one line and names the offending field path
/// (`groups.1.steps.0.timeout: …`) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The TOML text could not be read into a plan.
    #[error("{}", parse_message(path, message, *line))]
    Parse {
        /// Field path, e.g. `groups.1.pre_steps.0.timeout` (empty for syntax errors).
        path: String,
        /// What is wrong.
        message: String,
        /// 1-based line in the input, when known.
        line: Option<usize>,
    },
    /// The plan has verification errors (see [`Plan::verify`]); the first is shown.
    #[error("{} ({} error(s) in total)", issues.first().map(ToString::to_string).unwrap_or_default(), issues.len())]
    Invalid {
        /// The error-severity issues.
        issues: Vec<Issue>,
    },
    /// A group selects VMs by tag and the caller did not resolve it.
    #[error("{path}: group {group} selects VMs by tag but no resolved VM list was given")]
    Unresolved {
        /// Field path of the group (`groups.<n>`).
        path: String,
        /// The group id.
        group: GroupId,
    },
    /// A drill was requested but a network mapping has no isolated test network.
    #[error("{path}.test: drills need an isolated test network for every mapping")]
    NoTestNetwork {
        /// Field path of the mapping (`network_map.<n>`).
        path: String,
    },
}

fn parse_message(path: &str, message: &str, line: Option<usize>) -> String {
    let message = message.trim().replace('\n', " ");
    match (path.is_empty(), line) {
        (true, Some(line)) => format!("line {line}: {message}"),
        (true, None) => message,
        (false, Some(line)) => format!("{path}: {message} (line {line})"),
        (false, None) => format!("{path}: {message}"),
    }
}

/// Lays the serialised document out: nested tables and arrays of tables become
/// `[table]` / `[[array]]` sections, except `action` and `recovery_point`, which stay
/// inline (`action = { kind = "power-on" }`) so that each step reads as one block.
fn layout(table: &mut toml_edit::Table) {
    use toml_edit::{ArrayOfTables, Item, Value};
    for (key, item) in table.iter_mut() {
        if matches!(key.get(), "action" | "recovery_point") {
            continue;
        }
        let taken = std::mem::take(item);
        *item = match taken {
            Item::Value(Value::InlineTable(inline)) => {
                let mut t = inline.into_table();
                layout(&mut t);
                Item::Table(t)
            }
            Item::Value(Value::Array(array))
                if !array.is_empty() && array.iter().all(Value::is_inline_table) =>
            {
                let mut tables = ArrayOfTables::new();
                for value in array {
                    if let Value::InlineTable(inline) = value {
                        let mut t = inline.into_table();
                        layout(&mut t);
                        tables.push(t);
                    }
                }
                Item::ArrayOfTables(tables)
            }
            other => other,
        };
    }
}

/// Renders a deserialisation path as `groups.1.steps.0.timeout`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let parts: Vec<String> = path
        .iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    parts.join(".")
}

impl Plan {
    /// Reads a plan from TOML and assigns ids to groups and steps that have none.
    ///
    /// Unknown keys are errors (typos must not be silently ignored). The error names the
    /// field path of the problem.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|r| {
                text.as_bytes()[..r.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            })
        };
        let de = toml::Deserializer::parse(text).map_err(|e| PlanError::Parse {
            path: String::new(),
            message: e.message().to_string(),
            line: line_of(e.span()),
        })?;
        let mut plan: Plan = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = field_path(e.path());
            let inner = e.into_inner();
            PlanError::Parse {
                path,
                message: inner.message().to_string(),
                line: line_of(inner.span()),
            }
        })?;
        ids::assign_ids(&mut plan);
        Ok(plan)
    }

    /// Writes the plan in canonical TOML form. Reading the result back with
    /// [`Plan::from_toml`] and writing it again yields the same bytes.
    pub fn to_toml(&self) -> String {
        match toml_edit::ser::to_document(self) {
            Ok(mut doc) => {
                layout(doc.as_table_mut());
                doc.to_string()
            }
            Err(e) => format!("# haven-plan: cannot write this plan: {e}\n"),
        }
    }

    /// Assigns ids to the plan, groups and steps that have none (what [`Plan::from_toml`]
    /// does); for plans built or edited in code, e.g. through the API.
    pub fn assign_ids(&mut self) {
        ids::assign_ids(self);
    }

    /// A fingerprint of the plan's content: the SHA-256 (hex) of its canonical TOML.
    /// Any edit changes it, so a readiness check can record the digest it verified and
    /// the plan is unverified again as soon as the digest differs.
    pub fn digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        Sha256::digest(self.to_toml().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The group with this id.
    pub fn group(&self, id: &GroupId) -> Option<&Group> {
        self.groups.iter().find(|g| &g.id == id)
    }
}
