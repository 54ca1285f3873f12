//! `plugin.toml`: what a plugin is, what it needs and what it may do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::hosts::HostPattern;

/// WIT contract versions this host can load plugins for (see `wit/README.md`).
pub const SUPPORTED_WIT: &[semver::Version] = &[semver::Version::new(0, 1, 0)];

/// `haven:script` versions this host can run scripts for (`wit/script/`).
pub const SUPPORTED_SCRIPT_WIT: &[semver::Version] = &[semver::Version::new(0, 1, 0)];

/// What a package's component is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A connector (`haven:connector` worlds), configured as instances.
    #[default]
    Connector,
    /// A script (`haven:script/script`), run by plan steps (`run-script`).
    Script,
}

impl PluginKind {
    /// The contract versions this host supports for this kind.
    pub fn supported_wit(self) -> &'static [semver::Version] {
        match self {
            PluginKind::Connector => SUPPORTED_WIT,
            PluginKind::Script => SUPPORTED_SCRIPT_WIT,
        }
    }

    fn is_connector(&self) -> bool {
        *self == PluginKind::Connector
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Connector => "connector",
            PluginKind::Script => "script",
        })
    }
}

/// The largest memory cap a manifest or an administrator may set.
pub const MAX_MEMORY_MIB: u64 = 4096;

/// A plugin's manifest, `plugin.toml`, beside its component.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique id: lower-case letters, digits and `-`.
    pub id: String,
    /// The plugin's own version.
    pub version: semver::Version,
    /// Name for people.
    pub name: String,
    /// One paragraph for people.
    #[serde(default)]
    pub description: String,
    /// `connector` (the default) or `script`.
    #[serde(default, skip_serializing_if = "PluginKind::is_connector")]
    pub kind: PluginKind,
    /// The contract versions the component was built against (`^0.1`): of
    /// `haven:connector`, or of `haven:script` for a script.
    pub wit: semver::VersionReq,
    /// Path of the component, relative to the manifest.
    pub component: String,
    /// sha256 of the component, hex. Required to install; written by
    /// `haven plugin package`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Hosts the plugin may need to reach over HTTP(S): `host`, `host:port`,
    /// `*.domain` or `*`. Each instance's administrator still grants hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Names of the secrets the plugin reads; each instance binds values.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Resource limits of every instance (an administrator may lower them).
    #[serde(default)]
    pub limits: Limits,
}

/// Resource limits of a plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap, in MiB.
    pub memory_mib: u64,
    /// Deadline of one call, in milliseconds; a call past it traps.
    pub call_timeout_ms: u64,
    /// Largest result a call may return, in bytes of JSON.
    pub max_result_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 64,
            call_timeout_ms: 30_000,
            max_result_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Checks the ranges; errors name the field under `prefix`.
    pub(crate) fn validate(&self, file: &Path, prefix: &str) -> Result<()> {
        if !(1..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(RuntimeError::config(
                file,
                format!("{prefix}memory_mib"),
                format!("must be between 1 and {MAX_MEMORY_MIB}"),
            ));
        }
        if !(1..=3_600_000).contains(&self.call_timeout_ms) {
            return Err(RuntimeError::config(
                file,
                format!("{prefix}call_timeout_ms"),
                "must be between 1 and 3600000 (one hour)",
            ));
        }
        if !(1024..=1 << 30).contains(&self.max_result_bytes) {
            return Err(RuntimeError::config(
                file,
                format!("{prefix}max_result_bytes"),
                "must be between 1024 and 1073741824",
            ));
        }
        Ok(())
    }
}

