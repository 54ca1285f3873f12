//! Script steps: WebAssembly components built against `haven:script@0.1.0`,
//! run by plan steps (`action = { kind = "run-script", component = "<id>" }`)
//! in the same sandbox as connector instances.
//!
//! - A script is a package like a plugin (`kind = "script"` in `plugin.toml`),
//!   installed with `haven plugin install` into `<home>/plugins/<id>`; a step's
//!   `component` names the installed script by its id.
//! - The administrator grants a script hosts, secrets, limits and a CA in
//!   `<home>/scripts.toml` (below), read at every run so that a change or a
//!   revocation applies to the next step; with no entry a script runs with
//!   its manifest's limits, no secrets and no network.
//! - Each run gets a fresh instance (microseconds, from a cached
//!   `InstancePre`); `/data` is `<home>/scripts/<id>/data` and the kv store
//!   `<home>/scripts/<id>/kv.json`, kept across runs.
//! - The deadline is the step's, capped by the script's `call_timeout_ms`: an
//!   epoch deadline stops CPU loops, a timer stops a guest blocked in the host.
//!
//! ```toml
//! [scripts.script-smoke]
//! allow_hosts = ["app.example.com:8080"]
//! secrets = { token = { env = "SMOKE_TOKEN" } }
//! limits = { memory_mib = 32, call_timeout_ms = 600000 }
//! # tls_ca = "/etc/haven/app-ca.pem"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use haven_engine::scripts::{Direction, ScriptContext, WasmScripts};
use haven_engine::StepFailure;
use haven_plan::Mode;
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime::{Store, Trap};

use crate::capabilities::inspect;
use crate::engine::PluginEngine;
use crate::error::{Result, RuntimeError, TrapKind};
use crate::instances::{InstanceConfig, LimitsOverride, ResolvedInstance, SecretSource};
use crate::kv::KvStore;
use crate::manifest::{is_identifier, PluginKind};
use crate::package::{InstalledPlugin, PluginStore};
use crate::runtime::{arm, HavenHome, BLOCKED_GRACE};
use crate::sandbox::{linker, EventSink, HostState};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/script/since_v0.1.0",
        world: "haven:script/script@0.1.0",
        exports: { default: async },
    });
}

use bindings::haven::script::types as wit;
use bindings::haven::script::types::ScriptContext as GuestContext;

/// A script's own error, as its `run` returned it (`haven:script/types.error`).
pub use bindings::haven::script::types::{Error as ScriptError, InvalidInput};

/// The function name scripts are called by, in logs and errors.
const FUNCTION: &str = "handler.run";

/// The administrator's grants to one script, in `<home>/scripts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptGrant {
    /// Hosts the script may reach over HTTP(S), if its manifest requests them too.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Secrets bound for the script, by the names its manifest declares.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Overrides of the manifest's limits.
    #[serde(default)]
    pub limits: LimitsOverride,
    /// PEM file of CAs to trust for the script's HTTPS, besides the public roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    #[serde(default)]
    scripts: BTreeMap<String, ScriptGrant>,
}

/// Reads `scripts.toml` (an absent file grants nothing).
pub fn load_grants(path: &Path) -> Result<BTreeMap<String, ScriptGrant>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(RuntimeError::io(path, e)),
    };
    let file: GrantsFile = toml::from_str(&text)
        .map_err(|e| RuntimeError::config(path, "scripts", e.message().trim().to_owned()))?;
    if let Some(bad) = file.scripts.keys().find(|id| !is_identifier(id)) {
        return Err(RuntimeError::config(
            path,
            format!("scripts.{bad}"),
            "script ids are 1-64 lower-case letters, digits, `-` or `_`",
        ));
    }
    Ok(file.scripts)
}

/// A script's compiled code, ready to instantiate.
struct Prepared {
    sha256: String,
    pre: bindings::ScriptPre<HostState>,
}

