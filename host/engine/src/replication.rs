//! Replication of VMs with the block transport, driven through connectors:
//! snapshot the VM, open its disks with `disk-access`, replicate each disk to
//! the recovery site's repository as a new transport point, and record one
//! VM-level recovery point in the [catalog](crate::catalog).
//!
//! The repository is a directory on this host; a [`Replicator`] serves it
//! with an in-process transport target on loopback (TLS, pinned self-signed
//! certificate), so the bytes take exactly the path they take across sites.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haven_connector::{files, Capability, Connector, ConnectorError, DiskLocation, Vm};
use haven_plan::VmRef;
use haven_store::CommandLog;
use haven_transport::repo::Repository;
use haven_transport::source::SourceSpec;
use haven_transport::target::{Target, TargetOptions};
use haven_transport::tls::{self, Trust};
use haven_transport::{ReplicateOptions, TransportError};
use tokio::sync::{oneshot, Mutex};

use crate::catalog::{self, CatalogError, MachineSpec, ReplicaDisk, ReplicaRecord, VmPoint};
use crate::jobs;

/// Why a replication did not complete. Nothing is recorded in the catalog
/// unless every disk of the VM committed its point.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A connector call failed.
    #[error("{context}: {error}")]
    Connector {
        /// What was being done.
        context: String,
        /// The connector's error.
        error: ConnectorError,
    },
    /// The transport failed.
    #[error("replicating {replica}: {error}")]
    Transport {
        /// Replica name.
        replica: String,
        /// The transport's error.
        error: TransportError,
    },
    /// The catalog could not be read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The request contradicts the catalog or the connector's inventory.
    #[error("{0}")]
    Invalid(String),
}

impl ReplicationError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connector { error, .. } => error.is_retryable(),
            Self::Transport { error, .. } => error.is_retryable(),
            Self::Catalog(CatalogError::Conflict(_) | CatalogError::Commit(_)) => true,
            Self::Catalog(_) | Self::Invalid(_) => false,
        }
    }
}

fn connector_error(context: impl Into<String>) -> impl FnOnce(ConnectorError) -> ReplicationError {
    let context = context.into();
    move |error| ReplicationError::Connector { context, error }
}

/// A repository served on loopback for the duration of the [`Replicator`].
struct LocalTarget {
    repo: Repository,
    addr: String,
    cert: PathBuf,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
    }
}

/// What to protect.
pub struct ProtectRequest<'a> {
    /// The production connector.
    pub production: &'a dyn Connector,
    /// The production VM (by name on `production`).
    pub vm: &'a str,
    /// Connector instance of the recovery site (recorded; restores go there).
    pub recovery_connector: &'a str,
    /// Repository directory.
    pub repository: &'a Path,
    /// A migration's final sync (production is off).
    pub final_sync: bool,
    /// How long to wait for a snapshot job.
    pub job_timeout: Duration,
    /// The production connector's VMs, when the caller listed them already
    /// (protecting many VMs lists once); `None`: list them.
    pub inventory: Option<&'a [Vm]>,
}

/// Replicates VMs and restores their points; one loopback target per repository.
#[derive(Default)]
pub struct Replicator {
    targets: Mutex<HashMap<PathBuf, Arc<LocalTarget>>>,
}

