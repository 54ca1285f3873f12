//! The web API over a real loopback listener: auth, roles and scopes, the
//! audit log, errors naming fields, `If-Match`, SSE of a real run, the
//! OpenAPI document, and writes on a follower.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::{small_plan, start, SHOP, SHOP_ID};
use haven_engine::readiness::ReadinessReport;
use haven_store::{Command, CommandLog, Role};
use serde_json::{json, Value};

#[test]
fn requests_without_a_valid_token_get_401_with_a_json_error() {
    let s = start(10);
    let a = s.call("GET", "/plans", None, &[], None);
    assert_eq!(a.status, 401);
    assert_eq!(a.code(), "unauthorized");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin-token"));
    for bad in ["nonsense", "hvn_abc_def", &format!("{}x", s.admin)] {
        assert_eq!(s.get("/plans", bad).status, 401, "{bad}");
    }
    // The bootstrap token file is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.home.path().join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn roles_and_plan_set_scopes_are_enforced() {
    let s = start(10);
    let viewer = s.token("viewer", &["*"]);
    let author_a = s.token("author", &["a"]);
    let operator_a = s.token("operator", &["a"]);

    // A viewer reads but cannot write.
    assert_eq!(s.get("/plans", &viewer).status, 200);
    let a = s.put_plan("p-a", &viewer, &small_plan("p-a", "a"), None);
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(a.text.contains("author"), "{}", a.text);

    // An author of set A writes in A, not in B, and does not see B.
    assert_eq!(
        s.put_plan("p-a", &author_a, &small_plan("p-a", "a"), None)
            .status,
        201
    );
    assert_eq!(
        s.put_plan("p-b", &author_a, &small_plan("p-b", "b"), None)
            .status,
        403
    );
    assert_eq!(
        s.put_plan("p-b", &s.admin, &small_plan("p-b", "b"), None)
            .status,
        201
    );
    assert_eq!(s.get("/plans/p-b", &author_a).status, 404);
    let listed: Vec<String> = s
        .get("/plans", &author_a)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["p-a"]);
    // ... nor move its plan into B.
    assert_eq!(
        s.put_plan("p-a", &author_a, &small_plan("p-a", "b"), None)
            .status,
        403
    );
    assert_eq!(
        s.call("DELETE", "/plans/p-b", Some(&author_a), &[], None)
            .status,
        404
    );

    // An author cannot run executions; an operator of A can, only in A.
    let a = s.post(
        "/executions",
        &author_a,
        json!({"plan": "p-a", "mode": "test"}),
    );
    assert_eq!(a.status, 403, "{}", a.text);
    let a = s.post(
        "/executions",
        &operator_a,
        json!({"plan": "p-b", "mode": "test"}),
    );
    assert_eq!(a.status, 404, "{}", a.text);
    let a = s.post(
        "/executions",
        &operator_a,
        json!({"plan": "p-a", "mode": "test"}),
    );
    assert_eq!(a.status, 201, "{}", a.text);
    // Tokens and the audit log are admin only.
    assert_eq!(s.get("/tokens", &operator_a).status, 403);
    assert_eq!(s.get("/audit", &viewer).status, 403);
}

#[test]
fn tokens_are_created_listed_without_secrets_and_revoked() {
    let s = start(10);
    let secret = s.token("viewer", &["*"]);
    assert_eq!(s.get("/plans", &secret).status, 200);
    let listed = s.get("/tokens", &s.admin);
    assert_eq!(listed.status, 200);
    assert!(!listed.text.contains(secret.split('_').nth(2).unwrap()));
    assert!(!listed.text.contains("secret_sha256"));
    let id = secret.split('_').nth(1).unwrap();
    assert_eq!(
        s.call(
            "DELETE",
            &format!("/tokens/{id}"),
            Some(&s.admin),
            &[],
            None
        )
        .status,
        204
    );
    assert_eq!(s.get("/plans", &secret).status, 401);
    let a = s.post(
        "/tokens",
        &s.admin,
        json!({"name": "x", "role": "superuser"}),
    );
    assert_eq!(
        (a.status, a.field().as_deref()),
        (400, Some("role")),
        "{}",
        a.text
    );
}

