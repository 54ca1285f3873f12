//! Configured plugin instances and calls into them.
//!
//! Each instance has at most one live wasmtime store at a time; calls to one
//! instance are serialized, calls to different instances run in parallel. A
//! call that traps, times out, runs out of memory or returns too much discards
//! the live store: the next call instantiates afresh (microseconds, thanks to
//! the pooling allocator and `InstancePre`) and configures it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, Linker, Val};
use wasmtime::{Store, Trap};

use crate::capabilities::{inspect, ComponentInfo};
use crate::engine::{PluginEngine, EPOCH_TICK};
use crate::error::{Result, RuntimeError, TrapKind};
use crate::instances::{load_instances, InstanceConfig, ResolvedInstance};
use crate::json::{from_val, to_val};
use crate::kv::KvStore;
use crate::package::{InstalledPlugin, PluginStore};
use crate::sandbox::{linker, EventSink, HostState};

/// A timer cuts a call this long after its epoch deadline, for guests blocked
/// in the host (a sleep, a read) where the epoch cannot interrupt them.
pub(crate) const BLOCKED_GRACE: Duration = Duration::from_millis(50);

/// The directories and files of a Haven home.
#[derive(Debug, Clone)]
pub struct HavenHome {
    root: PathBuf,
}

impl HavenHome {
    /// A home rooted at `root` (created on use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Installed plugins.
    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }
    /// Precompiled code.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
    /// The instances configuration.
    pub fn instances_file(&self) -> PathBuf {
        self.root.join("instances.toml")
    }
    /// One instance's private directory (its `/data` and its kv file).
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.root.join("instances").join(name)
    }
}

/// Summary of a configured instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceSummary {
    /// Instance name.
    pub name: String,
    /// Plugin id.
    pub plugin: String,
    /// What the component exports, or why the instance is unavailable.
    #[serde(flatten)]
    pub state: InstanceState,
}

/// Whether an instance can be called.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Loaded; these are its capabilities and functions.
    Ready {
        /// Exports.
        info: ComponentInfo,
        /// Callable functions (`inventory.list-vms`).
        functions: Vec<String>,
    },
    /// Misconfigured; calls fail with this reason.
    Unavailable {
        /// Why.
        reason: String,
    },
}

struct Slot {
    name: String,
    plugin: String,
    resolved: Arc<ResolvedInstance>,
    info: ComponentInfo,
    functions: BTreeMap<String, ComponentExportIndex>,
    pre: InstancePre<HostState>,
    data_dir: PathBuf,
    kv: Arc<Mutex<KvStore>>,
    live: tokio::sync::Mutex<Option<Live>>,
    instantiations: AtomicU64,
}

struct Live {
    store: Store<HostState>,
    instance: Instance,
}

/// The plugin runtime: the engine, the installed plugins and the configured instances.
pub struct Runtime {
    engine: Arc<PluginEngine>,
    linker: Linker<HostState>,
    plugins: PluginStore,
    home: HavenHome,
    slots: BTreeMap<String, Arc<Slot>>,
    unavailable: BTreeMap<String, (String, String)>,
    events: Option<EventSink>,
}

impl Runtime {
    /// Opens the runtime of `home`: loads `instances.toml` and prepares every
    /// instance. A misconfigured instance is reported by [`Runtime::instances`]
    /// and its calls fail; the others work.
    pub fn open(home: HavenHome, events: Option<EventSink>) -> Result<Self> {
        let engine = Arc::new(PluginEngine::new(&home.cache_dir())?);
        Self::with_engine(engine, home, events)
    }

