//! Script components (`haven:script`) in the sandbox: the example smoke test
//! and a hostile script, run through `WasmScriptHost` as the plan engine runs
//! them, against real loopback servers.

use std::time::{Duration, Instant};

use haven_engine::scripts::{Direction, PointInfo, ScriptContext, WasmScripts};
use haven_engine::StepFailure;
use haven_plan::{Mode, VmRef};
use haven_plugin_runtime::{PluginStore, RuntimeError, WasmScriptHost};
use haven_plugin_sdk::harness::{FakeServer, Reply};
use haven_tests::TestHome;

const STEP_DEADLINE: Duration = Duration::from_secs(10);

fn host(home: &TestHome) -> WasmScriptHost {
    WasmScriptHost::new(home.engine().clone(), home.home(), None).expect("script host")
}

fn grant(home: &TestHome, toml: &str) {
    std::fs::write(home.home().root().join("scripts.toml"), toml).expect("write scripts.toml");
}

fn context(mode: Mode, args: &[&str]) -> ScriptContext {
    ScriptContext {
        execution: "exec-1".into(),
        plan: "shop".into(),
        mode,
        direction: Direction::of(mode),
        test: mode == Mode::Test,
        step: "exec-1/smoke".into(),
        group: None,
        vm: None,
        recovered_vm: None,
        recovery_point: None,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        attempt: 1,
        fence: 7,
    }
}

async fn hostile(
    host: &WasmScriptHost,
    args: &[&str],
    deadline: Duration,
) -> Result<String, StepFailure> {
    host.run("hostile-script", &context(Mode::Failover, args), deadline)
        .await
}

#[tokio::test]
async fn the_smoke_script_probes_a_granted_service() {
    let home = TestHome::new();
    home.install("plugins/script-smoke");
    grant(
        &home,
        "[scripts.script-smoke]\nallow_hosts = [\"127.0.0.1\"]\n",
    );
    let server = FakeServer::start();
    server.route("GET", "/health", |_| Reply::text(200, "shop: up"));
    server.route("GET", "/starting", |_| Reply::text(503, "not yet"));
    let host = host(&home);
    assert!(host.is_installed("script-smoke"));

    let url = format!("{}/health", server.url());
    let line = host
        .run(
            "script-smoke",
            &context(Mode::Test, &[&url, "up"]),
            STEP_DEADLINE,
        )
        .await
        .unwrap();
    assert!(line.starts_with(&format!("GET {url}: 200 in ")), "{line}");
    assert!(line.ends_with("(test run)"), "{line}");
    let line = host
        .run(
            "script-smoke",
            &context(Mode::Failover, &[&url]),
            STEP_DEADLINE,
        )
        .await
        .unwrap();
    assert!(line.ends_with("(real run)"), "{line}");
    assert_eq!(server.requests().len(), 2, "both runs reached the service");

    let starting = format!("{}/starting", server.url());
    let failure = host
        .run(
            "script-smoke",
            &context(Mode::Test, &[&starting]),
            STEP_DEADLINE,
        )
        .await
        .unwrap_err();
    assert!(
        failure.retryable,
        "a 503 is worth another attempt: {failure:?}"
    );
    let failure = host
        .run("script-smoke", &context(Mode::Test, &[]), STEP_DEADLINE)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(failure.message.contains("`args.0`"), "{}", failure.message);
}

#[tokio::test]
async fn the_whole_context_reaches_the_script() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile-script");
    let host = host(&home);
    let mut ctx = context(Mode::Failback, &["echo", "two words", ""]);
    ctx.group = Some("db".into());
    ctx.vm = Some(VmRef {
        connector: "vc-prod".into(),
        name: "db-01".into(),
    });
    ctx.recovered_vm = Some("vm-1234".into());
    ctx.recovery_point = Some(PointInfo {
        id: "rp-42".into(),
        taken_at_ms: 1_700_000_000_123,
    });
    ctx.attempt = 3;
    ctx.fence = u64::MAX - 1;
    let line = host
        .run("hostile-script", &ctx, STEP_DEADLINE)
        .await
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(echoed, serde_json::to_value(&ctx).unwrap());
    assert_eq!(echoed["direction"], "to-production");
}