#[test]
fn plans_round_trip_exactly_and_if_match_guards_against_lost_updates() {
    let s = start(10);
    let a = s.put_plan(SHOP_ID, &s.admin, SHOP, None);
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("etag").as_deref(), Some("\"1\""));
    let canonical = haven_plan::Plan::from_toml(SHOP).unwrap().to_toml();
    let text = s.call(
        "GET",
        &format!("/plans/{SHOP_ID}"),
        Some(&s.admin),
        &[("Accept", "application/toml")],
        None,
    );
    assert_eq!(
        text.text, canonical,
        "the stored text is the canonical TOML"
    );

    let edited = canonical.replace("rto = \"45m\"", "rto = \"40m\"");
    let a = s.put_plan(SHOP_ID, &s.admin, &edited, Some("\"1\""));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["version"], 2);
    // A writer still holding version 1 is refused and nothing changes.
    let a = s.put_plan(SHOP_ID, &s.admin, &canonical, Some("\"1\""));
    assert_eq!(
        (a.status, a.field().as_deref()),
        (412, Some("If-Match")),
        "{}",
        a.text
    );
    let json = s.get(&format!("/plans/{SHOP_ID}"), &s.admin).json();
    assert_eq!(json["version"], 2);
    assert_eq!(json["plan"]["rto"], "40m");

    // The JSON model is editable too: what GET returns, changed, PUT back.
    let mut model = json["plan"].clone();
    model["name"] = "Shop, edited as JSON".into();
    let a = s.call(
        "PUT",
        &format!("/plans/{SHOP_ID}"),
        Some(&s.admin),
        &[("If-Match", "\"2\"")],
        Some(("application/json", &model.to_string())),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let text = s.call(
        "GET",
        &format!("/plans/{SHOP_ID}"),
        Some(&s.admin),
        &[("Accept", "application/toml")],
        None,
    );
    assert_eq!(
        text.text,
        edited.replace("Shop (three tier)", "Shop, edited as JSON"),
        "the same canonical TOML, with only the name changed"
    );
    let mut bad = model.clone();
    bad["groups"][0]["parallelism"] = "many".into();
    let a = s.call(
        "PUT",
        &format!("/plans/{SHOP_ID}"),
        Some(&s.admin),
        &[],
        Some(("application/json", &bad.to_string())),
    );
    assert_eq!(
        (a.status, a.field().as_deref()),
        (400, Some("groups.0.parallelism")),
        "{}",
        a.text
    );
    // Back to the earlier text for the diff below.
    assert_eq!(
        s.put_plan(SHOP_ID, &s.admin, &edited, Some("3")).status,
        200
    );

    // Diff against the stored plan.
    let d = s.call(
        "POST",
        &format!("/plans/{SHOP_ID}/diff"),
        Some(&s.admin),
        &[],
        Some(("application/toml", &canonical)),
    );
    assert_eq!(d.status, 200, "{}", d.text);
    assert!(
        d.json()["text"].as_str().unwrap().contains("rto"),
        "{}",
        d.text
    );

    // Delete with a stale version is refused; with the current one it works.
    let stale = s.call(
        "DELETE",
        &format!("/plans/{SHOP_ID}"),
        Some(&s.admin),
        &[("If-Match", "\"1\"")],
        None,
    );
    assert_eq!(stale.status, 412);
    let ok = s.call(
        "DELETE",
        &format!("/plans/{SHOP_ID}"),
        Some(&s.admin),
        &[("If-Match", "\"4\"")],
        None,
    );
    assert_eq!(ok.status, 204);
    assert_eq!(s.get(&format!("/plans/{SHOP_ID}"), &s.admin).status, 404);
}

