//! `instances.toml`: the administrator's configured plugin instances.
//!
//! ```toml
//! [instances.vc-prod]
//! plugin = "vcenter"
//! allow_hosts = ["vc-prod.example.com:443"]
//! [instances.vc-prod.settings]
//! endpoint = "https://vc-prod.example.com"
//! [instances.vc-prod.secrets]
//! password = { env = "VC_PROD_PASSWORD" }   # or { file = "/run/secrets/vc" }, { value = "..." }
//! [instances.vc-prod.limits]
//! call_timeout_ms = 60000
//! # tls_ca = "/etc/haven/vc-prod-ca.pem"   (under [instances.vc-prod]: a private CA to trust)
//! [instances.vc-prod.dirs]
//! # Granted directories: disk `file` descriptors the plugin answers are
//! # relative to one of these (absolute host paths, by the name the plugin uses).
//! lab = "/var/lib/haven-lab"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::hosts::HostPattern;
use crate::manifest::{is_identifier, Limits, Manifest};

/// Where a secret's value comes from. Values are read when an instance starts
/// and never written to logs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// An environment variable of the host process.
    Env(String),
    /// A file (trailing newline removed).
    File(PathBuf),
    /// Inline (for labs and tests; prefer `env` or `file`).
    Value(String),
}

/// Limits an administrator sets for one instance, over the manifest's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// See [`Limits::memory_mib`].
    pub memory_mib: Option<u64>,
    /// See [`Limits::call_timeout_ms`].
    pub call_timeout_ms: Option<u64>,
    /// See [`Limits::max_result_bytes`].
    pub max_result_bytes: Option<u64>,
}

/// One configured instance of a plugin.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Id of the installed plugin.
    pub plugin: String,
    /// Settings passed to the plugin's `configure`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Secrets bound for this instance, by the names the manifest declares.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Hosts this instance may reach over HTTP(S), if the manifest requests them too.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Overrides of the manifest's limits.
    #[serde(default)]
    pub limits: LimitsOverride,
    /// PEM file of certificate authorities to trust for this instance's HTTPS,
    /// besides the public roots (private CAs, self-signed vCenter certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Granted directories by name: host directories that the disk `file`
    /// descriptors the plugin answers are relative to (the lab connector uses
    /// `lab`). Only the native transport reads them; the plugin never does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dirs: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    #[serde(default)]
    instances: BTreeMap<String, InstanceConfig>,
}

/// Reads `instances.toml` (an absent file means no instances).
pub fn load_instances(path: &Path) -> Result<BTreeMap<String, InstanceConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(RuntimeError::io(path, e)),
    };
    let file: InstancesFile = toml::from_str(&text)
        .map_err(|e| RuntimeError::config(path, "instances", e.message().trim().to_owned()))?;
    for (name, instance) in &file.instances {
        if !is_identifier(name) {
            return Err(RuntimeError::config(
                path,
                format!("instances.{name}"),
                "instance names are 1-64 lower-case letters, digits, `-` or `_`",
            ));
        }
        for (dir, granted) in &instance.dirs {
            let field = format!("instances.{name}.dirs.{dir}");
            if !is_identifier(dir) {
                return Err(RuntimeError::config(
                    path,
                    field,
                    "granted directory names are 1-64 lower-case letters, digits, `-` or `_`",
                ));
            }
            if !granted.is_absolute() {
                return Err(RuntimeError::config(
                    path,
                    field,
                    format!("{} is not an absolute path", granted.display()),
                ));
            }
        }
        for (i, host) in instance.allow_hosts.iter().enumerate() {
            HostPattern::parse(host).map_err(|m| {
                RuntimeError::config(path, format!("instances.{name}.allow_hosts.{i}"), m)
            })?;
        }
    }
    Ok(file.instances)
}

/// Writes `instances.toml` atomically.
pub fn save_instances(path: &Path, instances: &BTreeMap<String, InstanceConfig>) -> Result<()> {
    let file = InstancesFile {
        instances: instances.clone(),
    };
    let text = toml::to_string_pretty(&file).expect("instances always serialize");
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(|e| RuntimeError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io(path, e))
}

