//! A plan of 1,000 VMs in 20 groups, against the real lab through the lab
//! plugin, every VM replicated by the real block transport:
//!
//! - the readiness check (target ≤ 5 s);
//! - a whole drill (create from the replicas into the isolated network,
//!   power on, heartbeat gates, cleanup) and the engine's overhead beyond
//!   the connectors' own time (target ≤ 1 s): wall time minus the critical
//!   path through the step graph, each step weighted by the time its runner
//!   really took;
//! - the state-store writes per step transition (group commit).
//!
//! `cargo bench -p haven-tests --bench plan_1000` (build the plugins first:
//! `scripts/build-plugins.sh`). `HAVEN_BENCH_VMS` changes the count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use haven_connector::Connector;
use haven_engine::connector_runner::{ConnectorRunner, RunnerConfig};
use haven_engine::executor::Clock;
use haven_engine::notify::Notifier;
use haven_engine::readiness::{ReadinessChecker, ReadinessOptions};
use haven_engine::replication::{ProtectRequest, Replicator};
use haven_engine::resolve::{ConnectorResolver, Resolver};
use haven_engine::{ExecutionOutcome, Executor, StepContext, StepFailure, StepRunner};
use haven_lab::requests::SeedRequest;
use haven_lab::{api, Lab, LabConfig};
use haven_plan::{ExecutionGraph, Mode, Plan, StepInstance};
use haven_plugin_runtime::PluginConnector;
use haven_store::{Applied, Command, CommandLog, CommitError, LocalLog, Role, Store};
use haven_tests::TestHome;
use tokio::sync::watch;

const READINESS_TARGET: Duration = Duration::from_secs(5);
const OVERHEAD_TARGET: Duration = Duration::from_secs(1);
const GROUPS: u32 = 20;
/// Groups are recovered in tiers (databases, then applications, ...): each
/// group of a tier depends on every group of the tier before.
const TIERS: u32 = 4;

