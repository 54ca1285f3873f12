//! The plan model: plans, groups, steps, actions, health checks, networks and re-IP rules.
//!
//! Every type here (de)serialises to the TOML format described in the crate docs. Keys are
//! `snake_case`; enumerated values (actions, modes, check types) are `kebab-case`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::HumanDuration;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether the id is empty (not assigned yet).
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
    };
}

id_type!(
    /// The stable id of a plan (unique per Haven installation).
    PlanId
);
id_type!(
    /// The stable id of a VM group, unique within its plan.
    GroupId
);
id_type!(
    /// The stable id of a step, unique within its plan (across all groups).
    StepId
);

/// A recovery plan: what to recover, in which order, how to check it, and with which
/// targets. See the crate documentation for the TOML form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Stable plan id (`[a-z0-9_.-]`). Derived from `name` on import when absent.
    #[serde(default)]
    pub id: PlanId,
    /// Human name shown in reports and the UI.
    pub name: String,
    /// Free text: purpose, owner, links to runbooks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The plan set this plan belongs to; API tokens and roles are scoped to plan sets.
    #[serde(default = "default_plan_set")]
    pub plan_set: String,
    /// Target recovery time objective: from the start of a failover until the last
    /// group's health gates pass. Required by verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<HumanDuration>,
    /// Target recovery point objective: the maximum acceptable age of the recovery
    /// point used. Required by verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<HumanDuration>,
    /// Maximum number of step instances running at once across the whole plan
    /// (absent: unlimited). Must be at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Which recovery point to restore from: `"latest"` (default),
    /// `{ latest_before = "<RFC 3339 time>" }` or `{ point = "<recovery point id>" }`.
    #[serde(default)]
    pub recovery_point: RecoveryPoint,
    /// Production network → recovery network (and isolated test network for drills).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_map: Vec<NetworkMapping>,
    /// Re-IP rules applied to recovered VMs whose address lies in a rule's `source`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub re_ip: Vec<ReIpRule>,
    /// Steps run once before any group starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_steps: Vec<Step>,
    /// Steps run once after every group has finished (gates passed, post-steps done).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_steps: Vec<Step>,
    /// The VM groups, in the order they are written (the order is kept on export; the
    /// run order comes from `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
}

fn default_plan_set() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

/// The recovery point to restore from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryPoint {
    /// The newest consistent point available when the run starts (TOML: `"latest"`).
    #[default]
    Latest,
    /// The newest point taken strictly before this instant, e.g. to go back before a
    /// ransomware infection (TOML: `{ latest_before = "2026-11-20T03:00:00Z" }`).
    LatestBefore(Timestamp),
    /// A specific recovery point by its id (TOML: `{ point = "rp-2026-11-20-0300" }`).
    Point(String),
}

/// An RFC 3339 timestamp (`2026-11-20T03:00:00Z`, `2026-11-20T04:00:00.5+01:00`), kept as
/// written after validation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(String);

impl Timestamp {
    /// The timestamp text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Timestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if valid_rfc3339(s) {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "bad timestamp {s:?}: expected RFC 3339, e.g. \"2026-11-20T03:00:00Z\""
            ))
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn valid_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days_in_month || hour > 23 || min > 59 || sec > 60 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len()
                && b[i + 3] == b':'
                && digits(i + 1..i + 3).is_some_and(|h| h <= 23)
                && digits(i + 4..i + 6).is_some_and(|m| m <= 59)
        }
        _ => false,
    }
}

/// Maps one production network to its recovery network and to the isolated network used
/// by drills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkMapping {
    /// Network name at the production site (as the connector reports it).
    pub production: String,
    /// Network at the recovery site that failover and migration attach VMs to.
    pub recovery: String,
    /// Isolated network at the recovery site used by drills (`test` mode). Drills are
    /// refused when a mapping has none, so a test can never touch a live network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
}