/// An instance's configuration checked against its plugin's manifest, with
/// secrets read and limits resolved.
#[derive(Debug, Clone)]
pub struct ResolvedInstance {
    /// Instance name.
    pub name: String,
    /// Settings for `configure`.
    pub settings: BTreeMap<String, String>,
    /// Secret values by name (only names the manifest declares).
    pub secrets: BTreeMap<String, String>,
    /// Names the manifest declares (bound or not).
    pub declared_secrets: Vec<String>,
    /// Hosts the manifest requests.
    pub requested_hosts: Vec<HostPattern>,
    /// Hosts the administrator granted.
    pub granted_hosts: Vec<HostPattern>,
    /// Effective limits.
    pub limits: Limits,
    /// TLS configuration with the instance's own CAs, when it has some.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Granted directories by name (see [`InstanceConfig::dirs`]).
    pub granted_dirs: BTreeMap<String, PathBuf>,
}

impl ResolvedInstance {
    /// Checks `config` against `manifest`; errors name the field in `file`.
    pub fn resolve(
        file: &Path,
        name: &str,
        config: &InstanceConfig,
        manifest: &Manifest,
    ) -> Result<Self> {
        let field = |f: &str| format!("instances.{name}.{f}");
        let mut secrets = BTreeMap::new();
        for (key, source) in &config.secrets {
            if !manifest.secrets.contains(key) {
                return Err(RuntimeError::config(
                    file,
                    field(&format!("secrets.{key}")),
                    format!(
                        "plugin `{}` does not declare this secret (it declares {:?})",
                        manifest.id, manifest.secrets
                    ),
                ));
            }
            let value = match source {
                SecretSource::Value(v) => v.clone(),
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    RuntimeError::config(
                        file,
                        field(&format!("secrets.{key}")),
                        format!("environment variable {var} is not set"),
                    )
                })?,
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map_err(|e| {
                        RuntimeError::config(
                            file,
                            field(&format!("secrets.{key}")),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            };
            secrets.insert(key.clone(), value);
        }
        let parse_all = |list: &[String], f: &str| -> Result<Vec<HostPattern>> {
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    HostPattern::parse(h)
                        .map_err(|m| RuntimeError::config(file, format!("{f}.{i}"), m))
                })
                .collect()
        };
        let mut limits = manifest.limits;
        let o = config.limits;
        limits.memory_mib = o.memory_mib.unwrap_or(limits.memory_mib);
        limits.call_timeout_ms = o.call_timeout_ms.unwrap_or(limits.call_timeout_ms);
        limits.max_result_bytes = o.max_result_bytes.unwrap_or(limits.max_result_bytes);
        limits.validate(file, &field("limits."))?;
        let tls = config
            .tls_ca
            .as_deref()
            .map(|ca| {
                crate::tls::client_config(ca)
                    .map_err(|m| RuntimeError::config(file, field("tls_ca"), m))
            })
            .transpose()?;
        Ok(Self {
            name: name.to_owned(),
            settings: config.settings.clone(),
            secrets,
            declared_secrets: manifest.secrets.clone(),
            requested_hosts: parse_all(&manifest.hosts, "hosts")?,
            granted_hosts: parse_all(&config.allow_hosts, &field("allow_hosts"))?,
            limits,
            tls,
            granted_dirs: config.dirs.clone(),
        })
    }

    /// Whether an outgoing request to `host:port` is allowed: the manifest
    /// requests it AND the administrator granted it.
    pub fn http_allowed(&self, host: &str, port: u16) -> bool {
        self.requested_hosts.iter().any(|p| p.matches(host, port))
            && self.granted_hosts.iter().any(|p| p.matches(host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<BTreeMap<String, InstanceConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.toml");
        std::fs::write(&path, text).unwrap();
        load_instances(&path)
    }

    #[test]
    fn granted_directories_are_absolute_and_named() {
        let ok = load(
            "[instances.lab-dr]\nplugin = \"lab\"\n[instances.lab-dr.dirs]\nlab = \"/srv/lab\"\n",
        )
        .unwrap();
        assert_eq!(ok["lab-dr"].dirs["lab"], PathBuf::from("/srv/lab"));
        for (text, field) in [
            (
                "[instances.x]\nplugin = \"lab\"\n[instances.x.dirs]\nlab = \"relative/dir\"\n",
                "instances.x.dirs.lab",
            ),
            (
                "[instances.x]\nplugin = \"lab\"\n[instances.x.dirs]\n\"Bad Name\" = \"/srv\"\n",
                "instances.x.dirs.Bad Name",
            ),
        ] {
            match load(text) {
                Err(RuntimeError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