/// Runs installed script components for plan steps; implements the engine's
/// [`WasmScripts`].
pub struct WasmScriptHost {
    engine: Arc<PluginEngine>,
    linker: Linker<HostState>,
    plugins: PluginStore,
    home: HavenHome,
    events: Option<EventSink>,
    prepared: Mutex<HashMap<String, Arc<Prepared>>>,
    kv: Mutex<HashMap<String, Arc<Mutex<KvStore>>>>,
}

impl WasmScriptHost {
    /// A host for the scripts installed in `home`, on a shared engine.
    pub fn new(
        engine: Arc<PluginEngine>,
        home: HavenHome,
        events: Option<EventSink>,
    ) -> Result<Self> {
        Ok(Self {
            linker: linker(&engine)?,
            plugins: PluginStore::open(&home.plugins_dir())?,
            engine,
            home,
            events,
            prepared: Mutex::default(),
            kv: Mutex::default(),
        })
    }

    /// The administrator's grants file, `<home>/scripts.toml`.
    pub fn grants_file(&self) -> PathBuf {
        self.home.root().join("scripts.toml")
    }

    /// The installed script `component`, or why it cannot run (not installed,
    /// not a script). Readiness checks call this for every `run-script` step.
    pub fn installed(&self, component: &str) -> Result<InstalledPlugin> {
        if !is_identifier(component) {
            return Err(RuntimeError::InvalidComponent {
                plugin: component.into(),
                message: "is not a script id: `run-script` names an installed script by its id, not a file; \
                          package and install the component (`haven plugin package`, `haven plugin install`) \
                          and write its id"
                    .into(),
            });
        }
        let plugin = self.plugins.get(component)?;
        if plugin.manifest.kind != PluginKind::Script {
            return Err(RuntimeError::InvalidComponent {
                plugin: component.into(),
                message: "is a connector, not a script; `run-script` needs a package with `kind = \"script\"`".into(),
            });
        }
        Ok(plugin)
    }

    /// Whether `component` names an installed script.
    pub fn is_installed(&self, component: &str) -> bool {
        self.installed(component).is_ok()
    }

