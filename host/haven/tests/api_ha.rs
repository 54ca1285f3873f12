//! The API-backed CLI against a real HA cluster of `haven serve` processes
//! (two data nodes and a witness): writes sent to a follower reach the
//! primary, reads are served by the follower's replica, and after the
//! primary is killed the CLI skips it and continues on the new primary.

mod ha_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ha_support::Cluster;

const SHOP: &str = include_str!("../../plan/examples/three-tier.toml");
const SHOP_ID: &str = "shop-three-tier";

async fn haven(home: &Path, args: &[&str], servers: &str, token: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haven"));
    cmd.args(args)
        .env("HAVEN_HOME", home)
        .env("HAVEN_SERVER", servers)
        .env("HAVEN_TOKEN", token)
        .env("RUST_LOG", "off");
    tokio::task::spawn_blocking(move || cmd.output().expect("haven runs"))
        .await
        .unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_the_primary_through_a_failover() {
    let mut cluster = Cluster::start(2, true, 110, "").await;
    let (primary, _) = cluster
        .wait_primary(Duration::from_secs(15))
        .await
        .expect("a primary is elected");
    let follower = if primary == 1 { 2 } else { 1 };
    // The first primary creates the bootstrap admin token in its home.
    let token_file = cluster.node(primary).home.join("admin-token");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !token_file.exists() {
        assert!(
            Instant::now() < deadline,
            "no admin token in {}",
            token_file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.addr))
        .collect();
    let url = |id: u64| urls[id as usize - 1].clone();
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("shop.toml");
    std::fs::write(&plan, SHOP).unwrap();
    let p = plan.to_str().unwrap();

    // Sent to the follower first: redirected to the primary.
    let both = format!("{},{}", url(follower), url(primary));
    assert!(
        ok(haven(work.path(), &["plan", "push", p], &both, &token).await).contains("version 1")
    );
    // Reads come from the follower's replica once it has applied the write.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = ok(haven(work.path(), &["plan", "list"], &url(follower), &token).await);
        if listed.contains(SHOP_ID) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never listed the plan"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The primary dies; the survivor and the witness elect a new one.
    cluster.kill(primary);
    let (new_primary, _) = cluster
        .wait_primary(Duration::from_secs(20))
        .await
        .expect("a new primary is elected");
    assert_eq!(new_primary, follower);
    // The dead node is listed first: the CLI skips it.
    let old_first = format!("{},{}", url(primary), url(follower));
    let out = ok(haven(
        work.path(),
        &["plan", "push", p, "--if-version", "1"],
        &old_first,
        &token,
    )
    .await);
    assert!(out.contains("version 2"), "{out}");
    let audit = ok(haven(work.path(), &["audit"], &old_first, &token).await);
    assert_eq!(audit.matches("plan.put").count(), 2, "{audit}");
}
