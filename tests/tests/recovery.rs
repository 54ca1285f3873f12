//! Recovery end to end: the real lab (two sites) behind the real lab plugin
//! in the plugin runtime, VMs replicated with the real block transport, plans
//! run by the executor with the connector-backed runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haven_connector::Connector;
use haven_engine::catalog;
use haven_engine::connector_runner::{ConnectorRunner, RunnerConfig, RECOVERED};
use haven_engine::executor::Clock;
use haven_engine::notify::Notifier;
use haven_engine::protection::{self, Policy, Protector, Target};
use haven_engine::readiness::{self, ReadinessChecker, ReadinessOptions};
use haven_engine::replication::{ProtectRequest, Replicator};
use haven_engine::report::{execution_report, ExecutionReport};
use haven_engine::resolve::{ConnectorResolver, Resolver};
use haven_engine::scripts::HostCommands;
use haven_engine::{ExecutionOutcome, Executor, StepContext, StepRunner};
use haven_lab::requests::{CreateVm, FailFault};
use haven_lab::{api, Lab, LabConfig};
use haven_plan::{Action, Mode, Plan};
use haven_plugin_runtime::PluginConnector;
use haven_store::testing::SwitchableLog;
use haven_store::{CommandLog, LocalLog, Store};
use haven_tests::TestHome;
use serde_json::json;

const TOKEN: &str = "lab-token";

/// A lab with sites prod and dr, the lab plugin configured for both, a state
/// store and a transport repository.
struct World {
    lab: Lab,
    lab_dir: tempfile::TempDir,
    _home: TestHome,
    work: tempfile::TempDir,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    log: Arc<dyn CommandLog>,
    replicator: Arc<Replicator>,
}

