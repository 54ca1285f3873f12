//! Recovery points: listing, retention, in-place restore, export, verification,
//! RPO, and the recovery of interrupted commits, restores and passes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::journal::Journal;
use super::store::{blocks_for, journal_path, load_digests, load_groups, read_padded};
use super::{now_unix, read_json, write_atomic, PassState, ReplicaState, Repository, Retention};
use crate::digest::{digest_batch, is_zero, Digest, BLOCK_SIZE};
use crate::error::{Result, TransportError};
use crate::wire::TargetStats;

/// Metadata of a recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointMeta {
    /// Point id (increasing).
    pub id: u64,
    /// Commit time (Unix seconds).
    pub created: u64,
    /// Disk size at this point.
    pub size: u64,
    /// What the committing session did.
    pub stats: TargetStats,
}

/// Summary of a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Name.
    pub name: String,
    /// Size at the last point.
    pub size: u64,
    /// Retained points.
    pub points: usize,
    /// Last point id.
    pub last_point: Option<u64>,
    /// Last point time (Unix seconds).
    pub last_point_time: Option<u64>,
    /// Pass in progress (interrupted or running).
    pub pass: Option<PassState>,
    /// Age of the last good point, in seconds (the RPO).
    pub rpo_secs: Option<u64>,
}

/// RPO of a replica against a threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoStatus {
    /// Replica name.
    pub replica: String,
    /// Age of the last good point (None: never replicated).
    pub age: Option<Duration>,
    /// True when the age exceeds the threshold (or there is no point).
    pub exceeded: bool,
}

/// Result of [`Repository::verify`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Blocks whose content was hashed.
    pub blocks_checked: u64,
    /// Blocks whose content does not match the recorded digest (first 100).
    pub mismatched_blocks: Vec<u64>,
    /// Undo journals read completely.
    pub journals_checked: usize,
    /// Problems found in journals or point files.
    pub errors: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.mismatched_blocks.is_empty() && self.errors.is_empty()
    }
}

pub(crate) fn point_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("points").join(format!("{id:010}.json"))
}

fn ids_in(dir: &Path, ext: &str) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.strip_suffix(ext).and_then(|s| s.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

pub(crate) fn list_points(dir: &Path) -> Result<Vec<PointMeta>> {
    ids_in(&dir.join("points"), ".json")
        .into_iter()
        .map(|id| read_json(&point_path(dir, id)))
        .collect()
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| TransportError::io(format!("opening {}", path.display()), e))
}

/// Hashes an image (for digests after a rollback or restore, and for verify).
fn rehash(image: &File) -> Result<(Vec<Digest>, Vec<Digest>)> {
    let size = image
        .metadata()
        .map_err(|e| TransportError::io("stat image", e))?
        .len();
    let mut out = Vec::with_capacity(blocks_for(size) as usize);
    let mut groups = Vec::new();
    let mut buf = vec![0u8; 16 << 20];
    let mut off = 0;
    while off < size {
        let n = ((size - off) as usize).min(buf.len());
        read_padded(image, &mut buf[..n], off)?;
        let (b, g) = digest_batch(&buf[..n]);
        out.extend(b);
        groups.extend(g);
        off += n as u64;
    }
    Ok((out, groups))
}

fn write_digests(dir: &Path, (blocks, groups): &(Vec<Digest>, Vec<Digest>)) -> Result<()> {
    for (name, d) in [("digests.bin", blocks), ("groups.bin", groups)] {
        let mut b = Vec::with_capacity(d.len() * 16);
        for x in d {
            b.extend_from_slice(&x.0);
        }
        write_atomic(&dir.join(name), &b)?;
    }
    Ok(())
}

/// Finishes what a crash interrupted: a commit whose point file exists, an in-place
/// restore, and removes points newer than the last one (left by a restore).
pub(crate) fn recover(
    repo: &Repository,
    dir: &Path,
    mut state: ReplicaState,
) -> Result<ReplicaState> {
    if let Some(p) = state.pass.clone() {
        let pp = point_path(dir, p.id);
        if pp.exists() {
            let meta: PointMeta = read_json(&pp)?;
            state.size = meta.size;
            state.last_point = Some(p.id);
            state.pass = None;
            Repository::save_state(dir, &state)?;
        }
    }
    if let Some(target) = state.restoring {
        restore_locked(repo, dir, &mut state, target)?;
    }
    let last = state.last_point.unwrap_or(0);
    for id in ids_in(&dir.join("points"), ".json") {
        if id > last {
            let _ = std::fs::remove_file(point_path(dir, id));
        }
    }
    Ok(state)
}

