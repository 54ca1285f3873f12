//! Rust forms of the WIT contract's types. Field and case names follow the
//! contract (serde kebab-case), so values convert to and from the plugin
//! runtime's JSON without glue.

use serde::{Deserialize, Serialize};

/// `Result` with a [`ConnectorError`].
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// A capability: one exported interface of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Identity, configuration and health.
    Connector,
    /// Polling of long operations.
    Jobs,
    /// VMs and networks.
    Inventory,
    /// Create, power, re-network, delete VMs.
    Compute,
    /// VM snapshots.
    VmSnapshots,
    /// Array volumes, snapshots, clones, replication.
    Storage,
    /// Descriptors of disk bytes.
    DiskAccess,
}

impl Capability {
    /// Every capability of the contract.
    pub const ALL: [Capability; 7] = [
        Capability::Connector,
        Capability::Jobs,
        Capability::Inventory,
        Capability::Compute,
        Capability::VmSnapshots,
        Capability::Storage,
        Capability::DiskAccess,
    ];

    /// The interface name in WIT (`vm-snapshots`).
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Connector => "connector",
            Capability::Jobs => "jobs",
            Capability::Inventory => "inventory",
            Capability::Compute => "compute",
            Capability::VmSnapshots => "vm-snapshots",
            Capability::Storage => "storage",
            Capability::DiskAccess => "disk-access",
        }
    }

    /// The capability whose interface is `name`.
    pub fn from_interface(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.interface() == name)
    }
}

/// A connector's failure: the contract's typed error, plus the ways a call
/// can fail before the connector answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", rename_all_fields = "kebab-case")]
pub enum ConnectorError {
    /// Credentials were refused or have expired.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The named object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument or setting is wrong.
    #[error("invalid input in `{field}`: {message}")]
    InvalidInput {
        /// The field at fault, as a dotted path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The object's state forbids the operation.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A passing failure; retry, after `retry_after_ms` when given.
    #[error("transient failure: {message}")]
    Transient {
        /// What failed.
        message: String,
        /// How long to wait before retrying.
        retry_after_ms: Option<u64>,
    },
    /// The connector cannot do this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The system, or the plugin, did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Anything else the connector reported.
    #[error("{0}")]
    Other(String),
    /// The plugin failed before answering (crashed, ran out of memory, was
    /// misconfigured); the host discarded the instance.
    #[serde(skip)]
    #[error("plugin failure: {0}")]
    Plugin(String),
}

impl ConnectorError {
    /// Whether repeating the call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transient { .. } | Self::Timeout(_) | Self::Plugin(_)
        )
    }
}

/// A label: `key=value`, or a bare `key` (empty value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
}

/// A byte range of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// A long operation's start: a job to poll, or already done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Started {
    /// Poll this job id.
    Job(String),
    /// Complete already.
    Done,
}

/// One setting a connector takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SettingSpec {
    /// Key.
    pub key: String,
    /// Meaning.
    pub description: String,
    /// Whether it must be given.
    pub required: bool,
    /// Default value.
    pub default_value: Option<String>,
}

/// What a connector is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorInfo {
    /// Vendor system.
    pub system: String,
    /// Description.
    pub description: String,
    /// Settings it takes.
    pub settings: Vec<SettingSpec>,
}

/// One line of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckItem {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details.
    pub detail: String,
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Still running.
    Running(JobProgress),
    /// Finished; the id of what it produced, if any.
    Succeeded(Option<String>),
    /// Finished with an error.
    Failed(ConnectorError),
}

/// Progress of a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Percent done, when known.
    pub percent: Option<u8>,
    /// Status line.
    pub message: String,
}

/// Power state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    /// Running.
    PoweredOn,
    /// Stopped.
    PoweredOff,
    /// Suspended.
    Suspended,
    /// Not known.
    Unknown,
}

/// A VM disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskInfo {
    /// Stable id within the VM.
    pub id: String,
    /// Label.
    pub label: String,
    /// Size in bytes.
    pub capacity_bytes: u64,
}

/// A VM network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    /// Stable id within the VM.
    pub id: String,
    /// Network name.
    pub network: String,
    /// MAC address.
    pub mac: Option<String>,
    /// Guest-reported addresses.
    pub ips: Vec<String>,
}

