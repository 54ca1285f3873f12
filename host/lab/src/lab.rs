//! The lab itself: state behind a lock, tasks completed by timers, faults,
//! and group-committed persistence to `state.json`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};

use crate::disk;
use crate::error::{ApiError, LabError, Result};
use crate::faults::{FailRule, LatencyRule, RandomFaults};
use crate::model::*;
use crate::requests::*;

/// Name of the state file in the lab directory.
pub const STATE_FILE: &str = "state.json";

/// Finished tasks kept for polling; older ones are forgotten.
const KEEP_TASKS: usize = 10_000;

/// Least time between two writes of the state file (more changes coalesce).
const WRITE_INTERVAL: Duration = Duration::from_millis(20);

/// How a lab is set up.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The lab directory: `state.json`, `disks/`, `snapshots/`, `images/`.
    pub dir: PathBuf,
    /// Bearer token every API call except `/health` must carry.
    pub token: String,
    /// Sites to have (added if missing; existing ones are kept).
    pub sites: Vec<String>,
    /// Hosts per new site.
    pub hosts_per_site: u32,
    /// Base duration of an operation (graceful power-off takes twice as long).
    pub op_delay_ms: u64,
    /// Boot delay of new VMs unless given.
    pub boot_delay_ms: u64,
    /// Seed of random faults unless given.
    pub seed: u64,
    /// Flush `state.json` to the device on every write (survives power loss,
    /// not only a killed process; slower).
    pub fsync: bool,
}

impl LabConfig {
    /// Defaults: sites `prod` and `dr` with two hosts each, 50 ms operations,
    /// 2 s boots, seed 0, no fsync.
    pub fn new(dir: impl Into<PathBuf>, token: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            token: token.into(),
            sites: vec!["prod".into(), "dr".into()],
            hosts_per_site: 2,
            op_delay_ms: 50,
            boot_delay_ms: 2000,
            seed: 0,
            fsync: false,
        }
    }
}

struct Inner {
    config: LabConfig,
    state: Mutex<State>,
    /// Generation of the last change to persist.
    requested: AtomicU64,
    /// Wakes the persister.
    notify: Arc<Notify>,
    /// Generation last written.
    persisted: watch::Sender<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the persister see that the lab is gone.
        self.notify.notify_one();
    }
}

/// A running lab; cheap to clone.
#[derive(Clone)]
pub struct Lab {
    inner: Arc<Inner>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn vm_number(id: &str) -> Result<u64> {
    id_number(id, "vm").ok_or_else(|| LabError::NotFound(format!("VM {id}")))
}

fn check_tags(tags: &[String], field: &str) -> Result<()> {
    for (i, t) in tags.iter().enumerate() {
        let key = t.split_once('=').map_or(t.as_str(), |(k, _)| k);
        if key.is_empty() || key.contains(',') {
            return Err(LabError::invalid(
                format!("{field}.{i}"),
                format!("{t:?}: a tag is `key=value` or `key`, with a non-empty key"),
            ));
        }
    }
    Ok(())
}

fn check_mac(mac: &str, field: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(LabError::invalid(
            field,
            format!("{mac:?} is not a MAC address like 02:1a:00:00:00:01"),
        ));
    }
    Ok(mac.to_ascii_lowercase())
}

fn check_ip(ip: &IpSettings, field: &str) -> Result<String> {
    let (addr, prefix) = ip.address.split_once('/').unwrap_or((&ip.address, ""));
    let parsed: IpAddr = addr.parse().map_err(|_| {
        LabError::invalid(
            format!("{field}.address"),
            format!(
                "{:?} is not an address with prefix length like 10.2.0.15/24",
                ip.address
            ),
        )
    })?;
    let max = if parsed.is_ipv4() { 32 } else { 128 };
    if !prefix.is_empty() && prefix.parse::<u8>().map_or(true, |p| p > max) {
        return Err(LabError::invalid(
            format!("{field}.address"),
            format!("{:?}: bad prefix length", ip.address),
        ));
    }
    for (name, value) in ip.gateway.iter().map(|g| ("gateway".to_owned(), g)).chain(
        ip.dns_servers
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("dns_servers.{i}"), d)),
    ) {
        if value.parse::<IpAddr>().is_err() {
            return Err(LabError::invalid(
                format!("{field}.{name}"),
                format!("{value:?} is not an IP address"),
            ));
        }
    }
    Ok(addr.to_owned())
}