/// Re-addressing of recovered VMs: an address in `source` keeps its host part and moves
/// into `target` (same prefix length), with a new gateway and DNS servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReIpRule {
    /// Production subnet in CIDR notation, e.g. `10.0.10.0/24`.
    pub source: IpNet,
    /// Recovery subnet in CIDR notation, same prefix length, e.g. `172.16.10.0/24`.
    pub target: IpNet,
    /// Default gateway in the recovery subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// DNS servers for re-addressed VMs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
}

/// A group of VMs recovered together. Groups start when every group in `depends_on` has
/// finished (its health gates passed and post-steps done).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Stable group id, unique within the plan (`[a-z0-9_.-]`). Assigned on import when
    /// absent.
    #[serde(default)]
    pub id: GroupId,
    /// Human name, unique within the plan.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Ids of the groups that must have finished before this group starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<GroupId>,
    /// Maximum number of this group's step instances running at once (absent:
    /// unlimited, subject to the plan's limit). Must be at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Connector instance that `vms` are looked up on (and that resolves `tags`; absent:
    /// every configured connector instance resolves the tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// VMs chosen explicitly by name on `connector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<String>,
    /// Tag selectors `"key=value"`; a VM carrying all of them belongs to the group.
    /// Resolved by connectors at run time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagSelector>,
    /// Health gates that must all pass before dependent groups start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<HealthCheck>,
    /// Steps run once before the group's VMs are processed. Steps whose action is
    /// per-VM (power-on, …) run once for each VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_steps: Vec<Step>,
    /// Steps run once after the group's health gates passed (per-VM actions run per VM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_steps: Vec<Step>,
}

/// A tag selector `key=value` resolved by connectors.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagSelector {
    /// Tag (or category) name.
    pub key: String,
    /// Required value.
    pub value: String,
}

impl fmt::Display for TagSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl FromStr for TagSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Self {
                key: key.trim().to_string(),
                value: value.trim().to_string(),
            }),
            _ => Err(format!("bad tag selector {s:?}: expected \"key=value\"")),
        }
    }
}

impl Serialize for TagSelector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TagSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A health check: used as a group gate and by the `probe` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HealthCheck {
    /// Every VM of the group reports a guest heartbeat (guest tools running).
    Heartbeat {
        /// How long to wait before the gate fails (absent: the engine default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<HumanDuration>,
    },
    /// A TCP connection to `host:port` succeeds.
    Tcp {
        /// Host name or address, as reachable from the recovery site.
        host: String,
        /// TCP port (1–65535).
        port: u16,
        /// How long to keep trying before the gate fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<HumanDuration>,
    },
    /// An HTTP(S) GET of `url` answers with `expect_status`.
    Http {
        /// `http://` or `https://` URL.
        url: String,
        /// Expected status code (default 200).
        #[serde(default = "default_status")]
        expect_status: u16,
        /// How long to keep trying before the gate fails.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<HumanDuration>,
    },
}

fn default_status() -> u16 {
    200
}

impl HealthCheck {
    /// The check's own timeout, if set.
    pub fn timeout(&self) -> Option<HumanDuration> {
        match self {
            Self::Heartbeat { timeout }
            | Self::Tcp { timeout, .. }
            | Self::Http { timeout, .. } => *timeout,
        }
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Heartbeat { .. } => f.write_str("heartbeat"),
            Self::Tcp { host, port, .. } => write!(f, "tcp {host}:{port}"),
            Self::Http {
                url, expect_status, ..
            } => write!(f, "http {url} → {expect_status}"),
        }
    }
}

/// The modes a plan runs in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Drill: recover copies into the isolated test network, then clean them up.
    /// Production and replication are untouched.
    Test,
    /// Disaster failover to the recovery site from the chosen recovery point.
    Failover,
    /// Planned migration: shut production down, final sync, then failover with no data loss.
    Migration,
    /// Failback: shut down at the recovery site, reverse-sync, bring VMs up at production.
    Failback,
    /// Undo a failover or migration: power off and remove the recovered VMs, in reverse
    /// dependency order.
    Undo,
}

