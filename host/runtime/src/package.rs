//! Packaging (author side) and the installed-plugin directory (admin side).
//!
//! A package is a directory with `plugin.toml` (carrying the component's
//! sha256) and `plugin.wasm`. Installing verifies the hash, the contract
//! version, that the component exports a connector (or, for `kind =
//! "script"`, the script world) and imports only what the host provides,
//! precompiles it into the cache, and copies the package to
//! `<home>/plugins/<id>/`. One version of a plugin is installed at a time.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::capabilities::{inspect, ComponentInfo};
use crate::engine::PluginEngine;
use crate::error::{Result, RuntimeError};
use crate::manifest::Manifest;

/// File names inside a package.
pub const MANIFEST_FILE: &str = "plugin.toml";
const COMPONENT_FILE: &str = "plugin.wasm";

/// An installed plugin.
#[derive(Debug, Clone)]
pub struct InstalledPlugin {
    /// Its manifest (with the sha256 verified at install).
    pub manifest: Manifest,
    /// Its directory under `<home>/plugins`.
    pub dir: PathBuf,
}

impl InstalledPlugin {
    /// The component file.
    pub fn wasm_path(&self) -> PathBuf {
        self.manifest.component_path(&self.dir)
    }

    /// The verified sha256 of the component.
    pub fn sha256(&self) -> &str {
        self.manifest.sha256.as_deref().unwrap_or_default()
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Accepts a package directory or its manifest file.
fn manifest_file(source: &Path) -> PathBuf {
    if source.is_dir() {
        source.join(MANIFEST_FILE)
    } else {
        source.to_owned()
    }
}

/// Builds a package from an author's manifest: copies the component to
/// `out/plugin.wasm` and writes `out/plugin.toml` with its sha256.
pub fn package(source: &Path, out: &Path) -> Result<Manifest> {
    let manifest_path = manifest_file(source);
    let mut manifest = Manifest::load(&manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let wasm = manifest.component_path(dir);
    if !wasm.is_file() {
        return Err(RuntimeError::config(
            &manifest_path,
            "component",
            format!(
                "{} does not exist; build the plugin first (cargo build --release --target wasm32-wasip2)",
                wasm.display()
            ),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| RuntimeError::io(out, e))?;
    let target = out.join(COMPONENT_FILE);
    std::fs::copy(&wasm, &target).map_err(|e| RuntimeError::io(&target, e))?;
    manifest.sha256 = Some(sha256_file(&target)?);
    manifest.component = COMPONENT_FILE.into();
    let out_manifest = out.join(MANIFEST_FILE);
    std::fs::write(&out_manifest, manifest.to_toml())
        .map_err(|e| RuntimeError::io(&out_manifest, e))?;
    Ok(manifest)
}

/// The directory of installed plugins.
#[derive(Debug, Clone)]
pub struct PluginStore {
    root: PathBuf,
}

impl PluginStore {
    /// Opens (creating) `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| RuntimeError::io(root, e))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Verifies, precompiles and installs a package; replaces an installed
    /// version of the same plugin atomically.
    pub fn install(
        &self,
        engine: &PluginEngine,
        source: &Path,
    ) -> Result<(InstalledPlugin, ComponentInfo)> {
        let manifest_path = manifest_file(source);
        let manifest = Manifest::load(&manifest_path)?;
        let Some(expected) = manifest.sha256.clone() else {
            return Err(RuntimeError::config(
                &manifest_path,
                "sha256",
                "is missing: install a package made by `haven plugin package`",
            ));
        };
        let dir = manifest_path.parent().unwrap_or(Path::new("."));
        let wasm = manifest.component_path(dir);
        let actual = sha256_file(&wasm)?;
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(RuntimeError::Sha256Mismatch {
                path: wasm,
                expected,
                actual,
            });
        }
        let component = engine.load(&manifest.id, &wasm, &actual)?;
        let info = inspect(&manifest.id, engine.engine(), &component)?;
        if info.kind != manifest.kind {
            return Err(RuntimeError::config(
                &manifest_path,
                "kind",
                format!(
                    "is `{}` but the component is a {}; set `kind = \"{}\"`",
                    manifest.kind, info.kind, info.kind
                ),
            ));
        }
        if !manifest.wit.matches(&info.wit_version) {
            return Err(RuntimeError::UnsupportedWit {
                plugin: manifest.id.clone(),
                wanted: format!(
                    "{} (manifest) but the component exports {}",
                    manifest.wit, info.wit_version
                ),
                supported: crate::manifest::supported_list(manifest.kind),
            });
        }
        crate::sandbox::check_imports(engine, &manifest.id, &component)?;

        // Copy beside the final place, then swap it in.
        let final_dir = self.root.join(&manifest.id);
        let staging = self.root.join(format!(".{}.installing", manifest.id));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| RuntimeError::io(&staging, e))?;
        let mut installed = manifest.clone();
        installed.component = COMPONENT_FILE.into();
        installed.sha256 = Some(actual);
        std::fs::copy(&wasm, staging.join(COMPONENT_FILE))
            .map_err(|e| RuntimeError::io(&staging, e))?;
        std::fs::write(staging.join(MANIFEST_FILE), installed.to_toml())
            .map_err(|e| RuntimeError::io(&staging, e))?;
        let old = self.root.join(format!(".{}.old", manifest.id));
        let _ = std::fs::remove_dir_all(&old);
        if final_dir.exists() {
            std::fs::rename(&final_dir, &old).map_err(|e| RuntimeError::io(&final_dir, e))?;
        }
        std::fs::rename(&staging, &final_dir).map_err(|e| RuntimeError::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
        tracing::info!(plugin = %installed.id, version = %installed.version, "installed plugin");
        Ok((
            InstalledPlugin {
                manifest: installed,
                dir: final_dir,
            },
            info,
        ))
    }

    /// The installed plugin `id`.
    pub fn get(&self, id: &str) -> Result<InstalledPlugin> {
        let dir = self.root.join(id);
        let manifest_path = dir.join(MANIFEST_FILE);
        if !crate::manifest::is_identifier(id) || !manifest_path.is_file() {
            return Err(RuntimeError::UnknownPlugin(id.into()));
        }
        Ok(InstalledPlugin {
            manifest: Manifest::load(&manifest_path)?,
            dir,
        })
    }

    /// Every installed plugin, by id.
    pub fn list(&self) -> Result<Vec<InstalledPlugin>> {
        let mut plugins = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(|e| RuntimeError::io(&self.root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RuntimeError::io(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            plugins.push(self.get(&name)?);
        }
        plugins.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
        Ok(plugins)
    }
}