#[tokio::test]
async fn a_script_past_its_deadline_is_stopped_and_the_next_run_is_fine() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile-script");
    let host = host(&home);
    for command in ["loop", "sleep"] {
        let started = Instant::now();
        let failure = hostile(&host, &[command], Duration::from_millis(300))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(failure.retryable, "{command}: {failure:?}");
        assert!(
            failure
                .message
                .contains("deadline (after 300 ms, the step's timeout"),
            "{command}: {}",
            failure.message
        );
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
            "{command} stopped after {elapsed:?}"
        );
    }
    // A fresh run is unaffected.
    assert!(hostile(&host, &["echo"], STEP_DEADLINE).await.is_ok());

    // The script's call_timeout_ms (here lowered by the administrator) caps a
    // longer step timeout.
    grant(
        &home,
        "[scripts.hostile-script]\nlimits = { call_timeout_ms = 200 }\n",
    );
    let started = Instant::now();
    let failure = hostile(&host, &["loop"], STEP_DEADLINE).await.unwrap_err();
    assert!(
        failure
            .message
            .contains("after 200 ms, the script's call_timeout_ms"),
        "{}",
        failure.message
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_script_reaches_only_hosts_its_administrator_granted() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile-script");
    let server = FakeServer::start();
    server.route("GET", "/", |_| Reply::text(200, "hello"));
    let host = host(&home);
    let target = format!("http:{}/", server.url());

    let failure = hostile(&host, &[&target], STEP_DEADLINE).await.unwrap_err();
    assert!(!failure.retryable);
    assert!(failure.message.contains("denied"), "{}", failure.message);
    assert!(
        server.requests().is_empty(),
        "the request must not leave the host"
    );

    // Granted, but the manifest requests only 127.0.0.1: `localhost` stays closed.
    grant(&home, "[scripts.hostile-script]\nallow_hosts = [\"*\"]\n");
    let other = target.replace("127.0.0.1", "localhost");
    assert!(hostile(&host, &[&other], STEP_DEADLINE).await.is_err());
    assert!(server.requests().is_empty());

    assert_eq!(
        hostile(&host, &[&target], STEP_DEADLINE).await.unwrap(),
        "HTTP 200"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn failures_are_typed_for_the_engine() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile-script");
    grant(
        &home,
        "[scripts.hostile-script]\nsecrets = { token = { value = \"s3cret\" } }\n",
    );
    let host = host(&home);
    assert_eq!(
        hostile(&host, &["secret:token"], STEP_DEADLINE)
            .await
            .unwrap(),
        "6"
    );
    let cases: &[(&str, bool, &str)] = &[
        ("transient", true, "not yet"),
        ("invalid", false, "invalid input in `args.1`"),
        ("failed", false, "check failed"),
        ("panic", false, "panicked"),
        ("alloc", false, "out of memory"),
        ("big", false, "larger than 65536 bytes"),
    ];
    for (command, retryable, text) in cases {
        let failure = hostile(&host, &[command], STEP_DEADLINE).await.unwrap_err();
        assert_eq!(failure.retryable, *retryable, "{command}: {failure:?}");
        assert!(
            failure.message.contains(text),
            "{command}: {}",
            failure.message
        );
    }
}

#[tokio::test]
async fn unknown_or_misconfigured_scripts_fail_with_what_to_fix() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile-script");
    home.install("plugins/example");
    let host = host(&home);

    assert!(!host.is_installed("nope"));
    let failure = host
        .run("nope", &context(Mode::Test, &[]), STEP_DEADLINE)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("haven plugin install"),
        "{}",
        failure.message
    );

    let failure = host
        .run(
            "scripts/check.wasm",
            &context(Mode::Test, &[]),
            STEP_DEADLINE,
        )
        .await
        .unwrap_err();
    assert!(
        failure.message.contains("not a script id"),
        "{}",
        failure.message
    );

    assert!(!host.is_installed("example"), "a connector is not a script");
    let failure = host
        .run("example", &context(Mode::Test, &[]), STEP_DEADLINE)
        .await
        .unwrap_err();
    assert!(
        failure.message.contains("not a script"),
        "{}",
        failure.message
    );

    grant(
        &home,
        "[scripts.hostile-script]\nallow_hosts = [\"bad host\"]\n",
    );
    match host
        .run_script(
            "hostile-script",
            &context(Mode::Test, &["echo"]),
            STEP_DEADLINE,
        )
        .await
    {
        Err(RuntimeError::Config { field, .. }) => {
            assert_eq!(field, "scripts.hostile-script.allow_hosts.0")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn install_checks_the_manifest_kind_against_the_component() {
    let home = TestHome::new();
    let store = PluginStore::open(&home.home().plugins_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    haven_plugin_runtime::package::package(
        &haven_tests::plugin_source("tests/fixtures/hostile-script"),
        &pkg,
    )
    .unwrap();
    let manifest = pkg.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("kind = \"script\"\n", "")).unwrap();
    match store.install(home.engine(), &pkg) {
        Err(RuntimeError::Config { field, message, .. }) => {
            assert_eq!(field, "kind");
            assert!(message.contains("kind = \"script\""), "{message}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    std::fs::write(&manifest, text).unwrap();
    let (installed, info) = store.install(home.engine(), &pkg).unwrap();
    assert_eq!(
        installed.manifest.kind,
        haven_plugin_runtime::PluginKind::Script
    );
    assert!(info.capabilities.is_empty());

    // A script cannot be configured as a connector instance.
    home.configure("[instances.s1]\nplugin = \"hostile-script\"\n");
    let runtime = home.runtime();
    let summary = runtime.instances();
    let text = serde_json::to_string(&summary).unwrap();
    assert!(text.contains("is a script, not a connector"), "{text}");
}
