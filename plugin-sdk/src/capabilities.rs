//! One trait per exported capability of `haven:connector@0.1.0`, and the macros
//! that export a type implementing them as a component.
//!
//! Every function except those of [`Connector`] has a default: most answer
//! `unsupported`, and a few derive from others (`get_vm` and `find_vms` search
//! `list_vms`). Implement what your system can do; the rest stays correct.

use crate::error::{not_found, unsupported};
use crate::types::*;
use crate::Result;

/// Identity, configuration and health. Every connector implements it.
pub trait Connector {
    /// What the connector is and which settings it takes. Needs no network.
    fn describe() -> ConnectorInfo;
    /// Receives the administrator's settings; called on every fresh instance.
    fn configure(settings: Vec<Setting>) -> Result<()>;
    /// Checks that the system answers and the credentials work.
    fn check() -> Result<Vec<CheckItem>>;
}

/// Read-only inventory of VMs and networks.
pub trait Inventory {
    /// Every VM this instance can see.
    fn list_vms() -> Result<Vec<Vm>> {
        Err(unsupported("inventory.list-vms"))
    }
    /// One VM by id; by default searches [`Inventory::list_vms`].
    fn get_vm(id: String) -> Result<Vm> {
        Self::list_vms()?
            .into_iter()
            .find(|vm| vm.id == id)
            .ok_or_else(|| not_found(format!("VM {id}")))
    }
    /// The VMs whose tags match; by default filters [`Inventory::list_vms`].
    fn find_vms(selector: TagSelector) -> Result<Vec<Vm>> {
        Ok(Self::list_vms()?
            .into_iter()
            .filter(|vm| matches_tags(&vm.tags, &selector))
            .collect())
    }
    /// Networks VMs can attach to.
    fn list_networks() -> Result<Vec<Network>> {
        Err(unsupported("inventory.list-networks"))
    }
}

