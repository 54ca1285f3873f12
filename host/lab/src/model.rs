//! The lab's persisted state: sites, VMs, tasks and faults, as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::faults::Faults;

/// Power state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// Running.
    On,
    /// Stopped.
    Off,
}

/// What a VM's guest agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Heartbeat {
    /// The guest has booted and answers.
    Ok,
    /// No answer: powered off, still booting, host down, or an injected fault.
    None,
}

/// A hypervisor host of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Name, unique in the lab (`prod-host-1`).
    pub name: String,
    /// False after an injected host loss.
    pub up: bool,
}

/// A network VMs attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Id, unique in the lab (`prod-net`, `dr-test`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// The site it belongs to.
    pub site: String,
    /// Isolated (no route out): the drill network.
    pub isolated: bool,
}

/// A site: hosts and networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Name (`prod`, `dr`).
    pub name: String,
    /// Its hosts.
    pub hosts: Vec<Host>,
    /// Its networks: `<site>-net` and the isolated `<site>-test`.
    pub networks: Vec<Network>,
}

impl Site {
    /// A site with `hosts` hosts, a production network and an isolated test network.
    pub fn new(name: &str, hosts: u32) -> Self {
        Self {
            name: name.to_owned(),
            hosts: (1..=hosts.max(1))
                .map(|i| Host {
                    name: format!("{name}-host-{i}"),
                    up: true,
                })
                .collect(),
            networks: vec![
                Network {
                    id: format!("{name}-net"),
                    name: format!("{name} production"),
                    site: name.to_owned(),
                    isolated: false,
                },
                Network {
                    id: format!("{name}-test"),
                    name: format!("{name} isolated test"),
                    site: name.to_owned(),
                    isolated: true,
                },
            ],
        }
    }

    /// Whether its hosts are up (no injected host loss).
    pub fn is_up(&self) -> bool {
        self.hosts.iter().any(|h| h.up)
    }
}

/// A virtual disk: a raw sparse image file in the lab directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Id within the VM (`disk-0`).
    pub id: String,
    /// Path of the image, relative to the lab directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Whether the lab created the file (and deletes it with the VM); false
    /// for a registered image, which deleting the VM leaves in place.
    pub owned: bool,
}

/// Static IP settings of a NIC (re-IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSettings {
    /// Address with prefix length (`10.2.0.15/24`).
    pub address: String,
    /// Default gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// DNS servers.
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Id within the VM (`nic-0`).
    pub id: String,
    /// Network id.
    pub network: String,
    /// MAC address, lower-case, colon-separated.
    pub mac: String,
    /// IP addresses (without prefix length).
    pub ips: Vec<String>,
    /// Static settings, when set.
    #[serde(default)]
    pub ip: Option<IpSettings>,
}

/// A VM snapshot: copies of the VM's disk images at a point in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Id, unique in the lab (`snap-7`).
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Whether the guest was quiesced (only when it was running with a heartbeat).
    pub quiesced: bool,
    /// Image paths (relative to the lab directory) by disk id.
    pub disks: BTreeMap<String, String>,
}

/// A virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Id, never reused (`vm-42`).
    pub id: String,
    /// Display name, unique within its site.
    pub name: String,
    /// Site name.
    pub site: String,
    /// Host name.
    pub host: String,
    /// Power state.
    pub power: Power,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest OS.
    pub guest_os: String,
    /// Tags, `key=value` or bare `key`.
    pub tags: Vec<String>,
    /// Disks.
    pub disks: Vec<Disk>,
    /// NICs.
    pub nics: Vec<Nic>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Time from power-on to the first heartbeat, in milliseconds.
    pub boot_delay_ms: u64,
    /// When the VM was last powered on (Unix ms).
    #[serde(default)]
    pub powered_on_unix_ms: Option<u64>,
    /// The task working on the VM, if any (operations are serialised per VM).
    #[serde(default)]
    pub busy: Option<String>,
    /// True until its create task succeeds (hidden from listings meanwhile).
    #[serde(default)]
    pub creating: bool,
}

/// Kinds of operations, for tasks and fault rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Create or register a VM.
    CreateVm,
    /// Power on.
    PowerOn,
    /// Power off (graceful or hard).
    PowerOff,
    /// Network mapping and re-IP.
    ReconfigureNics,
    /// Delete a VM.
    DeleteVm,
    /// Take a snapshot.
    SnapshotCreate,
    /// Revert to a snapshot.
    SnapshotRevert,
    /// Delete a snapshot.
    SnapshotDelete,
}