/// A replica name for a VM disk: `<connector>.<vm>.<disk>` with characters
/// the transport refuses replaced, and a hash suffix when it would be too long.
pub fn replica_name(vm: &VmRef, disk: &str) -> String {
    let raw = format!("{}.{}.{disk}", vm.connector, vm.name);
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') {
        name.insert(0, '_');
    }
    if name.len() > 128 || name != raw {
        use sha2::Digest as _;
        let hash = hex(&sha2::Sha256::digest(raw.as_bytes())[..4]);
        name.truncate(118);
        name = format!("{name}-{hash}");
    }
    name
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Replicator {
    /// A replicator with no repository open yet.
    pub fn new() -> Self {
        Self::default()
    }

    async fn target(&self, repository: &Path) -> Result<Arc<LocalTarget>, ReplicationError> {
        let mut targets = self.targets.lock().await;
        if let Some(t) = targets.get(repository) {
            return Ok(t.clone());
        }
        let transport = |error| ReplicationError::Transport {
            replica: repository.display().to_string(),
            error,
        };
        let repo = Repository::open(repository, None).map_err(transport)?;
        let (cert, key) = tls::self_signed(&repository.join("tls"), &[]).map_err(transport)?;
        let config = tls::server_config(&cert, &key).map_err(transport)?;
        let target = Target::bind("127.0.0.1:0", TargetOptions::new(repo.clone(), config))
            .await
            .map_err(transport)?;
        let addr = target.local_addr().map_err(transport)?.to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = target
                .run(async {
                    let _ = stopped.await;
                })
                .await
            {
                tracing::warn!(error = %e, "loopback replication target stopped");
            }
        });
        let local = Arc::new(LocalTarget {
            repo,
            addr,
            cert,
            stop: std::sync::Mutex::new(Some(stop)),
        });
        targets.insert(repository.to_owned(), local.clone());
        Ok(local)
    }

    /// The repository at `path` (opened once, shared with its target).
    pub async fn repository(&self, path: &Path) -> Result<Repository, ReplicationError> {
        Ok(self.target(path).await?.repo.clone())
    }

    /// Takes a recovery point of a production VM: snapshot, replicate every
    /// disk, record the point in the catalog (creating the entry).
    pub async fn protect(
        &self,
        log: &dyn CommandLog,
        req: ProtectRequest<'_>,
    ) -> Result<(ReplicaRecord, VmPoint), ReplicationError> {
        let conn = req.production;
        let vm_ref = VmRef {
            connector: conn.name().to_owned(),
            name: req.vm.to_owned(),
        };
        let vm = match req.inventory {
            Some(list) => list
                .iter()
                .find(|v| v.name == req.vm)
                .cloned()
                .ok_or_else(|| {
                    ReplicationError::Invalid(format!(
                        "{} has no VM named {:?}",
                        conn.name(),
                        req.vm
                    ))
                })?,
            None => find_vm(conn, req.vm).await?,
        };
        let existing = catalog::get(log.store(), &vm_ref)?;
        if let Some(e) = &existing {
            let r = &e.value;
            if r.stopped && !req.final_sync {
                return Err(ReplicationError::Invalid(format!(
                    "replication of {vm_ref} is stopped (it was failed over or migrated); \
                     undo or fail back first"
                )));
            }
            if r.recovery_connector != req.recovery_connector || r.repository != req.repository {
                return Err(ReplicationError::Invalid(format!(
                    "{vm_ref} is already protected to {} in {}; use the same recovery connector \
                     and repository",
                    r.recovery_connector,
                    r.repository.display()
                )));
            }
        }
        let disks: Vec<ReplicaDisk> = vm
            .disks
            .iter()
            .map(|d| ReplicaDisk {
                id: d.id.clone(),
                replica: replica_name(&vm_ref, &d.id),
                capacity_bytes: d.capacity_bytes,
            })
            .collect();
        let taken_at_ms = now_ms();
        let points = self
            .capture(conn, &vm, &disks, req.repository, req.job_timeout)
            .await?;
        let machine = MachineSpec {
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            guest_os: vm.guest_os.clone(),
            nics: vm.nics.clone(),
            tags: vm.tags.clone(),
        };
        let mut point = None;
        let fresh = ReplicaRecord {
            vm: vm_ref.clone(),
            vm_id: vm.id.clone(),
            recovery_connector: req.recovery_connector.to_owned(),
            repository: req.repository.to_owned(),
            machine: machine.clone(),
            disks: disks.clone(),
            points: Vec::new(),
            stopped: false,
            recovered: None,
        };
        let mut version = existing.map_or(0, |e| e.version);
        for _ in 0..8 {
            let mut record = match catalog::get(log.store(), &vm_ref)? {
                Some(current) => {
                    version = current.version;
                    current.value
                }
                None => {
                    version = 0;
                    fresh.clone()
                }
            };
            let p = VmPoint {
                id: record.next_point_id(),
                taken_at_ms,
                disks: points.clone(),
                final_sync: req.final_sync,
            };
            record.vm_id = vm.id.clone();
            record.machine = machine.clone();
            record.disks = disks.clone();
            record.points.push(p.clone());
            match catalog::put(log, &record, version).await {
                Ok(_) => {
                    point = Some((record, p));
                    break;
                }
                Err(CatalogError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        point.ok_or_else(|| CatalogError::Conflict(format!("{vm_ref} (version {version})")).into())
    }

    /// Replicates the disks of `vm` (on `conn`) into `replicas` of the
    /// repository, from a snapshot when the connector takes them; returns the
    /// transport point of each disk.
    pub async fn capture(
        &self,
        conn: &dyn Connector,
        vm: &Vm,
        replicas: &[ReplicaDisk],
        repository: &Path,
        job_timeout: Duration,
    ) -> Result<BTreeMap<String, u64>, ReplicationError> {
        let target = self.target(repository).await?;
        let snapshot = if conn.capabilities().contains(&Capability::VmSnapshots) {
            let name = format!("haven-{}", now_ms());
            let started = conn
                .create_snapshot(&vm.id, &name, false)
                .await
                .map_err(connector_error(format!("snapshotting {}", vm.name)))?;
            let id = jobs::wait(conn, started, job_timeout)
                .await
                .map_err(connector_error(format!("snapshotting {}", vm.name)))?;
            Some(match id {
                Some(id) => id,
                None => conn
                    .list_snapshots(&vm.id)
                    .await
                    .map_err(connector_error(format!("listing snapshots of {}", vm.name)))?
                    .into_iter()
                    .find(|s| s.name == name)
                    .map(|s| s.id)
                    .ok_or_else(|| {
                        ReplicationError::Invalid(format!(
                            "{}: snapshot {name} of {} vanished",
                            conn.name(),
                            vm.name
                        ))
                    })?,
            })
        } else {
            None
        };
        let result = self
            .copy_disks(conn, vm, replicas, snapshot.as_deref(), &target)
            .await;
        if let Some(snapshot) = &snapshot {
            let deleted = match conn.delete_snapshot(&vm.id, snapshot).await {
                Ok(started) => jobs::wait(conn, started, job_timeout).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                tracing::warn!(vm = %vm.name, %snapshot, error = %e, "could not delete the replication snapshot");
            }
        }
        result
    }

    async fn copy_disks(
        &self,
        conn: &dyn Connector,
        vm: &Vm,
        replicas: &[ReplicaDisk],
        snapshot: Option<&str>,
        target: &LocalTarget,
    ) -> Result<BTreeMap<String, u64>, ReplicationError> {
        let mut points = BTreeMap::new();
        for disk in replicas {
            let context = format!("opening disk {} of {}", disk.id, vm.name);
            let desc = conn
                .open_disk(&vm.id, &disk.id, snapshot)
                .await
                .map_err(connector_error(&context))?;
            let copied = async {
                let source = source_of(conn, &desc.location).map_err(connector_error(&context))?;
                let mut opts = ReplicateOptions::new(
                    source,
                    &disk.replica,
                    vec![target.addr.clone()],
                    Trust::Pinned(target.cert.clone()),
                );
                opts.allow_resize = true;
                haven_transport::replicate(opts).await.map_err(|error| {
                    ReplicationError::Transport {
                        replica: disk.replica.clone(),
                        error,
                    }
                })
            }
            .await;
            if let Err(e) = conn.close_disk(&desc.session).await {
                tracing::warn!(session = %desc.session, error = %e, "could not close a disk session");
            }
            points.insert(disk.id.clone(), copied?.point);
        }
        Ok(points)
    }

    /// Writes transport point `point` of `replica` to the image at `out`
    /// (replacing it), as a sparse raw file.
    pub async fn export(
        &self,
        repository: &Path,
        replica: &str,
        point: u64,
        out: &Path,
    ) -> Result<(), ReplicationError> {
        let repo = self.repository(repository).await?;
        let (replica, out) = (replica.to_owned(), out.to_owned());
        let name = replica.clone();
        tokio::task::spawn_blocking(move || repo.export(&replica, point, &out))
            .await
            .map_err(|e| ReplicationError::Invalid(format!("export task failed: {e}")))?
            .map_err(|error| ReplicationError::Transport {
                replica: name,
                error,
            })
    }

    /// The retained transport points of `replica`.
    pub async fn points(
        &self,
        repository: &Path,
        replica: &str,
    ) -> Result<Vec<u64>, ReplicationError> {
        let repo = self.repository(repository).await?;
        let name = replica.to_owned();
        tokio::task::spawn_blocking(move || repo.points(&name))
            .await
            .map_err(|e| ReplicationError::Invalid(format!("points task failed: {e}")))?
            .map(|points| points.into_iter().map(|p| p.id).collect())
            .map_err(|error| ReplicationError::Transport {
                replica: replica.to_owned(),
                error,
            })
    }
}

/// What the transport reads for a disk location: a file in a granted
/// directory (raw or qcow2) or a plain NBD export.
fn source_of(conn: &dyn Connector, location: &DiskLocation) -> Result<SourceSpec, ConnectorError> {
    match location {
        DiskLocation::File(f) => {
            let path = files::host_path(conn, location)?;
            Ok(if f.format == "qcow2" {
                SourceSpec::Qcow2(path)
            } else {
                SourceSpec::Raw(path)
            })
        }
        DiskLocation::Nbd(n) if !n.tls => {
            SourceSpec::parse(&format!("nbd://{}:{}/{}", n.host, n.port, n.export_name)).map_err(
                |e| ConnectorError::InvalidInput {
                    field: "location".into(),
                    message: e.to_string(),
                },
            )
        }
        _ => Err(ConnectorError::Unsupported(format!(
            "{}: the block transport reads files in granted directories and plain NBD exports, \
             not this disk location",
            conn.name()
        ))),
    }
}

/// The VM named `name` on `conn` (one inventory listing).
pub async fn find_vm(conn: &dyn Connector, name: &str) -> Result<Vm, ReplicationError> {
    conn.list_vms()
        .await
        .map_err(connector_error(format!("listing VMs of {}", conn.name())))?
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| {
            ReplicationError::Invalid(format!("{} has no VM named {name:?}", conn.name()))
        })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