impl Mode {
    /// Every mode, in canonical order.
    pub const ALL: [Mode; 5] = [
        Mode::Test,
        Mode::Failover,
        Mode::Migration,
        Mode::Failback,
        Mode::Undo,
    ];

    /// The mode's name as written in plans (`"test"`, `"failover"`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Test => "test",
            Mode::Failover => "failover",
            Mode::Migration => "migration",
            Mode::Failback => "failback",
            Mode::Undo => "undo",
        }
    }

    /// Whether the run is a drill (nothing real is changed).
    pub fn is_test(&self) -> bool {
        matches!(self, Mode::Test)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn all_modes() -> Vec<Mode> {
    Mode::ALL.to_vec()
}

/// A step: one action with its timeout, retry policy, criticality and modes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Stable step id, unique within the plan (`[a-z0-9_.-]`). Assigned on import when
    /// absent.
    #[serde(default)]
    pub id: StepId,
    /// Human name.
    pub name: String,
    /// Modes the step runs in (absent: all modes). An empty list is an error.
    #[serde(default = "all_modes")]
    pub modes: Vec<Mode>,
    /// `true` (default): a failure (after retries) stops the plan. `false`: the failure
    /// is reported and the plan continues.
    #[serde(default = "default_true")]
    pub critical: bool,
    /// Maximum duration of one attempt (absent: the engine's default for the action).
    /// For approvals: how long to wait for an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Additional attempts after a failure (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Delay before the first retry; doubled for each further retry (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<HumanDuration>,
    /// What the step does.
    #[serde(deserialize_with = "deserialize_action")]
    pub action: Action,
}

/// Reads an [`Action`], also rejecting parameters given to actions that take none (serde
/// ignores extra keys next to the tag of a unit variant).
fn deserialize_action<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
    use serde::de::Error as _;
    let value = toml::Value::deserialize(deserializer)?;
    if let toml::Value::Table(table) = &value {
        let kind = table.get("kind").and_then(toml::Value::as_str);
        let unit = [
            Action::ChooseRecoveryPoint,
            Action::StopReplication,
            Action::FinalizeReplication,
            Action::CreateVm,
            Action::ApplyNetwork,
            Action::PowerOn,
            Action::WaitHeartbeat,
            Action::PowerOff,
            Action::DeleteVm,
        ];
        if let Some(kind) = kind.filter(|k| unit.iter().any(|a| a.kind() == *k)) {
            if let Some(extra) = table.keys().find(|k| *k != "kind") {
                return Err(D::Error::custom(format!(
                    "unknown field `{extra}`: action `{kind}` takes no parameters"
                )));
            }
        }
    }
    value
        .try_into()
        .map_err(|e: toml::de::Error| D::Error::custom(e.message()))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What happens when an approval's timeout expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// The approval step fails (default).
    #[default]
    Fail,
    /// The plan continues as if approved.
    Continue,
}

fn is_default_on_timeout(v: &OnTimeout) -> bool {
    *v == OnTimeout::Fail
}