impl OpKind {
    /// The kind's name in the API (`power-on`).
    pub fn name(self) -> &'static str {
        match self {
            OpKind::CreateVm => "create-vm",
            OpKind::PowerOn => "power-on",
            OpKind::PowerOff => "power-off",
            OpKind::ReconfigureNics => "reconfigure-nics",
            OpKind::DeleteVm => "delete-vm",
            OpKind::SnapshotCreate => "snapshot-create",
            OpKind::SnapshotRevert => "snapshot-revert",
            OpKind::SnapshotDelete => "snapshot-delete",
        }
    }
}

/// The pending effect of a running task, applied when it completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Create the VM's owned disk files and make it visible.
    CreateVm,
    /// Power on.
    PowerOn,
    /// Power off.
    PowerOff {
        /// Cut the power rather than ask the guest.
        hard: bool,
    },
    /// Replace the NICs.
    ReconfigureNics {
        /// The new NICs.
        nics: Vec<Nic>,
    },
    /// Delete the VM (and its owned disks and snapshots).
    DeleteVm,
    /// Copy the disks into a snapshot.
    SnapshotCreate {
        /// The snapshot to create (id allocated at submission).
        snapshot: Snapshot,
    },
    /// Copy a snapshot's images back over the disks.
    SnapshotRevert {
        /// Snapshot id.
        snapshot: String,
    },
    /// Remove a snapshot's images.
    SnapshotDelete {
        /// Snapshot id.
        snapshot: String,
    },
}

impl Op {
    /// The kind of operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::CreateVm => OpKind::CreateVm,
            Op::PowerOn => OpKind::PowerOn,
            Op::PowerOff { .. } => OpKind::PowerOff,
            Op::ReconfigureNics { .. } => OpKind::ReconfigureNics,
            Op::DeleteVm => OpKind::DeleteVm,
            Op::SnapshotCreate { .. } => OpKind::SnapshotCreate,
            Op::SnapshotRevert { .. } => OpKind::SnapshotRevert,
            Op::SnapshotDelete { .. } => OpKind::SnapshotDelete,
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Still working.
    Running,
    /// Done; `result` names the object produced.
    Succeeded,
    /// Done with `error`.
    Failed,
}

/// An asynchronous operation, like a vCenter task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Id, never reused (`task-12`).
    pub id: String,
    /// The operation.
    pub kind: OpKind,
    /// The VM it works on.
    pub vm: String,
    /// State.
    pub state: TaskState,
    /// Percent done (100 once finished).
    pub percent: u8,
    /// The object produced (VM id, snapshot id), on success.
    #[serde(default)]
    pub result: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<ApiError>,
    /// Start time (Unix ms).
    pub started_unix_ms: u64,
    /// When it is due to finish (Unix ms); its completion time once finished.
    pub ends_unix_ms: u64,
    /// The effect to apply on completion (absent once finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    /// An injected failure decided at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<ApiError>,
}

/// Everything the lab persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Last VM number handed out (ids are never reused).
    pub last_vm: u64,
    /// Last task number handed out.
    pub last_task: u64,
    /// Last snapshot number handed out.
    pub last_snapshot: u64,
    /// Sites by name.
    pub sites: BTreeMap<String, Site>,
    /// VMs by number.
    pub vms: BTreeMap<u64, Vm>,
    /// Tasks by number (the oldest finished ones are pruned).
    pub tasks: BTreeMap<u64, Task>,
    /// Injected faults.
    pub faults: Faults,
    /// The highest fencing token (`haven-fence` header) a mutating request
    /// carried; requests with a lower one come from a deposed primary.
    #[serde(default)]
    pub highest_fence: u64,
}

/// The number in an id such as `vm-42`.
pub fn id_number(id: &str, prefix: &str) -> Option<u64> {
    id.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

/// A locally administered MAC address derived from a VM number and NIC index.
pub fn mac_for(vm: u64, nic: usize) -> String {
    let b = vm.to_be_bytes();
    format!(
        "02:1a:{:02x}:{:02x}:{:02x}:{:02x}",
        b[5],
        b[6],
        b[7],
        (nic & 0xff) as u8
    )
}