#[test]
fn bad_requests_get_4xx_naming_the_field() {
    let s = start(10);
    let t = &s.admin;
    // TOML that does not parse into a plan: the field path is named.
    let bad = small_plan("x", "a").replace("rto = \"30m\"", "rto = \"thirty\"");
    let a = s.put_plan("x", t, &bad, None);
    assert_eq!(
        (a.status, a.field().as_deref()),
        (422, Some("rto")),
        "{}",
        a.text
    );
    // A plan failing verification.
    let bad = small_plan("x", "a").replace("vms = [", "depends_on = [\"nope\"]\nvms = [");
    let a = s.put_plan("x", t, &bad, None);
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.field().unwrap().starts_with("groups.0"), "{}", a.text);
    // The URL and the plan disagree on the id.
    let a = s.put_plan("y", t, &small_plan("x", "a"), None);
    assert_eq!((a.status, a.field().as_deref()), (422, Some("id")));
    // A malformed If-Match.
    let a = s.put_plan("x", t, &small_plan("x", "a"), Some("soon"));
    assert_eq!((a.status, a.field().as_deref()), (400, Some("If-Match")));
    // Unsupported media type.
    let a = s.call("PUT", "/plans/x", Some(t), &[], Some(("image/png", "...")));
    assert_eq!(a.status, 415);

    assert_eq!(s.put_plan("x", t, &small_plan("x", "a"), None).status, 201);
    // Execution requests.
    let a = s.post("/executions", t, json!({"plan": "x"}));
    assert_eq!(
        (a.status, a.field().as_deref()),
        (400, Some("mode")),
        "{}",
        a.text
    );
    let a = s.post("/executions", t, json!({"plan": "x", "mode": "sideways"}));
    assert_eq!(
        (a.status, a.field().as_deref()),
        (400, Some("mode")),
        "{}",
        a.text
    );
    let a = s.post("/executions", t, json!({"plan": "nope", "mode": "test"}));
    assert_eq!(
        (a.status, a.field().as_deref()),
        (404, Some("plan")),
        "{}",
        a.text
    );
    let a = s.call(
        "POST",
        "/executions",
        Some(t),
        &[],
        Some(("application/json", "{not json")),
    );
    assert_eq!(a.status, 400);
    // A drill of a plan without test networks cannot compile... this one has
    // no network map, so it compiles; an undo of it too. Unknown execution:
    let a = s.post("/executions/nope/approve", t, json!({"step": 0}));
    assert_eq!(a.status, 404);
    let a = s.get("/executions/nope/events?after=soon", t);
    assert_eq!(a.status, 404);
    // Unknown routes and methods answer JSON too.
    let a = s.get("/nothing-here", t);
    assert_eq!((a.status, a.code().as_str()), (404, "not-found"));
    let a = s.call("PATCH", "/plans", Some(t), &[], None);
    assert_eq!((a.status, a.code().as_str()), (405, "method-not-allowed"));
    // Errors axum raises itself are JSON too: a body over the limit, a
    // malformed query string.
    // One byte over axum's default 2 MiB limit, sent whole (so the
    // server reads it all and answers on a clean connection).
    let size = 2 * 1024 * 1024 + 1;
    let answer = raw_request(
        &s.base,
        &format!(
            "PUT /api/v1/plans/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/toml\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n{}",
            "#".repeat(size)
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too-large""#), "{answer}");
    let a = s.get("/executions?plan=a&plan=b", t);
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "bad-request"),
        "{}",
        a.text
    );
    let a = s.get("/audit?after=yesterday", t);
    assert_eq!((a.status, a.field().as_deref()), (400, Some("after")));
}

