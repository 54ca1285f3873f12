//! Shared helpers of the integration tests: a target in-process, seeded images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_transport::events::{Event, EventSink};
use haven_transport::repo::{Repository, Retention};
use haven_transport::source::SourceSpec;
use haven_transport::target::{Target, TargetOptions};
use haven_transport::tls::{self, Trust};
use haven_transport::ReplicateOptions;

/// Deterministic xorshift64* generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A mixed image: random, zero and text-like quarters, in 64 KiB stripes.
pub fn mixed_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut data = vec![0u8; size];
    for (i, c) in data.chunks_mut(65536).enumerate() {
        match i % 4 {
            0 | 1 => rng.fill(c),
            2 => {}
            _ => {
                for (j, b) in c.iter_mut().enumerate() {
                    *b = b"haven replicates disks "[(j + i) % 23];
                }
            }
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Overwrites `n` scattered blocks of `len` bytes with random data; returns offsets.
pub fn scatter_writes(path: &Path, data: &mut [u8], n: usize, len: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed | 1);
    let slots = data.len() / len;
    let mut offs = Vec::new();
    while offs.len() < n {
        let o = rng.below(slots as u64) as usize * len;
        if !offs.contains(&o) {
            offs.push(o);
        }
    }
    for &o in &offs {
        rng.fill(&mut data[o..o + len]);
    }
    std::fs::write(path, &*data).unwrap();
    offs
}

pub struct TestTarget {
    pub addr: String,
    pub cert: PathBuf,
    pub repo: Repository,
    pub repo_dir: PathBuf,
    pub events: Arc<Mutex<Vec<Event>>>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

pub async fn start_target_with(repo_dir: &Path, f: impl FnOnce(&mut TargetOptions)) -> TestTarget {
    let repo = Repository::open(repo_dir, None).unwrap();
    start_target_repo(repo, repo_dir, f).await
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start_target_repo(
    repo: Repository,
    repo_dir: &Path,
    f: impl FnOnce(&mut TargetOptions),
) -> TestTarget {
    init_logs();
    let (cert, key) = tls::self_signed(repo_dir, &[]).unwrap();
    let cfg = tls::server_config(&cert, &key).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut opts = TargetOptions::new(repo.clone(), cfg);
    opts.events = EventSink::new(move |e| ev.lock().unwrap().push(e.clone()));
    opts.retention = Retention::default();
    f(&mut opts);
    let target = Target::bind("127.0.0.1:0", opts).await.unwrap();
    let addr = target.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = target
            .run(async {
                let _ = rx.await;
            })
            .await;
    });
    TestTarget {
        addr,
        cert,
        repo,
        repo_dir: repo_dir.to_path_buf(),
        events,
        stop: Some(tx),
        task,
    }
}

pub async fn start_target(repo_dir: &Path) -> TestTarget {
    start_target_with(repo_dir, |_| {}).await
}

pub fn options(src: &Path, replica: &str, t: &TestTarget) -> ReplicateOptions {
    let mut o = ReplicateOptions::new(
        SourceSpec::parse(&src.to_string_lossy()).unwrap(),
        replica,
        vec![t.addr.clone()],
        Trust::Pinned(t.cert.clone()),
    );
    o.retry_delay = Duration::from_millis(100);
    o
}

pub fn qemu_img_compare(a: &Path, b: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img (Debian qemu-utils) must be installed");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn qemu_img_info_raw(p: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()
        .expect("qemu-img must be installed");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "raw", "{v}");
}

/// Allocated bytes of a file (to check sparseness).
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Exports a point, waiting for a session that is still winding down to release the replica.
pub async fn export_when_idle(repo: &Repository, name: &str, point: u64, out: &Path) {
    for _ in 0..100 {
        match repo.export(name, point, out) {
            Err(haven_transport::TransportError::ReplicaBusy(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => return r.unwrap(),
        }
    }
    panic!("replica {name} stayed busy");
}
