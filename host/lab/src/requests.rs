//! Bodies of the API's requests and answers (besides the model itself).

use serde::{Deserialize, Serialize};

use crate::model::{Heartbeat, IpSettings, OpKind, Vm};

fn one() -> u32 {
    1
}

fn default_memory() -> u64 {
    1024
}

/// `POST /vms`: create a VM, or register existing disk images as a new VM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Site name.
    pub site: String,
    /// Name, unique within the site.
    pub name: String,
    /// Host name in the site (round-robin when absent).
    #[serde(default)]
    pub host: Option<String>,
    /// Virtual CPUs (default 1).
    #[serde(default = "one")]
    pub cpus: u32,
    /// Memory in MiB (default 1024).
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Guest OS.
    #[serde(default)]
    pub guest_os: String,
    /// Tags, `key=value` or bare `key`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Boot delay (the lab's default when absent).
    #[serde(default)]
    pub boot_delay_ms: Option<u64>,
    /// Disks.
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    /// NICs.
    #[serde(default)]
    pub nics: Vec<NicRequest>,
}

/// One disk of [`CreateVm`]: either `path` (register an existing image, relative
/// to the lab directory) or `size_bytes` (a new sparse image).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRequest {
    /// Existing raw image to register, relative to the lab directory.
    #[serde(default)]
    pub path: Option<String>,
    /// Size of a new sparse image.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// One NIC of [`CreateVm`] or [`ReconfigureNics`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    /// Network id at the VM's site.
    pub network: String,
    /// MAC to keep (generated, or kept from the NIC at the same position, when absent).
    #[serde(default)]
    pub mac: Option<String>,
    /// Static IP settings (re-IP); kept from the NIC at the same position when absent.
    #[serde(default)]
    pub ip: Option<IpSettings>,
}

/// `POST /vms/{id}/nics`: replace the NICs (matched by position).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconfigureNics {
    /// The NICs.
    pub nics: Vec<NicRequest>,
}

/// How to stop a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Ask the guest (needs a heartbeat).
    #[default]
    Graceful,
    /// Cut the power.
    Hard,
}

/// `POST /vms/{id}/power-off` (an empty body means graceful).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOff {
    /// Graceful or hard.
    #[serde(default)]
    pub mode: StopMode,
}

/// `POST /vms/{id}/snapshots`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Snapshot name.
    pub name: String,
    /// Quiesce the guest (honoured only when it has a heartbeat).
    #[serde(default)]
    pub quiesce: bool,
}

/// `PATCH /vms/{id}`: settings that change at once, without a task.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateVm {
    /// New boot delay.
    #[serde(default)]
    pub boot_delay_ms: Option<u64>,
    /// New tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// `POST /images`: create (or find) a sparse image under `images/`, such as a
/// replica target the block transport writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// File name without extension: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Size; an existing smaller image grows to it.
    pub size_bytes: u64,
}

/// Answer of `POST /images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// Path relative to the lab directory (`images/<name>.img`).
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// `POST /seed`: create many VMs at once, for demos and benchmarks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRequest {
    /// Site name.
    pub site: String,
    /// How many VMs.
    pub count: u32,
    /// Split into this many groups (tag `group=gNN`), default 1.
    #[serde(default = "one")]
    pub groups: u32,
    /// Name prefix (default `vm`): names are `<prefix>-gNN-NNNN`.
    #[serde(default)]
    pub name_prefix: Option<String>,
    /// Size of each VM's one sparse disk (default 1 MiB).
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    /// Extra tags on every VM.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Leave the VMs powered on (default off).
    #[serde(default)]
    pub power_on: bool,
    /// Boot delay of each VM (the lab's default when absent).
    #[serde(default)]
    pub boot_delay_ms: Option<u64>,
}

/// Answer of `POST /seed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    /// Ids of the VMs created, in name order.
    pub vms: Vec<String>,
    /// Time the lab took.
    pub elapsed_ms: u64,
}

/// A VM as the API shows it: the model plus its heartbeat now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    /// The VM.
    #[serde(flatten)]
    pub vm: Vm,
    /// Heartbeat now.
    pub heartbeat: Heartbeat,
}

/// Answer of `GET /vms/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatView {
    /// The VM id.
    pub vm: String,
    /// Heartbeat now.
    pub heartbeat: Heartbeat,
}

/// `POST /faults/fail`: fail the next `count` matching operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailFault {
    /// Only this VM.
    #[serde(default)]
    pub vm: Option<String>,
    /// Only this kind of operation.
    #[serde(default)]
    pub op: Option<OpKind>,
    /// How many (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Error code of the failed tasks (default `injected`).
    #[serde(default)]
    pub code: Option<String>,
}

/// `POST /faults/latency`: add latency to matching operations (0 clears them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyFault {
    /// Only this VM.
    #[serde(default)]
    pub vm: Option<String>,
    /// Only this kind of operation.
    #[serde(default)]
    pub op: Option<OpKind>,
    /// Extra milliseconds.
    pub ms: u64,
}

/// `POST /faults/no-heartbeat`: the VM's guest never (or again) answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoHeartbeatFault {
    /// The VM.
    pub vm: String,
    /// True to silence it, false to restore it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `POST /faults/host-loss`: a site's hosts go down (or come back).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLossFault {
    /// Site name.
    pub site: String,
    /// True: hosts down, VMs powered off, operations fail; false: hosts back.
    #[serde(default = "yes")]
    pub down: bool,
}

/// `POST /faults/random`: fail operations at random, reproducibly from `seed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFault {
    /// Probability 0..=1 (0 turns random faults off).
    pub rate: f64,
    /// Seed (the lab's `--seed` when absent).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Only this kind of operation.
    #[serde(default)]
    pub op: Option<OpKind>,
}

/// One byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Answer of `GET /vms/{id}/disks/{disk}/extents`: the allocated regions of the
/// image (everything else reads as zeros).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extents {
    /// Size of the image.
    pub size_bytes: u64,
    /// Allocated regions, in order.
    pub extents: Vec<Extent>,
}