/// Sends a raw HTTP/1.1 request and returns the raw answer.
fn raw_request(base: &str, head: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn every_change_and_every_refusal_is_in_the_audit_log() {
    let s = start(10);
    let viewer = s.token("viewer", &["*"]);
    assert_eq!(
        s.put_plan("x", &s.admin, &small_plan("x", "a"), None)
            .status,
        201
    );
    assert_eq!(
        s.put_plan("x", &viewer, &small_plan("x", "a"), None).status,
        403
    );
    let started = s
        .post(
            "/executions",
            &s.admin,
            json!({"plan": "x", "mode": "test"}),
        )
        .json();
    let id = started["id"].as_str().unwrap();
    let audit = s.get("/audit", &s.admin).json();
    let lines: Vec<(String, String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        lines[0].1 == "token.create" && lines[0].3 == "ok",
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.1 == "plan.put"
            && l.2 == "plans/x"
            && l.3 == "ok"
            && l.0.starts_with("bootstrap admin")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.1 == "plan.put" && l.3 == "forbidden" && l.0.starts_with("viewer")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.1 == "execution.start" && l.2 == format!("executions/{id}")),
        "{lines:?}"
    );
    // The log is a hash chain.
    assert!(matches!(
        s.log.store().verify_stream("audit").unwrap(),
        haven_store::ChainCheck::Intact { .. }
    ));
    let after = s
        .get(&format!("/audit?after={}", lines.len() - 1), &s.admin)
        .json();
    assert_eq!(after.as_array().unwrap().len(), 1);
}

/// Reads server-sent events until `stop` returns true; returns the events.
fn read_sse(s: &common::Server, id: &str, after: u64, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let response = ureq::get(&format!(
        "{}/api/v1/executions/{id}/events?after={after}",
        s.base
    ))
    .header("Authorization", &format!("Bearer {}", s.admin))
    .call()
    .unwrap();
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut events = Vec::new();
    let reader = BufReader::new(response.into_body().into_reader());
    let mut sse_id = None;
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(v) = line
            .strip_prefix("id: ")
            .or_else(|| line.strip_prefix("id:"))
        {
            sse_id = Some(v.trim().parse::<u64>().unwrap());
        }
        if let Some(data) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        {
            let event: Value = serde_json::from_str(data).unwrap();
            assert_eq!(
                Some(event["seq"].as_u64().unwrap()),
                sse_id,
                "the SSE id is the journal seq"
            );
            let done = stop(&event);
            events.push(event);
            if done {
                break;
            }
        }
    }
    events
}

#[test]
fn sse_delivers_the_events_of_a_real_run_live_and_approval_continues_it() {
    let s = start(20);
    assert_eq!(s.put_plan(SHOP_ID, &s.admin, SHOP, None).status, 201);
    let started = s.post(
        "/executions",
        &s.admin,
        json!({"plan": SHOP_ID, "mode": "failover"}),
    );
    assert_eq!(started.status, 201, "{}", started.text);
    let id = started.json()["id"].as_str().unwrap().to_owned();

    let first = read_sse(&s, &id, 0, |e| e["event"] == "approval-requested");
    assert_eq!(first[0]["event"], "execution-started");
    let step = first.last().unwrap()["step"].as_u64().unwrap();
    let view = s.wait_status(&id, |st| st == "awaiting-approval");
    assert_eq!(view["steps"][step as usize]["state"], "awaiting-approval");

    // Approve from another thread while this one follows the stream.
    let (base, admin, id2) = (s.base.clone(), s.admin.clone(), id.clone());
    let approver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        ureq::post(&format!("{base}/api/v1/executions/{id2}/approve"))
            .header("Authorization", &format!("Bearer {admin}"))
            .send_json(json!({"step": step}))
            .unwrap()
            .status()
            .as_u16()
    });
    let after = first.last().unwrap()["seq"].as_u64().unwrap();
    let rest = read_sse(&s, &id, after, |e| e["event"] == "execution-finished");
    assert_eq!(approver.join().unwrap(), 200);
    assert_eq!(
        rest[0]["seq"].as_u64().unwrap(),
        after + 1,
        "resumes right after"
    );
    assert_eq!(rest[0]["event"], "approval-granted");
    assert_eq!(rest.last().unwrap()["outcome"], "succeeded");
    assert!(
        rest.iter()
            .filter(|e| e["event"] == "step-succeeded")
            .count()
            > 5
    );

    // Report and evidence of the finished run.
    let report = s.get(&format!("/executions/{id}/report"), &s.admin).json();
    assert_eq!(report["outcome"], "succeeded");
    let html = s.get(&format!("/executions/{id}/report?format=html"), &s.admin);
    assert!(html.text.contains("<h1>Execution"), "{}", html.text);
    let pack = s
        .get(&format!("/executions/{id}/evidence"), &s.admin)
        .json();
    let pack: haven_engine::report::EvidencePack = serde_json::from_value(pack).unwrap();
    pack.verify().unwrap();
    // Approving again is a conflict, not a server error.
    let again = s.post(
        &format!("/executions/{id}/approve"),
        &s.admin,
        json!({"step": step}),
    );
    assert_eq!(again.status, 409, "{}", again.text);
}

