//! Which capabilities (exported interfaces) a component has.

use std::collections::BTreeSet;

use serde::Serialize;
use wasmtime::component::Component;
use wasmtime::Engine;

pub use haven_connector::Capability;

use crate::error::{Result, RuntimeError};
use crate::manifest::{supported_list, SUPPORTED_WIT};

/// What a component exports, as far as Haven is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentInfo {
    /// The contract version its exports are from.
    pub wit_version: semver::Version,
    /// The capabilities it exports.
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
    let mut other_exports = Vec::new();
    for (name, _) in component.component_type().exports(engine) {
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
    let wit_version =
        match versions.len() {
            0 => return Err(invalid(
                "exports no `haven:connector` interface; build it against the WIT contract in wit/"
                    .into(),
            )),
            1 => versions.into_iter().next().expect("one version"),
            _ => return Err(invalid(format!("mixes contract versions {versions:?}"))),
        };
    if !SUPPORTED_WIT.contains(&wit_version) {
        return Err(RuntimeError::UnsupportedWit {
            plugin: plugin.into(),
            wanted: wit_version.to_string(),
            supported: supported_list(),
        });
    }
    if !capabilities.contains(&Capability::Connector) {
        return Err(invalid(
            "does not export `haven:connector/connector`, which every plugin must".into(),
        ));
    }
    Ok(ComponentInfo {
        wit_version,
        capabilities,
        other_exports,
    })
}