/// Undoes an interrupted pass: the image returns to the last point.
pub(crate) fn rollback_pass(
    repo: &Repository,
    dir: &Path,
    state: &mut ReplicaState,
    image: &File,
) -> Result<()> {
    let Some(p) = state.pass.clone() else {
        return Ok(());
    };
    let jp = journal_path(dir, p.id);
    if jp.exists() {
        Journal::open(&jp, repo.key())?.apply_to(image)?;
    } else {
        image
            .set_len(p.previous_size)
            .map_err(|e| TransportError::io("resizing image", e))?;
    }
    image
        .sync_all()
        .map_err(|e| TransportError::io("syncing image", e))?;
    write_digests(dir, &rehash(image)?)?;
    state.pass = None;
    Repository::save_state(dir, state)?;
    let _ = std::fs::remove_file(jp);
    tracing::info!(dir = %dir.display(), pass = p.id, "rolled back interrupted pass");
    Ok(())
}

fn restore_locked(
    repo: &Repository,
    dir: &Path,
    state: &mut ReplicaState,
    target: u64,
) -> Result<()> {
    let meta: PointMeta = read_json(&point_path(dir, target))?;
    let last = state.last_point.unwrap_or(0);
    state.restoring = Some(target);
    Repository::save_state(dir, state)?;
    let image = open_rw(&dir.join("image.raw"))?;
    rollback_pass(repo, dir, state, &image)?;
    for j in (target + 1..=last).rev() {
        Journal::open(&journal_path(dir, j), repo.key())?.apply_to(&image)?;
    }
    image
        .sync_all()
        .map_err(|e| TransportError::io("syncing image", e))?;
    write_digests(dir, &rehash(&image)?)?;
    state.size = meta.size;
    state.last_point = Some(target);
    state.restoring = None;
    Repository::save_state(dir, state)?;
    for j in target + 1..=last {
        let _ = std::fs::remove_file(point_path(dir, j));
        let _ = std::fs::remove_file(journal_path(dir, j));
    }
    Ok(())
}

/// Drops the oldest points beyond the retention and the journals no retained point
/// needs (journal N turns point N into N-1, so it is kept only while N-1 is).
pub(crate) fn apply_retention_locked(dir: &Path, r: &Retention) -> Result<Vec<u64>> {
    let pts = list_points(dir)?;
    let now = now_unix();
    let n = pts.len();
    let mut dropped = Vec::new();
    for (i, p) in pts.iter().enumerate() {
        if i + 1 == n {
            break;
        }
        let too_many = r.keep.is_some_and(|k| n - i > k.max(1));
        let too_old = r
            .max_age
            .is_some_and(|a| now.saturating_sub(p.created) > a.as_secs());
        if !(too_many || too_old) {
            break;
        }
        dropped.push(p.id);
    }
    for id in &dropped {
        std::fs::remove_file(point_path(dir, *id))
            .map_err(|e| TransportError::io("removing point", e))?;
    }
    if let Some(oldest) = pts.get(dropped.len()).map(|p| p.id) {
        for j in ids_in(&dir.join("undo"), ".undo") {
            if j <= oldest {
                let _ = std::fs::remove_file(journal_path(dir, j));
            }
        }
    }
    if !dropped.is_empty() {
        tracing::info!(dir = %dir.display(), ?dropped, "retention dropped points");
    }
    Ok(dropped)
}

/// Copies `src` to a new file `dst`, leaving zero blocks as holes.
fn sparse_copy(src: &File, dst: &File) -> Result<()> {
    let size = src
        .metadata()
        .map_err(|e| TransportError::io("stat image", e))?
        .len();
    dst.set_len(size)
        .map_err(|e| TransportError::io("sizing export", e))?;
    let fd = src.as_raw_fd();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < size {
        // SEEK_DATA/SEEK_HOLE skip unallocated ranges; plain integers only.
        let data = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let (start, end) = (data as u64, (hole.max(data) as u64).min(size));
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            read_padded(src, &mut buf[..n], pos)?;
            for (i, b) in buf[..n].chunks(BLOCK_SIZE).enumerate() {
                if !is_zero(b) {
                    dst.write_all_at(b, pos + (i * BLOCK_SIZE) as u64)
                        .map_err(|e| TransportError::io("writing export", e))?;
                }
            }
            pos += n as u64;
        }
        off = end.max(off + 1);
    }
    Ok(())
}

impl Repository {
    /// Retained points of a replica, oldest first.
    pub fn points(&self, name: &str) -> Result<Vec<PointMeta>> {
        let dir = self.replica_dir(name)?;
        if !dir.join("state.json").exists() {
            return Err(TransportError::Repository(format!(
                "no replica named {name:?}"
            )));
        }
        list_points(&dir)
    }

    /// Summaries of all replicas.
    pub fn replicas(&self) -> Result<Vec<ReplicaInfo>> {
        let now = now_unix();
        self.replica_names()?
            .into_iter()
            .map(|name| {
                let dir = self.replica_dir(&name)?;
                let state = Repository::load_state(&dir)?;
                let pts = list_points(&dir)?;
                let last = pts.iter().rev().find(|p| Some(p.id) == state.last_point);
                Ok(ReplicaInfo {
                    size: state.size,
                    points: pts.len(),
                    last_point: state.last_point,
                    last_point_time: last.map(|p| p.created),
                    pass: state.pass,
                    rpo_secs: last.map(|p| now.saturating_sub(p.created)),
                    name,
                })
            })
            .collect()
    }

