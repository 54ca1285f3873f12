//! # haven-connector
//!
//! The boundary between Haven's core (plan engine, block transport, API) and
//! the systems it drives. The core sees a [`Connector`]: typed, async, and
//! free of wasmtime. The plugin runtime implements it for WebAssembly plugins
//! (`haven_plugin_runtime::PluginConnector`); simulations and dry runs
//! implement it directly.
//!
//! The types mirror the WIT contract `haven:connector@0.1.0` one to one, and
//! their serde form is the JSON form the plugin runtime speaks (kebab-case
//! field names, variants as `"case"` or `{"case": payload}`).

pub mod fence;
pub mod files;
mod types;

pub use types::*;

use std::collections::BTreeSet;
use std::path::PathBuf;

use async_trait::async_trait;

/// What a connector plugin instance can do. Each method belongs to one
/// capability; calling one the connector lacks returns
/// [`ConnectorError::Unsupported`].
#[async_trait]
pub trait Connector: Send + Sync {
    /// The instance's name (`vc-prod`), for logs and journals.
    fn name(&self) -> &str;

    /// The capabilities the connector exports.
    fn capabilities(&self) -> &BTreeSet<Capability>;

    /// The host directory the administrator granted the instance under
    /// `name`, which disk `file` descriptors are relative to (not part of the
    /// WIT contract: plugins never see host paths). Default: none granted.
    /// [`files::host_path`] resolves a descriptor safely.
    fn granted_dir(&self, name: &str) -> Option<PathBuf> {
        let _ = name;
        None
    }

    /// What the connector is and which settings it takes.
    async fn describe(&self) -> Result<ConnectorInfo>;
    /// Checks reachability and credentials.
    async fn check(&self) -> Result<Vec<CheckItem>>;

    /// Every VM visible to the instance.
    async fn list_vms(&self) -> Result<Vec<Vm>>;
    /// One VM by id.
    async fn get_vm(&self, id: &str) -> Result<Vm>;
    /// VMs matching a tag selector.
    async fn find_vms(&self, selector: &TagSelector) -> Result<Vec<Vm>>;
    /// Networks VMs can attach to.
    async fn list_networks(&self) -> Result<Vec<Network>>;

    /// Status of a long operation.
    async fn poll_job(&self, job: &str) -> Result<JobStatus>;
    /// Cancels a long operation.
    async fn cancel_job(&self, job: &str) -> Result<()>;

    /// Creates or registers a VM from a spec.
    async fn create_vm(&self, spec: &VmSpec) -> Result<Started>;
    /// Powers a VM on.
    async fn power_on(&self, vm: &str) -> Result<Started>;
    /// Powers a VM off.
    async fn power_off(&self, vm: &str, mode: StopMode) -> Result<Started>;
    /// Network mapping and re-IP.
    async fn reconfigure_nics(&self, vm: &str, nics: &[NicSpec]) -> Result<Started>;
    /// Deletes a VM.
    async fn delete_vm(&self, vm: &str) -> Result<Started>;
    /// The guest's heartbeat.
    async fn guest_heartbeat(&self, vm: &str) -> Result<Heartbeat>;

    /// Snapshots of a VM.
    async fn list_snapshots(&self, vm: &str) -> Result<Vec<VmSnapshot>>;
    /// Takes a VM snapshot.
    async fn create_snapshot(&self, vm: &str, name: &str, quiesce: bool) -> Result<Started>;
    /// Reverts a VM to a snapshot (undo).
    async fn revert_snapshot(&self, vm: &str, snapshot: &str) -> Result<Started>;
    /// Deletes a VM snapshot.
    async fn delete_snapshot(&self, vm: &str, snapshot: &str) -> Result<Started>;

    /// Array volumes.
    async fn list_volumes(&self) -> Result<Vec<Volume>>;
    /// Snapshots of a volume.
    async fn list_volume_snapshots(&self, volume: &str) -> Result<Vec<VolumeSnapshot>>;
    /// Takes a volume snapshot.
    async fn create_volume_snapshot(&self, volume: &str, name: &str) -> Result<Started>;
    /// Deletes a volume snapshot.
    async fn delete_volume_snapshot(&self, volume: &str, snapshot: &str) -> Result<Started>;
    /// Clones a volume at a snapshot (drills).
    async fn clone_volume(&self, volume: &str, snapshot: &str, clone_name: &str)
        -> Result<Started>;
    /// Deletes a volume.
    async fn delete_volume(&self, volume: &str) -> Result<Started>;
    /// Array replication relationships.
    async fn list_replications(&self) -> Result<Vec<Replication>>;
    /// Transfers now (final sync).
    async fn update_replication(&self, replication: &str) -> Result<Started>;
    /// Makes the destination writable (failover).
    async fn break_replication(&self, replication: &str) -> Result<Started>;
    /// Re-establishes, or reverses, the relationship.
    async fn resync_replication(&self, replication: &str, reverse: bool) -> Result<Started>;

    /// Opens a VM disk for the transport to read.
    async fn open_disk(&self, vm: &str, disk: &str, point: Option<&str>) -> Result<DiskDescriptor>;
    /// Opens (creating) a replica disk for the transport to write.
    async fn open_target(&self, name: &str, capacity_bytes: u64) -> Result<DiskDescriptor>;
    /// Regions changed since a change id.
    async fn changed_extents(&self, session: &str, since: Option<&str>) -> Result<Changes>;
    /// Releases a disk session.
    async fn close_disk(&self, session: &str) -> Result<()>;
}