    /// Like [`Runtime::open`], sharing an existing engine.
    pub fn with_engine(
        engine: Arc<PluginEngine>,
        home: HavenHome,
        events: Option<EventSink>,
    ) -> Result<Self> {
        let plugins = PluginStore::open(&home.plugins_dir())?;
        let linker = linker(&engine)?;
        let mut runtime = Self {
            engine,
            linker,
            plugins,
            home,
            slots: BTreeMap::new(),
            unavailable: BTreeMap::new(),
            events,
        };
        let file = runtime.home.instances_file();
        for (name, config) in load_instances(&file)? {
            match runtime.prepare(&file, &name, &config) {
                Ok(slot) => {
                    runtime.slots.insert(name, Arc::new(slot));
                }
                Err(e) => {
                    tracing::warn!(instance = %name, "instance unavailable: {e}");
                    runtime
                        .unavailable
                        .insert(name, (config.plugin.clone(), e.to_string()));
                }
            }
        }
        Ok(runtime)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// The installed plugins.
    pub fn plugins(&self) -> &PluginStore {
        &self.plugins
    }

    fn prepare(&self, file: &Path, name: &str, config: &InstanceConfig) -> Result<Slot> {
        let plugin: InstalledPlugin = self.plugins.get(&config.plugin)?;
        let resolved = ResolvedInstance::resolve(file, name, config, &plugin.manifest)?;
        let component =
            self.engine
                .load(&plugin.manifest.id, &plugin.wasm_path(), plugin.sha256())?;
        let info = inspect(&plugin.manifest.id, self.engine.engine(), &component)?;
        if info.kind != crate::manifest::PluginKind::Connector {
            return Err(RuntimeError::config(
                file,
                format!("instances.{name}.plugin"),
                format!(
                    "`{}` is a script, not a connector: plan steps run it (`run-script`); grant it hosts and secrets in scripts.toml",
                    config.plugin
                ),
            ));
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            RuntimeError::InvalidComponent {
                plugin: plugin.manifest.id.clone(),
                message: format!("imports something Haven does not provide: {e:#}"),
            }
        })?;
        let dir = self.home.instance_dir(name);
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| RuntimeError::io(&data_dir, e))?;
        Ok(Slot {
            name: name.to_owned(),
            plugin: plugin.manifest.id.clone(),
            resolved: Arc::new(resolved),
            functions: exported_functions(&self.engine, &component, &info),
            info,
            pre,
            data_dir,
            kv: Arc::new(Mutex::new(KvStore::open(&dir.join("kv.json")))),
            live: tokio::sync::Mutex::new(None),
            instantiations: AtomicU64::new(0),
        })
    }

    /// Every configured instance, by name.
    pub fn instances(&self) -> Vec<InstanceSummary> {
        let mut all: Vec<InstanceSummary> = self
            .slots
            .values()
            .map(|s| InstanceSummary {
                name: s.name.clone(),
                plugin: s.plugin.clone(),
                state: InstanceState::Ready {
                    info: s.info.clone(),
                    functions: s.functions.keys().cloned().collect(),
                },
            })
            .chain(
                self.unavailable
                    .iter()
                    .map(|(name, (plugin, reason))| InstanceSummary {
                        name: name.clone(),
                        plugin: plugin.clone(),
                        state: InstanceState::Unavailable {
                            reason: reason.clone(),
                        },
                    }),
            )
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The directories granted to `instance` (`[instances.<name>.dirs]`), by name.
    pub fn granted_dirs(&self, instance: &str) -> Result<BTreeMap<String, PathBuf>> {
        Ok(self.slot(instance)?.resolved.granted_dirs.clone())
    }

    /// How many times the instance was instantiated (a fresh instance after a
    /// trap counts again).
    pub fn instantiations(&self, instance: &str) -> Result<u64> {
        Ok(self.slot(instance)?.instantiations.load(Ordering::Relaxed))
    }

    fn slot(&self, instance: &str) -> Result<&Arc<Slot>> {
        if let Some((_, reason)) = self.unavailable.get(instance) {
            return Err(RuntimeError::InvalidComponent {
                plugin: instance.into(),
                message: format!("instance unavailable: {reason}"),
            });
        }
        self.slots
            .get(instance)
            .ok_or_else(|| RuntimeError::UnknownInstance(instance.into()))
    }

    /// Calls `function` (`inventory.list-vms`, or fully qualified
    /// `haven:connector/inventory@0.1.0#list-vms`) of `instance` with JSON
    /// arguments (an array by position, an object by name, or null for none)
    /// and returns the result as JSON.
    pub async fn call(&self, instance: &str, function: &str, args: &Value) -> Result<Value> {
        let slot = self.slot(instance)?.clone();
        let key = short_name(function);
        let index = *slot
            .functions
            .get(&key)
            .ok_or_else(|| RuntimeError::UnknownFunction {
                instance: instance.into(),
                function: function.into(),
                available: slot
                    .functions
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut live = slot.live.lock().await;
        if live.is_none() {
            *live = Some(self.instantiate(&slot).await?);
        }
        let current = live.as_mut().expect("instantiated above");
        let result = invoke(&slot, current, index, &key, args).await;
        if matches!(
            result,
            Err(RuntimeError::Trapped { .. } | RuntimeError::ResultTooLarge { .. })
        ) {
            *live = None;
        }
        result
    }

    async fn instantiate(&self, slot: &Slot) -> Result<Live> {
        let state = HostState::new(
            slot.resolved.clone(),
            &slot.data_dir,
            slot.kv.clone(),
            self.events.clone(),
        )?;
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| s.limiter());
        store.epoch_deadline_trap();
        let timeout = Duration::from_millis(slot.resolved.limits.call_timeout_ms);
        arm(&mut store, "instantiate", timeout);
        let instance = match tokio::time::timeout(
            timeout + BLOCKED_GRACE,
            slot.pre.instantiate_async(&mut store),
        )
        .await
        {
            Ok(Ok(instance)) => instance,
            Ok(Err(e)) => return Err(trapped(slot, &store, "instantiate", &e)),
            Err(_) => return Err(blocked(slot, "instantiate")),
        };
        slot.instantiations.fetch_add(1, Ordering::Relaxed);
        let mut live = Live { store, instance };
        self.configure(slot, &mut live).await?;
        Ok(live)
    }

    /// Checks the settings against `describe` and calls `configure`.
    async fn configure(&self, slot: &Slot, live: &mut Live) -> Result<()> {
        let file = self.home.instances_file();
        let describe = *slot
            .functions
            .get("connector.describe")
            .expect("every connector exports describe");
        let info = invoke(slot, live, describe, "connector.describe", &Value::Null).await?;
        let specs = info["settings"].as_array().cloned().unwrap_or_default();
        for key in slot.resolved.settings.keys() {
            if !specs.iter().any(|s| s["key"] == key.as_str()) {
                let known: Vec<_> = specs.iter().filter_map(|s| s["key"].as_str()).collect();
                return Err(RuntimeError::config(
                    &file,
                    format!("instances.{}.settings.{key}", slot.name),
                    format!("the plugin has no such setting; it takes {known:?}"),
                ));
            }
        }
        let mut settings = slot.resolved.settings.clone();
        for spec in &specs {
            let key = spec["key"].as_str().unwrap_or_default();
            if settings.contains_key(key) {
                continue;
            }
            match spec["default-value"].as_str() {
                Some(default) => {
                    settings.insert(key.to_owned(), default.to_owned());
                }
                None if spec["required"] == true => {
                    return Err(RuntimeError::config(
                        &file,
                        format!("instances.{}.settings.{key}", slot.name),
                        format!(
                            "is required: {}",
                            spec["description"].as_str().unwrap_or_default()
                        ),
                    ))
                }
                None => {}
            }
        }
        let args = serde_json::json!([settings
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect::<Vec<_>>()]);
        let configure = *slot
            .functions
            .get("connector.configure")
            .expect("every connector exports configure");
        let outcome = invoke(slot, live, configure, "connector.configure", &args).await?;
        match outcome.get("err") {
            Some(err) => Err(RuntimeError::Configure {
                instance: slot.name.clone(),
                message: err.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// Sets the store's deadline for the next call.
pub(crate) fn arm(store: &mut Store<HostState>, function: &str, timeout: Duration) {
    store
        .data_mut()
        .begin_call(function, Instant::now() + timeout);
    let ticks = timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()).max(1);
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
}

async fn invoke(
    slot: &Slot,
    live: &mut Live,
    index: ComponentExportIndex,
    function: &str,
    args: &Value,
) -> Result<Value> {
    let Live { store, instance } = live;
    let func = instance
        .get_func(&mut *store, index)
        .expect("export index of this component");
    let ty = func.ty(&*store);
    let params: Vec<(String, wasmtime::component::types::Type)> =
        ty.params().map(|(n, t)| (n.to_owned(), t)).collect();
    let bad = |field: String, message: String| RuntimeError::BadArguments {
        function: function.into(),
        field,
        message,
    };
    let positional: Vec<Value> = match args {
        Value::Null => Vec::new(),
        Value::Array(items) => items.clone(),
        Value::Object(map) => {
            if let Some(unknown) = map.keys().find(|k| !params.iter().any(|(n, _)| n == *k)) {
                let names: Vec<_> = params.iter().map(|(n, _)| n.as_str()).collect();
                return Err(bad(
                    unknown.clone(),
                    format!("no such parameter; expected {names:?}"),
                ));
            }
            params
                .iter()
                .map(|(n, _)| map.get(n).cloned().unwrap_or(Value::Null))
                .collect()
        }
        other => {
            return Err(bad(
                "(arguments)".into(),
                format!("expected an array or an object, got {other}"),
            ))
        }
    };
    if positional.len() != params.len() {
        let names: Vec<_> = params.iter().map(|(n, _)| n.as_str()).collect();
        return Err(bad(
            "(arguments)".into(),
            format!(
                "expected {} arguments {names:?}, got {}",
                params.len(),
                positional.len()
            ),
        ));
    }
    let values = positional
        .iter()
        .zip(&params)
        .map(|(json, (name, ty))| to_val(json, ty, name))
        .collect::<Result<Vec<Val>, _>>()
        .map_err(|(field, message)| bad(field, message))?;
    let mut results = vec![Val::Bool(false); ty.results().len()];

    let timeout = Duration::from_millis(slot.resolved.limits.call_timeout_ms);
    arm(store, function, timeout);
    match tokio::time::timeout(
        timeout + BLOCKED_GRACE,
        func.call_async(&mut *store, &values, &mut results),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(trapped(slot, store, function, &e)),
        Err(_) => return Err(blocked(slot, function)),
    }
    let mut budget = slot.resolved.limits.max_result_bytes;
    let too_large = |_| RuntimeError::ResultTooLarge {
        instance: slot.name.clone(),
        function: function.into(),
        limit: slot.resolved.limits.max_result_bytes,
    };
    match results.as_slice() {
        [] => Ok(Value::Null),
        [one] => from_val(one, &mut budget).map_err(too_large),
        many => many
            .iter()
            .map(|v| from_val(v, &mut budget))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
            .map_err(too_large),
    }
}

fn trapped(
    slot: &Slot,
    store: &Store<HostState>,
    function: &str,
    error: &wasmtime::Error,
) -> RuntimeError {
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
    let detail = match output
        .lines()
        .rev()
        .find(|l| l.contains("panicked") || l.contains("failed"))
    {
        Some(line) => format!(": {line}"),
        None if kind == TrapKind::Crashed => format!(": {error:#}"),
        None => String::new(),
    };
    tracing::warn!(instance = %slot.name, %function, %kind, "plugin trapped{detail}");
    RuntimeError::Trapped {
        instance: slot.name.clone(),
        function: function.into(),
        kind,
        detail,
    }
}

fn blocked(slot: &Slot, function: &str) -> RuntimeError {
    tracing::warn!(instance = %slot.name, %function, "plugin blocked in the host past its deadline");
    RuntimeError::Trapped {
        instance: slot.name.clone(),
        function: function.into(),
        kind: TrapKind::Timeout,
        detail: ": blocked waiting on I/O".into(),
    }
}

/// `haven:connector/inventory@0.1.0#list-vms` → `inventory.list-vms`.
fn short_name(function: &str) -> String {
    match function
        .strip_prefix("haven:connector/")
        .and_then(|r| r.split_once('#'))
    {
        Some((iface, func)) => format!("{}.{func}", iface.split('@').next().unwrap_or(iface)),
        None => function.to_owned(),
    }
}

/// Every function of every capability the component exports, by short name.
fn exported_functions(
    engine: &PluginEngine,
    component: &Component,
    info: &ComponentInfo,
) -> BTreeMap<String, ComponentExportIndex> {
    let mut functions = BTreeMap::new();
    for capability in &info.capabilities {
        let name = info.export_name(*capability);
        let Some((ComponentItem::ComponentInstance(ty), iface)) = component.get_export(None, &name)
        else {
            continue;
        };
        for (func, item) in ty.exports(engine.engine()) {
            if let ComponentItem::ComponentFunc(_) = item.ty {
                if let Some(index) = component.get_export_index(Some(&iface), func) {
                    functions.insert(format!("{}.{func}", capability.interface()), index);
                }
            }
        }
    }
    functions
}
