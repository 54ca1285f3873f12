//! A real HA cluster for fault tests and the failover benchmark: `haven serve`
//! processes on 127.0.0.x, each reached through an in-test TCP proxy that can
//! cut any pair of nodes apart, a write load through the quorum commit path,
//! and a history checker.
//!
//! Node `i` binds `127.0.0.(base+i):real` and is known to the cluster as
//! `127.0.0.(base+i):proxy`. Nodes send from their own IP, so the proxy in
//! front of node `j` knows who is calling and can drop the pair `(i, j)`.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_ha::{ClientError, ClusterClient, NodeStatus};
use haven_store::{Applied, Command as StoreCommand, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub const SECRET: &str = "test-secret-0123456789";
pub const LOAD_COLLECTION: &str = "load";

/// A TCP proxy in front of one node that can refuse chosen callers.
struct Proxy {
    /// Source IPs whose connections to this node are dropped.
    blocked: Arc<Mutex<HashSet<IpAddr>>>,
    /// Open connections by caller, to cut them when a partition starts.
    conns: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>>,
    task: AbortHandle,
}

impl Proxy {
    async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("proxy binds");
        let blocked: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
        let conns: Arc<Mutex<Vec<(IpAddr, AbortHandle)>>> = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                if b.lock().unwrap().contains(&peer.ip()) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut conns = c.lock().unwrap();
                conns.retain(|(_, h)| !h.is_finished());
                conns.push((peer.ip(), handle.abort_handle()));
            }
        })
        .abort_handle();
        Self {
            blocked,
            conns,
            task,
        }
    }

    fn block(&self, ip: IpAddr) {
        self.blocked.lock().unwrap().insert(ip);
        for (src, h) in self.conns.lock().unwrap().iter() {
            if *src == ip {
                h.abort();
            }
        }
    }

    fn unblock_all(&self) {
        self.blocked.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, h) in self.conns.lock().unwrap().iter() {
            h.abort();
        }
    }
}

/// One node of the test cluster.
pub struct Node {
    pub id: u64,
    pub witness: bool,
    pub ip: IpAddr,
    /// The address the cluster knows (the proxy).
    pub addr: SocketAddr,
    /// The address the process binds.
    pub real: SocketAddr,
    pub home: PathBuf,
    child: Option<Child>,
    proxy: Proxy,
}

/// A cluster of real `haven serve` processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub nodes: Vec<Node>,
    pub client: ClusterClient,
}

fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("free port")
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Starts `data` data nodes and, with `witness`, one witness (the last
    /// id). `ip_base` keeps concurrent tests on different addresses.
    pub async fn start(data: usize, witness: bool, ip_base: u8, extra_config: &str) -> Self {
        Self::start_with(data, witness, ip_base, extra_config, |_| {}).await
    }

    /// Like [`Cluster::start`], with `prepare` called on each node's home
    /// (created) before its process first starts.
    pub async fn start_with(
        data: usize,
        witness: bool,
        ip_base: u8,
        extra_config: &str,
        prepare: impl Fn(&Node),
    ) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("HA_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("cluster files kept in {}", dir.path().display());
        }
        let mut nodes = Vec::new();
        let mut toml =
            format!("secret = \"{SECRET}\"\n{extra_config}\n[timeouts]\nwrite_ms = 3000\n");
        let count = data + usize::from(witness);
        for i in 0..count {
            let id = i as u64 + 1;
            let ip: IpAddr = format!("127.0.0.{}", ip_base as usize + i).parse().unwrap();
            let real = SocketAddr::new(ip, free_port(ip));
            let addr = SocketAddr::new(ip, free_port(ip));
            let is_witness = witness && i == count - 1;
            toml.push_str(&format!(
                "[[node]]\nid = {id}\naddr = \"{addr}\"\nlisten = \"{real}\"\nrole = \"{}\"\n",
                if is_witness { "witness" } else { "data" }
            ));
            nodes.push(Node {
                id,
                witness: is_witness,
                ip,
                addr,
                real,
                home: dir.path().join(format!("node{id}")),
                child: None,
                proxy: Proxy::start(addr, real).await,
            });
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).unwrap();
        let mut cluster = Self {
            dir,
            config,
            nodes,
            client: ClusterClient::new(SECRET),
        };
        for node in &cluster.nodes {
            std::fs::create_dir_all(&node.home).unwrap();
            prepare(node);
        }
        for id in 1..=count as u64 {
            cluster.spawn(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Adds a new data node `id` to the configuration file and starts it
    /// (pristine: it waits to be added by `haven ha add-node`).
    pub async fn start_new_node(&mut self, ip_base: u8) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let ip: IpAddr = format!("127.0.0.{}", ip_base as usize + id as usize - 1)
            .parse()
            .unwrap();
        let real = SocketAddr::new(ip, free_port(ip));
        let addr = SocketAddr::new(ip, free_port(ip));
        let mut toml = std::fs::read_to_string(&self.config).unwrap();
        toml.push_str(&format!(
            "[[node]]\nid = {id}\naddr = \"{addr}\"\nlisten = \"{real}\"\n"
        ));
        std::fs::write(&self.config, toml).unwrap();
        self.nodes.push(Node {
            id,
            witness: false,
            ip,
            addr,
            real,
            home: self.dir.path().join(format!("node{id}")),
            child: None,
            proxy: Proxy::start(addr, real).await,
        });
        self.spawn(id);
        id
    }

    /// Starts (or restarts) node `id`'s process.
    pub fn spawn(&mut self, id: u64) {
        let config = self.config.clone();
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.home.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["serve", "--cluster"])
            .arg(&config)
            .args(["--node", &id.to_string(), "--home"])
            .arg(&node.home)
            .env("RUST_LOG", "warn,haven_ha=info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haven serve starts");
        node.child = Some(child);
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` with SIGTERM and waits for it.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT node `id`.
    pub fn pause(&self, id: u64, paused: bool) {
        let pid = self.node(id).child.as_ref().expect("running").id() as i32;
        unsafe { libc::kill(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT }) };
    }

    /// Cuts node `id` off from every other node (both directions).
    pub fn isolate(&self, id: u64) {
        let ip = self.node(id).ip;
        for other in &self.nodes {
            if other.id != id {
                other.proxy.block(ip);
                self.node(id).proxy.block(other.ip);
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&self) {
        for n in &self.nodes {
            n.proxy.unblock_all();
        }
    }

    /// Node `id`'s status, asked directly (past any partition).
    pub async fn status(&self, id: u64) -> Result<NodeStatus, ClientError> {
        self.client
            .get_json(
                &self.node(id).real.to_string(),
                "/cluster/v1/status",
                Duration::from_millis(300),
            )
            .await
    }

    /// Waits until some node acts as primary (confirmed by its status) and returns it.
    pub async fn wait_primary(&self, timeout: Duration) -> Option<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for n in &self.nodes {
                if let Ok(s) = self.status(n.id).await {
                    if s.primary {
                        return Some((n.id, s.term));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until every running node has applied the same raft index.
    pub async fn wait_converged(&self, running: &[u64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut applied = Vec::new();
            for id in running {
                applied.push(self.status(*id).await.ok().and_then(|s| s.last_applied));
            }
            if applied.iter().all(|a| a.is_some() && *a == applied[0]) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub value: u64,
    /// The store index it got: its position in the replicated history.
    pub token: u64,
    pub node: u64,
    pub at: Instant,
}

/// What the write load saw.
#[derive(Debug, Default)]
pub struct History {
    pub acked: Vec<Ack>,
    /// Writes whose outcome is unknown (timeouts, broken connections).
    pub unknown: usize,
    /// Refusals (no primary, not primary): never applied.
    pub refused: usize,
}

#[derive(serde::Deserialize)]
struct Committed {
    applied: Vec<Applied>,
}

/// Writes unique keys one after another through the quorum commit path of
/// whichever node is primary, following the primary as it moves, until `stop`.
pub async fn write_load(
    nodes: Vec<(u64, SocketAddr)>,
    history: Arc<Mutex<History>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first_key: u64,
) {
    let client = ClusterClient::new(SECRET);
    let by_url: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, (_, a))| (format!("http://{a}"), i))
        .collect();
    let mut target = 0usize;
    let mut n = first_key;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let key = format!("w{n:08}");
        let command = StoreCommand::Put {
            collection: LOAD_COLLECTION.into(),
            key: key.clone(),
            value: serde_json::json!(n),
            expected_version: None,
        };
        let (id, addr) = nodes[target];
        let answer: Result<Committed, ClientError> = client
            .post_json(
                &addr.to_string(),
                "/cluster/v1/commit",
                &vec![command],
                Duration::from_secs(2),
            )
            .await;
        {
            let mut h = history.lock().unwrap();
            match answer {
                Ok(c) => {
                    h.acked.push(Ack {
                        key,
                        value: n,
                        token: c.applied[0].index,
                        node: id,
                        at: Instant::now(),
                    });
                    n += 1;
                    continue;
                }
                Err(ClientError::Status {
                    status: 409, body, ..
                }) => {
                    h.refused += 1;
                    let primary = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["primary"].as_str().and_then(|p| by_url.get(p).copied()));
                    target = primary.unwrap_or((target + 1) % nodes.len());
                }
                Err(ClientError::Connect { .. }) => {
                    h.refused += 1;
                    target = (target + 1) % nodes.len();
                }
                Err(_) => {
                    h.unknown += 1;
                    target = (target + 1) % nodes.len();
                }
            }
        }
        // A key whose outcome is unknown is not reused: move on.
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One observation of every node's role.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// (node, term) of each node reporting itself primary.
    pub primaries: Vec<(u64, u64)>,
}

/// Polls every node's status until `stop`, recording who claims to be primary.
pub async fn watch_roles(
    nodes: Vec<(u64, SocketAddr)>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = ClusterClient::new(SECRET);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let at = Instant::now();
        let mut primaries = Vec::new();
        for (id, real) in &nodes {
            let s: Result<NodeStatus, _> = client
                .get_json(
                    &real.to_string(),
                    "/cluster/v1/status",
                    Duration::from_millis(200),
                )
                .await;
            if let Ok(s) = s {
                if s.primary {
                    primaries.push((*id, s.term));
                }
            }
        }
        samples.lock().unwrap().push(Sample { at, primaries });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The history checker: every acknowledged write is in every data node's
/// store with its value; the data nodes' stores are identical; store
/// positions grow with acknowledgement order (one history, no fork); no sample saw two primaries, and no term
/// had two primaries.
pub fn check_history(history: &History, samples: &[Sample], homes: &[&Path]) {
    assert!(
        !history.acked.is_empty(),
        "the load made no progress at all"
    );
    let stores: Vec<Store> = homes
        .iter()
        .map(|h| Store::open(&h.join("state.redb")).unwrap())
        .collect();
    for ack in &history.acked {
        for (store, home) in stores.iter().zip(homes) {
            let doc = store.get(LOAD_COLLECTION, &ack.key).unwrap();
            assert!(
                doc.as_ref()
                    .is_some_and(|d| d.value == serde_json::json!(ack.value)),
                "acknowledged write {} (token {}, node {}) is missing from {}",
                ack.key,
                ack.token,
                ack.node,
                home.display()
            );
        }
    }
    let first = stores[0].export_image().unwrap();
    for (store, home) in stores.iter().zip(homes).skip(1) {
        assert!(
            store.export_image().unwrap() == first,
            "{} differs from {}",
            home.display(),
            homes[0].display()
        );
    }
    for pair in history.acked.windows(2) {
        assert!(
            pair[1].token > pair[0].token,
            "store positions must grow with acknowledgement order: {} then {}",
            pair[0].token,
            pair[1].token
        );
    }
    let mut term_owner: BTreeMap<u64, u64> = BTreeMap::new();
    for s in samples {
        assert!(
            s.primaries.len() <= 1,
            "two primaries at once: {:?}",
            s.primaries
        );
        for (node, term) in &s.primaries {
            let owner = term_owner.entry(*term).or_insert(*node);
            assert_eq!(owner, node, "term {term} had two primaries");
        }
    }
}

/// How many acknowledged writes are missing from the store in `home` (read
/// after its process stopped).
pub fn lost_writes(history: &History, home: &Path) -> usize {
    let store = Store::open(&home.join("state.redb")).unwrap();
    history
        .acked
        .iter()
        .filter(|a| {
            store
                .get(LOAD_COLLECTION, &a.key)
                .unwrap()
                .is_none_or(|d| d.value != serde_json::json!(a.value))
        })
        .count()
}

/// Resident memory of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
