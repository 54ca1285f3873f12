//! `haven protect --server` while `haven serve` runs on the same home: the
//! server replicates the lab's VMs (through the lab plugin, with the block
//! transport) and records them in its catalog, and `--every` stores a
//! schedule the primary runs instead of looping in the CLI.

mod lab_support;

use std::process::Output;

use lab_support::{free_port, haven, ok, LabSite, Serve};
use serde_json::Value;

/// The one-line error of a failed command.
fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
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
    let site = LabSite::start(2, 1, 10, 50);
    let home = site.home.clone();

    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let _host = Serve::start(&home, port);
    let token = std::fs::read_to_string(home.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();

    let names = site.vm_names("prod");
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