/// A step's action. Written as a table with a `kind` key, e.g.
/// `action = { kind = "power-on" }` or
/// `action = { kind = "notify", channel = "ops", message = "DB is up" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Pick the recovery point according to the plan's `recovery_point` (per VM).
    ChooseRecoveryPoint,
    /// Stop replication of the VM (failover: the production side is gone).
    StopReplication,
    /// Final synchronisation of the VM's replica, then stop (migration, failback).
    FinalizeReplication,
    /// Create or register the VM at the target site from its replica.
    CreateVm,
    /// Attach the VM to the mapped network and apply re-IP rules.
    ApplyNetwork,
    /// Power the VM on.
    PowerOn,
    /// Wait until the VM's guest heartbeat is seen.
    WaitHeartbeat,
    /// Run a health check once (per VM when the check is a heartbeat, otherwise once).
    Probe {
        /// The check to run.
        check: HealthCheck,
    },
    /// Run a WASM component script, sandboxed like plugins.
    RunScript {
        /// Id of an installed script component (`haven plugin install`), e.g.
        /// `pg-check`; see `docs/scripts.md`.
        component: String,
        /// Arguments passed to the script.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
    },
    /// Run a command on the Haven host. Refused unless the administrator enabled host
    /// commands; verification warns about it.
    RunHostCommand {
        /// Program to run (absolute path recommended).
        command: String,
        /// Arguments.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
    },
    /// Send a notification.
    Notify {
        /// Notification channel name as configured in Haven (e.g. `ops-chat`).
        channel: String,
        /// Message text.
        message: String,
    },
    /// Pause until an operator approves (resumes) the run.
    Approval {
        /// Text shown to the operator.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        /// Who may approve: user names or `role:<role>` (empty: any operator of the plan set).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvers: Vec<String>,
        /// What happens when the step's `timeout` expires (default `fail`).
        #[serde(default, skip_serializing_if = "is_default_on_timeout")]
        on_timeout: OnTimeout,
    },
    /// Power the VM off (guest shutdown first).
    PowerOff,
    /// Delete the VM at the target site (cleanup after drills, undo).
    DeleteVm,
}

impl Action {
    /// The action's kind as written in plans (`"power-on"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::ChooseRecoveryPoint => "choose-recovery-point",
            Action::StopReplication => "stop-replication",
            Action::FinalizeReplication => "finalize-replication",
            Action::CreateVm => "create-vm",
            Action::ApplyNetwork => "apply-network",
            Action::PowerOn => "power-on",
            Action::WaitHeartbeat => "wait-heartbeat",
            Action::Probe { .. } => "probe",
            Action::RunScript { .. } => "run-script",
            Action::RunHostCommand { .. } => "run-host-command",
            Action::Notify { .. } => "notify",
            Action::Approval { .. } => "approval",
            Action::PowerOff => "power-off",
            Action::DeleteVm => "delete-vm",
        }
    }

    /// Whether the action acts on one VM, so that it runs once per VM of its group.
    pub fn is_per_vm(&self) -> bool {
        match self {
            Action::ChooseRecoveryPoint
            | Action::StopReplication
            | Action::FinalizeReplication
            | Action::CreateVm
            | Action::ApplyNetwork
            | Action::PowerOn
            | Action::WaitHeartbeat
            | Action::PowerOff
            | Action::DeleteVm => true,
            Action::Probe { check } => matches!(check, HealthCheck::Heartbeat { .. }),
            Action::RunScript { .. }
            | Action::RunHostCommand { .. }
            | Action::Notify { .. }
            | Action::Approval { .. } => false,
        }
    }

    /// Whether the action runs a command on the Haven host (needs the administrator's
    /// permission).
    pub fn is_host_command(&self) -> bool {
        matches!(self, Action::RunHostCommand { .. })
    }
}

/// A VM as resolved by a connector: the connector instance and the VM's name there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmRef {
    /// Connector instance name.
    pub connector: String,
    /// VM name on that connector.
    pub name: String,
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.connector, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        for good in [
            "2026-11-20T03:00:00Z",
            "2024-02-29T23:59:60.123+01:00",
            "2026-01-01t00:00:00-05:30",
        ] {
            assert!(valid_rfc3339(good), "{good}");
        }
        for bad in [
            "",
            "2026-11-20",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-20T03:00:00",
            "2026-11-20T03:00:00.Z",
            "2026-11-20T03:00:00+0100",
            "2026-11-20T03:00:00Zjunk",
            "２０２６-11-20T03:00:00Z",
        ] {
            assert!(!valid_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn tag_selector() {
        assert_eq!(
            "role=db".parse::<TagSelector>().unwrap().to_string(),
            "role=db"
        );
        assert!("role".parse::<TagSelector>().is_err());
        assert!("=db".parse::<TagSelector>().is_err());
    }
}
