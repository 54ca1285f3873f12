//! `haven protect --server` while `haven serve` runs on the same home: the
//! server replicates the lab's VMs (through the lab plugin, with the block
//! transport) and records them in its catalog, and `--every` stores a
//! schedule the primary runs instead of looping in the CLI.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use haven_lab::requests::SeedRequest;
use haven_lab::{api, Lab, LabConfig};
use haven_tests::TestHome;
use serde_json::Value;

fn haven(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(args)
        .env("HAVEN_HOME", home)
        .env("RUST_LOG", "off")
        .env_remove("HAVEN_SERVER")
        .env_remove("HAVEN_TOKEN")
        .output()
        .expect("haven runs")
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The one-line error of a failed command.
fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// `haven serve` on `port`, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(home: &Path, port: u16) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("HAVEN_HOME", home)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haven serve starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "haven serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Serve(child)
}

fn get(server: &str, path: &str, token: &str) -> Value {
    let mut answer = ureq::get(format!("{server}/api/v1{path}"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn protect_through_the_server_records_the_vms_and_stores_the_schedule() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let lab_dir = tempfile::tempdir().unwrap();
    let lab = rt.block_on(async {
        let mut config = LabConfig::new(lab_dir.path(), "t");
        config.op_delay_ms = 10;
        config.boot_delay_ms = 50;
        let lab = Lab::open(config).await.unwrap();
        let seed: SeedRequest = serde_json::from_value(serde_json::json!({
            "site": "prod", "count": 2, "groups": 1, "power_on": true,
        }))
        .unwrap();
        lab.seed(seed).await.unwrap();
        lab
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let lab_url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(api::serve(lab.clone(), listener, std::future::pending()));

    let test_home = TestHome::new();
    test_home.configure_lab(&lab_url, "t", lab_dir.path());
    let home = test_home.home().root().to_owned();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let _host = serve(&home, port);
    let token = std::fs::read_to_string(home.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();

    let names: Vec<String> = lab
        .vms(Some("prod"))
        .unwrap()
        .into_iter()
        .map(|v| v.vm.name)
        .collect();
    let repo = home.join("replicas");
    let mut protect = vec!["protect".to_owned()];
    for name in &names {
        protect.extend(["--vm".to_owned(), format!("lab-prod/{name}")]);
    }
    protect.extend(
        [
            "--to",
            "lab-dr",
            "--repo",
            repo.to_str().unwrap(),
            "--every",
            "30m",
            "--server",
            &server,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = protect.iter().map(String::as_str).collect();
    // The embedded store is the server's: only the server can write it.
    let out = ok(haven(&home, &args));
    assert!(out.contains("schedule stored"), "{out}");

    let replicas = get(&server, "/replicas", &token);
    let mut listed: Vec<String> = replicas
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("lab-prod/{n}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for r in replicas.as_array().unwrap() {
        assert_eq!(r["points"].as_array().unwrap().len(), 1, "{r}");
    }

    let list = ok(haven(&home, &["protect", "--list", "--server", &server]));
    for name in &names {
        assert!(list.contains(&format!("lab-prod/{name}")), "{list}");
    }
    assert!(list.contains("30m"), "{list}");
    let first = format!("lab-prod/{}", names[0]);
    ok(haven(
        &home,
        &["protect", "--remove", &first, "--server", &server],
    ));
    let schedules = get(&server, "/protections", &token);
    assert_eq!(schedules.as_array().unwrap().len(), names.len() - 1);

    // Bad input: one line naming the field, exit 1.
    let err = fails(haven(
        &home,
        &[
            "protect",
            "--vm",
            "lab-prod/x",
            "--to",
            "nowhere",
            "--repo",
            "/tmp/r",
            "--server",
            &server,
        ],
    ));
    assert!(err.contains("`to`") && err.contains("nowhere"), "{err}");
    let err = fails(haven(
        &home,
        &["protect", "--remove", &first, "--server", &server],
    ));
    assert!(err.contains("no protection schedule"), "{err}");
}
