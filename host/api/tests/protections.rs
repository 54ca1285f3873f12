//! Protection through the API: `POST /replicas/protect` validation (errors
//! name the field), roles, the audit log, and the schedules it stores
//! (`GET /protections`, `DELETE /protections/{connector}/{vm}`). Replication
//! itself runs against the lab in `host/haven/tests/protect.rs` and
//! `tests/tests/recovery.rs`; this harness has no plugins.

mod common;

use common::start;
use haven_store::Role;
use serde_json::json;

fn schedule(vms: &[&str]) -> serde_json::Value {
    json!({"vms": vms, "to": "vcenter-dr", "repository": "/srv/replicas", "every": "15m", "now": false})
}

#[test]
fn bad_protect_requests_get_4xx_naming_the_field() {
    let s = start(10);
    let cases = [
        (json!({"to": "vcenter-dr", "repository": "/r"}), 400, "vms"),
        (
            json!({"vms": ["vcenter-prod/db-01"], "to": "vcenter-dr", "repository": "/r", "extra": 1}),
            400,
            "",
        ),
        (
            json!({"vms": [], "to": "vcenter-dr", "repository": "/r"}),
            422,
            "vms",
        ),
        (
            json!({"vms": ["vcenter-prod/db-01", "no-slash"], "to": "vcenter-dr", "repository": "/r"}),
            422,
            "vms.1",
        ),
        (
            json!({"vms": ["nowhere/db-01"], "to": "vcenter-dr", "repository": "/r"}),
            422,
            "vms.0",
        ),
        (
            json!({"vms": ["vcenter-prod/db-01"], "to": "nowhere", "repository": "/r"}),
            422,
            "to",
        ),
        (
            json!({"vms": ["vcenter-prod/db-01"], "to": "vcenter-dr", "repository": "relative/dir"}),
            422,
            "repository",
        ),
        (
            json!({"vms": ["vcenter-prod/db-01"], "to": "vcenter-dr", "repository": "/r", "every": "10s"}),
            422,
            "every",
        ),
        (
            json!({"vms": ["vcenter-prod/db-01"], "to": "vcenter-dr", "repository": "/r", "every": "soon"}),
            400,
            "every",
        ),
        (
            json!({"vms": ["vcenter-prod/db-01"], "to": "vcenter-dr", "repository": "/r", "now": false}),
            422,
            "now",
        ),
    ];
    for (body, status, field) in cases {
        let a = s.post("/replicas/protect", &s.admin, body.clone());
        assert_eq!(a.status, status, "{body}: {}", a.text);
        if !field.is_empty() {
            assert_eq!(a.field().as_deref(), Some(field), "{body}: {}", a.text);
        }
    }
    // Nothing was stored by any refused request.
    assert_eq!(s.get("/protections", &s.admin).json(), json!([]));
}

#[test]
fn schedules_are_stored_listed_and_removed_by_operators_and_audited() {
    let s = start(10);
    let viewer = s.token("viewer", &["*"]);
    let author = s.token("author", &["*"]);
    let operator = s.token("operator", &["*"]);
    for token in [&viewer, &author] {
        let a = s.post(
            "/replicas/protect",
            token,
            schedule(&["vcenter-prod/db-01"]),
        );
        assert_eq!(a.status, 403, "{}", a.text);
        assert!(a.text.contains("operator"), "{}", a.text);
    }

    let a = s.post(
        "/replicas/protect",
        &operator,
        schedule(&["vcenter-prod/db-01", "vcenter-prod/web-01"]),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let answer = a.json();
    assert_eq!(answer["results"], json!([]), "now: false takes no point");
    assert_eq!(answer["schedules"].as_array().unwrap().len(), 2);

    let listed = s.get("/protections", &viewer).json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["vcenter-prod/db-01", "vcenter-prod/web-01"]);
    assert_eq!(listed[0]["every_ms"], 900_000);
    assert_eq!(listed[0]["recovery_connector"], "vcenter-dr");
    assert_eq!(listed[0]["repository"], "/srv/replicas");
    assert!(listed[0]["created_by"]
        .as_str()
        .unwrap()
        .starts_with("operator"));

    // Taking a point now reports one result per VM (no plugins here: each fails).
    let a = s.post(
        "/replicas/protect",
        &operator,
        json!({"vms": ["vcenter-prod/db-01"], "to": "vcenter-dr", "repository": "/srv/replicas"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let results = a.json()["results"].clone();
    assert_eq!(results.as_array().unwrap().len(), 1);
    assert_eq!(results[0]["vm"], "vcenter-prod/db-01");
    assert_eq!(results[0]["ok"], false);

    assert_eq!(
        s.call(
            "DELETE",
            "/protections/vcenter-prod/db-01",
            Some(&viewer),
            &[],
            None
        )
        .status,
        403
    );
    assert_eq!(
        s.call(
            "DELETE",
            "/protections/vcenter-prod/db-01",
            Some(&operator),
            &[],
            None
        )
        .status,
        204
    );
    let a = s.call(
        "DELETE",
        "/protections/vcenter-prod/db-01",
        Some(&operator),
        &[],
        None,
    );
    assert_eq!(a.status, 404, "{}", a.text);
    let listed = s.get("/protections", &viewer).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], "vcenter-prod/web-01");

    let audit = s.get("/audit", &s.admin).json();
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let action = e["action"].as_str().unwrap();
            action == "replica.protect" || action == "protection.delete"
        })
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |action: &str, target: &str, outcome: &str| {
        assert!(
            entries
                .iter()
                .any(|e| e.0 == action && e.1 == target && e.2 == outcome),
            "no {action} {target} {outcome} in {entries:?}"
        );
    };
    expect("replica.protect", "replicas", "forbidden");
    expect(
        "replica.protect",
        "replicas/vcenter-prod/db-01,vcenter-prod/web-01",
        "ok",
    );
    expect(
        "protection.delete",
        "protections/vcenter-prod/db-01",
        "forbidden",
    );
    expect("protection.delete", "protections/vcenter-prod/db-01", "ok");
    expect(
        "protection.delete",
        "protections/vcenter-prod/db-01",
        "not-found",
    );
}

#[test]
fn a_follower_redirects_protection_writes_and_lists_schedules() {
    let s = start(10);
    assert_eq!(
        s.post(
            "/replicas/protect",
            &s.admin,
            schedule(&["vcenter-prod/db-01"])
        )
        .status,
        200
    );
    s.log.role.send_replace(Role::Follower {
        primary: Some("http://127.0.0.9:7400".into()),
    });
    let a = s.post(
        "/replicas/protect",
        &s.admin,
        schedule(&["vcenter-prod/app-01"]),
    );
    assert_eq!(a.status, 307, "{}", a.text);
    assert_eq!(
        a.header("location").as_deref(),
        Some("http://127.0.0.9:7400/api/v1/replicas/protect")
    );
    let a = s.call(
        "DELETE",
        "/protections/vcenter-prod/db-01",
        Some(&s.admin),
        &[],
        None,
    );
    assert_eq!(a.status, 307, "{}", a.text);
    let listed = s.get("/protections", &s.admin).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "reads are local");
}
