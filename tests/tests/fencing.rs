//! Fencing tokens reach the systems connectors act on: every HTTP request a
//! plugin sends during a call made inside `haven_connector::fence::scope`
//! carries `haven-fence: <token>`, set by the host (the guest cannot drop it);
//! calls outside a scope send none.

use haven_connector::{fence, Connector};
use haven_plugin_sdk::harness::{FakeServer, Reply};
use haven_tests::TestHome;
use serde_json::json;

fn cmdb() -> FakeServer {
    let server = FakeServer::start();
    server.route("POST", "/api/session", |_| {
        Reply::json(200, &json!({"session": "s1"}))
    });
    server.route("GET", "/api/vms", |_| {
        Reply::json(
            200,
            &json!([{"id": "vm-1", "name": "db", "power": "on", "cpus": 1, "memory_mib": 512}]),
        )
    });
    server
}

#[tokio::test]
async fn plugin_requests_carry_the_fencing_token_of_their_scope() {
    let home = TestHome::new();
    home.install("plugins/example");
    let server = cmdb();
    home.configure(&format!(
        "[instances.cmdb]\nplugin = \"example\"\nallow_hosts = [\"127.0.0.1\"]\n\
         [instances.cmdb.settings]\nendpoint = \"{}\"\n\
         [instances.cmdb.secrets]\npassword = {{ value = \"pw\" }}\n",
        server.url()
    ));
    let runtime = std::sync::Arc::new(home.runtime());
    let cmdb = haven_plugin_runtime::PluginConnector::new(runtime, "cmdb").unwrap();

    fence::scope(41, cmdb.list_vms()).await.unwrap();
    let fenced = server.requests();
    assert!(fenced.len() >= 2, "login and list: {fenced:?}");
    for request in &fenced {
        assert_eq!(
            request.header(fence::HEADER),
            Some("41"),
            "{} {}",
            request.method,
            request.path
        );
    }

    cmdb.list_vms().await.unwrap();
    let unfenced = &server.requests()[fenced.len()..];
    assert!(!unfenced.is_empty());
    assert!(
        unfenced.iter().all(|r| r.header(fence::HEADER).is_none()),
        "{unfenced:?}"
    );

    // A newer primary's token replaces the old one on the same instance.
    fence::scope(57, cmdb.list_vms()).await.unwrap();
    let last = server.requests().pop().unwrap();
    assert_eq!(last.header(fence::HEADER), Some("57"));
}

/// End to end: the lab connector, the runtime's header and the lab's check.
/// After a newer primary acted (token 100), the deposed one (token 50) cannot.
#[tokio::test]
async fn a_deposed_primary_is_refused_by_the_lab() {
    use haven_connector::StopMode;
    use haven_lab::{api, Lab, LabConfig};

    const TOKEN: &str = "lab-token";
    let lab_dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(lab_dir.path(), TOKEN);
    config.op_delay_ms = 10;
    let lab = Lab::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(lab.clone(), listener, std::future::pending()));
    let vm = {
        let req = serde_json::from_value(json!({
            "site": "prod", "name": "app", "guest_os": "linux",
            "disks": [{"size_bytes": 1 << 20}], "nics": [{"network": "prod-net"}],
        }))
        .unwrap();
        let task = lab.create_vm(req).await.unwrap();
        let mut done = lab.task(&task.id).unwrap();
        for _ in 0..200 {
            if done.result.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            done = lab.task(&task.id).unwrap();
        }
        done.result.expect("VM created")
    };

    let home = TestHome::new();
    home.install("plugins/lab");
    home.configure(&format!(
        "[instances.prod]\nplugin = \"lab\"\nallow_hosts = [\"127.0.0.1\"]\n\
         [instances.prod.settings]\nendpoint = \"{url}\"\nsite = \"prod\"\n\
         [instances.prod.secrets]\ntoken = {{ value = \"{TOKEN}\" }}\n"
    ));
    let runtime = std::sync::Arc::new(home.runtime());
    let prod = haven_plugin_runtime::PluginConnector::new(runtime, "prod").unwrap();

    fence::scope(100, prod.power_on(&vm))
        .await
        .expect("the current primary acts");
    let refused = fence::scope(50, prod.power_off(&vm, StopMode::Hard))
        .await
        .expect_err("a deposed primary must not act");
    assert!(refused.to_string().contains("fenced"), "{refused}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(lab_dir.path().join("state.json")).unwrap()
        )
        .unwrap()["highest_fence"],
        100
    );
}
