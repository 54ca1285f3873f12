//! Crash safety with real processes: this test binary re-executes itself as the
//! target or the source role (env `HAVEN_CRASH_ROLE`), and the parent SIGKILLs one of
//! them at seeded random moments.  After every kill the last good point must export
//! bit-for-bit equal to the disk it recorded, and a later pass must resume and finish.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use haven_transport::repo::Repository;
use haven_transport::source::SourceSpec;
use haven_transport::target::{Target, TargetOptions};
use haven_transport::tls::{self, Trust};
use haven_transport::{replicate, ReplicateOptions};

const MIB: usize = 1 << 20;
const ROLE: &str = "HAVEN_CRASH_ROLE";

/// Entry point of the child roles; a no-op in a normal test run.
#[test]
fn crash_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("HAVEN_CRASH_DIR").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match role.as_str() {
            "target" => {
                let repo = Repository::open(&dir.join("repo"), None).unwrap();
                let (cert, key) = tls::self_signed(&dir, &[]).unwrap();
                let mut opts = TargetOptions::new(repo, tls::server_config(&cert, &key).unwrap());
                opts.checkpoint_bytes = 2 * MIB as u64;
                let t = Target::bind("127.0.0.1:0", opts).await.unwrap();
                let addr = t.local_addr().unwrap().to_string();
                std::fs::write(dir.join("addr.tmp"), &addr).unwrap();
                std::fs::rename(dir.join("addr.tmp"), dir.join("addr")).unwrap();
                t.run(std::future::pending()).await.unwrap();
            }
            "source" => {
                let addr = std::fs::read_to_string(dir.join("addr")).unwrap();
                let mut o = ReplicateOptions::new(
                    SourceSpec::parse(&dir.join("disk.raw").to_string_lossy()).unwrap(),
                    "vm",
                    vec![addr],
                    Trust::Pinned(dir.join(tls::SELF_SIGNED_CERT)),
                );
                o.bwlimit = Some(24 * MIB as u64);
                o.max_attempts = 1;
                let _ = replicate(o).await;
            }
            r => panic!("unknown role {r}"),
        }
    });
}

fn spawn(role: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("HAVEN_CRASH_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn start_target_process(dir: &Path) -> Child {
    let _ = std::fs::remove_file(dir.join("addr"));
    let mut c = spawn("target", dir);
    for _ in 0..200 {
        if dir.join("addr").exists() {
            return c;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    kill9(&mut c);
    panic!("target process did not start");
}

fn kill9(c: &mut Child) {
    let _ = c.kill(); // SIGKILL
    let _ = c.wait();
}

/// Checks every retained point against the disk content it recorded.
fn check_points(
    dir: &Path,
    expected: &mut HashMap<u64, PathBuf>,
    current: &Path,
    round: usize,
) -> (u64, u64) {
    let repo = Repository::open(&dir.join("repo"), None).unwrap();
    let points = repo.points("vm").unwrap_or_default();
    for p in &points {
        let want = expected.entry(p.id).or_insert_with(|| {
            let keep = dir.join(format!("version-{}.raw", p.id));
            std::fs::copy(current, &keep).unwrap();
            keep
        });
        let out = dir.join("export.raw");
        repo.export("vm", p.id, &out).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&*want).unwrap(),
            "round {round}: point {} damaged",
            p.id
        );
    }
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("repo/replicas/vm/state.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let acked = state["pass"]["acked_group"].as_u64().unwrap_or(0);
    (points.last().map_or(0, |p| p.id), acked)
}

#[test]
fn kill_9_either_side_never_damages_the_last_good_point() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("disk.raw");
    let mut data = mixed_image(&disk, 32 * MIB, 99);
    let mut rng = Rng(0x5eed);
    let mut expected: HashMap<u64, PathBuf> = HashMap::new();
    let mut last_point = 0;
    let mut resumed_with_progress = 0;
    for round in 0..14 {
        let mut target = start_target_process(d);
        let mut source = spawn("source", d);
        let delay = 100 + rng.below(1300);
        std::thread::sleep(Duration::from_millis(delay));
        if rng.below(2) == 0 {
            kill9(&mut target);
            kill9(&mut source);
        } else {
            kill9(&mut source);
            kill9(&mut target);
        }
        let (point, acked) = check_points(d, &mut expected, &disk, round);
        if acked > 0 {
            resumed_with_progress += 1;
        }
        if point > last_point {
            // A pass committed: change the disk for the next one.
            last_point = point;
            scatter_writes(&disk, &mut data, 200, 65536, rng.next());
        }
    }
    assert!(
        resumed_with_progress > 0,
        "no kill landed after an acknowledged checkpoint"
    );
    // A final pass without kills completes and matches the disk.
    let mut target = start_target_process(d);
    let mut source = spawn("source", d);
    let _ = source.wait();
    kill9(&mut target);
    let (point, _) = check_points(d, &mut expected, &disk, 99);
    assert!(point > last_point || expected.len() as u64 >= point);
    let repo = Repository::open(&d.join("repo"), None).unwrap();
    assert_eq!(std::fs::read(repo.image_path("vm").unwrap()).unwrap(), data);
    assert!(repo.verify("vm").unwrap().ok());
}
