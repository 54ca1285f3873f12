//! Failover benchmark of the HA service on loopback: kill -9 the primary of a
//! 2 data + 1 witness cluster of real `haven serve` processes 20 times under a
//! write load, and switch over 5 times. Prints detection time and time until
//! writes are accepted again (p50, p99), switchover unavailability, writes
//! lost, memory of a data node and the witness — against the targets and
//! Patroni's documented default failover time.
//!
//! `cargo bench -p haven --bench ha_failover` (HA_BENCH_KILLS overrides 20).

#[path = "../tests/ha_support/mod.rs"]
mod ha_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ha_support::{lost_writes, percentile, rss_kib, write_load, Cluster, History};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kills: usize = std::env::var("HA_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut cluster = Cluster::start(2, true, 200, "").await;
    let (mut primary, _) = cluster
        .wait_primary(Duration::from_secs(15))
        .await
        .expect("a primary is elected");
    let history: Arc<Mutex<History>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Vec<_> = cluster.nodes.iter().map(|n| (n.id, n.addr)).collect();
    let load = tokio::spawn(write_load(nodes, history.clone(), stop.clone(), 0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_data = cluster.pid(primary).and_then(rss_kib);
    let rss_witness = cluster.pid(3).and_then(rss_kib);

    let (mut detection, mut writable) = (Vec::new(), Vec::new());
    for round in 0..kills {
        let term_before = cluster.status(primary).await.map(|s| s.term).unwrap_or(0);
        let acked_before = history.lock().unwrap().acked.len();
        let killed_at = Instant::now();
        cluster.kill(primary);
        // Detection: another node leads a newer term.
        let mut new_primary = None;
        while new_primary.is_none() {
            for n in cluster.nodes.iter().filter(|n| n.id != primary) {
                if let Ok(s) = cluster.status(n.id).await {
                    if s.state == "leader" && s.term > term_before {
                        new_primary = Some(n.id);
                    }
                }
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "round {round}: no new leader"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        detection.push(killed_at.elapsed());
        // Writable: the first write acknowledged by another node after the
        // kill (an answer the dead node sent just before dying may arrive
        // after the kill instant).
        loop {
            let first = history.lock().unwrap().acked[acked_before..]
                .iter()
                .find(|a| a.at > killed_at && a.node != primary)
                .map(|a| a.at);
            if let Some(at) = first {
                writable.push(at - killed_at);
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "round {round}: writes never resumed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let old = primary;
        cluster.spawn(old);
        primary = cluster
            .wait_primary(Duration::from_secs(10))
            .await
            .expect("a primary")
            .0;
        // The restarted node catches up before the next round.
        assert!(
            cluster
                .wait_converged(&[1, 2, 3], Duration::from_secs(20))
                .await
        );
        eprintln!(
            "kill {:>2}: node {old} killed, detected in {:>5} ms, writes again after {:>5} ms",
            round + 1,
            detection.last().unwrap().as_millis(),
            writable.last().unwrap().as_millis()
        );
    }

    // Switchover: the longest gap between acknowledged writes around each.
    let mut gaps = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let leader = cluster
            .wait_primary(Duration::from_secs(10))
            .await
            .expect("a primary")
            .0;
        let started = Instant::now();
        let addr = cluster.node(leader).addr.to_string();
        let _: serde_json::Value = cluster
            .client
            .post_json(
                &addr,
                "/cluster/v1/switchover",
                &serde_json::json!({}),
                Duration::from_secs(10),
            )
            .await
            .expect("switchover");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let h = history.lock().unwrap();
        let window: Vec<Instant> = h
            .acked
            .iter()
            .map(|a| a.at)
            .filter(|at| *at + Duration::from_millis(200) > started)
            .collect();
        let gap = window
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        gaps.push(gap);
    }

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(
        cluster
            .wait_converged(&[1, 2, 3], Duration::from_secs(20))
            .await
    );
    for id in 1..=3 {
        cluster.stop(id);
    }
    let history = history.lock().unwrap();
    let lost = (1..=3)
        .map(|id| lost_writes(&history, &cluster.node(id).home))
        .max()
        .unwrap_or(0);

    detection.sort();
    writable.sort();
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nHA failover on loopback: 2 data nodes + 1 witness, default timeouts (heartbeat 100 ms, election 400-600 ms)");
    println!(
        "{kills} kill -9 of the primary under a sequential write load ({} writes acknowledged)",
        history.acked.len()
    );
    println!("| measure | p50 | p99 | target |");
    println!("|---|---|---|---|");
    println!(
        "| detection (new leader elected) | {:.0} ms | {:.0} ms | |",
        ms(percentile(&detection, 50.0)),
        ms(percentile(&detection, 99.0))
    );
    println!(
        "| failover: kill → writes accepted | {:.0} ms | {:.0} ms | p99 ≤ 3000 ms |",
        ms(percentile(&writable, 50.0)),
        ms(percentile(&writable, 99.0))
    );
    println!(
        "| switchover unavailability (longest gap between acknowledged writes) | {:.0} ms | {:.0} ms (max of 5) | ≤ 1000 ms |",
        ms(percentile(&gaps, 50.0)),
        ms(percentile(&gaps, 100.0))
    );
    println!("| acknowledged writes lost | {lost} | | 0 |");
    if let (Some(d), Some(w)) = (rss_data, rss_witness) {
        println!(
            "| RSS: data node / witness | {} MiB / {} MiB | | |",
            d / 1024,
            w / 1024
        );
    }
    let p99 = percentile(&writable, 99.0).as_secs_f64();
    println!(
        "Patroni's default failover takes 30-45 s (ttl 30 s + loop_wait 10 s): {:.0}-{:.0}x our p99.",
        30.0 / p99,
        45.0 / p99
    );
}
