//! The target's repository: one directory per replica, a global digest index, and
//! optional at-rest encryption of recovery-point data.
//!
//! ```text
//! REPO/repo.json                       format version, key fingerprint
//! REPO/index.redb                      global digest index
//! REPO/replicas/NAME/image.raw         the replica: a raw sparse image, bootable as is
//! REPO/replicas/NAME/digests.bin       xxh3-128 change digest of each 4 KiB block of image.raw
//! REPO/replicas/NAME/groups.bin        xxh3-128 change digest of each 64 KiB group
//! REPO/replicas/NAME/state.json        committed size, last point, pass in progress
//! REPO/replicas/NAME/points/ID.json    recovery point metadata
//! REPO/replicas/NAME/undo/ID.undo      what pass ID overwrote (turns point ID into ID-1)
//! ```
//!
//! A pass journals the old content of a block (fsynced) before overwriting it, and
//! checkpoints (image and digests fsynced, then `state.json` atomically replaced)
//! before acknowledging progress; it commits by writing its point file.  So the last
//! good point can always be rebuilt (image + journals), whatever moment a crash hits.

pub mod crypto;
pub mod index;
pub mod journal;
pub mod points;
pub mod store;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crypto::Key;
pub use index::Index;
pub use points::{PointMeta, ReplicaInfo, RpoStatus, VerifyReport};
pub use store::{BlockOp, OpKind, PassWriter};

use crate::error::{Result, TransportError};

/// How many recovery points to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many points (the newest).
    pub keep: Option<usize>,
    /// Drop points older than this (the newest point is always kept).
    pub max_age: Option<Duration>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RepoMeta {
    format: u32,
    key_check: Option<String>,
}

/// A pass that has started and not committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassState {
    /// Point id the pass will create.
    pub id: u64,
    /// Source size of the pass.
    pub size: u64,
    /// Image size at the last point.
    pub previous_size: u64,
    /// Start time (Unix seconds).
    pub started: u64,
    /// Every group below this one is durable.
    pub acked_group: u64,
    /// Journal length at the last checkpoint.
    pub journal_len: u64,
    /// What the pass did so far (all sessions).
    #[serde(default)]
    pub stats: crate::wire::TargetStats,
}

/// Durable state of a replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaState {
    /// Image size at the last point.
    pub size: u64,
    /// Last committed point.
    pub last_point: Option<u64>,
    /// Pass in progress.
    pub pass: Option<PassState>,
    /// An in-place restore to this point was interrupted and must be redone.
    pub restoring: Option<u64>,
}

struct Inner {
    root: PathBuf,
    /// Opened on first use: only passes need it, and redb admits one process at a
    /// time, so `haven replica ...` works while a target serves the repository.
    index: std::sync::OnceLock<Index>,
    index_init: std::sync::Mutex<()>,
    key: Option<Arc<Key>>,
}

/// A repository of replicas.  Cheap to clone.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// fsyncs a directory (makes renames and creations in it durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TransportError::io(format!("syncing {}", dir.display()), e))
}

/// Replaces `path` atomically with `data` (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let ctx = |e| TransportError::io(format!("writing {}", path.display()), e);
    let mut f = File::create(&tmp).map_err(ctx)?;
    f.write_all(data).map_err(ctx)?;
    f.sync_all().map_err(ctx)?;
    std::fs::rename(&tmp, path).map_err(ctx)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let b = std::fs::read(path)
        .map_err(|e| TransportError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&b)
        .map_err(|e| TransportError::Repository(format!("{} is damaged: {e}", path.display())))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

/// An exclusive lock on a replica (flock), released on drop.
pub struct ReplicaLock {
    _file: File,
}

impl ReplicaLock {
    fn acquire(dir: &Path, name: &str) -> Result<ReplicaLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| TransportError::io("opening replica lock", e))?;
        // flock on our own descriptor; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(TransportError::ReplicaBusy(name.to_string()));
        }
        Ok(ReplicaLock { _file: file })
    }
}

/// Checks a replica name: 1–128 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(TransportError::Repository(format!(
            "invalid replica name {name:?} (use 1-128 of A-Z a-z 0-9 . _ -)"
        )))
    }
}

/// Repository format: 2 = xxh3-128 change digests in `digests.bin`/`groups.bin`,
/// BLAKE3-128 keys in the index, `HVUNDO02` journals.
const REPO_FORMAT: u32 = 2;

