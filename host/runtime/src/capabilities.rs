//! Which capabilities (exported interfaces) a component has, and whether it is
//! a connector or a script (`haven:script/handler`).

use std::collections::BTreeSet;

use serde::Serialize;
use wasmtime::component::Component;
use wasmtime::Engine;

pub use haven_connector::Capability;

use crate::error::{Result, RuntimeError};
use crate::manifest::{supported_list, PluginKind};

/// The interface a script exports, without its version.
pub const SCRIPT_INTERFACE: &str = "haven:script/handler";

/// What a component exports, as far as Haven is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentInfo {
    /// A connector or a script.
    pub kind: PluginKind,
    /// The contract version its exports are from (`haven:connector`, or
    /// `haven:script` for a script).
    pub wit_version: semver::Version,
    /// The capabilities it exports (none for a script).
    pub capabilities: BTreeSet<Capability>,
    /// Exports Haven does not know (ignored).
    pub other_exports: Vec<String>,
}

impl ComponentInfo {
    /// Fully qualified export name of a capability (`haven:connector/jobs@0.1.0`).
    pub fn export_name(&self, capability: Capability) -> String {
        format!(
            "haven:connector/{}@{}",
            capability.interface(),
            self.wit_version
        )
    }
}

/// Reads the exports of a compiled component.
pub fn inspect(plugin: &str, engine: &Engine, component: &Component) -> Result<ComponentInfo> {
    let invalid = |message: String| RuntimeError::InvalidComponent {
        plugin: plugin.into(),
        message,
    };
    let mut capabilities = BTreeSet::new();
    let mut versions = BTreeSet::new();
    let mut script_versions = BTreeSet::new();
    let mut other_exports = Vec::new();
    for (name, _) in component.component_type().exports(engine) {
        let script = name
            .strip_prefix(SCRIPT_INTERFACE)
            .and_then(|rest| rest.strip_prefix('@'))
            .and_then(|version| semver::Version::parse(version).ok());
        if let Some(version) = script {
            script_versions.insert(version);
            continue;
        }
        let parsed = name
            .strip_prefix("haven:connector/")
            .and_then(|rest| rest.split_once('@'))
            .and_then(|(iface, version)| {
                Some((
                    Capability::from_interface(iface)?,
                    semver::Version::parse(version).ok()?,
                ))
            });
        match parsed {
            Some((capability, version)) => {
                capabilities.insert(capability);
                versions.insert(version);
            }
            None => other_exports.push(name.to_owned()),
        }
    }
    let kind = match (versions.is_empty(), script_versions.is_empty()) {
        (true, false) => PluginKind::Script,
        (false, false) => {
            return Err(invalid(
                "exports both connector interfaces and `haven:script/handler`; a component is one or the other".into(),
            ))
        }
        _ => PluginKind::Connector,
    };
    if kind == PluginKind::Script {
        versions = script_versions;
    }
    let wit_version =
        match versions.len() {
            0 => return Err(invalid(
                "exports no `haven:connector` interface nor `haven:script/handler`; build it against a WIT contract in wit/"
                    .into(),
            )),
            1 => versions.into_iter().next().expect("one version"),
            _ => return Err(invalid(format!("mixes contract versions {versions:?}"))),
        };
    if !kind.supported_wit().contains(&wit_version) {
        return Err(RuntimeError::UnsupportedWit {
            plugin: plugin.into(),
            wanted: wit_version.to_string(),
            supported: supported_list(kind),
        });
    }
    if kind == PluginKind::Connector && !capabilities.contains(&Capability::Connector) {
        return Err(invalid(
            "does not export `haven:connector/connector`, which every plugin must".into(),
        ));
    }
    Ok(ComponentInfo {
        kind,
        wit_version,
        capabilities,
        other_exports,
    })
}
