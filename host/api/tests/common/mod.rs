//! A real API server on a loopback listener, over a real store, with the
//! simulated step runner (dry-run connectors), and a small blocking client.

#![allow(dead_code)] // each test file uses part of the harness

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use haven_api::{ApiState, EngineReadiness, Inventory, Protection};
use haven_engine::executor::Clock;
use haven_engine::protection::{ProtectError, Protected, Target};
use haven_engine::readiness::{ReadinessChecker, ReadinessOptions};
use haven_engine::resolve::{ResolveError, Resolver};
use haven_engine::service::Orchestrator;
use haven_engine::simulate::{Faults, SimulatedRunner};
use haven_plan::{GroupId, Plan, VmRef};
use haven_store::testing::SwitchableLog;
use haven_store::{CommandLog, Role, Store};
use serde_json::Value;
use ureq::http::{Request, Response};

/// The example three-tier plan (set `ecommerce`).
pub const SHOP: &str = include_str!("../../../plan/examples/three-tier.toml");
/// Its id.
pub const SHOP_ID: &str = "shop-three-tier";

/// A small plan in set `set`, with id `id`.
pub fn small_plan(id: &str, set: &str) -> String {
    format!(
        r#"id = "{id}"
name = "Small {id}"
plan_set = "{set}"
rto = "30m"
rpo = "15m"

[[groups]]
id = "db"
name = "Database"
connector = "vcenter-prod"
vms = ["db-01"]
"#
    )
}

/// Resolves the example plan's tag-selected group (what a connector's
/// inventory would answer).
struct ExampleInventory;

#[async_trait]
impl Resolver for ExampleInventory {
    async fn resolve(&self, _plan: &Plan) -> Result<BTreeMap<GroupId, Vec<VmRef>>, ResolveError> {
        let vm = |name: &str| VmRef {
            connector: "vcenter-prod".into(),
            name: name.into(),
        };
        Ok(BTreeMap::from([(
            GroupId::from("app"),
            vec![vm("app-01"), vm("app-02")],
        )]))
    }
}

struct NoPlugins;

impl Inventory for NoPlugins {
    fn connectors(&self) -> Result<Vec<Value>, String> {
        Ok(vec![])
    }
    fn plugins(&self) -> Result<Vec<Value>, String> {
        Ok(vec![])
    }
}

/// Knows the connector instances of the example plan; there are no plugins
/// here, so a point taken now fails for each VM (the lab end-to-end tests
/// replicate for real).
struct ExampleConnectors;

#[async_trait]
impl Protection for ExampleConnectors {
    fn connectors(&self) -> Vec<String> {
        vec!["vcenter-prod".into(), "vcenter-dr".into()]
    }

    async fn protect(&self, targets: &[Target]) -> Vec<Protected> {
        targets
            .iter()
            .map(|t| Protected {
                vm: t.vm.clone(),
                result: Err(ProtectError::UnknownConnector(t.vm.connector.clone())),
            })
            .collect()
    }
}

/// A running server.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The bootstrap admin token.
    pub admin: String,
    /// The log (to switch roles, read the store).
    pub log: Arc<SwitchableLog>,
    /// The haven home.
    pub home: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a server whose simulated steps take about `step_ms`.
pub fn start(step_ms: u64) -> Server {
    let home = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&home.path().join("state.redb")).unwrap());
    let log = Arc::new(SwitchableLog::new(store, Role::Primary { term: 1 }));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (log2, home_path) = (log.clone(), home.path().to_owned());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut runner = SimulatedRunner::new(3, Faults::default());
            runner.step_time = Duration::from_millis(step_ms);
            let orchestrator = Orchestrator::new(
                log2.clone(),
                Arc::new(ExampleInventory),
                Arc::new(runner),
                Clock::system(),
            );
            haven_api::bootstrap_admin(&*log2, &home_path, orchestrator.now_ms())
                .await
                .unwrap();
            orchestrator.supervise();
            let readiness = EngineReadiness::new(
                ReadinessChecker::new(BTreeMap::new()),
                ReadinessOptions::default(),
            );
            let app = haven_api::router(ApiState::new(
                orchestrator,
                Arc::new(readiness),
                Arc::new(NoPlugins),
                Arc::new(ExampleConnectors),
            ));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = shutdown_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let admin = std::fs::read_to_string(home.path().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    Server {
        base: format!("http://{addr}"),
        admin,
        log,
        home,
        shutdown: Some(shutdown_tx),
        thread: Some(thread),
    }
}

/// An answer: status, headers, body text.
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The error's field.
    pub fn field(&self) -> Option<String> {
        self.json()["error"]["field"].as_str().map(str::to_owned)
    }

    /// The error's code.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

impl Server {
    /// Sends a request; `body` is (content type, text).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}/api/v1{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response: Response<ureq::Body> = match body {
            Some((content_type, text)) => agent()
                .run(
                    request
                        .header("Content-Type", content_type)
                        .body(text.to_owned())
                        .unwrap(),
                )
                .unwrap(),
            None => agent().run(request.body(()).unwrap()).unwrap(),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.into_body().read_to_string().unwrap();
        Answer {
            status,
            headers,
            text,
        }
    }

    /// GET with a token.
    pub fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), &[], None)
    }

    /// POST JSON with a token.
    pub fn post(&self, path: &str, token: &str, json: Value) -> Answer {
        self.call(
            "POST",
            path,
            Some(token),
            &[],
            Some(("application/json", &json.to_string())),
        )
    }

    /// PUT a TOML plan with a token.
    pub fn put_plan(&self, id: &str, token: &str, toml: &str, if_match: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> = if_match.map(|v| ("If-Match", v)).into_iter().collect();
        self.call(
            "PUT",
            &format!("/plans/{id}"),
            Some(token),
            &headers,
            Some(("application/toml", toml)),
        )
    }

    /// Creates a token; returns its secret.
    pub fn token(&self, role: &str, sets: &[&str]) -> String {
        let a = self.post(
            "/tokens",
            &self.admin,
            serde_json::json!({"name": format!("{role} of {sets:?}"), "role": role, "plan_sets": sets}),
        );
        assert_eq!(a.status, 201, "{}", a.text);
        a.json()["token"].as_str().unwrap().to_owned()
    }

    /// How many entries the execution's journal holds.
    pub fn log_len(&self, id: &str) -> u64 {
        self.log
            .store()
            .stream(&format!("journal/{id}"), 0)
            .unwrap()
            .len() as u64
    }

    /// Polls an execution until its status satisfies `done`.
    pub fn wait_status(&self, id: &str, done: impl Fn(&str) -> bool) -> Value {
        for _ in 0..600 {
            let view = self.get(&format!("/executions/{id}"), &self.admin).json();
            if done(view["status"].as_str().unwrap()) {
                return view;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("execution {id} did not reach the expected status");
    }
}