    /// Runs script `component` with `context`, stopping it at `deadline` (or
    /// its `call_timeout_ms`, if shorter). Returns what its `run` returned;
    /// the outer error says why it could not run or was stopped.
    pub async fn run_script(
        &self,
        component: &str,
        context: &ScriptContext,
        deadline: Duration,
    ) -> Result<Result<String, ScriptError>> {
        let plugin = self.installed(component)?;
        let resolved = Arc::new(self.resolve(&plugin)?);
        let prepared = self.prepare(&plugin)?;
        let dir = self.home.root().join("scripts").join(component);
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| RuntimeError::io(&data_dir, e))?;
        let kv = self
            .kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(component.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(KvStore::open(&dir.join("kv.json")))))
            .clone();
        let limits = resolved.limits;
        let state = HostState::new(resolved, &data_dir, kv, self.events.clone())?;
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| s.limiter());
        store.epoch_deadline_trap();
        let cap = Duration::from_millis(limits.call_timeout_ms);
        let timeout = deadline.min(cap);
        let which = if timeout < deadline {
            "the script's call_timeout_ms"
        } else {
            "the step's timeout"
        };
        arm(&mut store, FUNCTION, timeout);
        let guest = to_guest(context);
        let call = async {
            let script = prepared.pre.instantiate_async(&mut store).await?;
            script
                .haven_script_handler()
                .call_run(&mut store, &guest)
                .await
        };
        let outcome = match tokio::time::timeout(timeout + BLOCKED_GRACE, call).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => match trapped(component, &store, &e) {
                RuntimeError::Trapped {
                    kind: TrapKind::Timeout,
                    ..
                } => return Err(past_deadline(component, timeout, which, "")),
                other => return Err(other),
            },
            Err(_) => {
                tracing::warn!(
                    script = component,
                    "script blocked in the host past its deadline"
                );
                return Err(past_deadline(
                    component,
                    timeout,
                    which,
                    ", blocked waiting on I/O",
                ));
            }
        };
        match outcome {
            Ok(line) if line.len() as u64 > limits.max_result_bytes => {
                Err(RuntimeError::ResultTooLarge {
                    instance: component.into(),
                    function: FUNCTION.into(),
                    limit: limits.max_result_bytes,
                })
            }
            other => Ok(other),
        }
    }

    /// The script's manifest checked against its grants in `scripts.toml`.
    fn resolve(&self, plugin: &InstalledPlugin) -> Result<ResolvedInstance> {
        let file = self.grants_file();
        let id = &plugin.manifest.id;
        let grant = load_grants(&file)?.remove(id).unwrap_or_default();
        let config = InstanceConfig {
            plugin: id.clone(),
            settings: BTreeMap::new(),
            secrets: grant.secrets,
            allow_hosts: grant.allow_hosts,
            limits: grant.limits,
            tls_ca: grant.tls_ca,
            // Granted directories serve disk descriptors, which scripts do not answer.
            dirs: BTreeMap::new(),
        };
        // The checks are an instance's; the fields they name live under
        // `scripts.<id>` in this file.
        ResolvedInstance::resolve(&file, id, &config, &plugin.manifest).map_err(|e| match e {
            RuntimeError::Config {
                file,
                field,
                message,
            } => RuntimeError::Config {
                file,
                field: field.replacen("instances.", "scripts.", 1),
                message,
            },
            other => other,
        })
    }

    /// The compiled script, from memory, the code cache, or compiled now; a
    /// re-installed script (new sha256) is prepared again.
    fn prepare(&self, plugin: &InstalledPlugin) -> Result<Arc<Prepared>> {
        let id = &plugin.manifest.id;
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = prepared.get(id).filter(|p| p.sha256 == plugin.sha256()) {
            return Ok(p.clone());
        }
        let component = self.engine.load(id, &plugin.wasm_path(), plugin.sha256())?;
        let info = inspect(id, self.engine.engine(), &component)?;
        if info.kind != PluginKind::Script {
            return Err(RuntimeError::InvalidComponent {
                plugin: id.clone(),
                message: "does not export `haven:script/handler`".into(),
            });
        }
        let invalid = |e: wasmtime::Error| RuntimeError::InvalidComponent {
            plugin: id.clone(),
            message: format!("imports something Haven does not provide: {e:#}"),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = bindings::ScriptPre::new(pre).map_err(invalid)?;
        let entry = Arc::new(Prepared {
            sha256: plugin.sha256().to_owned(),
            pre,
        });
        prepared.insert(id.clone(), entry.clone());
        Ok(entry)
    }
}

#[async_trait]
impl WasmScripts for WasmScriptHost {
    async fn run(
        &self,
        component: &str,
        context: &ScriptContext,
        deadline: Duration,
    ) -> std::result::Result<String, StepFailure> {
        match self.run_script(component, context, deadline).await {
            Ok(Ok(line)) => Ok(line.trim().to_owned()),
            Ok(Err(error)) => Err(script_failure(component, error)),
            Err(error) => Err(runtime_failure(component, error)),
        }
    }
}

/// A script's own error: transient ones are retried.
fn script_failure(component: &str, error: ScriptError) -> StepFailure {
    match error {
        ScriptError::Transient(m) => StepFailure::retryable(format!("script `{component}`: {m}")),
        ScriptError::InvalidInput(i) => StepFailure::permanent(format!(
            "script `{component}`: invalid input in `{}`: {}",
            i.field, i.message
        )),
        ScriptError::Failed(m) => {
            StepFailure::permanent(format!("script `{component}` failed: {m}"))
        }
    }
}

