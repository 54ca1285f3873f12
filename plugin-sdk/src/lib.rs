//! # haven-plugin-sdk
//!
//! Write a Haven connector — the plugin that lets Haven drive a vendor's system —
//! as a small Rust crate built for `wasm32-wasip2`. See `README.md` beside this
//! crate for a guided first connector.
//!
//! What the SDK gives you:
//! - the WIT types of `haven:connector@0.1.0` ([`types`]) and a trait per
//!   capability ([`Connector`], [`Inventory`], [`Compute`], ...) whose functions
//!   default to `error::unsupported`, so you write only what your system does;
//! - `export_*_connector!` macros that export your type as a component of one of
//!   the contract's worlds;
//! - the host's services ([`host`]: log, progress, secrets, key-value store);
//! - an HTTP client over `wasi:http` with JSON and XML bodies ([`http`]);
//! - error helpers ([`error`]) that map HTTP statuses and parse failures to the
//!   contract's typed errors;
//! - a local test harness ([`harness`], native builds only): run your connector
//!   in `cargo test` against a fake HTTP server, with in-memory secrets and kv;
//! - scripts ([`script`]): the [`script::Script`] trait and `export_script!`
//!   for components a plan step runs (`haven:script@0.1.0`).

// The generated bindings name this crate by its path, in here as in plugins.
extern crate self as haven_plugin_sdk;

mod bindings;
mod capabilities;
mod configured;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod harness;
pub mod host;
pub mod http;
pub mod script;

pub use capabilities::{
    matches_tags, parse_tag, Compute, Connector, DiskAccess, Inventory, Jobs, Storage, VmSnapshots,
};
pub use configured::{Configured, Settings};
pub use error::Error;

/// The data types of the contract, from `haven:connector@0.1.0`.
pub mod types {
    pub use crate::bindings::base::haven::connector::disk_types::{
        AzureBlobLocation, Changes, Credential, DiskDescriptor, DiskLocation, FileLocation, Header,
        HttpsLocation, NbdLocation,
    };
    pub use crate::bindings::base::haven::connector::storage_types::{
        Replication, ReplicationState, Volume, VolumeSnapshot,
    };
    pub use crate::bindings::base::haven::connector::types::{
        CheckItem, ConnectorInfo, Error, Extent, InvalidInput, JobId, JobProgress, JobStatus,
        Setting, SettingSpec, Started, Tag, Transient,
    };
    pub use crate::bindings::base::haven::connector::vm_types::{
        DiskInfo, DiskSpec, Heartbeat, IpSettings, Network, NicInfo, NicSpec, PowerState, StopMode,
        TagSelector, Vm, VmSnapshot, VmSpec,
    };
}

/// `Result` with the contract's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::worlds;
    pub use wit_bindgen;
}