impl Repository {
    /// Opens (creating if needed) a repository; `key` enables at-rest encryption of
    /// recovery-point data and must match the key the repository was created with.
    pub fn open(root: &Path, key: Option<Key>) -> Result<Repository> {
        std::fs::create_dir_all(root.join("replicas"))
            .map_err(|e| TransportError::io(format!("creating {}", root.display()), e))?;
        let meta_path = root.join("repo.json");
        let check = key.as_ref().map(|k| k.check_value().to_string());
        if meta_path.exists() {
            let meta: RepoMeta = read_json(&meta_path)?;
            if meta.format != REPO_FORMAT {
                return Err(TransportError::Repository(format!(
                    "repository format {} is not supported (this version uses {REPO_FORMAT})",
                    meta.format
                )));
            }
            if meta.key_check != check {
                return Err(TransportError::Repository(
                    match (&meta.key_check, &check) {
                        (Some(_), None) => "repository is encrypted: give its key file".into(),
                        (None, Some(_)) => "repository is not encrypted but a key was given".into(),
                        _ => "wrong key for this repository".into(),
                    },
                ));
            }
        } else {
            write_atomic(
                &meta_path,
                &to_json(&RepoMeta {
                    format: REPO_FORMAT,
                    key_check: check,
                }),
            )?;
        }
        Ok(Repository {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                index: std::sync::OnceLock::new(),
                index_init: std::sync::Mutex::new(()),
                key: key.map(Arc::new),
            }),
        })
    }

    /// Root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The global digest index (opened on first use).
    pub fn index(&self) -> Result<&Index> {
        if let Some(i) = self.inner.index.get() {
            return Ok(i);
        }
        let _guard = self
            .inner
            .index_init
            .lock()
            .map_err(|_| TransportError::Repository("index lock poisoned".into()))?;
        if self.inner.index.get().is_none() {
            let i = Index::open(&self.inner.root.join("index.redb"))?;
            let _ = self.inner.index.set(i);
        }
        self.inner
            .index
            .get()
            .ok_or_else(|| TransportError::Repository("digest index unavailable".into()))
    }

    pub(crate) fn key(&self) -> Option<Arc<Key>> {
        self.inner.key.clone()
    }

    /// Directory of a replica.
    pub fn replica_dir(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.inner.root.join("replicas").join(name))
    }

    /// Path of a replica's image (the file a hypervisor starts).
    pub fn image_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.replica_dir(name)?.join("image.raw"))
    }

    /// Names of all replicas.
    pub fn replica_names(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        let rd = std::fs::read_dir(self.inner.root.join("replicas"))
            .map_err(|e| TransportError::io("listing replicas", e))?;
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if check_name(&n).is_ok() && e.path().join("state.json").exists() {
                v.push(n);
            }
        }
        v.sort();
        Ok(v)
    }

    pub(crate) fn lock(&self, name: &str, create: bool) -> Result<(PathBuf, ReplicaLock)> {
        let dir = self.replica_dir(name)?;
        if !dir.join("state.json").exists() {
            if !create {
                return Err(TransportError::Repository(format!(
                    "no replica named {name:?}"
                )));
            }
            for d in ["points", "undo"] {
                std::fs::create_dir_all(dir.join(d))
                    .map_err(|e| TransportError::io("creating replica", e))?;
            }
        }
        let lock = ReplicaLock::acquire(&dir, name)?;
        if !dir.join("state.json").exists() {
            File::create(dir.join("image.raw"))
                .and_then(|f| f.sync_all())
                .map_err(|e| TransportError::io("creating image", e))?;
            for f in ["digests.bin", "groups.bin"] {
                File::create(dir.join(f))
                    .and_then(|f| f.sync_all())
                    .map_err(|e| TransportError::io("creating digests", e))?;
            }
            write_atomic(&dir.join("state.json"), &to_json(&ReplicaState::default()))?;
        }
        Ok((dir, lock))
    }

    pub(crate) fn load_state(dir: &Path) -> Result<ReplicaState> {
        read_json(&dir.join("state.json"))
    }

    pub(crate) fn save_state(dir: &Path, s: &ReplicaState) -> Result<()> {
        write_atomic(&dir.join("state.json"), &to_json(s))
    }
}
