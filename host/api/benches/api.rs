//! Web API benchmark: `cargo bench -p haven-api --bench api`.
//!
//! Over a real loopback server and store (the simulated step runner):
//! - an authenticated read (`GET /plans/{id}`): token lookup, store read;
//! - a plan write (`PUT /plans/{id}` with `If-Match`): parse, verify, one
//!   durable commit, one audit append;
//! - live event latency: from sending an approval to its `approval-granted`
//!   event arriving on an already open SSE stream.
//!
//! Prints median and 99th percentile beside each target.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{small_plan, start, SHOP, SHOP_ID};
use serde_json::json;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn report(name: &str, samples: Vec<Duration>, target_p99: Duration) {
    let n = samples.len();
    let (p50, p99) = percentiles(samples);
    println!(
        "{name:<44} n={n:<5} p50 {:>8.2?}  p99 {:>8.2?}  (target p99 < {target_p99:?}: {})",
        p50,
        p99,
        if p99 < target_p99 { "met" } else { "MISSED" }
    );
}

fn main() {
    let s = start(1);
    assert_eq!(
        s.put_plan("bench", &s.admin, &small_plan("bench", "a"), None)
            .status,
        201
    );

    let mut reads = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        assert_eq!(s.get("/plans/bench", &s.admin).status, 200);
        reads.push(t.elapsed());
    }
    report(
        "GET /plans/{id} (auth + read)",
        reads,
        Duration::from_millis(10),
    );

    let mut writes = Vec::new();
    for version in 1..=200u64 {
        let text = small_plan("bench", "a").replace("30m", &format!("{}m", 30 + version % 2));
        let t = Instant::now();
        let a = s.put_plan("bench", &s.admin, &text, Some(&version.to_string()));
        writes.push(t.elapsed());
        assert_eq!(a.status, 200, "{}", a.text);
    }
    report(
        "PUT /plans/{id} (verify + commit + audit)",
        writes,
        Duration::from_millis(50),
    );

    assert_eq!(s.put_plan(SHOP_ID, &s.admin, SHOP, None).status, 201);
    let mut live = Vec::new();
    for _ in 0..30 {
        let started = s.post(
            "/executions",
            &s.admin,
            json!({"plan": SHOP_ID, "mode": "failover"}),
        );
        let id = started.json()["id"].as_str().unwrap().to_owned();
        let view = s.wait_status(&id, |st| st == "awaiting-approval");
        let step = view["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["state"] == "awaiting-approval")
            .unwrap()["index"]
            .as_u64()
            .unwrap();
        let after = s.log_len(&id);
        let response = ureq::get(&format!(
            "{}/api/v1/executions/{id}/events?after={after}",
            s.base
        ))
        .header("Authorization", &format!("Bearer {}", s.admin))
        .call()
        .unwrap();
        let mut lines = BufReader::new(response.into_body().into_reader()).lines();
        let sent = Instant::now();
        let a = s.post(
            &format!("/executions/{id}/approve"),
            &s.admin,
            json!({"step": step}),
        );
        assert_eq!(a.status, 200);
        loop {
            let line = lines.next().unwrap().unwrap();
            if line.contains("\"approval-granted\"") {
                live.push(sent.elapsed());
                break;
            }
        }
        s.wait_status(&id, |st| st == "succeeded");
    }
    report(
        "approve → SSE approval-granted",
        live,
        Duration::from_millis(100),
    );
}