/// A tag written `key=value`, or a bare `key` (empty value).
pub fn parse_tag(text: &str) -> Tag {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// Whether `tags` satisfy every condition of `selector` (an empty value
/// matches any value of the key).
pub fn matches_tags(tags: &[Tag], selector: &TagSelector) -> bool {
    selector.all_of.iter().all(|want| {
        tags.iter()
            .any(|t| t.key == want.key && (want.value.is_empty() || t.value == want.value))
    })
}

/// Polling of long operations.
pub trait Jobs {
    /// Status of a job started by another capability.
    fn poll(job: JobId) -> Result<JobStatus> {
        Err(not_found(format!("job {job}")))
    }
    /// Cancels a job.
    fn cancel(job: JobId) -> Result<()> {
        let _ = job;
        Err(unsupported("jobs.cancel"))
    }
}

/// Creating, powering, re-networking and deleting VMs.
#[allow(unused_variables)]
pub trait Compute {
    /// Creates or registers a VM from a replica.
    fn create_vm(spec: VmSpec) -> Result<Started> {
        Err(unsupported("compute.create-vm"))
    }
    /// Powers a VM on.
    fn power_on(vm: String) -> Result<Started> {
        Err(unsupported("compute.power-on"))
    }
    /// Powers a VM off.
    fn power_off(vm: String, mode: StopMode) -> Result<Started> {
        Err(unsupported("compute.power-off"))
    }
    /// Network mapping and re-IP.
    fn reconfigure_nics(vm: String, nics: Vec<NicSpec>) -> Result<Started> {
        Err(unsupported("compute.reconfigure-nics"))
    }
    /// Deletes a VM and its disks.
    fn delete_vm(vm: String) -> Result<Started> {
        Err(unsupported("compute.delete-vm"))
    }
    /// The guest's heartbeat.
    fn guest_heartbeat(vm: String) -> Result<Heartbeat> {
        Err(unsupported("compute.guest-heartbeat"))
    }
}

/// VM snapshots and checkpoints.
#[allow(unused_variables)]
pub trait VmSnapshots {
    /// Snapshots of a VM, oldest first.
    fn list_snapshots(vm: String) -> Result<Vec<VmSnapshot>> {
        Err(unsupported("vm-snapshots.list-snapshots"))
    }
    /// Takes a snapshot.
    fn create_snapshot(vm: String, name: String, quiesce: bool) -> Result<Started> {
        Err(unsupported("vm-snapshots.create-snapshot"))
    }
    /// Reverts to a snapshot.
    fn revert_snapshot(vm: String, snapshot: String) -> Result<Started> {
        Err(unsupported("vm-snapshots.revert-snapshot"))
    }
    /// Deletes a snapshot.
    fn delete_snapshot(vm: String, snapshot: String) -> Result<Started> {
        Err(unsupported("vm-snapshots.delete-snapshot"))
    }
}

/// Array volumes, snapshots, clones and replication.
#[allow(unused_variables)]
pub trait Storage {
    /// Volumes of the array (or SVM).
    fn list_volumes() -> Result<Vec<Volume>> {
        Err(unsupported("storage.list-volumes"))
    }
    /// Snapshots of a volume.
    fn list_volume_snapshots(volume: String) -> Result<Vec<VolumeSnapshot>> {
        Err(unsupported("storage.list-volume-snapshots"))
    }
    /// Takes a volume snapshot.
    fn create_volume_snapshot(volume: String, name: String) -> Result<Started> {
        Err(unsupported("storage.create-volume-snapshot"))
    }
    /// Deletes a volume snapshot.
    fn delete_volume_snapshot(volume: String, snapshot: String) -> Result<Started> {
        Err(unsupported("storage.delete-volume-snapshot"))
    }
    /// Clones a volume at a snapshot.
    fn clone_volume(volume: String, snapshot: String, clone_name: String) -> Result<Started> {
        Err(unsupported("storage.clone-volume"))
    }
    /// Deletes a volume.
    fn delete_volume(volume: String) -> Result<Started> {
        Err(unsupported("storage.delete-volume"))
    }
    /// Replication relationships.
    fn list_replications() -> Result<Vec<Replication>> {
        Err(unsupported("storage.list-replications"))
    }
    /// Transfers now.
    fn update_replication(replication: String) -> Result<Started> {
        Err(unsupported("storage.update-replication"))
    }
    /// Makes the destination writable.
    fn break_replication(replication: String) -> Result<Started> {
        Err(unsupported("storage.break-replication"))
    }
    /// Re-establishes (or reverses) the relationship.
    fn resync_replication(replication: String, reverse: bool) -> Result<Started> {
        Err(unsupported("storage.resync-replication"))
    }
}

/// Descriptors of disk bytes for the native transport.
#[allow(unused_variables)]
pub trait DiskAccess {
    /// Opens a VM disk for reading.
    fn open_disk(vm: String, disk: String, point: Option<String>) -> Result<DiskDescriptor> {
        Err(unsupported("disk-access.open-disk"))
    }
    /// Opens a replica disk for writing.
    fn open_target(name: String, capacity_bytes: u64) -> Result<DiskDescriptor> {
        Err(unsupported("disk-access.open-target"))
    }
    /// Changed regions since a change id.
    fn changed_extents(session: String, since: Option<String>) -> Result<Changes> {
        Err(unsupported("disk-access.changed-extents"))
    }
    /// Releases a session.
    fn close_disk(session: String) -> Result<()> {
        Err(unsupported("disk-access.close-disk"))
    }
}

/// Implements a world's generated `Guest` trait for `$exports` by forwarding to
/// the SDK trait implemented by `$t`.
#[doc(hidden)]
#[macro_export]
macro_rules! __forward {
    ($guest:path => $sdk:path, $t:ty, $exports:ident { $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* }) => {
        impl $guest for $exports {
            $(fn $name($($arg: $ty),*) -> $ret { <$t as $sdk>::$name($($arg),*) })*
        }
    };
}

/// Forwards one capability interface of world `$world`.
#[doc(hidden)]
#[macro_export]
macro_rules! __capability {
    (connector, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::connector::Guest => $crate::Connector, $t, $e {
            fn describe() -> $crate::types::ConnectorInfo;
            fn configure(settings: ::std::vec::Vec<$crate::types::Setting>) -> $crate::Result<()>;
            fn check() -> $crate::Result<::std::vec::Vec<$crate::types::CheckItem>>;
        });
    };
    (inventory, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::inventory::Guest => $crate::Inventory, $t, $e {
            fn list_vms() -> $crate::Result<::std::vec::Vec<$crate::types::Vm>>;
            fn get_vm(id: ::std::string::String) -> $crate::Result<$crate::types::Vm>;
            fn find_vms(selector: $crate::types::TagSelector) -> $crate::Result<::std::vec::Vec<$crate::types::Vm>>;
            fn list_networks() -> $crate::Result<::std::vec::Vec<$crate::types::Network>>;
        });
    };
    (jobs, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::jobs::Guest => $crate::Jobs, $t, $e {
            fn poll(job: ::std::string::String) -> $crate::Result<$crate::types::JobStatus>;
            fn cancel(job: ::std::string::String) -> $crate::Result<()>;
        });
    };
    (compute, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::compute::Guest => $crate::Compute, $t, $e {
            fn create_vm(spec: $crate::types::VmSpec) -> $crate::Result<$crate::types::Started>;
            fn power_on(vm: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn power_off(vm: ::std::string::String, mode: $crate::types::StopMode) -> $crate::Result<$crate::types::Started>;
            fn reconfigure_nics(vm: ::std::string::String, nics: ::std::vec::Vec<$crate::types::NicSpec>) -> $crate::Result<$crate::types::Started>;
            fn delete_vm(vm: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn guest_heartbeat(vm: ::std::string::String) -> $crate::Result<$crate::types::Heartbeat>;
        });
    };
    (vm_snapshots, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::vm_snapshots::Guest => $crate::VmSnapshots, $t, $e {
            fn list_snapshots(vm: ::std::string::String) -> $crate::Result<::std::vec::Vec<$crate::types::VmSnapshot>>;
            fn create_snapshot(vm: ::std::string::String, name: ::std::string::String, quiesce: bool) -> $crate::Result<$crate::types::Started>;
            fn revert_snapshot(vm: ::std::string::String, snapshot: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn delete_snapshot(vm: ::std::string::String, snapshot: ::std::string::String) -> $crate::Result<$crate::types::Started>;
        });
    };
    (storage, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::storage::Guest => $crate::Storage, $t, $e {
            fn list_volumes() -> $crate::Result<::std::vec::Vec<$crate::types::Volume>>;
            fn list_volume_snapshots(volume: ::std::string::String) -> $crate::Result<::std::vec::Vec<$crate::types::VolumeSnapshot>>;
            fn create_volume_snapshot(volume: ::std::string::String, name: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn delete_volume_snapshot(volume: ::std::string::String, snapshot: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn clone_volume(volume: ::std::string::String, snapshot: ::std::string::String, clone_name: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn delete_volume(volume: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn list_replications() -> $crate::Result<::std::vec::Vec<$crate::types::Replication>>;
            fn update_replication(replication: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn break_replication(replication: ::std::string::String) -> $crate::Result<$crate::types::Started>;
            fn resync_replication(replication: ::std::string::String, reverse: bool) -> $crate::Result<$crate::types::Started>;
        });
    };
    (disk_access, $world:ident, $t:ty, $e:ident) => {
        $crate::__forward!($crate::__private::worlds::$world::exports::haven::connector::disk_access::Guest => $crate::DiskAccess, $t, $e {
            fn open_disk(vm: ::std::string::String, disk: ::std::string::String, point: ::std::option::Option<::std::string::String>) -> $crate::Result<$crate::types::DiskDescriptor>;
            fn open_target(name: ::std::string::String, capacity_bytes: u64) -> $crate::Result<$crate::types::DiskDescriptor>;
            fn changed_extents(session: ::std::string::String, since: ::std::option::Option<::std::string::String>) -> $crate::Result<$crate::types::Changes>;
            fn close_disk(session: ::std::string::String) -> $crate::Result<()>;
        });
    };
}

/// Exports `$t` as a component of world `$world` with the listed capabilities.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_world {
    ($t:ty, $world:ident, $export:ident, [$($cap:ident),*]) => {
        const _: () = {
            #[allow(dead_code)]
            struct HavenExports;
            $($crate::__capability!($cap, $world, $t, HavenExports);)*
            // Native builds (the test harness) export nothing: the symbols are
            // component-model names that only a wasm linker accepts.
            #[cfg(target_arch = "wasm32")]
            $crate::__private::worlds::$world::$export!(HavenExports with_types_in $crate::__private::worlds::$world);
        };
    };
}

/// Exports a type implementing [`Connector`] and [`Inventory`] as an
/// `inventory-connector` component (a CMDB, a tag source).
#[macro_export]
macro_rules! export_inventory_connector {
    ($t:ty) => {
        $crate::__export_world!(
            $t,
            inventory,
            __export_inventory_world,
            [connector, inventory]
        );
    };
}

/// Exports a type implementing [`Connector`], [`Inventory`], [`Jobs`],
/// [`Compute`], [`VmSnapshots`] and [`DiskAccess`] as a `compute-connector`
/// component (a hypervisor or a cloud).
#[macro_export]
macro_rules! export_compute_connector {
    ($t:ty) => {
        $crate::__export_world!(
            $t,
            compute,
            __export_compute_world,
            [
                connector,
                inventory,
                jobs,
                compute,
                vm_snapshots,
                disk_access
            ]
        );
    };
}

/// Exports a type implementing [`Connector`], [`Jobs`], [`Storage`] and
/// [`DiskAccess`] as a `storage-connector` component (a storage array).
#[macro_export]
macro_rules! export_storage_connector {
    ($t:ty) => {
        $crate::__export_world!(
            $t,
            storage,
            __export_storage_world,
            [connector, jobs, storage, disk_access]
        );
    };
}