fn main() {
    let count: u32 = std::env::var("HAVEN_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(count));
}

async fn bench(count: u32) {
    let lab_dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(lab_dir.path(), "t");
    config.op_delay_ms = 20;
    config.boot_delay_ms = 200;
    let lab = Lab::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(lab.clone(), listener, std::future::pending()));
    let seed: SeedRequest = serde_json::from_value(serde_json::json!({
        "site": "prod", "count": count, "groups": GROUPS, "power_on": true,
    }))
    .unwrap();
    lab.seed(seed).await.unwrap();

    let home = TestHome::new();
    home.configure_lab(&url, "t", lab_dir.path());
    let runtime = Arc::new(home.runtime());
    let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
    for name in ["lab-prod", "lab-dr"] {
        connectors.insert(
            name.into(),
            Arc::new(PluginConnector::new(runtime.clone(), name).unwrap()),
        );
    }
    let work = tempfile::tempdir().unwrap();
    let log = Arc::new(CountingLog::new(LocalLog::new(Arc::new(
        Store::open(&work.path().join("state.redb")).unwrap(),
    ))));
    let repo = work.path().join("repo");
    let replicator = Arc::new(Replicator::new());

    let setup = Instant::now();
    protect_all(&connectors, log.clone(), replicator.clone(), &repo).await;
    println!(
        "setup: {count} VMs seeded and replicated in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let plan = Plan::from_toml(&plan_toml()).unwrap();

    // Readiness.
    let checker = ReadinessChecker::new(connectors.clone());
    let options = ReadinessOptions {
        notifier: Notifier::default(),
        ..Default::default()
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let report = checker.check(log.store(), &plan, 1, &options).await;
        times.push(start.elapsed());
        assert!(
            report.ready,
            "{:#?}",
            &report.problems[..report.problems.len().min(5)]
        );
        assert_eq!(report.vms.len(), count as usize);
    }
    times.sort();
    let (median, max) = (times[times.len() / 2], times[times.len() - 1]);

    // The drill.
    let resolved = ConnectorResolver::new(connectors.clone())
        .resolve(&plan)
        .await
        .unwrap();
    let graph = plan.compile(Mode::Test, &resolved).unwrap();
    let runner = ConnectorRunner::new(log.clone(), connectors.clone(), replicator).with_config(
        RunnerConfig {
            poll_interval: Duration::from_millis(50),
            ..RunnerConfig::default()
        },
    );
    let timed = Arc::new(TimedRunner::new(runner, graph.steps.len()));
    let executor = Executor::new(log.clone(), timed.clone(), Clock::system());
    let (commits_before, events_before) = log.counts();
    let start = Instant::now();
    let outcome = executor.run("bench-drill", &graph).await.unwrap();
    let wall = start.elapsed();
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    let (commits_after, events_after) = log.counts();
    let (commits, transitions) = (commits_after - commits_before, events_after - events_before);
    let critical = timed.critical_path(&graph);
    let overhead = wall.saturating_sub(critical);

    println!(
        "plan: {count} VMs in {GROUPS} groups ({TIERS} tiers), {} step instances",
        graph.steps.len()
    );
    println!(
        "readiness check: median {:.0} ms, max {:.0} ms (target ≤ {} s: {})",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        READINESS_TARGET.as_secs(),
        verdict(max <= READINESS_TARGET)
    );
    println!(
        "drill: {:.2} s wall; critical path of the connectors' own time {:.2} s; \
         engine overhead {:.0} ms (target ≤ {} s: {})",
        wall.as_secs_f64(),
        critical.as_secs_f64(),
        overhead.as_secs_f64() * 1e3,
        OVERHEAD_TARGET.as_secs(),
        verdict(overhead <= OVERHEAD_TARGET)
    );
    println!(
        "state store: {transitions} journal events (step transitions), {commits} durable writes: \
         {:.3} writes per transition",
        commits as f64 / transitions.max(1) as f64
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// 20 tag-selected groups in tiers, each with a heartbeat gate; drills go
/// to the isolated `dr-test` network.
fn plan_toml() -> String {
    let mut plan = String::from(
        "id = \"bench\"\nname = \"Bench\"\nrto = \"1h\"\nrpo = \"1h\"\n\
         [[network_map]]\nproduction = \"prod-net\"\nrecovery = \"dr-net\"\ntest = \"dr-test\"\n",
    );
    let per_tier = GROUPS / TIERS;
    for g in 1..=GROUPS {
        let tier = (g - 1) / per_tier;
        let depends: Vec<String> = (1..=GROUPS)
            .filter(|&d| tier > 0 && (d - 1) / per_tier == tier - 1)
            .map(|d| format!("\"g{d:02}\""))
            .collect();
        plan.push_str(&format!(
            "[[groups]]\nid = \"g{g:02}\"\nname = \"Group {g}\"\nconnector = \"lab-prod\"\n\
             tags = [\"group=g{g:02}\"]\ndepends_on = [{}]\n\
             [[groups.gates]]\ntype = \"heartbeat\"\ntimeout = \"5m\"\n",
            depends.join(", ")
        ));
    }
    plan
}

/// Replicates every production VM once (setup, not measured).
async fn protect_all(
    connectors: &BTreeMap<String, Arc<dyn Connector>>,
    log: Arc<CountingLog>,
    replicator: Arc<Replicator>,
    repo: &std::path::Path,
) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    let inventory = Arc::new(connectors["lab-prod"].list_vms().await.unwrap());
    for vm in inventory.iter() {
        let name = vm.name.clone();
        let inventory = inventory.clone();
        let (log, replicator, semaphore) = (log.clone(), replicator.clone(), semaphore.clone());
        let (prod, repo) = (connectors["lab-prod"].clone(), repo.to_owned());
        tasks.spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            replicator
                .protect(
                    log.as_ref(),
                    ProtectRequest {
                        production: prod.as_ref(),
                        vm: &name,
                        recovery_connector: "lab-dr",
                        repository: &repo,
                        final_sync: false,
                        inventory: Some(&inventory),
                        job_timeout: Duration::from_secs(60),
                    },
                )
                .await
                .unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// The embedded log, counting durable writes and the commands they carry.
struct CountingLog {
    inner: LocalLog,
    commits: AtomicU64,
    commands: AtomicU64,
}

impl CountingLog {
    fn new(inner: LocalLog) -> Self {
        Self {
            inner,
            commits: AtomicU64::new(0),
            commands: AtomicU64::new(0),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.commands.load(Ordering::Relaxed),
        )
    }
}

#[async_trait]
impl CommandLog for CountingLog {
    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Applied>, CommitError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        self.inner.commit(commands).await
    }

    fn store(&self) -> &Arc<Store> {
        self.inner.store()
    }

    fn role(&self) -> watch::Receiver<Role> {
        self.inner.role()
    }
}

/// Wraps the real runner and records how long each step's attempts took.
struct TimedRunner {
    inner: ConnectorRunner,
    spent: Mutex<Vec<Duration>>,
}

impl TimedRunner {
    fn new(inner: ConnectorRunner, steps: usize) -> Self {
        Self {
            inner,
            spent: Mutex::new(vec![Duration::ZERO; steps]),
        }
    }

    /// The longest chain of dependent steps, each weighted by the time its
    /// runner took: what the run would last with a zero-cost engine.
    fn critical_path(&self, graph: &ExecutionGraph) -> Duration {
        let spent = self.spent.lock().unwrap();
        let mut finish = vec![Duration::ZERO; graph.steps.len()];
        // Steps are in topological order.
        for step in &graph.steps {
            let ready = step
                .depends_on
                .iter()
                .map(|&d| finish[d])
                .max()
                .unwrap_or_default();
            finish[step.index] = ready + spent[step.index];
        }
        finish.into_iter().max().unwrap_or_default()
    }
}

#[async_trait]
impl StepRunner for TimedRunner {
    async fn run(
        &self,
        graph: &ExecutionGraph,
        step: &StepInstance,
        ctx: &StepContext,
    ) -> Result<String, StepFailure> {
        let start = Instant::now();
        let result = self.inner.run(graph, step, ctx).await;
        self.spent.lock().unwrap()[step.index] += start.elapsed();
        result
    }
}