#[test]
fn cancel_through_the_api_ends_the_run_cancelled() {
    let s = start(20);
    assert_eq!(s.put_plan(SHOP_ID, &s.admin, SHOP, None).status, 201);
    let id = s
        .post(
            "/executions",
            &s.admin,
            json!({"plan": SHOP_ID, "mode": "failover"}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_status(&id, |st| st == "awaiting-approval");
    let a = s.call(
        "POST",
        &format!("/executions/{id}/cancel"),
        Some(&s.admin),
        &[],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let view = s.wait_status(&id, |st| st == "cancelled");
    assert!(view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|st| st["state"] != "awaiting-approval"));
    let a = s.call(
        "POST",
        &format!("/executions/{id}/resume"),
        Some(&s.admin),
        &[],
        None,
    );
    assert_eq!(a.status, 409, "{}", a.text);
}

#[test]
fn any_edit_marks_a_verified_plan_unverified() {
    let s = start(10);
    assert_eq!(
        s.put_plan("x", &s.admin, &small_plan("x", "a"), None)
            .status,
        201
    );
    // Never checked: there is no printable report yet.
    let none = s.get("/plans/x/readiness?format=html", &s.admin);
    assert_eq!(none.status, 404, "{}", none.text);
    assert!(
        none.text.contains("POST /plans/x/readiness"),
        "{}",
        none.text
    );
    // The readiness check runs for real: with no connector configured the
    // plan is not ready, and the problem names the plan field.
    let a = s.call("POST", "/plans/x/readiness", Some(&s.admin), &[], None);
    assert_eq!(a.status, 200, "{}", a.text);
    let body = a.json();
    assert_eq!(body["verified"], false);
    assert!(
        !body["last"]["problems"].as_array().unwrap().is_empty(),
        "{body}"
    );
    // The same report, printable.
    let html = s.get("/plans/x/readiness?format=html", &s.admin);
    assert_eq!(html.status, 200);
    let first_problem = body["last"]["problems"][0]["path"].as_str().unwrap();
    assert!(
        html.text.starts_with("<!doctype html>") && html.text.contains(first_problem),
        "{}",
        html.text
    );
    let bad = s.get("/plans/x/readiness?format=pdf", &s.admin);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "format");

    // A passing report for version 1 (as a check against live connectors
    // would record it) verifies the plan ...
    let mut report: ReadinessReport = serde_json::from_value(body["last"].clone()).unwrap();
    report.ready = true;
    report.problems.clear();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(haven_engine::readiness::record(&*s.log, &report))
        .unwrap();
    let listed = s.get("/plans", &s.admin).json();
    assert_eq!(listed[0]["verified"], true, "{listed}");
    assert_eq!(
        s.get("/plans/x/readiness", &s.admin).json()["verified"],
        true
    );
    // ... until it is edited.
    let edited = small_plan("x", "a").replace("30m", "20m");
    assert_eq!(s.put_plan("x", &s.admin, &edited, Some("1")).status, 200);
    assert_eq!(s.get("/plans", &s.admin).json()[0]["verified"], false);
    assert_eq!(
        s.get("/plans/x/readiness", &s.admin).json()["verified"],
        false
    );
}

#[test]
fn the_plan_definition_report_lists_groups_in_order_with_their_vms() {
    let s = start(10);
    assert_eq!(s.put_plan(SHOP_ID, &s.admin, SHOP, None).status, 201);
    let d = s
        .get(&format!("/plans/{SHOP_ID}/definition"), &s.admin)
        .json();
    let groups: Vec<&str> = d["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["db", "app", "web"], "{d}");
    let app = &d["groups"][1]["resolved"];
    assert!(app.to_string().contains("app-01"), "{app}");
    let html = s.get(
        &format!("/plans/{SHOP_ID}/definition?format=html"),
        &s.admin,
    );
    assert_eq!(html.status, 200);
    assert!(
        html.text.starts_with("<!doctype html>") && html.text.contains("app-02"),
        "{}",
        html.text
    );
    assert_eq!(s.get("/plans/nope/definition", &s.admin).status, 404);
}

#[test]
fn the_openapi_document_covers_every_route_and_every_route_is_served() {
    let s = start(10);
    let doc = s.call("GET", "/openapi.json", None, &[], None).json();
    assert_eq!(doc["openapi"], "3.1.0");
    let table = haven_api::routes::table();
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        documented += item.as_object().unwrap().len();
        let _ = path;
    }
    assert_eq!(documented, table.len(), "one operation per route");
    for route in &table {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][route.path][&method];
        assert!(
            op["summary"].is_string(),
            "{} {} undocumented",
            route.method,
            route.path
        );
        // The route is served: whatever the answer, it is not the router's
        // "no such route" or "wrong method".
        let path = route
            .path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "nope"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let a = s.call(route.method.as_str(), &path, Some(&s.admin), &[], None);
        let routed = !(a.status == 405 || a.text.contains("no API route"));
        assert!(
            routed,
            "{} {} is not routed: {} {}",
            route.method, route.path, a.status, a.text
        );
        assert!(
            a.status < 500,
            "{} {}: {} {}",
            route.method,
            route.path,
            a.status,
            a.text
        );
    }
}

