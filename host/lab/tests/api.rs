//! The lab's HTTP API, end to end through the axum router.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use haven_lab::{api, Lab, LabConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "t0ken";

async fn lab(dir: &std::path::Path, tweak: impl FnOnce(&mut LabConfig)) -> (Lab, Router) {
    let mut config = LabConfig::new(dir, TOKEN);
    config.op_delay_ms = 20;
    config.boot_delay_ms = 150;
    tweak(&mut config);
    let lab = Lab::open(config).await.unwrap();
    let router = api::router(lab.clone());
    (lab, router)
}

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_with(app, method, path, body, Some(TOKEN)).await
}

async fn call_with(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

/// Polls a task until it ends; returns its final JSON.
async fn wait(app: &Router, task: &Value) -> Value {
    let id = task["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, t) = call(app, "GET", &format!("/tasks/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{t}");
        if t["state"] != "running" {
            return t;
        }
        assert!(t["percent"].as_u64().unwrap() < 100);
        assert!(Instant::now() < deadline, "task {id} never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(app: &Router, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, task) = call(app, method, path, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{method} {path}: {task}");
    assert_eq!(task["state"], "running");
    wait(app, &task).await
}

async fn create(app: &Router, name: &str) -> String {
    let t = run(
        app,
        "POST",
        "/vms",
        Some(json!({"site": "dr", "name": name, "cpus": 2, "memory_mib": 2048, "guest_os": "linux",
                    "tags": ["app=shop", "critical"], "disks": [{"size_bytes": 4194304}],
                    "nics": [{"network": "dr-net", "ip": {"address": "10.9.0.5/24", "gateway": "10.9.0.1"}}]})),
    )
    .await;
    assert_eq!(t["state"], "succeeded", "{t}");
    t["result"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn vm_lifecycle_through_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (_lab, app) = lab(dir.path(), |_| {}).await;

    let (status, sites) = call(&app, "GET", "/sites", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sites.as_array().unwrap().len(), 2);
    let (_, nets) = call(&app, "GET", "/networks?site=dr", None).await;
    assert_eq!(nets[1]["id"], "dr-test");
    assert_eq!(nets[1]["isolated"], true);

    let id = create(&app, "web-1").await;
    assert_eq!(id, "vm-1");
    let (_, vm) = call(&app, "GET", "/vms/vm-1", None).await;
    assert_eq!(vm["power"], "off");
    assert_eq!(vm["heartbeat"], "none");
    assert_eq!(vm["nics"][0]["ips"][0], "10.9.0.5");
    let disk = dir.path().join(vm["disks"][0]["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 4 << 20);
    let (_, listed) = call(&app, "GET", "/vms?site=dr", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (_, listed) = call(&app, "GET", "/vms?site=prod", None).await;
    assert!(listed.as_array().unwrap().is_empty());

    // Same name again: conflict.
    let (status, err) = call(
        &app,
        "POST",
        "/vms",
        Some(json!({"site": "dr", "name": "web-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "conflict");

    // Power on; the heartbeat starts after the boot delay.
    let t = run(&app, "POST", "/vms/vm-1/power-on", None).await;
    assert_eq!(t["state"], "succeeded");
    let (_, hb) = call(&app, "GET", "/vms/vm-1/heartbeat", None).await;
    assert_eq!(hb["heartbeat"], "none");
    let (status, err) = call(&app, "POST", "/vms/vm-1/power-on", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, hb) = call(&app, "GET", "/vms/vm-1/heartbeat", None).await;
    assert_eq!(hb["heartbeat"], "ok");

    // Re-IP into the isolated network; a bad network names the field.
    let (status, err) = call(
        &app,
        "POST",
        "/vms/vm-1/nics",
        Some(json!({"nics": [{"network": "prod-net"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["field"], "nics.0.network");
    let (status, err) = call(
        &app,
        "POST",
        "/vms/vm-1/nics",
        Some(json!({"nics": [{"network": "dr-test", "ip": {"address": "10.99.0.5/33"}}]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["field"], "nics.0.ip.address");
    let old_mac = vm["nics"][0]["mac"].clone();
    run(
        &app,
        "POST",
        "/vms/vm-1/nics",
        Some(json!({"nics": [{"network": "dr-test", "ip": {"address": "192.168.7.5/24"}}]})),
    )
    .await;
    let (_, vm) = call(&app, "GET", "/vms/vm-1", None).await;
    assert_eq!(vm["nics"][0]["network"], "dr-test");
    assert_eq!(vm["nics"][0]["ips"][0], "192.168.7.5");
    assert_eq!(vm["nics"][0]["mac"], old_mac);

    // Delete needs the VM off.
    let (status, _) = call(&app, "DELETE", "/vms/vm-1", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let t = run(
        &app,
        "POST",
        "/vms/vm-1/power-off",
        Some(json!({"mode": "graceful"})),
    )
    .await;
    assert_eq!(t["state"], "succeeded");
    run(&app, "DELETE", "/vms/vm-1", None).await;
    let (status, err) = call(&app, "GET", "/vms/vm-1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "not_found");
    assert!(!disk.exists());
    // Ids are never reused.
    assert_eq!(create(&app, "web-1").await, "vm-2");
}

#[tokio::test]
async fn bad_requests_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (_lab, app) = lab(dir.path(), |_| {}).await;
    let (status, _) = call_with(&app, "GET", "/vms", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, err) = call_with(&app, "GET", "/vms", None, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["error"]["code"], "unauthorized");
    let (status, _) = call_with(&app, "GET", "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for (body, field) in [
        (json!({"site": "dr", "name": "x", "cpus": "two"}), "cpus"),
        (json!({"site": "dr"}), "body"),
        (json!({"site": "mars", "name": "x"}), "site"),
        (json!({"site": "dr", "name": "x", "cpus": 0}), "cpus"),
        (json!({"site": "dr", "name": "x", "disks": [{}]}), "disks.0"),
        (
            json!({"site": "dr", "name": "x", "disks": [{"path": "../etc/passwd"}]}),
            "disks.0.path",
        ),
        (
            json!({"site": "dr", "name": "x", "disks": [{"path": "nope.img"}]}),
            "disks.0.path",
        ),
        (
            json!({"site": "dr", "name": "x", "nics": [{"network": "dr-net", "mac": "zz"}]}),
            "nics.0.mac",
        ),
        (json!({"site": "dr", "name": "x", "tags": ["=v"]}), "tags.0"),
        (
            json!({"site": "dr", "name": "x", "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, err) = call(&app, "POST", "/vms", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(err["error"]["code"], "invalid_input");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let (status, _) = call(&app, "GET", "/vms/vm-9", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "GET", "/vms/garbage", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "GET", "/tasks/task-99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "GET", "/nowhere", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "GET", "/networks?site=mars", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn snapshots_copy_and_restore_disk_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (_lab, app) = lab(dir.path(), |_| {}).await;
    // Register a replica image rather than creating a disk.
    let (status, image) = call(
        &app,
        "POST",
        "/images",
        Some(json!({"name": "replica-a", "size_bytes": 2097152})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{image}");
    let image_path = dir.path().join(image["path"].as_str().unwrap());
    std::fs::write(&image_path, vec![7u8; 2 << 20]).unwrap();
    let t = run(
        &app,
        "POST",
        "/vms",
        Some(json!({"site": "dr", "name": "db", "disks": [{"path": "images/replica-a.img"}]})),
    )
    .await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let id = t["result"].as_str().unwrap().to_owned();
    // The same image cannot back two VMs.
    let (status, _) = call(
        &app,
        "POST",
        "/vms",
        Some(json!({"site": "dr", "name": "db2", "disks": [{"path": "images/replica-a.img"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let t = run(
        &app,
        "POST",
        &format!("/vms/{id}/snapshots"),
        Some(json!({"name": "before", "quiesce": true})),
    )
    .await;
    let snap = t["result"].as_str().unwrap().to_owned();
    std::fs::write(&image_path, vec![9u8; 2 << 20]).unwrap();
    let (_, snaps) = call(&app, "GET", &format!("/vms/{id}/snapshots"), None).await;
    assert_eq!(snaps[0]["name"], "before");
    assert_eq!(
        snaps[0]["quiesced"], false,
        "a powered-off guest is not quiesced"
    );
    let snap_file = dir
        .path()
        .join(snaps[0]["disks"]["disk-0"].as_str().unwrap());
    assert_eq!(std::fs::read(&snap_file).unwrap(), vec![7u8; 2 << 20]);

    run(
        &app,
        "POST",
        &format!("/vms/{id}/snapshots/{snap}/revert"),
        None,
    )
    .await;
    assert_eq!(std::fs::read(&image_path).unwrap(), vec![7u8; 2 << 20]);
    let (status, _) = call(
        &app,
        "POST",
        &format!("/vms/{id}/snapshots/snap-99/revert"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    run(&app, "DELETE", &format!("/vms/{id}/snapshots/{snap}"), None).await;
    assert!(!snap_file.exists());
    // Deleting the VM leaves the registered image in place.
    run(&app, "DELETE", &format!("/vms/{id}"), None).await;
    assert!(image_path.exists());
}

#[tokio::test]
async fn injected_faults() {
    let dir = tempfile::tempdir().unwrap();
    let (_lab, app) = lab(dir.path(), |_| {}).await;
    let id = create(&app, "app").await;

    // Fail the next power-on of this VM, once.
    let (status, _) = call(
        &app,
        "POST",
        "/faults/fail",
        Some(json!({"vm": id, "op": "power-on", "count": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let t = run(&app, "POST", &format!("/vms/{id}/power-on"), None).await;
    assert_eq!(t["state"], "failed");
    assert_eq!(t["error"]["code"], "injected");
    let t = run(&app, "POST", &format!("/vms/{id}/power-on"), None).await;
    assert_eq!(t["state"], "succeeded");

    // Latency: the task runs longer; a second operation meanwhile is a conflict.
    call(
        &app,
        "POST",
        "/faults/latency",
        Some(json!({"vm": id, "ms": 300})),
    )
    .await;
    let started = Instant::now();
    let (_, task) = call(
        &app,
        "POST",
        &format!("/vms/{id}/power-off"),
        Some(json!({"mode": "hard"})),
    )
    .await;
    let (status, err) = call(
        &app,
        "POST",
        &format!("/vms/{id}/power-off"),
        Some(json!({"mode": "hard"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("busy"));
    // Cancel it: the VM stays on.
    let (_, cancelled) = call(
        &app,
        "POST",
        &format!("/tasks/{}/cancel", task["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(cancelled["error"]["code"], "cancelled");
    assert!(started.elapsed() < Duration::from_millis(300));
    let (_, vm) = call(&app, "GET", &format!("/vms/{id}"), None).await;
    assert_eq!(vm["power"], "on");
    call(
        &app,
        "POST",
        "/faults/latency",
        Some(json!({"vm": id, "ms": 0})),
    )
    .await;

    // A guest that never answers; graceful shutdown is then refused.
    call(
        &app,
        "POST",
        "/faults/no-heartbeat",
        Some(json!({"vm": id})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, hb) = call(&app, "GET", &format!("/vms/{id}/heartbeat"), None).await;
    assert_eq!(hb["heartbeat"], "none");
    let (status, _) = call(&app, "POST", &format!("/vms/{id}/power-off"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Host loss: VMs off, operations refused as unavailable (503, Retry-After).
    call(
        &app,
        "POST",
        "/faults/host-loss",
        Some(json!({"site": "dr"})),
    )
    .await;
    let (_, vm) = call(&app, "GET", &format!("/vms/{id}"), None).await;
    assert_eq!(vm["power"], "off");
    let (status, err) = call(&app, "POST", &format!("/vms/{id}/power-on"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err["error"]["code"], "unavailable");
    let (_, faults) = call(&app, "GET", "/faults", None).await;
    assert_eq!(faults["sites_down"][0], "dr");
    assert_eq!(faults["no_heartbeat"][0], id.as_str());
    let (status, _) = call(&app, "DELETE", "/faults", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let t = run(&app, "POST", &format!("/vms/{id}/power-on"), None).await;
    assert_eq!(t["state"], "succeeded");
}

#[tokio::test]
async fn random_faults_are_deterministic_for_a_seed() {
    async fn outcomes(seed: u64) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let (_lab, app) = lab(dir.path(), |c| c.op_delay_ms = 1).await;
        call(
            &app,
            "POST",
            "/seed",
            Some(json!({"site": "prod", "count": 30})),
        )
        .await;
        call(
            &app,
            "POST",
            "/faults/random",
            Some(json!({"rate": 0.4, "seed": seed})),
        )
        .await;
        let mut out = Vec::new();
        for i in 1..=30 {
            let t = run(&app, "POST", &format!("/vms/vm-{i}/power-on"), None).await;
            out.push(t["state"].as_str().unwrap().to_owned());
        }
        out
    }
    let a = outcomes(42).await;
    assert_eq!(a, outcomes(42).await);
    assert!(a.iter().any(|s| s == "failed") && a.iter().any(|s| s == "succeeded"));
    assert_ne!(a, outcomes(43).await);
}

#[tokio::test]
async fn seeds_a_thousand_vms_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let (_lab, app) = lab(dir.path(), |_| {}).await;
    let started = Instant::now();
    let (status, seeded) = call(
        &app,
        "POST",
        "/seed",
        Some(
            json!({"site": "prod", "count": 1000, "groups": 20, "disk_size_bytes": 1073741824u64,
                    "tags": ["bench"], "power_on": true, "boot_delay_ms": 0}),
        ),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{seeded}");
    assert_eq!(seeded["vms"].as_array().unwrap().len(), 1000);
    eprintln!(
        "seeded 1000 VMs in {elapsed:?} (lab: {} ms)",
        seeded["elapsed_ms"]
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let (_, vms) = call(&app, "GET", "/vms?site=prod", None).await;
    let vms = vms.as_array().unwrap();
    assert_eq!(vms.len(), 1000);
    assert_eq!(vms[0]["name"], "vm-g01-0001");
    assert_eq!(vms[999]["tags"][0], "group=g20");
    assert_eq!(vms[999]["heartbeat"], "ok");
    let groups: std::collections::BTreeSet<_> = vms
        .iter()
        .map(|v| v["tags"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(groups.len(), 20);
    // Sparse: 1000 × 1 GiB of apparent size, next to nothing on disk.
    let disk = dir
        .path()
        .join(vms[0]["disks"][0]["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);
    let (status, _) = call(
        &app,
        "POST",
        "/seed",
        Some(json!({"site": "prod", "count": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "names are taken");
}

#[test]
fn state_survives_a_restart_and_running_tasks_resume() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let task_id = rt.block_on(async {
        let (lab, app) = lab(dir.path(), |_| {}).await;
        let id = create(&app, "keep").await;
        call(
            &app,
            "POST",
            "/faults/latency",
            Some(json!({"op": "power-on", "ms": 400})),
        )
        .await;
        let (status, task) = call(&app, "POST", &format!("/vms/{id}/power-on"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        // Writes are coalesced and follow within milliseconds; wait for this one.
        lab.commit().await;
        task["id"].as_str().unwrap().to_owned()
    });
    // The lab dies with its runtime, mid-task (as a kill would).
    drop(rt);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (_lab, app) = lab(dir.path(), |_| {}).await;
        let (_, task) = call(&app, "GET", &format!("/tasks/{task_id}"), None).await;
        assert_eq!(task["state"], "running");
        let t = wait(&app, &task).await;
        assert_eq!(t["state"], "succeeded");
        let (_, vm) = call(&app, "GET", "/vms/vm-1", None).await;
        assert_eq!(vm["power"], "on");
        assert_eq!(vm["name"], "keep");
        // Counters survive too: the next VM is vm-2.
        assert_eq!(create(&app, "next").await, "vm-2");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_power_ons_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (lab, _app) = lab(dir.path(), |c| c.boot_delay_ms = 0).await;
    let seeded = lab
        .seed(serde_json::from_value(json!({"site": "prod", "count": 1000, "groups": 20})).unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let mut handles = Vec::new();
    for id in seeded.vms.clone() {
        let lab = lab.clone();
        handles.push(tokio::spawn(
            async move { lab.power_on(&id).await.unwrap().id },
        ));
    }
    let mut tasks = Vec::new();
    for h in handles {
        tasks.push(h.await.unwrap());
    }
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.running_tasks().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "1000 power-ons: submitted in {submitted:?}, all done in {:?}",
        started.elapsed()
    );
    for t in &tasks {
        assert_eq!(
            lab.task(t).unwrap().state,
            haven_lab::model::TaskState::Succeeded
        );
    }
    let on = lab.vms(Some("prod")).unwrap();
    assert!(on
        .iter()
        .all(|v| v.heartbeat == haven_lab::model::Heartbeat::Ok));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_corrupt_state_file_is_a_typed_error_and_patch_changes_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(haven_lab::STATE_FILE), b"{not json").unwrap();
    let err = Lab::open(LabConfig::new(dir.path(), TOKEN))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, haven_lab::LabError::State { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (_lab, app) = lab(dir.path(), |_| {}).await;
    let id = create(&app, "tune").await;
    let (status, vm) = call(
        &app,
        "PATCH",
        &format!("/vms/{id}"),
        Some(json!({"boot_delay_ms": 0, "tags": ["tier=db"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(vm["boot_delay_ms"], 0);
    assert_eq!(vm["tags"], json!(["tier=db"]));
    run(&app, "POST", &format!("/vms/{id}/power-on"), None).await;
    let (_, hb) = call(&app, "GET", &format!("/vms/{id}/heartbeat"), None).await;
    assert_eq!(hb["heartbeat"], "ok");
    let (status, err) = call(
        &app,
        "PATCH",
        &format!("/vms/{id}"),
        Some(json!({"tags": [""]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["field"], "tags.0");
}