impl World {
    async fn new() -> Self {
        let lab_dir = tempfile::tempdir().unwrap();
        let mut config = LabConfig::new(lab_dir.path(), TOKEN);
        config.op_delay_ms = 10;
        config.boot_delay_ms = 100;
        let lab = Lab::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(api::serve(lab.clone(), listener, std::future::pending()));

        let home = TestHome::new();
        home.configure_lab(&url, TOKEN, lab_dir.path());
        let runtime = Arc::new(home.runtime());
        let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        for name in ["lab-prod", "lab-dr"] {
            connectors.insert(
                name.into(),
                Arc::new(PluginConnector::new(runtime.clone(), name).unwrap()),
            );
        }
        let work = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&work.path().join("state.redb")).unwrap());
        Self {
            lab,
            lab_dir,
            _home: home,
            work,
            connectors,
            log: Arc::new(LocalLog::new(store)),
            replicator: Arc::new(Replicator::new()),
        }
    }

    fn repo(&self) -> PathBuf {
        self.work.path().join("repo")
    }

    /// Creates a powered-on production VM with one 4 MiB disk holding `fill`
    /// bytes at its start, on `prod-net` at `ip`.
    async fn vm(&self, name: &str, tags: &[&str], ip: &str, fill: u8) -> String {
        let req: CreateVm = serde_json::from_value(json!({
            "site": "prod", "name": name, "cpus": 2, "memory_mib": 2048, "guest_os": "linux",
            "tags": tags, "disks": [{"size_bytes": 4 << 20}],
            "nics": [{"network": "prod-net", "ip": {"address": format!("{ip}/24"), "gateway": "10.0.10.1", "dns_servers": []}}],
        }))
        .unwrap();
        let id = self
            .finish(self.lab.create_vm(req).await.unwrap().id)
            .await
            .unwrap();
        self.write_disk(&id, 0, &vec![fill; 256 << 10]);
        self.finish(self.lab.power_on(&id).await.unwrap().id).await;
        id
    }

    async fn finish(&self, task: String) -> Option<String> {
        for _ in 0..500 {
            let t = self.lab.task(&task).unwrap();
            if t.state != haven_lab::model::TaskState::Running {
                assert_eq!(t.state, haven_lab::model::TaskState::Succeeded, "{t:?}");
                return t.result;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("lab task {task} never ended");
    }

    fn disk_path(&self, vm_id: &str) -> PathBuf {
        let vm = self.lab.vm(vm_id).unwrap().vm;
        self.lab_dir.path().join(&vm.disks[0].path)
    }

    fn write_disk(&self, vm_id: &str, offset: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.disk_path(vm_id))
            .unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    async fn protect(&self, name: &str) {
        self.replicator
            .protect(
                self.log.as_ref(),
                ProtectRequest {
                    production: self.connectors["lab-prod"].as_ref(),
                    vm: name,
                    recovery_connector: "lab-dr",
                    repository: &self.repo(),
                    final_sync: false,
                    inventory: None,
                    job_timeout: Duration::from_secs(10),
                },
            )
            .await
            .unwrap();
    }

    fn runner(&self, connectors: &BTreeMap<String, Arc<dyn Connector>>) -> Arc<ConnectorRunner> {
        let notify = self.work.path().join("notify.jsonl");
        let notifier = Notifier::parse(
            "notify.toml",
            &format!(
                "[channels.ops]\nfile = {:?}\n",
                notify.display().to_string()
            ),
        )
        .unwrap();
        Arc::new(
            ConnectorRunner::new(
                self.log.clone(),
                connectors.clone(),
                self.replicator.clone(),
            )
            .with_notifier(notifier)
            .with_host_commands(HostCommands::new(
                self.work.path().join("host-commands.toml"),
            ))
            .with_config(RunnerConfig {
                job_timeout: Duration::from_secs(10),
                wait_timeout: Duration::from_secs(10),
                poll_interval: Duration::from_millis(50),
            }),
        )
    }

    async fn run(
        &self,
        plan: &Plan,
        mode: Mode,
        execution: &str,
    ) -> (ExecutionOutcome, Vec<String>) {
        self.run_with(plan, mode, execution, &self.connectors).await
    }

    /// The report of an execution of `plan` in `mode` that ran already.
    async fn report(&self, plan: &Plan, mode: Mode, execution: &str) -> ExecutionReport {
        let resolved = ConnectorResolver::new(self.connectors.clone())
            .with_catalog(self.log.store().clone())
            .resolve(plan)
            .await
            .unwrap();
        let graph = plan.compile(mode, &resolved).unwrap();
        execution_report(self.log.store(), execution, &graph, None).unwrap()
    }

    /// Runs `plan` with only `connectors` available to Haven.
    async fn run_with(
        &self,
        plan: &Plan,
        mode: Mode,
        execution: &str,
        connectors: &BTreeMap<String, Arc<dyn Connector>>,
    ) -> (ExecutionOutcome, Vec<String>) {
        let resolved = ConnectorResolver::new(connectors.clone())
            .with_catalog(self.log.store().clone())
            .resolve(plan)
            .await
            .unwrap();
        let graph = plan.compile(mode, &resolved).unwrap();
        let executor = Executor::new(self.log.clone(), self.runner(connectors), Clock::system());
        let outcome = executor.run(execution, &graph).await.unwrap();
        let journal = self
            .log
            .store()
            .stream(&format!("journal/{execution}"), 0)
            .unwrap()
            .into_iter()
            .map(|e| e.entry.to_string())
            .collect();
        (outcome, journal)
    }

    fn site_vms(&self, site: &str) -> Vec<haven_lab::model::Vm> {
        self.lab
            .vms(Some(site))
            .unwrap()
            .into_iter()
            .map(|v| v.vm)
            .collect()
    }

    fn images(&self) -> Vec<String> {
        match std::fs::read_dir(self.lab_dir.path().join("images")) {
            Ok(dir) => dir
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn plan() -> Plan {
    Plan::from_toml(
        r#"
id = "shop"
name = "Shop"
rto = "30m"
rpo = "15m"

[[network_map]]
production = "prod-net"
recovery = "dr-net"
test = "dr-test"

[[re_ip]]
source = "10.0.10.0/24"
target = "172.16.10.0/24"
gateway = "172.16.10.1"

[[post_steps]]
name = "Tell ops"
action = { kind = "notify", channel = "ops", message = "shop is up" }

[[groups]]
id = "db"
name = "Database"
connector = "lab-prod"
vms = ["db-01"]

[[groups.gates]]
type = "heartbeat"
timeout = "20s"

[[groups]]
id = "web"
name = "Web"
depends_on = ["db"]
connector = "lab-prod"
tags = ["role=web"]
"#,
    )
    .unwrap()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_recovers_into_the_isolated_network_and_cleans_up() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0xdb).await;
    w.vm("web-01", &["role=web"], "10.0.10.15", 0xeb).await;
    w.protect("db-01").await;
    w.protect("web-01").await;

    let (outcome, journal) = w.run(&plan(), Mode::Test, "drill-1").await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    let text = journal.join("\n");
    // Both VMs came up on the isolated network with re-addressed adapters.
    assert!(
        text.contains(r#"on [\"dr-test\"], 1 adapter(s) re-addressed"#),
        "{text}"
    );
    assert!(text.contains("heartbeat ok"), "{text}");
    assert_eq!(text.matches("powered on").count(), 2, "{text}");
    // The cleanup left nothing behind at the recovery site.
    assert!(w.site_vms("dr").is_empty(), "{:?}", w.site_vms("dr"));
    assert!(w.images().is_empty(), "{:?}", w.images());
    // Production and replication were not touched.
    for vm in w.site_vms("prod") {
        assert_eq!(vm.power, haven_lab::model::Power::On, "{}", vm.name);
    }
    let db = catalog::get(
        w.log.store(),
        &haven_plan::VmRef {
            connector: "lab-prod".into(),
            name: "db-01".into(),
        },
    )
    .unwrap()
    .unwrap()
    .value;
    assert!(!db.stopped && db.recovered.is_none());
    // The post-step notified the file channel.
    let note = std::fs::read_to_string(w.work.path().join("notify.jsonl")).unwrap();
    assert!(
        note.contains("shop is up") && note.contains("drill-1"),
        "{note}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_restores_the_point_then_undo_removes_it() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0x11).await;
    let web = w.vm("web-01", &["role=web"], "10.0.10.15", 0x22).await;
    w.protect("db-01").await;
    w.protect("web-01").await;
    // Written after the recovery point: must not appear at the recovery site.
    w.write_disk(&web, 0, &[0x99; 4096]);

    // A host command after the database group sees the typed context.
    std::fs::write(
        w.work.path().join("host-commands.toml"),
        "enabled = true\nallow = [\"/bin/sh\"]\n",
    )
    .unwrap();
    let mut plan = plan();
    plan.groups[0].post_steps = Plan::from_toml(
        r#"
name = "x"
[[post_steps]]
name = "Context"
action = { kind = "run-host-command", command = "/bin/sh", args = ["-c", "echo \"$HAVEN_MODE $HAVEN_DIRECTION $HAVEN_GROUP $HAVEN_TEST\""] }
"#,
    )
    .unwrap()
    .post_steps;
    let (outcome, journal) = w.run(&plan, Mode::Failover, "failover-1").await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    assert!(
        journal
            .iter()
            .any(|j| j.contains("failover to-recovery db false")),
        "{journal:#?}"
    );
    let dr = w.site_vms("dr");
    assert_eq!(dr.len(), 2, "{dr:?}");
    let recovered = dr.iter().find(|v| v.name == "web-01").unwrap();
    assert_eq!(recovered.power, haven_lab::model::Power::On);
    assert_eq!(recovered.nics[0].network, "dr-net");
    assert_eq!(recovered.nics[0].ips, ["172.16.10.15"]);
    let image = w.lab_dir.path().join(&recovered.disks[0].path);
    assert_eq!(read_at(&image, 0, 4096), vec![0x22; 4096]);
    assert_eq!(read_at(&image, 4 << 19, 16), vec![0; 16]);
    let web_ref = haven_plan::VmRef {
        connector: "lab-prod".into(),
        name: "web-01".into(),
    };
    let record = catalog::get(w.log.store(), &web_ref)
        .unwrap()
        .unwrap()
        .value;
    assert!(record.stopped, "failover stops replication");
    assert_eq!(record.recovered.as_ref().unwrap().vm_id, recovered.id);
    let report = w.report(&plan, Mode::Failover, "failover-1").await;
    let used: Vec<&str> = report
        .recovery_points
        .iter()
        .map(|p| p.vm.as_str())
        .collect();
    assert_eq!(used, ["lab-prod/db-01", "lab-prod/web-01"]);
    let web_point = &report.recovery_points[1];
    assert_eq!(web_point.point, record.points.last().unwrap().id);
    assert_eq!(
        web_point.age_ms,
        report.started_at_ms - web_point.taken_at_ms,
        "the achieved RPO is the point's age when the failover started"
    );
    assert!(report
        .measured_rto_ms
        .is_some_and(|rto| rto <= report.duration_ms));

    let (outcome, journal) = w.run(&plan, Mode::Undo, "undo-1").await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    assert!(w.site_vms("dr").is_empty());
    assert!(w.images().is_empty(), "{:?}", w.images());
    let record = catalog::get(w.log.store(), &web_ref)
        .unwrap()
        .unwrap()
        .value;
    assert!(!record.stopped && record.recovered.is_none());
}

/// Runs the steps of `graph` for `vm` up to and including `until`, directly.
async fn steps_until(
    runner: &ConnectorRunner,
    graph: &haven_plan::ExecutionGraph,
    vm: &str,
    until: &str,
) -> String {
    let mut last = String::new();
    for step in graph
        .steps
        .iter()
        .filter(|s| s.vm.as_ref().is_some_and(|v| v.name == vm))
    {
        let ctx = StepContext {
            execution: "crash-1".into(),
            mode: graph.mode,
            attempt: 1,
            fence: 1,
        };
        last = runner.run(graph, step, &ctx).await.unwrap();
        if step.action.kind() == until {
            break;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_vm_after_a_crash_adopts_instead_of_duplicating() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0x33).await;
    w.protect("db-01").await;
    let mut plan = plan();
    plan.groups.truncate(1);
    let resolved = ConnectorResolver::new(w.connectors.clone())
        .resolve(&plan)
        .await
        .unwrap();
    let graph = plan.compile(Mode::Failover, &resolved).unwrap();
    let runner = w.runner(&w.connectors);
    let first = steps_until(&runner, &graph, "db-01", "create-vm").await;
    assert!(first.starts_with("created db-01"), "{first}");

    // A crash after the VM was created but before its id was recorded.
    let key = "crash-1/lab-prod/db-01";
    let mut rec = w.log.store().get(RECOVERED, key).unwrap().unwrap().value;
    rec["vm_id"] = serde_json::Value::Null;
    w.log
        .commit(vec![haven_store::Command::Put {
            collection: RECOVERED.into(),
            key: key.into(),
            value: rec,
            expected_version: None,
        }])
        .await
        .unwrap();
    let create = graph
        .steps
        .iter()
        .find(|s| s.action == Action::CreateVm)
        .unwrap();
    let ctx = StepContext {
        execution: "crash-1".into(),
        mode: Mode::Failover,
        attempt: 2,
        fence: 2,
    };
    let again = runner.run(&graph, create, &ctx).await.unwrap();
    assert!(again.contains("adopted"), "{again}");
    // A third attempt finds the recorded id.
    let third = runner.run(&graph, create, &ctx).await.unwrap();
    assert!(third.contains("earlier attempt"), "{third}");
    assert_eq!(
        w.site_vms("dr")
            .iter()
            .filter(|v| v.name == "db-01")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_retries_injected_lab_faults() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0x44).await;
    w.protect("db-01").await;
    let mut plan = plan();
    plan.groups.truncate(1);
    // Two power-on tasks fail with a passing error: the runner retries them.
    let fault: FailFault =
        serde_json::from_value(json!({"op": "power-on", "count": 2, "code": "unavailable"}))
            .unwrap();
    w.lab.fail_next(fault).await.unwrap();
    let (outcome, journal) = w.run(&plan, Mode::Failover, "faulty-1").await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    assert_eq!(
        w.lab.faults()["fail"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        w.lab.faults()
    );
    assert_eq!(w.site_vms("dr")[0].power, haven_lab::model::Power::On);

    // A permanent fault is not retried: the step fails with the lab's message.
    w.run(&plan, Mode::Undo, "undo-1").await;
    let fault: FailFault =
        serde_json::from_value(json!({"op": "power-on", "count": 1, "code": "broken"})).unwrap();
    w.lab.fail_next(fault).await.unwrap();
    let (outcome, journal) = w.run(&plan, Mode::Failover, "faulty-2").await;
    assert!(
        matches!(outcome, ExecutionOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert!(journal.join("\n").contains("broken"), "{journal:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_missing_and_stale_replicas() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0x55).await;
    w.vm("web-01", &["role=web"], "10.0.10.15", 0x66).await;
    w.protect("web-01").await;
    let plan = plan();
    let checker = ReadinessChecker::new(w.connectors.clone());
    let options = ReadinessOptions {
        notifier: Notifier::parse("n", "[channels.ops]\nfile = \"/tmp/haven-n.jsonl\"\n").unwrap(),
        ..Default::default()
    };
    let report = checker.check(w.log.store(), &plan, 3, &options).await;
    assert!(!report.ready);
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
    assert_eq!(report.problems[0].path, "groups.0.vms.0");
    assert_eq!(report.problems[0].subject, "lab-prod/db-01");

    // Protected, but the newest point is older than the RPO.
    w.protect("db-01").await;
    let db = haven_plan::VmRef {
        connector: "lab-prod".into(),
        name: "db-01".into(),
    };
    catalog::update(w.log.as_ref(), &db, |r| {
        r.points[0].taken_at_ms -= 20 * 60 * 1000;
        true
    })
    .await
    .unwrap();
    let report = checker.check(w.log.store(), &plan, 3, &options).await;
    let paths: Vec<(&str, &str)> = report
        .problems
        .iter()
        .map(|p| (p.path.as_str(), p.subject.as_str()))
        .collect();
    assert_eq!(paths, [("rpo", "lab-prod/db-01")], "{:#?}", report.problems);

    // A fresh point: ready, and the result is stored with the plan version.
    w.protect("db-01").await;
    let report = checker.check(w.log.store(), &plan, 3, &options).await;
    assert!(report.ready, "{:#?}", report.problems);
    assert_eq!(report.vms.len(), 2);
    assert!(report.connectors.iter().all(|c| c.ok));
    readiness::record(w.log.as_ref(), &report).await.unwrap();
    let stored = w
        .log
        .store()
        .get(readiness::COLLECTION, "shop")
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(stored["plan_version"], 3);
    assert!(readiness::to_html(&report).contains("ready"));

    // References that do not resolve are named by field.
    let mut dangling = plan.clone();
    dangling.groups[0].vms.push("db-99".into());
    dangling.groups[1].connector = Some("lab-nowhere".into());
    let report = checker.check(w.log.store(), &dangling, 4, &options).await;
    let paths: Vec<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["groups.0.vms.1", "groups.1.connector"],
        "{:#?}",
        report.problems
    );
    assert!(report.problems[0].message.contains("db-99"));
    let err = ConnectorResolver::new(w.connectors.clone())
        .resolve(&dangling)
        .await
        .unwrap_err();
    assert_eq!(err.path, "groups.0.vms.1");

    // A drill network that is not isolated is refused.
    let mut leaky = plan.clone();
    leaky.network_map[0].test = Some("dr-net".into());
    let report = checker.check(w.log.store(), &leaky, 4, &options).await;
    assert_eq!(
        report.problems[0].path, "network_map.0.test",
        "{:#?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_loses_no_data_and_failback_brings_it_home() {
    let w = World::new().await;
    let db = w.vm("db-01", &["role=db"], "10.0.10.5", 0x77).await;
    w.protect("db-01").await;
    // Written after the last scheduled point: the final sync must carry it.
    w.write_disk(&db, 8192, &[0x78; 4096]);
    let mut plan = plan();
    plan.groups.truncate(1);

    let (outcome, journal) = w.run(&plan, Mode::Migration, "migrate-1").await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    let prod = &w.site_vms("prod")[0];
    assert_eq!(
        prod.power,
        haven_lab::model::Power::Off,
        "production is shut down"
    );
    let dr = w.site_vms("dr");
    assert_eq!(dr.len(), 1);
    assert_eq!(dr[0].power, haven_lab::model::Power::On);
    let dr_image = w.lab_dir.path().join(&dr[0].disks[0].path);
    assert_eq!(read_at(&dr_image, 8192, 4096), vec![0x78; 4096]);
    let db_ref = haven_plan::VmRef {
        connector: "lab-prod".into(),
        name: "db-01".into(),
    };
    let record = catalog::get(w.log.store(), &db_ref).unwrap().unwrap().value;
    assert!(record.points.last().unwrap().final_sync && record.stopped);

    // Work done at the recovery site comes back with the failback.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dr_image)
            .unwrap();
        f.write_all_at(&[0x79; 4096], 16384).unwrap();
    }
    let (outcome, journal) = w.run(&plan, Mode::Failback, "failback-1").await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    let prod = w.site_vms("prod");
    assert_eq!(prod.len(), 1, "{prod:?}");
    assert_eq!(prod[0].power, haven_lab::model::Power::On);
    assert_ne!(prod[0].id, db, "the failback copy replaced the original");
    assert_eq!(prod[0].nics[0].network, "prod-net");
    assert_eq!(prod[0].nics[0].ips, ["10.0.10.5"]);
    let image = w.lab_dir.path().join(&prod[0].disks[0].path);
    assert_eq!(read_at(&image, 0, 4096), vec![0x77; 4096]);
    assert_eq!(read_at(&image, 8192, 4096), vec![0x78; 4096]);
    assert_eq!(read_at(&image, 16384, 4096), vec![0x79; 4096]);
    assert_eq!(w.site_vms("dr")[0].power, haven_lab::model::Power::Off);
    let record = catalog::get(w.log.store(), &db_ref).unwrap().unwrap().value;
    assert_eq!(record.vm_id, prod[0].id);
    assert!(!record.stopped && record.recovered.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_needs_nothing_from_the_lost_production_site() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0x12).await;
    w.vm("web-01", &["role=web"], "10.0.10.15", 0x34).await;
    w.protect("db-01").await;
    w.protect("web-01").await;
    let loss: haven_lab::requests::HostLossFault =
        serde_json::from_value(json!({"site": "prod"})).unwrap();
    w.lab.set_host_loss(loss).await.unwrap();
    // Production's connector is gone with its site: groups (names and tags)
    // resolve from the replica catalog, and every step acts at the DR site.
    let dr_only: BTreeMap<String, Arc<dyn Connector>> =
        BTreeMap::from([("lab-dr".to_string(), w.connectors["lab-dr"].clone())]);
    let (outcome, journal) = w
        .run_with(&plan(), Mode::Failover, "disaster-1", &dr_only)
        .await;
    assert_eq!(outcome, ExecutionOutcome::Succeeded, "{journal:#?}");
    let mut up: Vec<String> = w
        .site_vms("dr")
        .into_iter()
        .filter(|v| v.power == haven_lab::model::Power::On)
        .map(|v| v.name)
        .collect();
    up.sort();
    assert_eq!(up, ["db-01", "web-01"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_drill_still_cleans_up_everything() {
    let w = World::new().await;
    w.vm("db-01", &["role=db"], "10.0.10.5", 0x21).await;
    w.vm("web-01", &["role=web"], "10.0.10.15", 0x43).await;
    w.protect("db-01").await;
    w.protect("web-01").await;
    let fault: FailFault =
        serde_json::from_value(json!({"op": "power-on", "count": 1, "code": "broken"})).unwrap();
    w.lab.fail_next(fault).await.unwrap();
    let (outcome, journal) = w.run(&plan(), Mode::Test, "drill-bad").await;
    assert!(
        matches!(outcome, ExecutionOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let text = journal.join("\n");
    assert!(text.contains("deleted db-01-test-"), "{text}");
    assert!(w.site_vms("dr").is_empty(), "{:?}", w.site_vms("dr"));
    assert!(w.images().is_empty(), "{:?}", w.images());
}

fn target(world: &World, vm: &str) -> Target {
    Target {
        vm: haven_plan::VmRef {
            connector: "lab-prod".into(),
            name: vm.into(),
        },
        recovery_connector: "lab-dr".into(),
        repository: world.repo(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protector_protects_vms_now_with_one_result_each_in_order() {
    let world = World::new().await;
    world.vm("web-01", &[], "10.0.10.11", 0x11).await;
    world.vm("db-01", &[], "10.0.10.12", 0x12).await;
    let protector = Protector::new(
        world.log.clone(),
        world.connectors.clone(),
        world.replicator.clone(),
        Clock::system(),
    )
    .with_parallel(2);
    let targets = [
        target(&world, "web-01"),
        target(&world, "missing-vm"),
        target(&world, "db-01"),
    ];
    let done = protector.protect(&targets).await;
    let names: Vec<String> = done.iter().map(|d| d.vm.name.clone()).collect();
    assert_eq!(names, ["web-01", "missing-vm", "db-01"]);
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    let missing = done[1].result.as_ref().unwrap_err().to_string();
    assert!(missing.contains("missing-vm"), "{missing}");
    assert!(done[2].result.is_ok(), "{:?}", done[2].result);
    for vm in ["web-01", "db-01"] {
        let record = catalog::get(world.log.store(), &target(&world, vm).vm)
            .unwrap()
            .unwrap_or_else(|| panic!("{vm} is in the catalog"));
        assert_eq!(record.value.points.len(), 1);
        assert_eq!(record.value.recovery_connector, "lab-dr");
    }
    assert!(
        catalog::get(world.log.store(), &target(&world, "missing-vm").vm)
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_schedule_runs_on_the_primary_only_and_skips_stopped_vms() {
    let world = World::new().await;
    world.vm("web-01", &[], "10.0.10.11", 0x11).await;
    world.vm("db-01", &[], "10.0.10.12", 0x12).await;
    // db-01 was failed over: its replication is stopped.
    world.protect("db-01").await;
    let db = target(&world, "db-01").vm;
    let mut stopped = catalog::get(world.log.store(), &db).unwrap().unwrap();
    stopped.value.stopped = true;
    world
        .log
        .commit(vec![haven_store::Command::Put {
            collection: catalog::COLLECTION.into(),
            key: catalog::ReplicaRecord::key(&db),
            value: serde_json::to_value(&stopped.value).unwrap(),
            expected_version: Some(stopped.version),
        }])
        .await
        .unwrap();
    let policies: Vec<Policy> = ["web-01", "db-01"]
        .iter()
        .map(|vm| {
            let t = target(&world, vm);
            Policy {
                vm: t.vm,
                recovery_connector: t.recovery_connector,
                repository: t.repository,
                every_ms: Some(protection::MIN_EVERY_MS),
                created_by: "test".into(),
                created_at_ms: 0,
            }
        })
        .collect();
    protection::put_policies(world.log.as_ref(), &policies)
        .await
        .unwrap();

    let log = Arc::new(SwitchableLog::new(
        world.log.store().clone(),
        haven_store::Role::Follower { primary: None },
    ));
    let protector = Arc::new(
        Protector::new(
            log.clone(),
            world.connectors.clone(),
            world.replicator.clone(),
            Clock::system(),
        )
        .with_tick(Duration::from_millis(50)),
    );
    let supervisor = protector.supervise();
    let web = target(&world, "web-01").vm;

    // A follower takes no point, however long it waits.
    assert!(protector.run_due().await.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(catalog::get(world.log.store(), &web).unwrap().is_none());

    // The primary takes the due point of web-01, not of the stopped db-01.
    log.role
        .send_replace(haven_store::Role::Primary { term: 1 });
    let mut points = 0;
    for _ in 0..600 {
        points = catalog::get(world.log.store(), &web)
            .unwrap()
            .map_or(0, |r| r.value.points.len());
        if points > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(points, 1, "the primary ran web-01's schedule");
    let db_points = catalog::get(world.log.store(), &db).unwrap().unwrap();
    assert_eq!(db_points.value.points.len(), 1, "a stopped VM is skipped");
    // Not due again before its interval.
    assert!(protector.due(Clock::system().now_ms()).unwrap().is_empty());
    assert_eq!(
        protector
            .due(Clock::system().now_ms() + protection::MIN_EVERY_MS)
            .unwrap()
            .iter()
            .map(|p| p.vm.name.as_str())
            .collect::<Vec<_>>(),
        ["web-01"]
    );

    // Demoted: the supervisor stops taking points.
    log.role
        .send_replace(haven_store::Role::Follower { primary: None });
    assert!(protector.run_due().await.is_empty());
    drop(log);
    drop(protector);
    supervisor.abort();
}
