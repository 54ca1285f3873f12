//! The `haven plugin` commands as an administrator uses them: exit codes,
//! output, and one-line errors.

use std::path::Path;
use std::process::{Command, Output};

use haven_plugin_sdk::harness::{FakeServer, Reply};
use haven_tests::plugin_source;

fn haven(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(args)
        .env("HAVEN_HOME", home)
        .env("RUST_LOG", "off")
        .output()
        .expect("haven runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command failed with exactly one line on stderr, which contains `needle`.
fn assert_one_line_error(o: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "{stderr}"
    );
}

#[test]
fn package_install_inspect_and_call() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let pkg = home.join("pkg");
    let source = plugin_source("plugins/example");
    let out = haven(
        home,
        &[
            "plugin",
            "package",
            source.to_str().unwrap(),
            "--out",
            pkg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = haven(home, &["plugin", "install", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("capabilities: connector, inventory"),
        "{}",
        stdout(&out)
    );

    let out = haven(home, &["plugin", "list"]);
    assert!(stdout(&out).starts_with("example"), "{}", stdout(&out));
    let out = haven(home, &["plugin", "inspect", "example"]);
    let text = stdout(&out);
    assert!(
        text.contains("capabilities:    connector, inventory"),
        "{text}"
    );
    assert!(text.contains("requested hosts: *"), "{text}");
    assert!(text.contains("haven:connector@0.1.0"), "{text}");
    let out = haven(home, &["plugin", "inspect", "example", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["capabilities"],
        serde_json::json!(["connector", "inventory"])
    );

    let server = FakeServer::start();
    server.route("POST", "/api/session", |_| {
        Reply::json(200, &serde_json::json!({"session": "s"}))
    });
    server.route("GET", "/api/vms/vm-1", |_| {
        Reply::json(200, &serde_json::json!({"id": "vm-1", "name": "db", "power": "on", "cpus": 1, "memory_mib": 512}))
    });
    std::fs::write(
        home.join("instances.toml"),
        format!(
            "[instances.cmdb]\nplugin = \"example\"\nallow_hosts = [\"127.0.0.1\"]\n\
             [instances.cmdb.settings]\nendpoint = \"{}\"\n[instances.cmdb.secrets]\npassword = {{ value = \"pw\" }}\n",
            server.url()
        ),
    )
    .unwrap();
    let out = haven(home, &["plugin", "instances"]);
    assert!(
        stdout(&out).contains("cmdb (example): connector.check"),
        "{}",
        stdout(&out)
    );
    let out = haven(
        home,
        &["plugin", "call", "cmdb", "inventory.get-vm", r#"["vm-1"]"#],
    );
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"]["name"], "db");

    // A plugin error is printed and fails the command.
    let out = haven(
        home,
        &["plugin", "call", "cmdb", "inventory.get-vm", r#"["vm-2"]"#],
    );
    assert_one_line_error(&out, "inventory.get-vm returned an error");
    assert!(stdout(&out).contains("not-found"));
}

#[test]
fn bad_input_gets_one_line_and_a_failure_code() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    assert_one_line_error(
        &haven(home, &["plugin", "inspect", "nope"]),
        "no plugin `nope` is installed",
    );
    assert_one_line_error(
        &haven(home, &["plugin", "install", "/nonexistent/pkg"]),
        "/nonexistent/pkg",
    );
    assert_one_line_error(
        &haven(
            home,
            &["plugin", "call", "x", "inventory.list-vms", "[oops"],
        ),
        "ARGS is not JSON",
    );
    assert_one_line_error(
        &haven(home, &["plugin", "call", "x", "inventory.list-vms"]),
        "no plugin instance `x`",
    );
    std::fs::write(home.join("instances.toml"), "[instances.x]\nplugin = 3\n").unwrap();
    assert_one_line_error(&haven(home, &["plugin", "instances"]), "instances.toml");
    let usage = haven(home, &["plugin", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit with 2");
}

#[test]
fn plan_commands_validate_and_simulate_deterministically() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let plan = haven_tests::repo_root().join("host/plan/examples/three-tier.toml");
    let plan = plan.to_str().unwrap();
    let out = haven(home, &["plan", "validate", plan]);
    assert!(out.status.success(), "{out:?}");
    let simulate = |extra: &[&str]| {
        let mut args = vec!["plan", "simulate", plan, "--mode", "failover"];
        args.extend_from_slice(extra);
        haven(home, &args)
    };
    let (a, b, c) = (
        simulate(&["--seed", "9", "--transient", "0.3"]),
        simulate(&["--seed", "9", "--transient", "0.3"]),
        simulate(&["--seed", "10", "--transient", "0.3"]),
    );
    assert_eq!(stdout(&a), stdout(&b), "same seed, same timeline");
    assert_ne!(stdout(&a), stdout(&c), "another seed, other faults");
    let reports = home.join("reports");
    let clean = simulate(&["--report", reports.to_str().unwrap()]);
    assert!(clean.status.success(), "{clean:?}");
    let pack: haven_engine::report::EvidencePack =
        serde_json::from_slice(&std::fs::read(reports.join("evidence.json")).unwrap()).unwrap();
    pack.verify().unwrap();
    let html = std::fs::read_to_string(reports.join("report.html")).unwrap();
    assert!(html.contains("Measured RTO"), "{html}");
    assert!(
        stdout(&clean).contains("execution succeeded"),
        "{}",
        stdout(&clean)
    );
    assert!(
        stdout(&clean).contains("predicted RTO"),
        "{}",
        stdout(&clean)
    );
    let lost = simulate(&["--lose", "vcenter-prod"]);
    assert_one_line_error(&lost, "the plan would not recover");
    assert_eq!(
        haven(
            home,
            &["plan", "simulate", plan, "--mode", "test", "--hang", "7"]
        )
        .status
        .code(),
        Some(2)
    );
    let missing = haven(home, &["plan", "validate", "/nonexistent.toml"]);
    assert_one_line_error(&missing, "/nonexistent.toml");
}
