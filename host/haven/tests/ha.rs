//! Fault tests of the HA service with real `haven serve` processes on
//! 127.0.0.x: kill -9 of the primary under write load, the primary isolated,
//! the primary paused past its lease, the witness lost, a node away and back
//! (catching up from a snapshot), a cold restart; plus switchover, forced
//! failover in two-node mode and membership. Each fault scenario ends with the
//! history checker (`ha_support::check_history`).

mod ha_support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ha_support::{check_history, watch_roles, write_load, Cluster, History, Sample};
use tokio::task::JoinHandle;

/// A cluster with a write load and a role watcher running.
struct Run {
    cluster: Cluster,
    history: Arc<Mutex<History>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Run {
    async fn start(data: usize, witness: bool, ip_base: u8, extra_config: &str) -> (Self, u64) {
        let cluster = Cluster::start(data, witness, ip_base, extra_config).await;
        let (primary, _) = cluster
            .wait_primary(Duration::from_secs(15))
            .await
            .expect("a primary is elected");
        let mut run = Self {
            cluster,
            history: Arc::default(),
            samples: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        run.start_load(0);
        let nodes: Vec<_> = run.cluster.nodes.iter().map(|n| (n.id, n.real)).collect();
        run.tasks.push(tokio::spawn(watch_roles(
            nodes,
            run.samples.clone(),
            run.stop.clone(),
        )));
        (run, primary)
    }

    fn start_load(&mut self, first_key: u64) {
        let nodes: Vec<_> = self.cluster.nodes.iter().map(|n| (n.id, n.addr)).collect();
        self.tasks.push(tokio::spawn(write_load(
            nodes,
            self.history.clone(),
            self.stop.clone(),
            first_key,
        )));
    }

    fn acked(&self) -> usize {
        self.history.lock().unwrap().acked.len()
    }

    /// Waits until `more` writes were acknowledged after now.
    async fn progress(&self, more: usize, timeout: Duration) {
        let target = self.acked() + more;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acked() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "writes stalled at {} acknowledged ({:?})",
                self.acked(),
                self.history.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a primary other than `old`.
    async fn new_primary(&self, old: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            for n in &self.cluster.nodes {
                if n.id != old && self.cluster.status(n.id).await.is_ok_and(|s| s.primary) {
                    return n.id;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no new primary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load, lets every node converge, stops them and checks history.
    async fn finish(self) {
        let ids: Vec<u64> = self.cluster.nodes.iter().map(|n| n.id).collect();
        self.finish_with(&ids).await;
    }

    /// [`Run::finish`] over the nodes `ids` (the others are gone for good).
    async fn finish_with(mut self, ids: &[u64]) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        self.cluster.heal();
        let ids = ids.to_vec();
        assert!(
            self.cluster
                .wait_converged(&ids, Duration::from_secs(20))
                .await,
            "the nodes did not converge"
        );
        for n in 1..=self.cluster.nodes.len() as u64 {
            self.cluster.stop(n);
        }
        let homes: Vec<_> = ids
            .iter()
            .map(|id| self.cluster.node(*id).home.as_path())
            .collect();
        let history = self.history.lock().unwrap();
        let samples = self.samples.lock().unwrap();
        check_history(&history, &samples, &homes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_under_write_load() {
    let (mut run, primary) = Run::start(2, true, 10, "").await;
    run.progress(30, Duration::from_secs(10)).await;
    run.cluster.kill(primary);
    let new = run.new_primary(primary).await;
    assert_ne!(new, primary);
    run.progress(30, Duration::from_secs(10)).await;
    // The old primary comes back and catches up as a follower.
    run.cluster.spawn(primary);
    run.progress(20, Duration::from_secs(10)).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_isolated_from_the_others() {
    let (run, primary) = Run::start(2, true, 20, "").await;
    run.progress(30, Duration::from_secs(10)).await;
    run.cluster.isolate(primary);
    let new = run.new_primary(primary).await;
    run.progress(30, Duration::from_secs(10)).await;
    // Cut off, the old primary has lost its lease and does not act.
    let old = run
        .cluster
        .status(primary)
        .await
        .expect("isolated node answers directly");
    assert!(!old.primary, "isolated node still acts as primary: {old:?}");
    run.cluster.heal();
    assert!(
        run.cluster
            .wait_converged(&[1, 2, 3], Duration::from_secs(10))
            .await
    );
    assert!(run.cluster.status(new).await.unwrap().term > 0);
    run.progress(20, Duration::from_secs(10)).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_paused_past_its_lease_then_resumed() {
    let (run, primary) = Run::start(2, true, 30, "").await;
    run.progress(30, Duration::from_secs(10)).await;
    run.cluster.pause(primary, true);
    let new = run.new_primary(primary).await;
    run.progress(30, Duration::from_secs(10)).await;
    run.cluster.pause(primary, false);
    // Resumed, the deposed primary neither claims the role nor loses writes.
    run.progress(30, Duration::from_secs(10)).await;
    let old = run.cluster.status(primary).await.unwrap();
    assert!(!old.primary, "{old:?}");
    assert_eq!(old.leader, Some(new));
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_lost_and_back() {
    let (mut run, primary) = Run::start(2, true, 40, "").await;
    run.progress(20, Duration::from_secs(10)).await;
    run.cluster.kill(3);
    // Two data nodes still make a quorum: writes go on, same primary.
    run.progress(50, Duration::from_secs(10)).await;
    assert!(run.cluster.status(primary).await.unwrap().primary);
    run.cluster.spawn(3);
    run.progress(20, Duration::from_secs(10)).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_catches_up_from_a_snapshot() {
    let (mut run, primary) = Run::start(2, true, 50, "snapshot_every = 40").await;
    let follower = if primary == 1 { 2 } else { 1 };
    run.progress(10, Duration::from_secs(10)).await;
    run.cluster.kill(follower);
    // Enough writes that the log it needs is purged behind a snapshot.
    run.progress(150, Duration::from_secs(20)).await;
    run.cluster.spawn(follower);
    run.progress(20, Duration::from_secs(10)).await;
    let log =
        std::fs::read_to_string(run.cluster.node(follower).home.with_extension("log")).unwrap();
    let (homes_follower, cluster_dir) = (
        run.cluster.node(follower).home.clone(),
        run.cluster.dir.path().to_owned(),
    );
    run.finish().await;
    assert!(
        log.contains("installed a snapshot") || {
            // The log file is appended to until the process stops.
            std::fs::read_to_string(homes_follower.with_extension("log"))
                .unwrap()
                .contains("installed a snapshot")
        },
        "node {follower} did not catch up from a snapshot ({})",
        cluster_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_restart_of_the_whole_cluster_loses_nothing() {
    let (mut run, _) = Run::start(2, true, 60, "").await;
    run.progress(50, Duration::from_secs(10)).await;
    run.stop.store(true, Ordering::SeqCst);
    for t in run.tasks.drain(..) {
        t.await.unwrap();
    }
    for id in 1..=3 {
        run.cluster.kill(id);
    }
    for id in 1..=3 {
        run.cluster.spawn(id);
    }
    run.cluster
        .wait_primary(Duration::from_secs(15))
        .await
        .expect("a primary after the cold restart");
    run.stop.store(false, Ordering::SeqCst);
    let next = run.history.lock().unwrap().acked.last().unwrap().value + 1_000;
    run.start_load(next);
    let nodes: Vec<_> = run.cluster.nodes.iter().map(|n| (n.id, n.real)).collect();
    run.tasks.push(tokio::spawn(watch_roles(
        nodes,
        run.samples.clone(),
        run.stop.clone(),
    )));
    run.progress(20, Duration::from_secs(10)).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_on_request_fails_no_acknowledged_write() {
    let (run, primary) = Run::start(2, true, 70, "").await;
    run.progress(20, Duration::from_secs(10)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["ha", "--cluster"])
        .arg(&run.cluster.config)
        .arg("switchover")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = run.new_primary(primary).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("node {new} is now primary")));
    run.progress(20, Duration::from_secs(10)).await;
    let status = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["ha", "--cluster"])
        .arg(&run.cluster.config)
        .arg("status")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success());
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&new.to_string()) && l.contains("leader") && l.contains("yes")),
        "{table}"
    );
    assert!(table.contains("witness"), "{table}");
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_without_a_witness_fail_over_only_by_force() {
    let (mut run, primary) = Run::start(2, false, 80, "").await;
    run.progress(20, Duration::from_secs(10)).await;
    let survivor = if primary == 1 { 2 } else { 1 };
    run.cluster.kill(primary);
    // No automatic failover: no quorum, no primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!run.cluster.status(survivor).await.unwrap().primary);
    let haven = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["ha", "--cluster"])
            .arg(&run.cluster.config)
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    let refused = haven(&["failover", "--node", &survivor.to_string()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    let forced = haven(&["failover", "--force", "--node", &survivor.to_string()]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(String::from_utf8_lossy(&forced.stderr).contains("WARNING"));
    assert_eq!(run.new_primary(primary).await, survivor);
    run.progress(20, Duration::from_secs(10)).await;
    // Every write acknowledged before and after is on the survivor.
    run.stop.store(true, Ordering::SeqCst);
    for t in run.tasks.drain(..) {
        t.await.unwrap();
    }
    run.cluster.stop(survivor);
    let home = run.cluster.node(survivor).home.clone();
    let history = run.history.lock().unwrap();
    let samples = run.samples.lock().unwrap();
    check_history(&history, &samples, &[home.as_path()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_replaced_under_a_new_id_and_a_removed_id_is_refused() {
    let (mut run, primary) = Run::start(2, true, 90, "").await;
    if primary == 2 {
        // Keep the scenario simple: replace the follower.
        let out = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["ha", "--cluster"])
            .arg(&run.cluster.config)
            .args(["switchover", "--to", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        run.new_primary(2).await;
    }
    run.progress(20, Duration::from_secs(10)).await;
    run.cluster.kill(2);
    let ha = |config: &std::path::Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["ha", "--cluster"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    let removed = ha(&run.cluster.config, &["remove-node", "--id", "2"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let new = run.cluster.start_new_node(90).await;
    let addr = run.cluster.node(new).addr.to_string();
    let added = ha(
        &run.cluster.config,
        &["add-node", "--id", &new.to_string(), "--addr", &addr],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let reused = ha(
        &run.cluster.config,
        &["add-node", "--id", "2", "--addr", "127.0.0.99:1"],
    );
    assert!(!reused.status.success());
    let stderr = String::from_utf8_lossy(&reused.stderr);
    assert!(
        stderr.contains("was removed") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let status = run.cluster.status(1).await.unwrap();
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, vec![1, 3, new]);
    assert_eq!(status.removed, vec![2]);
    run.progress(20, Duration::from_secs(10)).await;
    // The new node now makes quorum in place of the old one: lose the witness.
    run.cluster.kill(3);
    run.progress(20, Duration::from_secs(10)).await;
    run.cluster.spawn(3);
    run.finish_with(&[1, 3, new]).await;
}

#[test]
fn configuration_and_usage_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        stderr
    };
    std::fs::write(
        &config,
        "secret = \"0123456789abcdef0123\"\n[[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n[[node]]\nid = 2\naddr = \"here\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    assert!(run(&["serve", "--cluster", c, "--node", "1"]).contains("node[1].addr"));
    std::fs::write(
        &config,
        "secret = \"0123456789abcdef0123\"\n[[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    assert!(run(&["serve", "--cluster", c, "--node", "7"]).contains("--node 7"));
    assert!(run(&["ha", "--cluster", c, "status"]).contains("no node"));
    assert!(run(&["ha", "--cluster", c, "failover", "--node", "1"]).contains("--force"));
}
