//! Shared helpers of Haven's end-to-end tests: where the built plugins are,
//! and a throw-away Haven home with plugins installed and instances configured.
//!
//! The plugins are built by `scripts/build-plugins.sh` (which `.ci/run` runs
//! first); a missing one fails the test with the command to run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use haven_plugin_runtime::{HavenHome, PluginEngine, PluginStore, Runtime};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The source manifest of a fixture or plugin, relative to the repository
/// (`plugins/example`), after checking that its component was built.
pub fn plugin_source(relative: &str) -> PathBuf {
    let dir = repo_root().join(relative);
    let manifest =
        haven_plugin_runtime::Manifest::load(&dir.join("plugin.toml")).expect("manifest parses");
    let wasm = manifest.component_path(&dir);
    assert!(
        wasm.is_file(),
        "{} is missing: build the plugins first with `scripts/build-plugins.sh`",
        wasm.display()
    );
    dir
}

/// A Haven home in a temporary directory.
pub struct TestHome {
    dir: tempfile::TempDir,
    engine: Arc<PluginEngine>,
}

impl TestHome {
    /// An empty home.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let home = HavenHome::new(dir.path());
        let engine = Arc::new(PluginEngine::new(&home.cache_dir()).expect("engine"));
        Self { dir, engine }
    }

    /// The home's paths.
    pub fn home(&self) -> HavenHome {
        HavenHome::new(self.dir.path())
    }

    /// The shared engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// Packages and installs the plugin whose source is at `relative`.
    pub fn install(&self, relative: &str) -> haven_plugin_runtime::InstalledPlugin {
        let package_dir = self
            .dir
            .path()
            .join("packages")
            .join(relative.replace('/', "_"));
        haven_plugin_runtime::package::package(&plugin_source(relative), &package_dir)
            .expect("package");
        let store = PluginStore::open(&self.home().plugins_dir()).expect("plugin store");
        store
            .install(&self.engine, &package_dir)
            .expect("install")
            .0
    }

    /// Writes `instances.toml`.
    pub fn configure(&self, instances_toml: &str) {
        std::fs::write(self.home().instances_file(), instances_toml).expect("write instances.toml");
    }

    /// Installs the lab plugin and configures instances `lab-prod` and
    /// `lab-dr` for the lab at `url` (bearer `token`) whose directory, granted
    /// to both as `lab`, is `lab_dir`.
    pub fn configure_lab(&self, url: &str, token: &str, lab_dir: &Path) {
        self.install("plugins/lab");
        let mut instances = String::new();
        for (name, site) in [("lab-prod", "prod"), ("lab-dr", "dr")] {
            instances.push_str(&format!(
                "[instances.{name}]\nplugin = \"lab\"\nallow_hosts = [\"127.0.0.1\"]\n\
                 [instances.{name}.settings]\nendpoint = \"{url}\"\nsite = \"{site}\"\n\
                 [instances.{name}.secrets]\ntoken = {{ value = \"{token}\" }}\n\
                 [instances.{name}.dirs]\nlab = {:?}\n",
                lab_dir.display().to_string()
            ));
        }
        self.configure(&instances);
    }

    /// A runtime over this home.
    pub fn runtime(&self) -> Runtime {
        Runtime::with_engine(self.engine.clone(), self.home(), None).expect("runtime opens")
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}
