//! What the tests that run `haven serve` against the lab share: the lab in
//! process (it outlives the host's deaths), a home with the lab connector
//! configured, the `haven` command and a served host.

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use haven_lab::requests::SeedRequest;
use haven_lab::{api, Lab, LabConfig};
use haven_tests::TestHome;

/// A lab site served on loopback with seeded prod VMs, and a Haven home
/// whose `lab-prod` and `lab-dr` instances use it.
pub struct LabSite {
    pub lab: Lab,
    pub home: PathBuf,
    _test_home: TestHome,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl LabSite {
    /// `vms` prod VMs in `groups` groups (tags `group=gNN`), powered on;
    /// lab tasks take `op_delay_ms`, guests boot in `boot_delay_ms`.
    pub fn start(vms: u32, groups: u32, op_delay_ms: u64, boot_delay_ms: u64) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (lab, url) = rt.block_on(async {
            let mut config = LabConfig::new(dir.path(), "t");
            config.op_delay_ms = op_delay_ms;
            config.boot_delay_ms = boot_delay_ms;
            let lab = Lab::open(config).await.unwrap();
            let seed: SeedRequest = serde_json::from_value(serde_json::json!({
                "site": "prod", "count": vms, "groups": groups, "power_on": true,
            }))
            .unwrap();
            lab.seed(seed).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(api::serve(lab.clone(), listener, std::future::pending()));
            (lab, url)
        });
        let test_home = TestHome::new();
        test_home.configure_lab(&url, "t", dir.path());
        Self {
            lab,
            home: test_home.home().root().to_owned(),
            _test_home: test_home,
            _dir: dir,
            _rt: rt,
        }
    }

    /// The names of the VMs at `site`.
    pub fn vm_names(&self, site: &str) -> Vec<String> {
        self.lab
            .vms(Some(site))
            .unwrap()
            .into_iter()
            .map(|v| v.vm.name)
            .collect()
    }
}

/// Runs `haven` on `home`, without a server or token from the environment.
pub fn haven(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(args)
        .env("HAVEN_HOME", home)
        .env("RUST_LOG", "off")
        .env_remove("HAVEN_SERVER")
        .env_remove("HAVEN_TOKEN")
        .output()
        .expect("haven runs")
}

/// The standard output of a command that must have succeeded.
pub fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `haven serve` on `port`, killed when dropped.
pub struct Serve(pub Child);

impl Serve {
    /// Starts it and waits until it listens.
    pub fn start(home: &Path, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("HAVEN_HOME", home)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haven serve starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haven serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill9(mut self) {
        // SAFETY: signalling a child process we own.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