/// Whether `name` is a valid plugin id, instance name or secret name.
pub(crate) fn is_identifier(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses and validates manifest text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            RuntimeError::config(path, "plugin.toml", e.message().trim().to_owned())
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| Err(RuntimeError::config(path, field, message));
        if !is_identifier(&self.id) {
            return bad(
                "id",
                format!(
                    "{:?} must be 1-64 lower-case letters, digits, `-` or `_`",
                    self.id
                ),
            );
        }
        if self.component.is_empty() || Path::new(&self.component).is_absolute() {
            return bad(
                "component",
                "must be a path relative to the manifest".into(),
            );
        }
        if let Some(sha) = &self.sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("sha256", "must be 64 hexadecimal digits".into());
            }
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if let Err(message) = HostPattern::parse(host) {
                return bad(&format!("hosts.{i}"), message);
            }
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            if !is_identifier(secret) {
                return bad(
                    &format!("secrets.{i}"),
                    format!("{secret:?} must be 1-64 lower-case letters, digits, `-` or `_`"),
                );
            }
        }
        self.limits.validate(path, "limits.")?;
        self.supported_wit().map(|_| ())
    }

    /// The newest supported contract version the manifest accepts.
    pub fn supported_wit(&self) -> Result<semver::Version> {
        self.kind
            .supported_wit()
            .iter()
            .rev()
            .find(|v| self.wit.matches(v))
            .cloned()
            .ok_or_else(|| RuntimeError::UnsupportedWit {
                plugin: self.id.clone(),
                wanted: self.wit.to_string(),
                supported: supported_list(self.kind),
            })
    }

    /// Path of the component, resolved against the manifest's directory.
    pub fn component_path(&self, manifest_dir: &Path) -> PathBuf {
        manifest_dir.join(&self.component)
    }

    /// The manifest as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }
}

/// The supported contract versions of `kind`, for messages.
pub(crate) fn supported_list(kind: PluginKind) -> String {
    kind.supported_wit()
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "vcenter"
version = "1.2.0"
name = "vCenter"
wit = "^0.1"
component = "plugin.wasm"
hosts = ["*.example.com", "vc:443"]
secrets = ["password"]
[limits]
memory_mib = 128
"#;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, Path::new("plugin.toml"))
    }

    #[test]
    fn parses_a_good_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.limits.memory_mib, 128);
        assert_eq!(m.limits.call_timeout_ms, 30_000);
        assert_eq!(m.supported_wit().unwrap(), semver::Version::new(0, 1, 0));
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
        assert_eq!(m.kind, PluginKind::Connector);
        assert!(
            !m.to_toml().contains("kind"),
            "connectors keep the old form"
        );
    }

    #[test]
    fn a_script_says_so() {
        let m = parse(&GOOD.replace("wit = ", "kind = \"script\"\nwit = ")).unwrap();
        assert_eq!(m.kind, PluginKind::Script);
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
        match parse(&GOOD.replace("wit = ", "kind = \"macro\"\nwit = ")) {
            Err(e) => assert!(e.to_string().contains("macro"), "{e}"),
            Ok(_) => panic!("unknown kind accepted"),
        }
    }

    fn field_of(text: &str) -> String {
        match parse(text) {
            Err(RuntimeError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(&GOOD.replace("\"vcenter\"", "\"VC!\"")), "id");
        assert_eq!(field_of(&GOOD.replace("vc:443", "vc:99999")), "hosts.1");
        assert_eq!(
            field_of(&GOOD.replace("memory_mib = 128", "memory_mib = 0")),
            "limits.memory_mib"
        );
        assert_eq!(
            field_of(&GOOD.replace("\"password\"", "\"Pass word\"")),
            "secrets.0"
        );
        assert_eq!(
            field_of(&GOOD.replace("plugin.wasm", "/abs.wasm")),
            "component"
        );
        assert!(matches!(
            parse(&GOOD.replace("^0.1", "^2")),
            Err(RuntimeError::UnsupportedWit { .. })
        ));
        match parse(&GOOD.replace("name = ", "nmae = ")) {
            Err(e) => assert!(e.to_string().contains("nmae"), "{e}"),
            Ok(_) => panic!("unknown field accepted"),
        }
    }
}
