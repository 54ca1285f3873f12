//! The API-backed commands (`haven plan push|pull|list|rm`, `haven run`,
//! `haven token`, `haven audit`) against a real API server on loopback, a
//! follower that redirects to it, an unreachable node, and the embedded store.

#[path = "../../api/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{start, SHOP, SHOP_ID};
use haven_store::Role;

fn haven(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haven"));
    cmd.args(args)
        .env("HAVEN_HOME", home)
        .env("RUST_LOG", "off")
        .env_remove("HAVEN_SERVER")
        .env_remove("HAVEN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("haven runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_one_line_error(o: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr} {}", stdout(o));
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

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

#[test]
fn plans_and_runs_through_the_server() {
    let s = start(10);
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("shop.toml");
    std::fs::write(&plan, SHOP).unwrap();
    let env = [
        ("HAVEN_SERVER", s.base.as_str()),
        ("HAVEN_TOKEN", s.admin.as_str()),
    ];
    let home = work.path().join("client-home");
    let p = plan.to_str().unwrap();

    assert!(ok(haven(&home, &["plan", "push", p], &env)).contains("version 1"));
    let listed = ok(haven(&home, &["plan", "list"], &env));
    assert!(
        listed.contains(SHOP_ID) && listed.contains("unverified"),
        "{listed}"
    );
    // A stale version is refused with one line naming the field.
    let stale = haven(&home, &["plan", "push", p, "--if-version", "7"], &env);
    assert_one_line_error(&stale, "If-Match");
    // A dry run shows the changes against the stored plan and stores nothing.
    let edited = work.path().join("edited.toml");
    std::fs::write(&edited, SHOP.replace("rto = \"45m\"", "rto = \"40m\"")).unwrap();
    let e = edited.to_str().unwrap();
    let diff = ok(haven(&home, &["plan", "push", e, "--dry-run"], &env));
    assert!(
        diff.contains("changes against version 1") && diff.contains("rto"),
        "{diff}"
    );
    assert!(ok(haven(&home, &["plan", "list"], &env)).contains("      1  "));
    // Pull returns the canonical text.
    let pulled = work.path().join("pulled.toml");
    ok(haven(
        &home,
        &["plan", "pull", SHOP_ID, "-o", pulled.to_str().unwrap()],
        &env,
    ));
    assert_eq!(
        std::fs::read_to_string(&pulled).unwrap(),
        haven_plan::Plan::from_toml(SHOP).unwrap().to_toml()
    );

    // A failover: start, wait for the approval, approve, watch to the end.
    let started = ok(haven(
        &home,
        &["run", "start", SHOP_ID, "--mode", "failover", "--watch"],
        &env,
    ));
    // `--watch` follows the run live and stops when the approval waits.
    let id = started.split_whitespace().nth(1).unwrap().to_owned();
    assert!(started.contains("approval-requested"), "{started}");
    assert!(
        started.contains(&format!("approve with `haven run approve {id}`")),
        "{started}"
    );
    s.wait_status(&id, |st| st == "awaiting-approval");
    assert!(ok(haven(&home, &["run", "show", &id], &env)).contains("awaiting-approval"));
    assert!(ok(haven(&home, &["run", "approve", &id], &env)).contains("approved"));
    let watched = ok(haven(&home, &["run", "watch", &id], &env));
    assert!(watched.contains("approval-granted"), "{watched}");
    assert!(
        watched
            .trim_end()
            .ends_with(&format!("execution {id}: succeeded")),
        "{watched}"
    );
    let html = work.path().join("report.html");
    let report = ok(haven(
        &home,
        &["run", "report", &id, "--html", html.to_str().unwrap()],
        &env,
    ));
    assert!(report.contains("\"outcome\": \"succeeded\""), "{report}");
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"));
    assert!(ok(haven(&home, &["run", "list"], &env)).contains(&id));

    // Approving again: one line, exit 1.
    assert_one_line_error(
        &haven(&home, &["run", "approve", &id, "--step", "0"], &env),
        "not waiting",
    );

    // Tokens: a viewer cannot push.
    let viewer = ok(haven(
        &home,
        &["token", "create", "--name", "ci", "--role", "viewer"],
        &env,
    ));
    let viewer = viewer.trim();
    let as_viewer = [("HAVEN_SERVER", s.base.as_str()), ("HAVEN_TOKEN", viewer)];
    assert_one_line_error(
        &haven(&home, &["plan", "push", p], &as_viewer),
        "cannot edit plans",
    );
    assert!(ok(haven(&home, &["token", "list"], &env)).contains("viewer"));
    let audit = ok(haven(&home, &["audit"], &env));
    assert!(
        audit.contains("execution.approve") && audit.contains("forbidden"),
        "{audit}"
    );
}

#[test]
fn the_cli_follows_the_primary_and_skips_unreachable_nodes() {
    let primary = start(10);
    let follower = start(10);
    follower.log.role.send_replace(Role::Follower {
        primary: Some(primary.base.clone()),
    });
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("shop.toml");
    std::fs::write(&plan, SHOP).unwrap();
    // A dead node first, then the follower: the write lands on the primary.
    let servers = format!("http://127.0.0.1:9,{}", follower.base);
    let env = [
        ("HAVEN_SERVER", servers.as_str()),
        ("HAVEN_TOKEN", primary.admin.as_str()),
    ];
    let out = ok(haven(
        work.path(),
        &["plan", "push", plan.to_str().unwrap()],
        &env,
    ));
    assert!(out.contains("version 1"), "{out}");
    assert_eq!(
        primary
            .get(&format!("/plans/{SHOP_ID}"), &primary.admin)
            .status,
        200
    );

    // No node reachable: one line saying so.
    let dead = [("HAVEN_SERVER", "http://127.0.0.1:9"), ("HAVEN_TOKEN", "x")];
    assert_one_line_error(
        &haven(work.path(), &["plan", "list"], &dead),
        "cannot reach any Haven server",
    );
    // Not a URL: one line.
    let bad = [("HAVEN_SERVER", "localhost:7400"), ("HAVEN_TOKEN", "x")];
    assert_one_line_error(
        &haven(work.path(), &["plan", "list"], &bad),
        "expected a URL",
    );
}

#[test]
fn without_a_server_the_commands_use_the_embedded_store() {
    let home = tempfile::tempdir().unwrap();
    let plan = home.path().join("shop.toml");
    std::fs::write(&plan, SHOP).unwrap();
    let p = plan.to_str().unwrap();
    assert!(ok(haven(home.path(), &["plan", "push", p], &[])).contains("version 1"));
    assert!(
        home.path().join("admin-token").exists(),
        "the home's admin token was created"
    );
    assert!(ok(haven(home.path(), &["plan", "list"], &[])).contains(SHOP_ID));
    assert!(ok(haven(
        home.path(),
        &["token", "create", "--name", "x", "--role", "operator"],
        &[]
    ))
    .starts_with("hvn_"));
    // No connector instance is configured in this home: the run is refused
    // with the plan field that cannot be resolved.
    assert_one_line_error(
        &haven(
            home.path(),
            &["run", "start", SHOP_ID, "--mode", "test"],
            &[],
        ),
        "groups.0.connector",
    );
    let audit = ok(haven(home.path(), &["audit"], &[]));
    assert!(
        audit.contains("plan.put") && audit.contains("execution.start"),
        "{audit}"
    );
    ok(haven(
        home.path(),
        &["plan", "rm", SHOP_ID, "--if-version", "1"],
        &[],
    ));
    assert!(!ok(haven(home.path(), &["plan", "list"], &[])).contains(SHOP_ID));
    // Usage errors exit 2.
    let usage = haven(
        home.path(),
        &["run", "start", SHOP_ID, "--mode", "sideways"],
        &[],
    );
    assert_eq!(usage.status.code(), Some(2));
}
