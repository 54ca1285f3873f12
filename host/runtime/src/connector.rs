//! [`haven_connector::Connector`] for a plugin instance: the typed, async view
//! the plan engine and the transport use, over [`Runtime::call`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use haven_connector::{
    Capability, Changes, CheckItem, Connector, ConnectorError, ConnectorInfo, DiskDescriptor,
    Heartbeat, JobStatus, Network, NicSpec, Replication, Result, Started, StopMode, TagSelector,
    Vm, VmSnapshot, VmSpec, Volume, VolumeSnapshot,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{RuntimeError, TrapKind};
use crate::runtime::{InstanceState, Runtime};

/// One configured plugin instance, as a [`Connector`].
pub struct PluginConnector {
    runtime: Arc<Runtime>,
    instance: String,
    capabilities: BTreeSet<Capability>,
    granted_dirs: BTreeMap<String, PathBuf>,
}

impl PluginConnector {
    /// The connector of `instance`; fails if it is unknown or unavailable.
    pub fn new(runtime: Arc<Runtime>, instance: &str) -> Result<Self, RuntimeError> {
        let summary = runtime
            .instances()
            .into_iter()
            .find(|i| i.name == instance)
            .ok_or_else(|| RuntimeError::UnknownInstance(instance.into()))?;
        let capabilities = match summary.state {
            InstanceState::Ready { info, .. } => info.capabilities,
            InstanceState::Unavailable { reason } => {
                return Err(RuntimeError::InvalidComponent {
                    plugin: instance.into(),
                    message: format!("instance unavailable: {reason}"),
                })
            }
        };
        let granted_dirs = runtime.granted_dirs(instance)?;
        Ok(Self {
            runtime,
            instance: instance.into(),
            capabilities,
            granted_dirs,
        })
    }

    /// Calls a function that returns `result<T, error>`.
    async fn call<T: DeserializeOwned>(&self, function: &str, args: Value) -> Result<T> {
        let value = self.raw(function, args).await?;
        match value {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("ok") => {
                self.parse(function, map.remove("ok").unwrap_or(Value::Null))
            }
            Value::Object(mut map) if map.len() == 1 && map.contains_key("err") => {
                Err(self.parse(function, map.remove("err").unwrap_or(Value::Null))?)
            }
            other => Err(ConnectorError::Plugin(format!(
                "{}: `{function}` answered {other}, not a result",
                self.instance
            ))),
        }
    }

    async fn raw(&self, function: &str, args: Value) -> Result<Value> {
        self.runtime
            .call(&self.instance, function, &args)
            .await
            .map_err(to_connector_error)
    }

    fn parse<T: DeserializeOwned>(&self, function: &str, value: Value) -> Result<T> {
        serde_json::from_value(value).map_err(|e| {
            ConnectorError::Plugin(format!(
                "{}: unexpected answer from `{function}`: {e}",
                self.instance
            ))
        })
    }
}

/// How a runtime failure looks to the engine.
fn to_connector_error(error: RuntimeError) -> ConnectorError {
    match error {
        RuntimeError::Trapped {
            kind: TrapKind::Timeout,
            ..
        } => ConnectorError::Timeout(error.to_string()),
        RuntimeError::UnknownFunction { function, .. } => ConnectorError::Unsupported(function),
        RuntimeError::BadArguments { field, message, .. } => {
            ConnectorError::InvalidInput { field, message }
        }
        other => ConnectorError::Plugin(other.to_string()),
    }
}

#[async_trait]
impl Connector for PluginConnector {
    fn name(&self) -> &str {
        &self.instance
    }

    fn capabilities(&self) -> &BTreeSet<Capability> {
        &self.capabilities
    }

    fn granted_dir(&self, name: &str) -> Option<PathBuf> {
        self.granted_dirs.get(name).cloned()
    }

    async fn describe(&self) -> Result<ConnectorInfo> {
        let value = self.raw("connector.describe", json!([])).await?;
        self.parse("connector.describe", value)
    }

    async fn check(&self) -> Result<Vec<CheckItem>> {
        self.call("connector.check", json!([])).await
    }

    async fn list_vms(&self) -> Result<Vec<Vm>> {
        self.call("inventory.list-vms", json!([])).await
    }

    async fn get_vm(&self, id: &str) -> Result<Vm> {
        self.call("inventory.get-vm", json!([id])).await
    }

    async fn find_vms(&self, selector: &TagSelector) -> Result<Vec<Vm>> {
        self.call("inventory.find-vms", json!([selector])).await
    }

