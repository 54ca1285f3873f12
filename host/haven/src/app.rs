//! The web application `haven serve` runs: connectors from the plugin
//! runtime, the orchestrator driving executions through them, the web API
//! and the dashboard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use haven_api::{ApiState, EngineReadiness, Inventory};
use haven_connector::Connector;
use haven_engine::connector_runner::ConnectorRunner;
use haven_engine::executor::Clock;
use haven_engine::notify::{self, Notifier};
use haven_engine::protection::Protector;
use haven_engine::readiness::{ReadinessChecker, ReadinessOptions};
use haven_engine::replication::Replicator;
use haven_engine::resolve::ConnectorResolver;
use haven_engine::scripts::HostCommands;
use haven_engine::service::Orchestrator;
use haven_plugin_runtime::{HavenHome, PluginConnector, Runtime, WasmScriptHost};
use haven_store::{CommandLog, LocalLog, Store};
use serde_json::Value;

/// Builds the web API (and dashboard) over `log` for the host whose home is
/// `home` and starts following the node's role: executions and replication
/// schedules run only on the primary, which resumes the unfinished
/// executions; the first node to be primary over a store without tokens
/// creates the bootstrap admin token in its `<home>/admin-token`.
pub async fn build(home: &Path, log: Arc<dyn CommandLog>) -> anyhow::Result<axum::Router> {
    let (state, protector) = assemble_with_protector(home, log.clone()).await?;
    state.orchestrator().supervise();
    protector.supervise();
    tokio::spawn(bootstrap_when_primary(home.to_owned(), log, state.clone()));
    Ok(haven_api::router(state))
}

/// In a cluster no node is primary yet when the API is built: create the
/// admin token once this node is (a no-op when tokens exist).
async fn bootstrap_when_primary(home: PathBuf, log: Arc<dyn CommandLog>, state: ApiState) {
    let mut role = log.role();
    loop {
        if role.borrow_and_update().is_primary() {
            match haven_api::bootstrap_admin(&*log, &home, state.now_ms()).await {
                Ok(_) => return,
                Err(e) => tracing::warn!("{e}; retrying when this node is primary again"),
            }
        }
        if role.changed().await.is_err() {
            return;
        }
    }
}

/// The embedded state store of `home` (`<home>/state.redb`), for commands
/// that run without a server. redb allows one process per store, hence the
/// hint.
pub fn open_embedded(home: &Path) -> anyhow::Result<Arc<dyn CommandLog>> {
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let path = home.join("state.redb");
    let store = Store::open(&path).with_context(|| {
        format!(
            "cannot open the embedded store {} (if `haven serve` runs on this home, pass --server)",
            path.display()
        )
    })?;
    Ok(Arc::new(LocalLog::new(Arc::new(store))))
}

/// The plugin runtime of `home`.
pub fn plugin_runtime(home: &Path) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(
        Runtime::open(HavenHome::new(home), None)
            .with_context(|| format!("cannot load the plugin runtime in {}", home.display()))?,
    ))
}

/// A connector for every configured instance that loads.
pub fn connectors(runtime: &Arc<Runtime>) -> BTreeMap<String, Arc<dyn Connector>> {
    let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
    for instance in runtime.instances() {
        match PluginConnector::new(runtime.clone(), &instance.name) {
            Ok(connector) => {
                connectors.insert(instance.name, Arc::new(connector));
            }
            // A broken instance must not keep the host down; steps and
            // readiness checks that need it say it is not configured.
            Err(e) => tracing::warn!(instance = %instance.name, "connector instance skipped: {e}"),
        }
    }
    connectors
}

/// What steps may use on this host: script components, host commands (as
/// the administrator allowed them) and notification channels.
pub struct StepServices {
    /// Runs WebAssembly scripts.
    pub scripts: Arc<WasmScriptHost>,
    /// Runs administrator-enabled host commands.
    pub host_commands: HostCommands,
    /// Sends notifications.
    pub notifier: Notifier,
}

impl StepServices {
    /// The services configured in `home`.
    pub fn load(home: &Path, runtime: &Runtime) -> anyhow::Result<Self> {
        Ok(Self {
            scripts: Arc::new(WasmScriptHost::new(
                runtime.engine().clone(),
                HavenHome::new(home),
                None,
            )?),
            host_commands: HostCommands::in_home(home),
            notifier: Notifier::load(&home.join(notify::FILE))?,
        })
    }

    /// What a readiness check may count on.
    pub fn readiness_options(&self) -> ReadinessOptions {
        let scripts = self.scripts.clone();
        ReadinessOptions {
            scripts: Some(Arc::new(move |component: &str| {
                scripts
                    .installed(component)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })),
            host_commands: Some(self.host_commands.clone()),
            notifier: self.notifier.clone(),
        }
    }
}

/// The API's state over `log`, without following the role: the embedded
/// CLI drives only the executions its command touches.
pub async fn assemble(home: &Path, log: Arc<dyn CommandLog>) -> anyhow::Result<ApiState> {
    Ok(assemble_with_protector(home, log).await?.0)
}

/// [`assemble`], also handing back the protector (whose schedules
/// [`build`] runs).
async fn assemble_with_protector(
    home: &Path,
    log: Arc<dyn CommandLog>,
) -> anyhow::Result<(ApiState, Arc<Protector>)> {
    let runtime = plugin_runtime(home)?;
    let connectors = connectors(&runtime);
    let services = StepServices::load(home, &runtime)?;
    // One replicator: one loopback target per repository, whoever replicates.
    let replicator = Arc::new(Replicator::new());
    let runner = ConnectorRunner::new(log.clone(), connectors.clone(), replicator.clone())
        .with_scripts(services.scripts.clone())
        .with_host_commands(services.host_commands.clone())
        .with_notifier(services.notifier.clone());
    // The catalog lets a failover resolve VMs while the production site is down.
    let resolver = ConnectorResolver::new(connectors.clone()).with_catalog(log.store().clone());
    let orchestrator = Orchestrator::new(
        log.clone(),
        Arc::new(resolver),
        Arc::new(runner),
        Clock::system(),
    );
    // Through the orchestrator's log, so local commits wake its followers.
    let protector = Arc::new(Protector::new(
        orchestrator.log(),
        connectors.clone(),
        replicator,
        Clock::system(),
    ));
    if log.role().borrow().is_primary() {
        haven_api::bootstrap_admin(&*log, home, orchestrator.now_ms()).await?;
    }
    let readiness = EngineReadiness::new(
        ReadinessChecker::new(connectors),
        services.readiness_options(),
    );
    let state = ApiState::new(
        orchestrator,
        Arc::new(readiness),
        Arc::new(PluginInventory(runtime)),
        protector.clone(),
    );
    Ok((state, protector))
}

/// Connector instances and plugins, from the plugin runtime.
struct PluginInventory(Arc<Runtime>);

impl Inventory for PluginInventory {
    fn connectors(&self) -> Result<Vec<Value>, String> {
        self.0
            .instances()
            .into_iter()
            .map(|i| serde_json::to_value(i).map_err(|e| e.to_string()))
            .collect()
    }

    fn plugins(&self) -> Result<Vec<Value>, String> {
        let plugins = self.0.plugins().list().map_err(|e| e.to_string())?;
        plugins
            .into_iter()
            .map(|p| {
                serde_json::to_value(&p.manifest)
                    .map(|mut v| {
                        v["dir"] = Value::String(p.dir.display().to_string());
                        v
                    })
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}