impl Lab {
    /// Opens (or creates) the lab in `config.dir`, resumes its running tasks
    /// and starts the persister. Must run inside a tokio runtime.
    pub async fn open(config: LabConfig) -> Result<Lab> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(STATE_FILE);
        let mut state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).map_err(|e| LabError::State {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(LabError::io(format!("reading {}", path.display()), e)),
        };
        for name in &config.sites {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(LabError::invalid(
                    "sites",
                    format!("{name:?}: site names are letters, digits and `-`"),
                ));
            }
            state
                .sites
                .entry(name.clone())
                .or_insert_with(|| Site::new(name, config.hosts_per_site));
        }
        let pending: Vec<(u64, u64)> = state
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Running)
            .map(|(n, t)| (*n, t.ends_unix_ms))
            .collect();
        let (persisted, _) = watch::channel(0);
        let lab = Lab {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                requested: AtomicU64::new(0),
                notify: Arc::new(Notify::new()),
                persisted,
            }),
        };
        tokio::spawn(persister(
            Arc::downgrade(&lab.inner),
            lab.inner.notify.clone(),
        ));
        let now = now_ms();
        tracing::info!(dir = %dir.display(), resumed = pending.len(), "lab open");
        for (num, ends) in pending {
            lab.spawn_completion(num, Duration::from_millis(ends.saturating_sub(now)));
        }
        lab.commit().await;
        Ok(lab)
    }

    /// The configuration.
    pub fn config(&self) -> &LabConfig {
        &self.inner.config
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Whether `token` is the lab's bearer token (compared in constant time).
    pub fn token_matches(&self, token: &str) -> bool {
        let want = self.inner.config.token.as_bytes();
        let got = token.as_bytes();
        want.len() == got.len() && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written in
        // a way later calls would misread; keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the state changed: the persister writes it soon, coalescing
    /// bursts of changes into one write. Returns the change's generation.
    fn changed(&self) -> u64 {
        let generation = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.notify.notify_one();
        generation
    }

    /// Persists every change made so far and waits until it is written.
    pub async fn commit(&self) {
        let generation = self.changed();
        let mut rx = self.inner.persisted.subscribe();
        // The persister lives as long as the lab; an error means it is gone.
        let _ = rx.wait_for(|done| *done >= generation).await;
    }

    fn spawn_completion(&self, num: u64, delay: Duration) {
        let lab = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let worker = lab.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || worker.complete(num)).await {
                tracing::error!(task = num, "task completion panicked: {e}");
            }
            lab.changed();
        });
    }

    // ---- reading ------------------------------------------------------------

    /// A snapshot of the whole state.
    pub fn state(&self) -> State {
        self.lock().clone()
    }

    /// Sites.
    pub fn sites(&self) -> Vec<Site> {
        self.lock().sites.values().cloned().collect()
    }

    /// Networks, of one site or of all.
    pub fn networks(&self, site: Option<&str>) -> Result<Vec<Network>> {
        let st = self.lock();
        if let Some(s) = site {
            if !st.sites.contains_key(s) {
                return Err(LabError::NotFound(format!("site {s}")));
            }
        }
        Ok(st
            .sites
            .values()
            .filter(|s| site.is_none_or(|want| s.name == want))
            .flat_map(|s| s.networks.iter().cloned())
            .collect())
    }

    fn heartbeat_of(st: &State, vm: &Vm, now: u64) -> Heartbeat {
        let up = st.sites.get(&vm.site).is_some_and(Site::is_up);
        match vm.powered_on_unix_ms {
            Some(on)
                if up
                    && vm.power == Power::On
                    && !st.faults.no_heartbeat.contains(&vm.id)
                    && now >= on.saturating_add(vm.boot_delay_ms) =>
            {
                Heartbeat::Ok
            }
            _ => Heartbeat::None,
        }
    }

    fn view(st: &State, vm: &Vm, now: u64) -> VmView {
        VmView {
            vm: vm.clone(),
            heartbeat: Self::heartbeat_of(st, vm, now),
        }
    }

    /// VMs (not those still being created), of one site or of all, by id number.
    pub fn vms(&self, site: Option<&str>) -> Result<Vec<VmView>> {
        let st = self.lock();
        if let Some(s) = site {
            if !st.sites.contains_key(s) {
                return Err(LabError::NotFound(format!("site {s}")));
            }
        }
        let now = now_ms();
        Ok(st
            .vms
            .values()
            .filter(|v| !v.creating && site.is_none_or(|s| v.site == s))
            .map(|v| Self::view(&st, v, now))
            .collect())
    }

    fn find<'a>(st: &'a State, id: &str) -> Result<&'a Vm> {
        st.vms
            .get(&vm_number(id)?)
            .filter(|v| !v.creating)
            .ok_or_else(|| LabError::NotFound(format!("VM {id}")))
    }

    /// One VM.
    pub fn vm(&self, id: &str) -> Result<VmView> {
        let st = self.lock();
        let vm = Self::find(&st, id)?;
        Ok(Self::view(&st, vm, now_ms()))
    }

    /// A VM's heartbeat now.
    pub fn heartbeat(&self, id: &str) -> Result<Heartbeat> {
        let st = self.lock();
        let vm = Self::find(&st, id)?;
        Ok(Self::heartbeat_of(&st, vm, now_ms()))
    }

    /// A VM's snapshots, oldest first.
    pub fn snapshots(&self, id: &str) -> Result<Vec<Snapshot>> {
        Ok(Self::find(&self.lock(), id)?.snapshots.clone())
    }

    /// The allocated regions of a VM disk, now or at a snapshot.
    pub fn disk_extents(&self, id: &str, disk: &str, snapshot: Option<&str>) -> Result<Extents> {
        let path = {
            let st = self.lock();
            let vm = Self::find(&st, id)?;
            let d = vm
                .disks
                .iter()
                .find(|d| d.id == disk)
                .ok_or_else(|| LabError::NotFound(format!("disk {disk} of {id}")))?;
            match snapshot {
                None => d.path.clone(),
                Some(sid) => vm
                    .snapshots
                    .iter()
                    .find(|s| s.id == sid)
                    .and_then(|s| s.disks.get(disk))
                    .cloned()
                    .ok_or_else(|| LabError::NotFound(format!("snapshot {sid} of {id}")))?,
            }
        };
        let path = self.dir().join(path);
        let size_bytes = std::fs::metadata(&path)
            .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?
            .len();
        Ok(Extents {
            size_bytes,
            extents: disk::allocated_extents(&path)?
                .into_iter()
                .map(|(offset, length)| Extent { offset, length })
                .collect(),
        })
    }

    /// A task, with its percent brought up to date.
    pub fn task(&self, id: &str) -> Result<Task> {
        let st = self.lock();
        let mut task = id_number(id, "task")
            .and_then(|n| st.tasks.get(&n))
            .cloned()
            .ok_or_else(|| LabError::NotFound(format!("task {id}")))?;
        if task.state == TaskState::Running {
            let span = task
                .ends_unix_ms
                .saturating_sub(task.started_unix_ms)
                .max(1);
            let done = now_ms().saturating_sub(task.started_unix_ms);
            task.percent = (done.saturating_mul(100) / span).min(99) as u8;
        }
        Ok(task)
    }

    /// Tasks still running.
    pub fn running_tasks(&self) -> Vec<Task> {
        self.lock()
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running)
            .cloned()
            .collect()
    }

    // ---- operations -----------------------------------------------------------

    /// Submits `op` on VM `num`: checks the site and that the VM is idle, draws
    /// injected faults, records a running task and schedules its completion.
    fn submit(&self, st: &mut State, num: u64, op: Op) -> Result<Task> {
        let kind = op.kind();
        let vm = st
            .vms
            .get(&num)
            .ok_or_else(|| LabError::NotFound(format!("VM vm-{num}")))?;
        if !st.sites.get(&vm.site).is_some_and(Site::is_up) {
            return Err(LabError::Unavailable(format!(
                "site {}: its hosts are down",
                vm.site
            )));
        }
        if let Some(busy) = &vm.busy {
            return Err(LabError::Conflict(format!("{} is busy with {busy}", vm.id)));
        }
        let vm_id = vm.id.clone();
        let injected = st.faults.take_failure(&vm_id, kind);
        let base = match op {
            Op::PowerOff { hard: false } => self.inner.config.op_delay_ms.saturating_mul(2),
            _ => self.inner.config.op_delay_ms,
        };
        let delay = base.saturating_add(st.faults.latency_ms(&vm_id, kind));
        st.last_task += 1;
        let number = st.last_task;
        let now = now_ms();
        let task = Task {
            id: format!("task-{number}"),
            kind,
            vm: vm_id,
            state: TaskState::Running,
            percent: 0,
            result: None,
            error: None,
            started_unix_ms: now,
            ends_unix_ms: now.saturating_add(delay),
            op: Some(op),
            injected,
        };
        if let Some(vm) = st.vms.get_mut(&num) {
            vm.busy = Some(task.id.clone());
        }
        st.tasks.insert(number, task.clone());
        tracing::debug!(task = %task.id, vm = %task.vm, ?kind, delay, "task started");
        self.spawn_completion(number, Duration::from_millis(delay));
        Ok(task)
    }

    fn nics_from(
        st: &State,
        site: &str,
        num: u64,
        old: &[Nic],
        requests: &[NicRequest],
    ) -> Result<Vec<Nic>> {
        let site = st
            .sites
            .get(site)
            .ok_or_else(|| LabError::NotFound(format!("site {site}")))?;
        requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("nics.{i}");
                if !site.networks.iter().any(|n| n.id == r.network) {
                    return Err(LabError::invalid(
                        format!("{field}.network"),
                        format!(
                            "{:?} is not a network of site {} (it has {:?})",
                            r.network,
                            site.name,
                            site.networks.iter().map(|n| &n.id).collect::<Vec<_>>()
                        ),
                    ));
                }
                let mac = match &r.mac {
                    Some(m) => check_mac(m, &format!("{field}.mac"))?,
                    None => old
                        .get(i)
                        .map_or_else(|| mac_for(num, i), |n| n.mac.clone()),
                };
                let ip = match &r.ip {
                    Some(ip) => Some(ip.clone()),
                    None => old.get(i).and_then(|n| n.ip.clone()),
                };
                let ips = match &ip {
                    Some(s) => vec![check_ip(s, &format!("{field}.ip"))?],
                    None => Vec::new(),
                };
                Ok(Nic {
                    id: format!("nic-{i}"),
                    network: r.network.clone(),
                    mac,
                    ips,
                    ip,
                })
            })
            .collect()
    }

    /// Starts creating (or registering) a VM; the task's result is its id.
    pub async fn create_vm(&self, req: CreateVm) -> Result<Task> {
        let task = {
            let mut st = self.lock();
            let site = st
                .sites
                .get(&req.site)
                .ok_or_else(|| {
                    LabError::invalid("site", format!("{:?} is not a site of this lab", req.site))
                })?
                .clone();
            if req.name.trim().is_empty() {
                return Err(LabError::invalid("name", "must not be empty"));
            }
            if !(1..=256).contains(&req.cpus) {
                return Err(LabError::invalid("cpus", "must be 1 to 256"));
            }
            if !(4..=16 << 20).contains(&req.memory_mib) {
                return Err(LabError::invalid("memory_mib", "must be 4 MiB to 16 TiB"));
            }
            check_tags(&req.tags, "tags")?;
            if let Some(other) = st
                .vms
                .values()
                .find(|v| v.site == req.site && v.name == req.name)
            {
                return Err(LabError::Conflict(format!(
                    "site {} already has a VM named {:?} ({})",
                    req.site, req.name, other.id
                )));
            }
            if site.hosts.is_empty() {
                return Err(LabError::Unavailable(format!(
                    "site {} has no hosts",
                    site.name
                )));
            }
            let number = st.last_vm + 1;
            let host = match &req.host {
                Some(h) if site.hosts.iter().any(|x| &x.name == h) => h.clone(),
                Some(h) => {
                    return Err(LabError::invalid(
                        "host",
                        format!("{h:?} is not a host of site {}", site.name),
                    ))
                }
                None => site.hosts[(number as usize) % site.hosts.len()]
                    .name
                    .clone(),
            };
            let in_use: BTreeSet<&str> = st
                .vms
                .values()
                .flat_map(|v| v.disks.iter().map(|d| d.path.as_str()))
                .collect();
            let mut disks = Vec::new();
            for (i, d) in req.disks.iter().enumerate() {
                let field = format!("disks.{i}");
                let disk = match (&d.path, d.size_bytes) {
                    (Some(path), _) => {
                        let full = disk::resolve(self.dir(), path, &format!("{field}.path"))?;
                        let meta = std::fs::metadata(&full).ok().filter(|m| m.is_file()).ok_or_else(|| {
                            LabError::invalid(
                                format!("{field}.path"),
                                format!("{path:?} is not an image file in the lab directory"),
                            )
                        })?;
                        if in_use.contains(path.as_str()) {
                            return Err(LabError::Conflict(format!(
                                "image {path} is already a disk of another VM"
                            )));
                        }
                        Disk {
                            id: format!("disk-{i}"),
                            path: path.clone(),
                            size_bytes: meta.len(),
                            owned: false,
                        }
                    }
                    (None, Some(size)) if size > 0 => Disk {
                        id: format!("disk-{i}"),
                        path: format!("disks/vm-{number}-disk-{i}.img"),
                        size_bytes: size,
                        owned: true,
                    },
                    _ => {
                        return Err(LabError::invalid(
                            field,
                            "give `path` (an image to register) or `size_bytes` > 0 (a new sparse image)",
                        ))
                    }
                };
                disks.push(disk);
            }
            let nics = Self::nics_from(&st, &req.site, number, &[], &req.nics)?;
            st.last_vm = number;
            st.vms.insert(
                number,
                Vm {
                    id: format!("vm-{number}"),
                    name: req.name,
                    site: req.site,
                    host,
                    power: Power::Off,
                    cpus: req.cpus,
                    memory_mib: req.memory_mib,
                    guest_os: req.guest_os,
                    tags: req.tags,
                    disks,
                    nics,
                    snapshots: Vec::new(),
                    boot_delay_ms: req.boot_delay_ms.unwrap_or(self.inner.config.boot_delay_ms),
                    powered_on_unix_ms: None,
                    busy: None,
                    creating: true,
                },
            );
            match self.submit(&mut st, number, Op::CreateVm) {
                Ok(task) => task,
                Err(e) => {
                    st.vms.remove(&number);
                    return Err(e);
                }
            }
        };
        self.changed();
        Ok(task)
    }

    /// Runs `f` on the VM (checks it exists), then submits the operation it returns.
    async fn operate(
        &self,
        id: &str,
        f: impl FnOnce(&State, &Vm, Heartbeat) -> Result<Op>,
    ) -> Result<Task> {
        let task = {
            let mut st = self.lock();
            let vm = Self::find(&st, id)?;
            let heartbeat = Self::heartbeat_of(&st, vm, now_ms());
            let op = f(&st, vm, heartbeat)?;
            let num = vm_number(id)?;
            self.submit(&mut st, num, op)?
        };
        self.changed();
        Ok(task)
    }

    /// Starts powering a VM on (conflict if it is on).
    pub async fn power_on(&self, id: &str) -> Result<Task> {
        self.operate(id, |_, vm, _| match vm.power {
            Power::On => Err(LabError::Conflict(format!(
                "{} is already powered on",
                vm.id
            ))),
            Power::Off => Ok(Op::PowerOn),
        })
        .await
    }

    /// Starts powering a VM off; graceful needs a guest heartbeat.
    pub async fn power_off(&self, id: &str, mode: StopMode) -> Result<Task> {
        self.operate(id, |_, vm, hb| match (vm.power, mode, hb) {
            (Power::Off, _, _) => Err(LabError::Conflict(format!(
                "{} is already powered off",
                vm.id
            ))),
            (Power::On, StopMode::Graceful, Heartbeat::None) => Err(LabError::Conflict(format!(
                "{}: the guest does not answer, so it cannot shut down gracefully; power off hard",
                vm.id
            ))),
            (Power::On, mode, _) => Ok(Op::PowerOff {
                hard: mode == StopMode::Hard,
            }),
        })
        .await
    }

    /// Starts replacing a VM's NICs (network mapping and re-IP).
    pub async fn reconfigure_nics(&self, id: &str, nics: &[NicRequest]) -> Result<Task> {
        self.operate(id, |st, vm, _| {
            let num = vm_number(&vm.id)?;
            Ok(Op::ReconfigureNics {
                nics: Self::nics_from(st, &vm.site, num, &vm.nics, nics)?,
            })
        })
        .await
    }

    /// Starts deleting a VM (conflict while it is powered on).
    pub async fn delete_vm(&self, id: &str) -> Result<Task> {
        self.operate(id, |_, vm, _| match vm.power {
            Power::On => Err(LabError::Conflict(format!(
                "{} is powered on; power it off first",
                vm.id
            ))),
            Power::Off => Ok(Op::DeleteVm),
        })
        .await
    }

    /// Starts a snapshot; the task's result is the snapshot id.
    pub async fn create_snapshot(&self, id: &str, req: CreateSnapshot) -> Result<Task> {
        if req.name.trim().is_empty() {
            return Err(LabError::invalid("name", "must not be empty"));
        }
        let task = {
            let mut st = self.lock();
            let vm = Self::find(&st, id)?;
            let quiesced = req.quiesce && Self::heartbeat_of(&st, vm, now_ms()) == Heartbeat::Ok;
            let number = st.last_snapshot + 1;
            let snapshot = Snapshot {
                id: format!("snap-{number}"),
                name: req.name,
                created_unix: now_ms() / 1000,
                quiesced,
                disks: vm
                    .disks
                    .iter()
                    .map(|d| {
                        (
                            d.id.clone(),
                            format!("snapshots/{}-snap-{number}-{}.img", vm.id, d.id),
                        )
                    })
                    .collect(),
            };
            let num = vm_number(id)?;
            let task = self.submit(&mut st, num, Op::SnapshotCreate { snapshot })?;
            st.last_snapshot = number;
            task
        };
        self.changed();
        Ok(task)
    }

    fn snapshot_op(vm: &Vm, snapshot: &str, op: impl FnOnce(String) -> Op) -> Result<Op> {
        if vm.snapshots.iter().any(|s| s.id == snapshot) {
            Ok(op(snapshot.to_owned()))
        } else {
            Err(LabError::NotFound(format!(
                "snapshot {snapshot} of {}",
                vm.id
            )))
        }
    }

    /// Starts reverting a VM to a snapshot (the VM ends powered off).
    pub async fn revert_snapshot(&self, id: &str, snapshot: &str) -> Result<Task> {
        self.operate(id, |_, vm, _| {
            Self::snapshot_op(vm, snapshot, |snapshot| Op::SnapshotRevert { snapshot })
        })
        .await
    }

    /// Starts deleting a snapshot.
    pub async fn delete_snapshot(&self, id: &str, snapshot: &str) -> Result<Task> {
        self.operate(id, |_, vm, _| {
            Self::snapshot_op(vm, snapshot, |snapshot| Op::SnapshotDelete { snapshot })
        })
        .await
    }

    /// Cancels a running task (its effect is not applied); a finished task is left as is.
    pub async fn cancel(&self, id: &str) -> Result<Task> {
        let task = {
            let mut st = self.lock();
            let num = id_number(id, "task")
                .filter(|n| st.tasks.contains_key(n))
                .ok_or_else(|| LabError::NotFound(format!("task {id}")))?;
            if st.tasks[&num].state == TaskState::Running {
                self.finish(
                    &mut st,
                    num,
                    Err(ApiError::new("cancelled", format!("{id} was cancelled"))),
                );
            }
            st.tasks[&num].clone()
        };
        self.changed();
        Ok(task)
    }

    /// Changes a VM's boot delay or tags at once.
    pub async fn update_vm(&self, id: &str, req: UpdateVm) -> Result<VmView> {
        let view = {
            let mut st = self.lock();
            Self::find(&st, id)?;
            if let Some(tags) = &req.tags {
                check_tags(tags, "tags")?;
            }
            let num = vm_number(id)?;
            if let Some(vm) = st.vms.get_mut(&num) {
                if let Some(ms) = req.boot_delay_ms {
                    vm.boot_delay_ms = ms;
                }
                if let Some(tags) = req.tags {
                    vm.tags = tags;
                }
            }
            let vm = Self::find(&st, id)?;
            Self::view(&st, vm, now_ms())
        };
        self.changed();
        Ok(view)
    }

    /// Creates (or grows) a sparse image under `images/`.
    pub async fn create_image(&self, req: CreateImage) -> Result<Image> {
        if req.name.is_empty()
            || req.name.starts_with('.')
            || !req
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(LabError::invalid(
                "name",
                format!("{:?}: use letters, digits, `-`, `_` and `.`", req.name),
            ));
        }
        if req.size_bytes == 0 {
            return Err(LabError::invalid("size_bytes", "must be > 0"));
        }
        let rel = format!("images/{}.img", req.name);
        let path = self.dir().join(&rel);
        let size = req.size_bytes;
        let exists = std::fs::metadata(&path).map(|m| m.len()).ok();
        match exists {
            None => disk::create_sparse(&path, size)?,
            Some(len) if len < size => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size))
                .map_err(|e| LabError::io(format!("growing {}", path.display()), e))?,
            Some(_) => {}
        }
        Ok(Image {
            path: rel,
            size_bytes: exists.map_or(size, |l| l.max(size)),
        })
    }

    // ---- completion -------------------------------------------------------------

    /// Completes task `num` if it is still running: applies its effect (or its
    /// injected failure) and records the outcome.
    fn complete(&self, num: u64) {
        let mut st = self.lock();
        let Some(task) = st.tasks.get(&num).filter(|t| t.state == TaskState::Running) else {
            return;
        };
        let (vm, op, injected) = (task.vm.clone(), task.op.clone(), task.injected.clone());
        let outcome = match (injected, op) {
            (Some(e), _) => Err(e),
            (None, Some(op)) => self.apply(&mut st, &vm, op),
            (None, None) => Err(ApiError::new("internal", "task has no operation")),
        };
        self.finish(&mut st, num, outcome);
    }

    /// Records a task's end and frees its VM; a failed creation removes the VM.
    fn finish(
        &self,
        st: &mut State,
        num: u64,
        outcome: std::result::Result<Option<String>, ApiError>,
    ) {
        let Some(task) = st.tasks.get_mut(&num) else {
            return;
        };
        let op = task.op.take();
        task.injected = None;
        task.percent = 100;
        task.ends_unix_ms = now_ms();
        match outcome {
            Ok(result) => {
                task.state = TaskState::Succeeded;
                task.result = result;
                tracing::debug!(task = %task.id, "task succeeded");
            }
            Err(e) => {
                tracing::info!(task = %task.id, vm = %task.vm, code = %e.code, "task failed: {}", e.message);
                task.state = TaskState::Failed;
                task.error = Some(e);
            }
        }
        let (failed, vm_id, task_id) = (
            task.state == TaskState::Failed,
            task.vm.clone(),
            task.id.clone(),
        );
        if let Some(n) = id_number(&vm_id, "vm") {
            if failed && op == Some(Op::CreateVm) {
                if let Some(vm) = st.vms.remove(&n) {
                    for d in vm.disks.iter().filter(|d| d.owned) {
                        if let Err(e) = disk::remove(&self.dir().join(&d.path)) {
                            tracing::warn!("{e}");
                        }
                    }
                }
            } else if let Some(vm) = st.vms.get_mut(&n) {
                if vm.busy.as_deref() == Some(task_id.as_str()) {
                    vm.busy = None;
                }
            }
        }
        while st.tasks.len() > KEEP_TASKS {
            let Some(oldest) = st
                .tasks
                .iter()
                .find(|(_, t)| t.state != TaskState::Running)
                .map(|(n, _)| *n)
            else {
                break;
            };
            st.tasks.remove(&oldest);
        }
    }

    fn apply(
        &self,
        st: &mut State,
        vm_id: &str,
        op: Op,
    ) -> std::result::Result<Option<String>, ApiError> {
        let fail = |e: LabError| ApiError::from(&e);
        let num = vm_number(vm_id).map_err(fail)?;
        let dir = self.dir().to_owned();
        let vm = st
            .vms
            .get(&num)
            .ok_or_else(|| ApiError::new("not_found", format!("VM {vm_id} no longer exists")))?;
        if !st.sites.get(&vm.site).is_some_and(Site::is_up) {
            return Err(ApiError::new(
                "unavailable",
                format!("site {}: its hosts went down", vm.site),
            ));
        }
        let vm = st
            .vms
            .get_mut(&num)
            .ok_or_else(|| ApiError::new("not_found", vm_id))?;
        match op {
            Op::CreateVm => {
                for d in vm.disks.iter().filter(|d| d.owned) {
                    disk::create_sparse(&dir.join(&d.path), d.size_bytes).map_err(fail)?;
                }
                vm.creating = false;
                Ok(Some(vm.id.clone()))
            }
            Op::PowerOn => {
                if vm.power == Power::On {
                    return Err(ApiError::new(
                        "conflict",
                        format!("{vm_id} is already powered on"),
                    ));
                }
                vm.power = Power::On;
                vm.powered_on_unix_ms = Some(now_ms());
                Ok(None)
            }
            Op::PowerOff { .. } => {
                if vm.power == Power::Off {
                    return Err(ApiError::new(
                        "conflict",
                        format!("{vm_id} is already powered off"),
                    ));
                }
                vm.power = Power::Off;
                vm.powered_on_unix_ms = None;
                Ok(None)
            }
            Op::ReconfigureNics { nics } => {
                vm.nics = nics;
                Ok(None)
            }
            Op::DeleteVm => {
                let vm = st
                    .vms
                    .remove(&num)
                    .ok_or_else(|| ApiError::new("not_found", vm_id))?;
                let files = vm
                    .disks
                    .iter()
                    .filter(|d| d.owned)
                    .map(|d| d.path.clone())
                    .chain(vm.snapshots.iter().flat_map(|s| s.disks.values().cloned()));
                for f in files {
                    if let Err(e) = disk::remove(&dir.join(f)) {
                        tracing::warn!("{e}");
                    }
                }
                Ok(None)
            }
            Op::SnapshotCreate { snapshot } => {
                for d in &vm.disks {
                    if let Some(to) = snapshot.disks.get(&d.id) {
                        disk::sparse_copy(&dir.join(&d.path), &dir.join(to)).map_err(fail)?;
                    }
                }
                let id = snapshot.id.clone();
                vm.snapshots.push(snapshot);
                Ok(Some(id))
            }
            Op::SnapshotRevert { snapshot } => {
                let snap = vm
                    .snapshots
                    .iter()
                    .find(|s| s.id == snapshot)
                    .ok_or_else(|| ApiError::new("not_found", format!("snapshot {snapshot}")))?;
                for d in &vm.disks {
                    if let Some(from) = snap.disks.get(&d.id) {
                        disk::sparse_copy(&dir.join(from), &dir.join(&d.path)).map_err(fail)?;
                    }
                }
                vm.power = Power::Off;
                vm.powered_on_unix_ms = None;
                Ok(None)
            }
            Op::SnapshotDelete { snapshot } => {
                let i = vm
                    .snapshots
                    .iter()
                    .position(|s| s.id == snapshot)
                    .ok_or_else(|| ApiError::new("not_found", format!("snapshot {snapshot}")))?;
                let snap = vm.snapshots.remove(i);
                for f in snap.disks.values() {
                    if let Err(e) = disk::remove(&dir.join(f)) {
                        tracing::warn!("{e}");
                    }
                }
                Ok(None)
            }
        }
    }

    // ---- faults --------------------------------------------------------------

    /// The injected faults and the sites whose hosts are down.
    pub fn faults(&self) -> serde_json::Value {
        let st = self.lock();
        let down: Vec<&str> = st
            .sites
            .values()
            .filter(|s| !s.is_up())
            .map(|s| s.name.as_str())
            .collect();
        let mut value = serde_json::to_value(&st.faults).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("sites_down".into(), serde_json::json!(down));
        }
        value
    }

    /// Clears every fault and brings every site's hosts back.
    pub async fn clear_faults(&self) {
        {
            let mut st = self.lock();
            st.faults = Default::default();
            for site in st.sites.values_mut() {
                site.hosts.iter_mut().for_each(|h| h.up = true);
            }
        }
        self.commit().await;
    }

    /// Admits a mutating request carrying fencing token `token`: refused if a
    /// higher token was seen, else remembered (persisted) as the highest.
    pub async fn admit_fence(&self, token: u64) -> Result<()> {
        {
            let mut st = self.lock();
            if token < st.highest_fence {
                return Err(LabError::Fenced {
                    presented: token,
                    highest: st.highest_fence,
                });
            }
            if token == st.highest_fence {
                return Ok(());
            }
            st.highest_fence = token;
        }
        self.commit().await;
        Ok(())
    }

    /// Fails the next `count` matching operations.
    pub async fn fail_next(&self, req: FailFault) -> Result<()> {
        if req.count == 0 {
            return Err(LabError::invalid("count", "must be > 0"));
        }
        self.lock().faults.fail.push(FailRule {
            vm: req.vm,
            op: req.op,
            remaining: req.count,
            code: req.code.unwrap_or_else(|| "injected".into()),
        });
        self.commit().await;
        Ok(())
    }

    /// Adds latency to matching operations; `ms` 0 removes the rules for that match.
    pub async fn add_latency(&self, req: LatencyFault) {
        {
            let mut st = self.lock();
            st.faults
                .latency
                .retain(|r| !(r.vm == req.vm && r.op == req.op));
            if req.ms > 0 {
                st.faults.latency.push(LatencyRule {
                    vm: req.vm,
                    op: req.op,
                    ms: req.ms,
                });
            }
        }
        self.commit().await;
    }

    /// Silences (or restores) a VM's heartbeat.
    pub async fn set_no_heartbeat(&self, req: NoHeartbeatFault) -> Result<()> {
        {
            let mut st = self.lock();
            Self::find(&st, &req.vm)?;
            if req.enabled {
                st.faults.no_heartbeat.insert(req.vm);
            } else {
                st.faults.no_heartbeat.remove(&req.vm);
            }
        }
        self.commit().await;
        Ok(())
    }

    /// Host loss at a site: hosts down and its VMs powered off (or hosts back).
    pub async fn set_host_loss(&self, req: HostLossFault) -> Result<()> {
        {
            let mut st = self.lock();
            let site = st
                .sites
                .get_mut(&req.site)
                .ok_or_else(|| LabError::NotFound(format!("site {}", req.site)))?;
            site.hosts.iter_mut().for_each(|h| h.up = !req.down);
            if req.down {
                for vm in st.vms.values_mut().filter(|v| v.site == req.site) {
                    vm.power = Power::Off;
                    vm.powered_on_unix_ms = None;
                }
            }
            tracing::info!(site = %req.site, down = req.down, "host loss");
        }
        self.commit().await;
        Ok(())
    }

    /// Random failures at `rate`, drawn from `seed` (the lab's seed when absent).
    pub async fn set_random(&self, req: RandomFault) -> Result<()> {
        if !(0.0..=1.0).contains(&req.rate) {
            return Err(LabError::invalid("rate", "must be between 0 and 1"));
        }
        self.lock().faults.random = (req.rate > 0.0).then(|| RandomFaults {
            rate: req.rate,
            op: req.op,
            rng: req.seed.unwrap_or(self.inner.config.seed),
        });
        self.commit().await;
        Ok(())
    }

    // ---- seeding ---------------------------------------------------------------

    /// Creates `count` VMs at once (no tasks), one sparse disk each.
    pub async fn seed(&self, req: SeedRequest) -> Result<SeedResult> {
        let started = Instant::now();
        if req.count == 0 || req.count > 100_000 {
            return Err(LabError::invalid("count", "must be 1 to 100000"));
        }
        if req.groups == 0 || req.groups > req.count {
            return Err(LabError::invalid("groups", "must be 1 to count"));
        }
        check_tags(&req.tags, "tags")?;
        let prefix = req.name_prefix.clone().unwrap_or_else(|| "vm".into());
        let size = req.disk_size_bytes.unwrap_or(1 << 20);
        if size == 0 {
            return Err(LabError::invalid("disk_size_bytes", "must be > 0"));
        }
        let ids = {
            let mut st = self.lock();
            let (site_index, site) = st
                .sites
                .values()
                .enumerate()
                .find(|(_, s)| s.name == req.site)
                .map(|(i, s)| (i, s.clone()))
                .ok_or_else(|| {
                    LabError::invalid("site", format!("{:?} is not a site", req.site))
                })?;
            if site.hosts.is_empty() {
                return Err(LabError::Unavailable(format!(
                    "site {} has no hosts",
                    site.name
                )));
            }
            let names: Vec<(u32, String)> = (0..req.count)
                .map(|i| {
                    let g =
                        (u64::from(i) * u64::from(req.groups) / u64::from(req.count)) as u32 + 1;
                    (g, format!("{prefix}-g{g:02}-{:04}", i + 1))
                })
                .collect();
            let taken: BTreeSet<&str> = st
                .vms
                .values()
                .filter(|v| v.site == req.site)
                .map(|v| v.name.as_str())
                .collect();
            if let Some((_, n)) = names.iter().find(|(_, n)| taken.contains(n.as_str())) {
                return Err(LabError::Conflict(format!(
                    "site {} already has a VM named {n:?}; pick another name_prefix",
                    req.site
                )));
            }
            let disks_dir = self.dir().join("disks");
            std::fs::create_dir_all(&disks_dir)
                .map_err(|e| LabError::io(format!("creating {}", disks_dir.display()), e))?;
            let now = now_ms();
            let network = format!("{}-net", req.site);
            let mut ids = Vec::with_capacity(names.len());
            for (i, (group, name)) in names.into_iter().enumerate() {
                let number = st.last_vm + 1;
                let path = format!("disks/vm-{number}-disk-0.img");
                st.last_vm = number;
                let mut tags = vec![format!("group=g{group:02}"), format!("seed={prefix}")];
                tags.extend(req.tags.iter().cloned());
                let address = format!("10.{}.{}.{}", site_index % 256, i / 250, i % 250 + 2);
                let vm = Vm {
                    id: format!("vm-{number}"),
                    name,
                    site: req.site.clone(),
                    host: site.hosts[i % site.hosts.len()].name.clone(),
                    power: if req.power_on { Power::On } else { Power::Off },
                    cpus: 2,
                    memory_mib: 4096,
                    guest_os: "linux".into(),
                    tags,
                    disks: vec![Disk {
                        id: "disk-0".into(),
                        path,
                        size_bytes: size,
                        owned: true,
                    }],
                    nics: vec![Nic {
                        id: "nic-0".into(),
                        network: network.clone(),
                        mac: mac_for(number, 0),
                        ips: vec![address.clone()],
                        ip: Some(IpSettings {
                            address: format!("{address}/16"),
                            gateway: Some(format!("10.{}.0.1", site_index % 256)),
                            dns_servers: Vec::new(),
                        }),
                    }],
                    snapshots: Vec::new(),
                    boot_delay_ms: req.boot_delay_ms.unwrap_or(self.inner.config.boot_delay_ms),
                    powered_on_unix_ms: req.power_on.then_some(now),
                    busy: None,
                    creating: false,
                };
                ids.push(vm.id.clone());
                st.vms.insert(number, vm);
            }
            // File creation is latency-bound on busy disks: spread it over threads.
            let paths: Vec<PathBuf> = ids
                .iter()
                .filter_map(|id| st.vms.get(&id_number(id, "vm")?))
                .flat_map(|vm| vm.disks.iter().map(|d| self.dir().join(&d.path)))
                .collect();
            let created = std::thread::scope(|scope| {
                let workers: Vec<_> = paths
                    .chunks(paths.len().div_ceil(4).max(1))
                    .map(|chunk| {
                        scope.spawn(move || {
                            chunk
                                .iter()
                                .try_for_each(|p| disk::create_sparse_in_existing_dir(p, size))
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(LabError::io(
                            "creating seeded disks",
                            std::io::Error::other("a worker thread panicked"),
                        ))
                    })
                })
            });
            if let Err(e) = created {
                for id in &ids {
                    if let Some(vm) = id_number(id, "vm").and_then(|n| st.vms.remove(&n)) {
                        for d in &vm.disks {
                            // Best effort: remove the files that were created.
                            let _ = disk::remove(&self.dir().join(&d.path));
                        }
                    }
                }
                return Err(e);
            }
            ids
        };
        self.commit().await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(count = ids.len(), site = %req.site, elapsed_ms, "seeded");
        Ok(SeedResult {
            vms: ids,
            elapsed_ms,
        })
    }
}

/// Writes the state whenever it changed, at most every [`WRITE_INTERVAL`],
/// coalescing bursts of changes into one write; ends when the lab is dropped.
async fn persister(weak: Weak<Inner>, notify: Arc<Notify>) {
    loop {
        let wait = notify.notified();
        tokio::pin!(wait);
        wait.as_mut().enable();
        let Some(inner) = weak.upgrade() else { return };
        let target = inner.requested.load(Ordering::SeqCst);
        if *inner.persisted.borrow() >= target {
            // Do not keep the lab alive while waiting; dropping it notifies.
            drop(inner);
            wait.await;
            continue;
        }
        // Copy under the lock; serialise and write outside it.
        let state = inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let path = inner.config.dir.join(STATE_FILE);
        let fsync = inner.config.fsync;
        let written = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&state).map_err(|e| LabError::State {
                path: path.clone(),
                message: format!("cannot serialise: {e}"),
            })?;
            disk::write_atomic(&path, &bytes, fsync)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot persist the lab state: {e}"),
            Err(e) => tracing::error!("persisting the lab state panicked: {e}"),
        }
        inner.persisted.send_replace(target);
        drop(inner);
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
}
