//! The sandbox against a hostile plugin (tests/fixtures/hostile): every attack
//! fails the way it must, the same instance answers correctly right after,
//! and a second instance of the same plugin is not disturbed.

use std::time::{Duration, Instant};

use haven_plugin_runtime::{Runtime, RuntimeError, TrapKind};
use haven_plugin_sdk::harness::{FakeServer, Reply};
use haven_tests::TestHome;
use serde_json::{json, Value};

/// The hostile manifest's per-call deadline.
const DEADLINE: Duration = Duration::from_millis(500);

fn home() -> TestHome {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile");
    home.configure(
        r#"
[instances.h1]
plugin = "hostile"
allow_hosts = ["127.0.0.1"]
[instances.h1.secrets]
token = { value = "token-of-h1" }

[instances.h2]
plugin = "hostile"
allow_hosts = ["127.0.0.1"]
[instances.h2.secrets]
token = { value = "token-of-h2" }
"#,
    );
    home
}

async fn run(runtime: &Runtime, instance: &str, command: &str) -> Result<Value, RuntimeError> {
    runtime
        .call(instance, "inventory.get-vm", &json!([command]))
        .await
}

/// The VM name a successful command answered with.
async fn outcome(runtime: &Runtime, instance: &str, command: &str) -> String {
    let value = run(runtime, instance, command)
        .await
        .expect("call succeeds");
    value["ok"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{command}: {value}"))
        .to_owned()
}

/// The plugin's own error (a `result::err`) for a command.
async fn plugin_error(runtime: &Runtime, instance: &str, command: &str) -> Value {
    let value = run(runtime, instance, command).await.expect("call returns");
    value
        .get("err")
        .cloned()
        .unwrap_or_else(|| panic!("{command} should fail, got {value}"))
}

/// After a trap: the same instance answers again on a fresh instantiation,
/// and h2 kept its state (its call counter was not reset).
async fn assert_recovered(runtime: &Runtime, h2_calls_before: u64) {
    let before = runtime.instantiations("h1").unwrap();
    assert_eq!(outcome(runtime, "h1", "ok").await, "fine");
    assert_eq!(
        runtime.instantiations("h1").unwrap(),
        before + 1,
        "h1 must be re-created"
    );
    assert_eq!(
        outcome(runtime, "h1", "count").await,
        "2",
        "fresh instance state after the trap"
    );
    assert_eq!(
        outcome(runtime, "h2", "count").await,
        (h2_calls_before + 1).to_string(),
        "h2 disturbed"
    );
    assert_eq!(runtime.instantiations("h2").unwrap(), 1);
}

async fn warm_h2(runtime: &Runtime) -> u64 {
    outcome(runtime, "h2", "count").await.parse().unwrap()
}

fn trap_kind(result: Result<Value, RuntimeError>) -> TrapKind {
    match result {
        Err(RuntimeError::Trapped { kind, .. }) => kind,
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn infinite_loop_fails_within_twice_its_deadline() {
    let home = home();
    let runtime = home.runtime();
    let h2 = warm_h2(&runtime).await;
    let started = Instant::now();
    assert_eq!(
        trap_kind(run(&runtime, "h1", "loop").await),
        TrapKind::Timeout
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= DEADLINE && elapsed < 2 * DEADLINE,
        "loop stopped after {elapsed:?}"
    );
    assert_recovered(&runtime, h2).await;
}

#[tokio::test]
async fn blocking_in_the_host_fails_within_twice_its_deadline() {
    let home = home();
    let runtime = home.runtime();
    let h2 = warm_h2(&runtime).await;
    let started = Instant::now();
    assert_eq!(
        trap_kind(run(&runtime, "h1", "sleep").await),
        TrapKind::Timeout
    );
    assert!(
        started.elapsed() < 2 * DEADLINE,
        "sleep stopped after {:?}",
        started.elapsed()
    );
    assert_recovered(&runtime, h2).await;
}

#[tokio::test]
async fn memory_bomb_fails_at_the_cap() {
    let home = home();
    let runtime = home.runtime();
    let h2 = warm_h2(&runtime).await;
    match run(&runtime, "h1", "alloc").await {
        Err(RuntimeError::Trapped { kind, detail, .. }) => {
            assert_eq!(kind, TrapKind::OutOfMemory);
            assert!(detail.contains("memory allocation"), "{detail}");
        }
        other => panic!("expected out-of-memory, got {other:?}"),
    }
    assert_recovered(&runtime, h2).await;
}

#[tokio::test]
async fn panic_comes_back_as_an_error_with_its_message() {
    let home = home();
    let runtime = home.runtime();
    let h2 = warm_h2(&runtime).await;
    match run(&runtime, "h1", "panic").await {
        Err(RuntimeError::Trapped { kind, detail, .. }) => {
            assert_eq!(kind, TrapKind::Panic);
            assert!(detail.contains("panicked on purpose"), "{detail}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_recovered(&runtime, h2).await;
}

#[tokio::test]
async fn oversized_result_is_capped() {
    let home = home();
    let runtime = home.runtime();
    let h2 = warm_h2(&runtime).await;
    match run(&runtime, "h1", "big").await {
        Err(RuntimeError::ResultTooLarge { limit, .. }) => assert_eq!(limit, 1 << 20),
        other => panic!("expected a capped result, got {other:?}"),
    }
    assert_recovered(&runtime, h2).await;
}

#[tokio::test]
async fn filesystem_is_only_the_instance_data_directory() {
    let home = home();
    let runtime = home.runtime();
    // Host files, absolute or escaping the preopen, are invisible.
    for path in [
        "/etc/passwd",
        "/data/../../../../etc/passwd",
        "../etc/passwd",
    ] {
        let err = plugin_error(&runtime, "h1", &format!("read:{path}")).await;
        assert!(err["not-found"].is_string(), "{path}: {err}");
    }
    // Its own directory works, and lands in the instance's directory on the host.
    assert_eq!(outcome(&runtime, "h1", "write:/data/note").await, "written");
    let on_host = home.home().instance_dir("h1").join("data/note");
    assert_eq!(
        std::fs::read_to_string(&on_host).unwrap(),
        "written by hostile"
    );
    assert_eq!(
        outcome(&runtime, "h1", "read:/data/note").await,
        "read 18 bytes"
    );
    // Another instance's directory is out of reach, by any path.
    let err = plugin_error(&runtime, "h2", "read:/data/note").await;
    assert!(err["not-found"].is_string(), "{err}");
    let other = home.home().instance_dir("h1").join("data/note");
    let err = plugin_error(&runtime, "h2", &format!("read:{}", other.display())).await;
    assert!(err["not-found"].is_string(), "{err}");
    // No environment leaks in.
    assert_eq!(outcome(&runtime, "h1", "env").await, "0");
}

#[tokio::test]
async fn sockets_are_denied() {
    let home = home();
    let runtime = home.runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let err = plugin_error(&runtime, "h1", &format!("tcp:{addr}")).await;
    assert!(err["other"].as_str().unwrap().contains("tcp"), "{err}");
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the plugin reached the socket");
}

#[tokio::test]
async fn http_only_to_requested_and_granted_hosts() {
    let home = home();
    let runtime = home.runtime();
    let server = FakeServer::start();
    server.route("GET", "/hello", |_| Reply::text(200, "hi"));
    // 127.0.0.1 is requested by the manifest and granted: allowed.
    let url = format!("{}/hello", server.url());
    assert_eq!(
        outcome(&runtime, "h1", &format!("http:{url}")).await,
        "HTTP 200"
    );
    // `localhost` is neither requested nor granted: denied before any connection.
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let err = plugin_error(
        &runtime,
        "h1",
        &format!("http:http://localhost:{port}/hello"),
    )
    .await;
    assert!(err["other"].as_str().unwrap().contains("denied"), "{err}");
    assert_eq!(
        server.requests().len(),
        1,
        "the denied request must not reach the server"
    );
}

#[tokio::test]
async fn http_needs_the_administrator_grant_too() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile");
    home.configure("[instances.h1]\nplugin = \"hostile\"\n");
    let runtime = home.runtime();
    let server = FakeServer::start();
    server.route("GET", "/", |_| Reply::text(200, "hi"));
    let err = plugin_error(&runtime, "h1", &format!("http:{}/", server.url())).await;
    assert!(err["other"].as_str().unwrap().contains("denied"), "{err}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn secrets_are_per_instance_and_declared_only() {
    let home = home();
    let runtime = home.runtime();
    assert_eq!(outcome(&runtime, "h1", "secret:token").await, "token-of-h1");
    assert_eq!(outcome(&runtime, "h2", "secret:token").await, "token-of-h2");
    let err = plugin_error(&runtime, "h1", "secret:password").await;
    assert_eq!(err["invalid-input"]["field"], "secrets.password", "{err}");
}

/// An HTTPS server on loopback with a self-signed certificate; returns its
/// port and the certificate (PEM), which no public root trusts.
async fn https_server() -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, cert_pem)
}

#[tokio::test]
async fn https_trusts_the_instance_ca_and_only_that_instance() {
    let (port, cert_pem) = https_server().await;
    let home = TestHome::new();
    home.install("tests/fixtures/hostile");
    let ca = home.home().root().join("lab-ca.pem");
    std::fs::write(&ca, cert_pem).unwrap();
    home.configure(&format!(
        "[instances.trusting]\nplugin = \"hostile\"\nallow_hosts = [\"127.0.0.1\"]\ntls_ca = \"{}\"\n\n\
         [instances.plain]\nplugin = \"hostile\"\nallow_hosts = [\"127.0.0.1\"]\n",
        ca.display()
    ));
    let runtime = home.runtime();
    let url = format!("http:https://127.0.0.1:{port}/");
    assert_eq!(outcome(&runtime, "trusting", &url).await, "HTTP 200");
    let err = plugin_error(&runtime, "plain", &url).await;
    assert!(
        err.to_string().contains("127.0.0.1"),
        "an unknown issuer must be refused: {err}"
    );

    // A CA file that is not PEM is a configuration error naming the field.
    std::fs::write(&ca, "not a certificate").unwrap();
    let error = match haven_plugin_runtime::Runtime::with_engine(
        home.engine().clone(),
        home.home(),
        None,
    ) {
        Ok(runtime) => runtime
            .call("trusting", "inventory.get-vm", &json!(["ok"]))
            .await
            .unwrap_err()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("instances.trusting.tls_ca"), "{error}");
}
