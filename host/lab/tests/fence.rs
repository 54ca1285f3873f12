//! Fencing: the lab refuses mutating requests from a deposed primary (a
//! `haven-fence` token lower than one already seen), remembers the highest
//! token across restarts, and admits requests without a token (operators).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use haven_lab::{api, Lab, LabConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "t0ken";

async fn open(dir: &std::path::Path) -> (Lab, Router) {
    let lab = Lab::open(LabConfig::new(dir, TOKEN)).await.unwrap();
    let router = api::router(lab.clone());
    (lab, router)
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    fence: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json");
    if let Some(f) = fence {
        req = req.header("haven-fence", f);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn image(name: &str) -> Value {
    json!({"name": name, "size_bytes": 4096})
}

#[tokio::test]
async fn a_lower_fencing_token_is_refused_and_the_highest_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_lab, app) = open(dir.path()).await;
        let (status, _) = call(&app, "POST", "/images", Some("5"), image("a")).await;
        assert_eq!(status, StatusCode::OK);
        // The same attempt may send several requests.
        let (status, _) = call(&app, "POST", "/images", Some("5"), image("b")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&app, "POST", "/images", Some("3"), image("stale")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["code"], "fenced", "{body}");
        assert!(
            !dir.path().join("images/stale.img").exists(),
            "a fenced request has no effect"
        );
        // Operators (no token) and reads are never fenced.
        let (status, _) = call(&app, "POST", "/images", None, image("c")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(&app, "GET", "/sites", Some("1"), Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&app, "POST", "/images", Some("x1"), image("d")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["field"], "haven-fence", "{body}");
        let (status, _) = call(&app, "POST", "/images", Some("9"), image("e")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_lab, app) = open(dir.path()).await;
    let (status, body) = call(&app, "POST", "/images", Some("8"), image("after-restart")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "fenced");
    let (status, _) = call(&app, "POST", "/images", Some("9"), image("f")).await;
    assert_eq!(status, StatusCode::OK);
}
