//! # haven-plugin-runtime
//!
//! Loads Haven's connector plugins — WebAssembly components built against the
//! WIT contract in `wit/` — and runs each configured instance in a sandbox:
//! memory cap, per-call deadline that traps, no filesystem but its own data
//! directory, no sockets, HTTP only to hosts both requested and granted,
//! secrets only its own. A plugin that traps is discarded and re-created; the
//! host never goes down because of one.
//!
//! Map:
//! - [`manifest`]: `plugin.toml`; [`hosts`]: host patterns of the HTTP allowlist;
//! - [`package`]: packaging, verified install, the installed-plugin directory;
//! - [`engine`]: the wasmtime engine (pooling, epochs) and the code cache;
//! - [`capabilities`]: which exported interfaces a component has;
//! - [`instances`]: `instances.toml`, secrets, limits, granted directories
//!   (`[instances.<name>.dirs]`, which disk `file` descriptors are relative to);
//! - [`sandbox`]: a store's host state and linker; `host_api`: `haven:host`;
//! - [`kv`]: the per-instance durable key-value store; `tls`: HTTPS with an
//!   instance's own CAs;
//! - [`runtime`]: instances and calls (JSON in, JSON out);
//! - [`script`]: [`WasmScriptHost`], script components run by plan steps;
//! - `connector`: [`PluginConnector`], the typed `haven_connector::Connector`
//!   the plan engine and the transport use.

pub mod capabilities;
mod connector;
pub mod engine;
mod error;
mod host_api;
pub mod hosts;
pub mod instances;
mod json;
pub mod kv;
pub mod manifest;
pub mod package;
pub mod runtime;
pub mod sandbox;
pub mod script;
mod tls;

pub use capabilities::{Capability, ComponentInfo};
pub use connector::PluginConnector;
pub use engine::PluginEngine;
pub use error::{Result, RuntimeError, TrapKind};
pub use manifest::{Limits, Manifest, PluginKind};
pub use package::{InstalledPlugin, PluginStore};
pub use runtime::{HavenHome, InstanceState, InstanceSummary, Runtime};
pub use script::WasmScriptHost;

/// Something a plugin instance reported while a call was running.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PluginEvent {
    /// `haven:host/progress.report`.
    Progress {
        /// Instance name.
        instance: String,
        /// Function being called.
        function: String,
        /// Units done.
        completed: u64,
        /// Units in all (0: unknown).
        total: u64,
        /// Status line.
        message: String,
    },
}