/// The trap of a script stopped at its deadline, saying which limit it was.
fn past_deadline(component: &str, timeout: Duration, which: &str, how: &str) -> RuntimeError {
    RuntimeError::Trapped {
        instance: component.into(),
        function: FUNCTION.into(),
        kind: TrapKind::Timeout,
        detail: format!(" (after {} ms, {which}{how})", timeout.as_millis()),
    }
}

/// The sandbox stopped the script, or it could not start: only a deadline is
/// worth another attempt.
fn runtime_failure(component: &str, error: RuntimeError) -> StepFailure {
    match error {
        RuntimeError::Trapped {
            kind: TrapKind::Timeout,
            detail,
            ..
        } => StepFailure::retryable(format!(
            "script `{component}` was stopped at its deadline{detail}"
        )),
        RuntimeError::UnknownPlugin(_) => StepFailure::permanent(format!(
            "no script `{component}` is installed; install it with `haven plugin install <package>`"
        )),
        other => StepFailure::permanent(format!("script `{component}`: {other}")),
    }
}

/// Why the store trapped: the memory cap, the deadline, a panic or a crash.
fn trapped(component: &str, store: &Store<HostState>, error: &wasmtime::Error) -> RuntimeError {
    let kind = if store.data().limiter.hit {
        TrapKind::OutOfMemory
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TrapKind::Timeout,
            Some(Trap::UnreachableCodeReached) => TrapKind::Panic,
            _ => TrapKind::Crashed,
        }
    };
    let output = store.data().output_tail();
    let detail = match output.lines().rev().find(|l| l.contains("panicked")) {
        Some(line) => format!(": {line}"),
        None if kind == TrapKind::Crashed => format!(": {error:#}"),
        None => String::new(),
    };
    tracing::warn!(script = component, %kind, "script trapped{detail}");
    RuntimeError::Trapped {
        instance: component.into(),
        function: FUNCTION.into(),
        kind,
        detail,
    }
}

fn to_guest(c: &ScriptContext) -> GuestContext {
    GuestContext {
        execution: c.execution.clone(),
        plan: c.plan.clone(),
        mode: match c.mode {
            Mode::Test => wit::Mode::Test,
            Mode::Failover => wit::Mode::Failover,
            Mode::Migration => wit::Mode::Migration,
            Mode::Failback => wit::Mode::Failback,
            Mode::Undo => wit::Mode::Undo,
        },
        direction: match c.direction {
            Direction::ToRecovery => wit::Direction::ToRecovery,
            Direction::ToProduction => wit::Direction::ToProduction,
        },
        test: c.test,
        step: c.step.clone(),
        group: c.group.clone(),
        vm: c.vm.as_ref().map(|v| wit::VmRef {
            connector: v.connector.clone(),
            name: v.name.clone(),
        }),
        recovered_vm: c.recovered_vm.clone(),
        recovery_point: c.recovery_point.as_ref().map(|p| wit::RecoveryPoint {
            id: p.id.clone(),
            taken_at_ms: p.taken_at_ms,
        }),
        args: c.args.clone(),
        attempt: c.attempt,
        fence: c.fence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_strictly_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("scripts.toml");
        assert!(
            load_grants(&file).unwrap().is_empty(),
            "absent file grants nothing"
        );
        std::fs::write(
            &file,
            "[scripts.smoke]\nallow_hosts = [\"127.0.0.1\"]\nsecrets = { token = { value = \"t\" } }\n",
        )
        .unwrap();
        let grants = load_grants(&file).unwrap();
        assert_eq!(grants["smoke"].allow_hosts, ["127.0.0.1"]);
        std::fs::write(&file, "[scripts.smoke]\nallow_host = []\n").unwrap();
        let e = load_grants(&file).unwrap_err().to_string();
        assert!(e.contains("allow_host"), "{e}");
        std::fs::write(&file, "[scripts.Bad]\n").unwrap();
        match load_grants(&file) {
            Err(RuntimeError::Config { field, .. }) => assert_eq!(field, "scripts.Bad"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