/// A virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Vm {
    /// Stable id, never reused.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Power state.
    pub power_state: PowerState,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest OS.
    pub guest_os: String,
    /// Location path.
    pub location: String,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Disks.
    pub disks: Vec<DiskInfo>,
    /// NICs.
    pub nics: Vec<NicInfo>,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Whether it has no route out (drills).
    pub isolated: bool,
}

/// Tags that must all be present (empty value: any value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TagSelector {
    /// Conditions.
    pub all_of: Vec<Tag>,
}

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopMode {
    /// Guest shutdown.
    Graceful,
    /// Power cut.
    Hard,
}

/// Static IP settings (re-IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpSettings {
    /// Address with prefix (`10.2.0.15/24`).
    pub address: String,
    /// Gateway.
    pub gateway: Option<String>,
    /// DNS servers.
    pub dns_servers: Vec<String>,
}

/// A NIC of a VM being created or re-mapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// Target network id.
    pub network: String,
    /// MAC to keep.
    pub mac: Option<String>,
    /// Static IP settings.
    pub ip: Option<IpSettings>,
}

/// A disk of a VM being created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskSpec {
    /// Where the bytes are.
    pub location: DiskLocation,
    /// Size in bytes.
    pub capacity_bytes: u64,
}

/// A VM to create at the recovery site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmSpec {
    /// Name.
    pub name: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest OS.
    pub guest_os: String,
    /// Placement.
    pub location: String,
    /// Disks.
    pub disks: Vec<DiskSpec>,
    /// NICs.
    pub nics: Vec<NicSpec>,
}

/// A guest's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Heartbeat {
    /// Regular.
    Ok,
    /// Irregular.
    Degraded,
    /// Absent.
    None,
}

/// A VM snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmSnapshot {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
    /// Whether quiesced.
    pub quiesced: bool,
}

/// How the transport authenticates to a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Credential {
    /// None needed.
    None,
    /// Headers minted by the plugin.
    Headers(Vec<Header>),
    /// Name of a secret bound to the instance.
    Secret(String),
}

/// An HTTP header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Where disk bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskLocation {
    /// A file in a granted directory.
    File(FileLocation),
    /// An NBD export.
    Nbd(NbdLocation),
    /// An HTTPS byte-range URL.
    HttpsRange(HttpsLocation),
    /// An Azure page blob.
    AzurePageBlob(AzureBlobLocation),
}

/// A file in a granted directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileLocation {
    /// Name of the granted directory.
    pub granted_dir: String,
    /// Relative path.
    pub path: String,
    /// `raw` or `qcow2`.
    pub format: String,
}

/// An NBD export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NbdLocation {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Export name.
    pub export_name: String,
    /// Whether TLS is required.
    pub tls: bool,
}

/// An HTTPS byte-range resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsLocation {
    /// URL.
    pub url: String,
    /// Credential.
    pub credential: Credential,
}

/// An Azure page blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AzureBlobLocation {
    /// Account endpoint.
    pub account_url: String,
    /// Container.
    pub container: String,
    /// Blob.
    pub blob: String,
    /// Snapshot id.
    pub snapshot: Option<String>,
    /// Credential.
    pub credential: Credential,
}

/// An opened disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiskDescriptor {
    /// Session id.
    pub session: String,
    /// Location of the bytes.
    pub location: DiskLocation,
    /// Size in bytes.
    pub capacity_bytes: u64,
    /// Whether writable.
    pub writable: bool,
}

/// Changed regions and the change id naming now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Changes {
    /// Regions that may differ.
    pub extents: Vec<Extent>,
    /// Pass as `since` next time.
    pub change_id: String,
}

/// An array volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Volume {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Used bytes.
    pub used_bytes: u64,
}

/// A volume snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct VolumeSnapshot {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created_unix: u64,
}

/// State of an array replication relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationState {
    /// Replicating.
    Mirrored,
    /// Paused.
    Quiesced,
    /// Destination writable (after failover).
    BrokenOff,
    /// Never transferred.
    Uninitialized,
}

/// An array replication relationship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Replication {
    /// Id.
    pub id: String,
    /// `svm:volume` of the source.
    pub source: String,
    /// `svm:volume` of the destination.
    pub destination: String,
    /// State.
    pub state: ReplicationState,
    /// Seconds behind.
    pub lag_seconds: Option<u64>,
    /// Health.
    pub healthy: bool,
}