    /// RPO of every replica against `threshold`.
    pub fn rpo(&self, threshold: Duration) -> Result<Vec<RpoStatus>> {
        Ok(self
            .replicas()?
            .into_iter()
            .map(|r| {
                let age = r.rpo_secs.map(Duration::from_secs);
                RpoStatus {
                    replica: r.name,
                    exceeded: age.is_none_or(|a| a > threshold),
                    age,
                }
            })
            .collect())
    }

    /// Restores the replica image in place to `point`; newer points are dropped.
    pub fn restore(&self, name: &str, point: u64) -> Result<()> {
        let (dir, _lock) = self.lock(name, false)?;
        let mut state = recover(self, &dir, Repository::load_state(&dir)?)?;
        if !point_path(&dir, point).exists() {
            return Err(TransportError::Repository(format!(
                "replica {name} has no point {point}"
            )));
        }
        restore_locked(self, &dir, &mut state, point)
    }

    /// Writes `point` of the replica to a new sparse raw image at `out`.
    pub fn export(&self, name: &str, point: u64, out: &Path) -> Result<()> {
        let (dir, _lock) = self.lock(name, false)?;
        let state = recover(self, &dir, Repository::load_state(&dir)?)?;
        if !point_path(&dir, point).exists() {
            return Err(TransportError::Repository(format!(
                "replica {name} has no point {point}"
            )));
        }
        let tmp = out.with_extension("part");
        let src = File::open(dir.join("image.raw"))
            .map_err(|e| TransportError::io("opening image", e))?;
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| TransportError::io(format!("creating {}", tmp.display()), e))?;
        sparse_copy(&src, &dst)?;
        if let Some(p) = &state.pass {
            let jp = journal_path(&dir, p.id);
            if jp.exists() {
                Journal::open(&jp, self.key())?.apply_to(&dst)?;
            }
        }
        for j in (point + 1..=state.last_point.unwrap_or(0)).rev() {
            Journal::open(&journal_path(&dir, j), self.key())?.apply_to(&dst)?;
        }
        dst.sync_all()
            .map_err(|e| TransportError::io("syncing export", e))?;
        std::fs::rename(&tmp, out).map_err(|e| TransportError::io("renaming export", e))?;
        Ok(())
    }

    /// Checks the image against its digests and reads every journal and point file.
    pub fn verify(&self, name: &str) -> Result<VerifyReport> {
        let (dir, _lock) = self.lock(name, false)?;
        let state = recover(self, &dir, Repository::load_state(&dir)?)?;
        let mut rep = VerifyReport::default();
        if state.pass.is_none() {
            let image = File::open(dir.join("image.raw"))
                .map_err(|e| TransportError::io("opening image", e))?;
            let (actual, groups) = rehash(&image)?;
            let recorded = load_digests(&dir, actual.len() as u64)?;
            let recorded_groups = load_groups(&dir, groups.len() as u64)?;
            let bad_groups: Vec<usize> = groups
                .iter()
                .zip(&recorded_groups)
                .enumerate()
                .filter(|(_, (a, r))| a != r && **r != Digest::UNKNOWN)
                .map(|(i, _)| i)
                .take(100)
                .collect();
            if !bad_groups.is_empty() {
                rep.errors.push(format!(
                    "group digests do not match the image at groups {bad_groups:?}"
                ));
            }
            rep.blocks_checked = actual.len() as u64;
            rep.mismatched_blocks = actual
                .iter()
                .zip(&recorded)
                .enumerate()
                .filter(|(_, (a, r))| a != r)
                .map(|(i, _)| i as u64)
                .take(100)
                .collect();
        }
        if let Err(e) = list_points(&dir) {
            rep.errors.push(e.to_string());
        }
        for j in ids_in(&dir.join("undo"), ".undo") {
            let check = || -> Result<()> {
                let jr = Journal::open(&journal_path(&dir, j), self.key())?;
                let flen = std::fs::metadata(journal_path(&dir, j))
                    .map_err(|e| TransportError::io("stat journal", e))?
                    .len();
                if jr.valid_len != flen && state.pass.as_ref().is_none_or(|p| p.id != j) {
                    return Err(TransportError::Repository(format!(
                        "journal {j} has {} damaged trailing bytes",
                        flen - jr.valid_len
                    )));
                }
                for r in &jr.records {
                    jr.data(r)?;
                }
                Ok(())
            };
            match check() {
                Ok(()) => rep.journals_checked += 1,
                Err(e) => rep.errors.push(format!("journal {j}: {e}")),
            }
        }
        Ok(rep)
    }

    /// Applies a retention policy now; returns the dropped point ids.
    pub fn apply_retention(&self, name: &str, r: &Retention) -> Result<Vec<u64>> {
        let (dir, _lock) = self.lock(name, false)?;
        recover(self, &dir, Repository::load_state(&dir)?)?;
        apply_retention_locked(&dir, r)
    }
}