#[test]
fn a_follower_redirects_writes_to_the_primary_and_serves_reads() {
    let s = start(10);
    assert_eq!(
        s.put_plan("x", &s.admin, &small_plan("x", "a"), None)
            .status,
        201
    );
    s.log.role.send_replace(Role::Follower {
        primary: Some("http://127.0.0.9:7400".into()),
    });
    let a = s.put_plan("x", &s.admin, &small_plan("x", "a"), None);
    assert_eq!(a.status, 307);
    assert_eq!(
        a.header("location").as_deref(),
        Some("http://127.0.0.9:7400/api/v1/plans/x")
    );
    let a = s.post(
        "/executions?x=1",
        &s.admin,
        json!({"plan": "x", "mode": "test"}),
    );
    assert_eq!(
        a.header("location").as_deref(),
        Some("http://127.0.0.9:7400/api/v1/executions?x=1")
    );
    assert_eq!(s.get("/plans/x", &s.admin).status, 200, "reads are local");
    let c = s.call("GET", "/cluster", None, &[], None).json();
    assert_eq!(
        (c["role"].as_str(), c["primary"].as_str()),
        (Some("follower"), Some("http://127.0.0.9:7400"))
    );

    s.log.role.send_replace(Role::Follower { primary: None });
    let a = s.put_plan("x", &s.admin, &small_plan("x", "a"), None);
    assert_eq!(
        (a.status, a.header("retry-after").as_deref()),
        (503, Some("1"))
    );
    assert_eq!(a.code(), "unavailable");

    // Replicas are listed from the store.
    s.log.role.send_replace(Role::Primary { term: 2 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(s.log.commit(vec![Command::Put {
        collection: "replicas".into(),
        key: "vcenter-prod/db-01".into(),
        value: json!({"vm": "db-01"}),
        expected_version: None,
    }]))
    .unwrap();
    let r = s.get("/replicas", &s.admin).json();
    assert_eq!(r[0]["id"], "vcenter-prod/db-01");
    assert_eq!(r[0]["vm"], "db-01");
}
