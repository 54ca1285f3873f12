//! Installing, loading and calling plugins for real: verification at install,
//! the code cache, instance configuration errors, the example connector over
//! HTTP, several instances of one plugin, and a plugin written in Python.

use haven_plugin_runtime::{package, PluginStore, Runtime, RuntimeError};
use haven_plugin_sdk::harness::{FakeServer, Reply};
use haven_tests::{plugin_source, TestHome};
use serde_json::json;

fn config_field(result: Result<impl std::fmt::Debug, RuntimeError>) -> String {
    match result {
        Err(RuntimeError::Config { field, .. }) => field,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn install_verifies_hash_contract_and_component() {
    let home = TestHome::new();
    let store = PluginStore::open(&home.home().plugins_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    package::package(&plugin_source("plugins/example"), &pkg).unwrap();

    // A changed byte breaks the hash.
    let wasm = pkg.join("plugin.wasm");
    let good = std::fs::read(&wasm).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&wasm, &bad).unwrap();
    assert!(matches!(
        store.install(home.engine(), &pkg),
        Err(RuntimeError::Sha256Mismatch { .. })
    ));

    // Bytes that hash right but are no component.
    std::fs::write(&wasm, b"not wasm").unwrap();
    let manifest_path = pkg.join("plugin.toml");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let sha = haven_plugin_runtime::package::sha256_file(&wasm).unwrap();
    let original_sha = manifest
        .lines()
        .find(|l| l.starts_with("sha256"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &manifest_path,
        manifest.replace(&original_sha, &format!("sha256 = \"{sha}\"")),
    )
    .unwrap();
    assert!(matches!(
        store.install(home.engine(), &pkg),
        Err(RuntimeError::InvalidComponent { .. })
    ));

    // An unpackaged manifest has no hash to verify.
    assert_eq!(
        config_field(store.install(home.engine(), &plugin_source("plugins/example"))),
        "sha256"
    );

    // A contract version this host does not support.
    std::fs::write(&wasm, &good).unwrap();
    std::fs::write(
        &manifest_path,
        manifest.replace("wit = \"^0.1\"", "wit = \"^0.2\""),
    )
    .unwrap();
    assert!(matches!(
        store.install(home.engine(), &pkg),
        Err(RuntimeError::UnsupportedWit { .. })
    ));

    // The good package installs, with its capabilities detected.
    std::fs::write(&manifest_path, &manifest).unwrap();
    let (installed, info) = store.install(home.engine(), &pkg).unwrap();
    assert_eq!(installed.manifest.id, "example");
    let caps: Vec<_> = info.capabilities.iter().map(|c| c.interface()).collect();
    assert_eq!(caps, ["connector", "inventory"]);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn precompiled_code_is_cached_and_rebuilt_when_unusable() {
    let home = TestHome::new();
    let installed = home.install("plugins/example");
    let cached = home.engine().cache_path(installed.sha256());
    assert!(cached.is_file(), "install must precompile into the cache");
    let modified = std::fs::metadata(&cached).unwrap().modified().unwrap();
    home.engine()
        .load("example", &installed.wasm_path(), installed.sha256())
        .unwrap();
    assert_eq!(
        std::fs::metadata(&cached).unwrap().modified().unwrap(),
        modified,
        "cache hit must not recompile"
    );
    std::fs::write(&cached, b"garbage").unwrap();
    home.engine()
        .load("example", &installed.wasm_path(), installed.sha256())
        .unwrap();
    assert_ne!(
        std::fs::read(&cached).unwrap(),
        b"garbage",
        "an unusable cache entry is replaced"
    );
}

/// The example connector's API, as a fake server with one account.
fn cmdb(password: &'static str, vm_name: &'static str) -> FakeServer {
    let server = FakeServer::start();
    server.route("POST", "/api/session", move |req| {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if body["password"] == password {
            Reply::json(200, &json!({"session": format!("session-{password}")}))
        } else {
            Reply::json(401, &json!({"error": "bad credentials"}))
        }
    });
    server.route("GET", "/api/vms", move |req| {
        if req.header("x-session") != Some(&format!("session-{password}")) {
            return Reply::json(401, &json!({}));
        }
        Reply::json(
            200,
            &json!([{"id": "vm-1", "name": vm_name, "power": "on", "cpus": 2, "memory_mib": 1024}]),
        )
    });
    server
}

fn example_instance(name: &str, server: &FakeServer, password: &str) -> String {
    format!(
        "[instances.{name}]\nplugin = \"example\"\nallow_hosts = [\"127.0.0.1\"]\n\
         [instances.{name}.settings]\nendpoint = \"{}\"\n\
         [instances.{name}.secrets]\npassword = {{ value = \"{password}\" }}\n",
        server.url()
    )
}

#[tokio::test]
async fn example_connector_over_http_with_two_instances() {
    let home = TestHome::new();
    home.install("plugins/example");
    let (east, west) = (cmdb("east-pw", "db-east"), cmdb("west-pw", "db-west"));
    home.configure(
        &(example_instance("east", &east, "east-pw") + &example_instance("west", &west, "west-pw")),
    );
    let runtime = home.runtime();

    let (none, null) = (json!([]), json!(null));
    let (a, b) = tokio::join!(
        runtime.call("east", "inventory.list-vms", &none),
        runtime.call("west", "inventory.list-vms", &null),
    );
    assert_eq!(a.unwrap()["ok"][0]["name"], "db-east");
    assert_eq!(b.unwrap()["ok"][0]["name"], "db-west");

    // The session lives in the instance's kv: a new runtime (a restarted host)
    // reuses it instead of logging in again.
    drop(runtime);
    let runtime = home.runtime();
    runtime
        .call("east", "inventory.list-vms", &json!([]))
        .await
        .unwrap();
    let logins = east
        .requests()
        .iter()
        .filter(|r| r.path == "/api/session")
        .count();
    assert_eq!(
        logins, 1,
        "the stored session must survive re-instantiation"
    );

    // check() reports a working login; a derived capability works end to end.
    let check = runtime
        .call("east", "connector.check", &json!([]))
        .await
        .unwrap();
    assert_eq!(check["ok"][0]["ok"], true, "{check}");
    let found = runtime
        .call(
            "west",
            "inventory.find-vms",
            &json!({"selector": {"all-of": []}}),
        )
        .await
        .unwrap();
    assert_eq!(found["ok"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn call_errors_name_what_is_wrong() {
    let home = TestHome::new();
    home.install("plugins/example");
    let server = cmdb("pw", "vm");
    home.configure(&example_instance("cmdb", &server, "pw"));
    let runtime = home.runtime();
    let bad_args = |r: Result<serde_json::Value, RuntimeError>| match r {
        Err(RuntimeError::BadArguments { field, .. }) => field,
        other => panic!("expected bad arguments, got {other:?}"),
    };
    assert_eq!(
        bad_args(runtime.call("cmdb", "inventory.get-vm", &json!([1])).await),
        "id"
    );
    assert_eq!(
        bad_args(
            runtime
                .call("cmdb", "inventory.get-vm", &json!({"vm": "x"}))
                .await
        ),
        "vm"
    );
    assert_eq!(
        bad_args(
            runtime
                .call(
                    "cmdb",
                    "inventory.find-vms",
                    &json!([{"all-of": [{"key": "a"}]}])
                )
                .await
        ),
        "selector.all-of.0.value"
    );
    assert!(matches!(
        runtime
            .call("cmdb", "compute.power-on", &json!(["vm-1"]))
            .await,
        Err(RuntimeError::UnknownFunction { .. })
    ));
    assert!(matches!(
        runtime.call("nope", "inventory.list-vms", &json!([])).await,
        Err(RuntimeError::UnknownInstance(_))
    ));
    // The plugin's own typed error comes back as data.
    let not_found = runtime
        .call("cmdb", "inventory.get-vm", &json!(["vm-9"]))
        .await
        .unwrap();
    assert!(not_found["err"]["not-found"].is_string(), "{not_found}");
}

/// The error a misconfigured instance produces, whether at open or at its first call.
async fn first_error(home: &TestHome) -> String {
    let runtime = match Runtime::with_engine(home.engine().clone(), home.home(), None) {
        Ok(runtime) => runtime,
        Err(e) => return e.to_string(),
    };
    match runtime.call("cmdb", "inventory.list-vms", &json!([])).await {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v}"),
    }
}

#[tokio::test]
async fn instance_configuration_errors_name_the_field() {
    let home = TestHome::new();
    home.install("plugins/example");
    let server = cmdb("pw", "vm");
    let base = example_instance("cmdb", &server, "pw");
    let cases = [
        (
            base.replace("endpoint", "endpoitn"),
            "instances.cmdb.settings.endpoitn",
        ),
        (
            base.replace("password = ", "token = "),
            "instances.cmdb.secrets.token",
        ),
        (
            base.replace(
                "{ value = \"pw\" }",
                "{ env = \"HAVEN_TEST_UNSET_VARIABLE\" }",
            ),
            "instances.cmdb.secrets.password",
        ),
        (
            base.replace("\"127.0.0.1\"", "\"bad host\""),
            "instances.cmdb.allow_hosts.0",
        ),
        (
            base.clone() + "[instances.cmdb.limits]\nmemory_mib = 0\n",
            "instances.cmdb.limits.memory_mib",
        ),
    ];
    for (toml, field) in cases {
        home.configure(&toml);
        let error = first_error(&home).await;
        assert!(error.contains(field), "expected `{field}` in: {error}");
    }
    // A missing required setting.
    home.configure(&base.replace(&format!("endpoint = \"{}\"\n", server.url()), ""));
    let err = home
        .runtime()
        .call("cmdb", "inventory.list-vms", &json!([]))
        .await
        .unwrap_err();
    assert_eq!(
        config_field(Err::<(), _>(err)),
        "instances.cmdb.settings.endpoint"
    );
    // The plugin's own validation of a setting.
    home.configure(&base.replace(&server.url(), "ftp://nowhere"));
    match home
        .runtime()
        .call("cmdb", "inventory.list-vms", &json!([]))
        .await
    {
        Err(RuntimeError::Configure { message, .. }) => {
            assert!(message.contains("endpoint"), "{message}")
        }
        other => panic!("expected a configure error, got {other:?}"),
    }
}

#[tokio::test]
async fn python_plugin_loads_and_answers_through_the_same_contract() {
    let home = TestHome::new();
    home.install("tests/fixtures/python-plugin");
    home.configure("[instances.py]\nplugin = \"python-fixture\"\n[instances.py.settings]\nsite = \"dr-east\"\n");
    let runtime = home.runtime();
    let vms = runtime
        .call("py", "inventory.list-vms", &json!([]))
        .await
        .unwrap();
    assert_eq!(vms["ok"][0]["name"], "python-db");
    assert_eq!(vms["ok"][0]["location"], "dr-east");
    assert_eq!(vms["ok"][1]["power-state"], "powered-off");
    let err = runtime
        .call("py", "inventory.get-vm", &json!(["nope"]))
        .await
        .unwrap();
    assert_eq!(err["err"]["not-found"], "VM nope");
    let found = runtime
        .call(
            "py",
            "inventory.find-vms",
            &json!([{"all-of": [{"key": "tier", "value": "web"}]}]),
        )
        .await
        .unwrap();
    assert_eq!(found["ok"][0]["id"], "py-2");
    // The host's kv works from Python too.
    let kv = std::fs::read_to_string(home.home().instance_dir("py").join("kv.json")).unwrap();
    assert!(kv.contains("calls"), "{kv}");
    // And its configure validation comes back typed.
    home.configure(
        "[instances.py]\nplugin = \"python-fixture\"\n[instances.py.settings]\nsite = \"\"\n",
    );
    match home
        .runtime()
        .call("py", "inventory.list-vms", &json!([]))
        .await
    {
        Err(RuntimeError::Configure { message, .. }) => {
            assert!(message.contains("site"), "{message}")
        }
        other => panic!("expected a configure error, got {other:?}"),
    }
}

#[tokio::test]
async fn plugins_are_typed_connectors_for_the_engine() {
    use haven_connector::{Capability, Connector, ConnectorError, PowerState, Tag, TagSelector};
    let home = TestHome::new();
    home.install("plugins/example");
    home.install("tests/fixtures/python-plugin");
    let server = cmdb("pw", "db");
    home.configure(
        &(example_instance("cmdb", &server, "pw")
            + "[instances.py]\nplugin = \"python-fixture\"\n"),
    );
    let runtime = std::sync::Arc::new(home.runtime());

    let cmdb = haven_plugin_runtime::PluginConnector::new(runtime.clone(), "cmdb").unwrap();
    assert!(cmdb.capabilities().contains(&Capability::Inventory));
    assert!(!cmdb.capabilities().contains(&Capability::Compute));
    let vms = cmdb.list_vms().await.unwrap();
    assert_eq!(
        (vms[0].name.as_str(), vms[0].power_state),
        ("db", PowerState::PoweredOn)
    );
    assert!(matches!(
        cmdb.get_vm("vm-404").await,
        Err(ConnectorError::NotFound(_))
    ));
    assert!(matches!(
        cmdb.power_on("vm-1").await,
        Err(ConnectorError::Unsupported(_))
    ));
    assert_eq!(cmdb.describe().await.unwrap().settings[0].key, "endpoint");

    let py = haven_plugin_runtime::PluginConnector::new(runtime.clone(), "py").unwrap();
    let selector = TagSelector {
        all_of: vec![Tag {
            key: "tier".into(),
            value: String::new(),
        }],
    };
    assert_eq!(py.find_vms(&selector).await.unwrap().len(), 2);
    assert!(py.list_networks().await.unwrap()[0].isolated);
    assert!(haven_plugin_runtime::PluginConnector::new(runtime, "nope").is_err());
}