    async fn list_networks(&self) -> Result<Vec<Network>> {
        self.call("inventory.list-networks", json!([])).await
    }

    async fn poll_job(&self, job: &str) -> Result<JobStatus> {
        self.call("jobs.poll", json!([job])).await
    }

    async fn cancel_job(&self, job: &str) -> Result<()> {
        self.call("jobs.cancel", json!([job])).await
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<Started> {
        self.call("compute.create-vm", json!([spec])).await
    }

    async fn power_on(&self, vm: &str) -> Result<Started> {
        self.call("compute.power-on", json!([vm])).await
    }

    async fn power_off(&self, vm: &str, mode: StopMode) -> Result<Started> {
        self.call("compute.power-off", json!([vm, mode])).await
    }

    async fn reconfigure_nics(&self, vm: &str, nics: &[NicSpec]) -> Result<Started> {
        self.call("compute.reconfigure-nics", json!([vm, nics]))
            .await
    }

    async fn delete_vm(&self, vm: &str) -> Result<Started> {
        self.call("compute.delete-vm", json!([vm])).await
    }

    async fn guest_heartbeat(&self, vm: &str) -> Result<Heartbeat> {
        self.call("compute.guest-heartbeat", json!([vm])).await
    }

    async fn list_snapshots(&self, vm: &str) -> Result<Vec<VmSnapshot>> {
        self.call("vm-snapshots.list-snapshots", json!([vm])).await
    }

    async fn create_snapshot(&self, vm: &str, name: &str, quiesce: bool) -> Result<Started> {
        self.call("vm-snapshots.create-snapshot", json!([vm, name, quiesce]))
            .await
    }

    async fn revert_snapshot(&self, vm: &str, snapshot: &str) -> Result<Started> {
        self.call("vm-snapshots.revert-snapshot", json!([vm, snapshot]))
            .await
    }

    async fn delete_snapshot(&self, vm: &str, snapshot: &str) -> Result<Started> {
        self.call("vm-snapshots.delete-snapshot", json!([vm, snapshot]))
            .await
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.call("storage.list-volumes", json!([])).await
    }

    async fn list_volume_snapshots(&self, volume: &str) -> Result<Vec<VolumeSnapshot>> {
        self.call("storage.list-volume-snapshots", json!([volume]))
            .await
    }

    async fn create_volume_snapshot(&self, volume: &str, name: &str) -> Result<Started> {
        self.call("storage.create-volume-snapshot", json!([volume, name]))
            .await
    }

    async fn delete_volume_snapshot(&self, volume: &str, snapshot: &str) -> Result<Started> {
        self.call("storage.delete-volume-snapshot", json!([volume, snapshot]))
            .await
    }

    async fn clone_volume(
        &self,
        volume: &str,
        snapshot: &str,
        clone_name: &str,
    ) -> Result<Started> {
        self.call(
            "storage.clone-volume",
            json!([volume, snapshot, clone_name]),
        )
        .await
    }

    async fn delete_volume(&self, volume: &str) -> Result<Started> {
        self.call("storage.delete-volume", json!([volume])).await
    }

    async fn list_replications(&self) -> Result<Vec<Replication>> {
        self.call("storage.list-replications", json!([])).await
    }

    async fn update_replication(&self, replication: &str) -> Result<Started> {
        self.call("storage.update-replication", json!([replication]))
            .await
    }

    async fn break_replication(&self, replication: &str) -> Result<Started> {
        self.call("storage.break-replication", json!([replication]))
            .await
    }

    async fn resync_replication(&self, replication: &str, reverse: bool) -> Result<Started> {
        self.call("storage.resync-replication", json!([replication, reverse]))
            .await
    }

    async fn open_disk(&self, vm: &str, disk: &str, point: Option<&str>) -> Result<DiskDescriptor> {
        self.call("disk-access.open-disk", json!([vm, disk, point]))
            .await
    }

    async fn open_target(&self, name: &str, capacity_bytes: u64) -> Result<DiskDescriptor> {
        self.call("disk-access.open-target", json!([name, capacity_bytes]))
            .await
    }

    async fn changed_extents(&self, session: &str, since: Option<&str>) -> Result<Changes> {
        self.call("disk-access.changed-extents", json!([session, since]))
            .await
    }

    async fn close_disk(&self, session: &str) -> Result<()> {
        self.call("disk-access.close-disk", json!([session])).await
    }
}
