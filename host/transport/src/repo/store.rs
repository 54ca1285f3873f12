//! Writing a pass into a replica: undo journaling, block writes, checkpoints and
//! the atomic commit of a recovery point.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::journal::{punch_hole, JournalWriter, HEADER_LEN};
use super::points::{self, PointMeta};
use super::{now_unix, write_atomic, PassState, ReplicaLock, ReplicaState, Repository, Retention};
use crate::digest::{zero_block, zero_group, Digest, BLOCK_SIZE, GROUP_BLOCKS, GROUP_SIZE};
use crate::error::{Result, TransportError};
use crate::wire::TargetStats;

/// Write this many bytes between checkpoints (acks to the source).
pub const CHECKPOINT_BYTES: u64 = 256 << 20;
/// Smallest write sent with O_DIRECT.
const DIRECT_MIN: usize = 256 << 10;
/// Largest single write to the image.
const WRITE_RUN: usize = 4 << 20;

/// What to put in one block.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// Make the block a hole.
    Zero,
    /// Write the block found at `at` in `buf`.
    Data {
        /// Decoded chunk holding the block.
        buf: Arc<Vec<u8>>,
        /// Offset of the block in `buf`.
        at: usize,
    },
    /// Copy the block from another block of this replica written earlier in the pass.
    Copy {
        /// Source block index.
        from: u64,
    },
}

/// One block update of a pass.
#[derive(Debug, Clone)]
pub struct BlockOp {
    /// Block index.
    pub block: u64,
    /// Change digest (xxh3) of the new content, recorded in the replica's manifest.
    pub digest: Digest,
    /// Content key (BLAKE3) of the new content, recorded in the global index
    /// (ignored for holes).
    pub key: Digest,
    /// New content.
    pub kind: OpKind,
}

/// A pool for blocking reads: random 4 KiB reads of a replica not in the page cache
/// are latency-bound, so many run at once.
pub fn io_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .thread_name(|i| format!("haven-io-{i}"))
            .build()
            .unwrap_or_else(|_| rayon::ThreadPoolBuilder::new().build().expect("rayon pool"))
    })
}

/// Blocks read from a file: block index to (shared buffer, offset in it).
pub type BlockMap = HashMap<u64, (Arc<Vec<u8>>, usize)>;

/// Reads blocks (sorted, distinct) in parallel, coalescing contiguous ones; returns
/// a map from block to (buffer, offset).
pub(crate) fn read_blocks(file: &File, blocks: &[u64]) -> Result<BlockMap> {
    use rayon::prelude::*;
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some((first, n)) if *first + *n as u64 == b && *n < 256 => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let bufs: Vec<Arc<Vec<u8>>> = io_pool().install(|| {
        runs.par_iter()
            .map(|&(b, n)| {
                let mut buf = vec![0u8; n * BLOCK_SIZE];
                read_padded(file, &mut buf, b * BLOCK_SIZE as u64).map(|()| Arc::new(buf))
            })
            .collect::<Result<_>>()
    })?;
    let mut map = HashMap::with_capacity(blocks.len());
    for ((b, n), buf) in runs.into_iter().zip(bufs) {
        for k in 0..n {
            map.insert(b + k as u64, (buf.clone(), k * BLOCK_SIZE));
        }
    }
    Ok(map)
}

/// Number of 4 KiB blocks of a disk of `size` bytes.
pub fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

/// Number of 64 KiB groups of a disk of `size` bytes.
pub fn groups_for(size: u64) -> u64 {
    blocks_for(size).div_ceil(GROUP_BLOCKS as u64)
}

pub(crate) fn journal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("undo").join(format!("{id:010}.undo"))
}

pub(crate) fn load_digests(dir: &Path, blocks: u64) -> Result<Vec<Digest>> {
    load_digest_file(&dir.join("digests.bin"), blocks, zero_block())
}

/// Group digests of a replica; a replica without the file gets UNKNOWN digests
/// (its groups are then compared block by block once).
pub(crate) fn load_groups(dir: &Path, groups: u64) -> Result<Vec<Digest>> {
    let p = dir.join("groups.bin");
    if !p.exists() {
        return Ok(vec![Digest::UNKNOWN; groups as usize]);
    }
    load_digest_file(&p, groups, zero_group())
}

fn load_digest_file(path: &Path, n: u64, fill: Digest) -> Result<Vec<Digest>> {
    let raw = std::fs::read(path).map_err(|e| TransportError::io("reading digests", e))?;
    let mut v: Vec<Digest> = raw
        .chunks_exact(16)
        .map(|c| {
            let mut d = [0u8; 16];
            d.copy_from_slice(c);
            Digest(d)
        })
        .collect();
    v.resize(n as usize, fill);
    Ok(v)
}

fn io(ctx: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
    move |e| TransportError::io(ctx, e)
}

/// A pass being written into a replica; holds the replica's lock.
pub struct PassWriter {
    repo: Repository,
    dir: PathBuf,
    _lock: ReplicaLock,
    image: File,
    /// The image opened with O_DIRECT: large aligned writes skip the page cache
    /// (allocating cache pages costs more CPU than the copy to disk).  None when
    /// the filesystem refuses O_DIRECT.
    direct: Option<File>,
    /// A 4 KiB-aligned staging buffer of [`WRITE_RUN`] bytes (offset into `stage`).
    stage: Vec<u8>,
    stage_at: usize,
    digests_file: File,
    digests: Vec<Digest>,
    groups_file: File,
    groups: Vec<Digest>,
    groups_dirty: Option<(u64, u64)>,
    journal: JournalWriter,
    state: ReplicaState,
    pass: PassState,
    replica_id: u32,
    dirty: Option<(u64, u64)>,
    pending_index: Vec<(Digest, u32, u64)>,
    since_checkpoint: u64,
    checkpoint_bytes: u64,
}

impl PassWriter {
    /// Starts a pass of `size` bytes, or resumes the interrupted one.
    pub fn begin(
        repo: &Repository,
        name: &str,
        size: u64,
        allow_resize: bool,
    ) -> Result<PassWriter> {
        let (dir, lock) = repo.lock(name, true)?;
        let mut state = points::recover(repo, &dir, Repository::load_state(&dir)?)?;
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("image.raw"))
            .map_err(io("opening image"))?;
        let digests_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("digests.bin"))
            .map_err(io("opening digests"))?;
        if let Some(p) = state.pass.clone() {
            if p.size != size {
                if !allow_resize {
                    return Err(TransportError::SourceResized {
                        expected: p.size,
                        actual: size,
                        when: "during the interrupted pass",
                    });
                }
                points::rollback_pass(repo, &dir, &mut state, &image)?;
            }
        }
        let replica_id = repo.index()?.replica_id(name)?;
        let key = repo.key();
        let (journal, digests) = match state.pass.clone() {
            Some(p) => {
                let (journal, scanned) = JournalWriter::reopen(&journal_path(&dir, p.id), key)?;
                let mut digests = load_digests(&dir, blocks_for(p.size.max(p.previous_size)))?;
                for r in scanned.records.iter().filter(|r| r.end > p.journal_len) {
                    if let Some(d) = digests.get_mut(r.block as usize) {
                        *d = Digest::UNKNOWN;
                    }
                }
                tracing::info!(
                    replica = name,
                    pass = p.id,
                    group = p.acked_group,
                    "resuming pass"
                );
                (journal, digests)
            }
            None => {
                if state.last_point.is_some() && size != state.size && !allow_resize {
                    return Err(TransportError::SourceResized {
                        expected: state.size,
                        actual: size,
                        when: "since the last pass",
                    });
                }
                let id = state.last_point.map_or(1, |p| p + 1);
                let journal = JournalWriter::create(&journal_path(&dir, id), state.size, key)?;
                state.pass = Some(PassState {
                    id,
                    size,
                    previous_size: state.size,
                    started: now_unix(),
                    acked_group: 0,
                    journal_len: HEADER_LEN,
                    stats: TargetStats::default(),
                });
                Repository::save_state(&dir, &state)?;
                let digests = load_digests(&dir, blocks_for(state.size.max(size)))?;
                (journal, digests)
            }
        };
        let pass = state
            .pass
            .clone()
            .ok_or_else(|| TransportError::Repository("pass state missing".into()))?;
        let direct = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(dir.join("image.raw"))
                .ok()
        };
        let stage = vec![0u8; WRITE_RUN + BLOCK_SIZE];
        let stage_at = stage.as_ptr().align_offset(BLOCK_SIZE);
        let groups_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("groups.bin"))
            .map_err(io("opening group digests"))?;
        let mut groups = load_groups(&dir, groups_for(pass.size.max(pass.previous_size)))?;
        for (b, d) in digests.iter().enumerate() {
            if *d == Digest::UNKNOWN {
                if let Some(g) = groups.get_mut(b / GROUP_BLOCKS) {
                    *g = Digest::UNKNOWN;
                }
            }
        }
        let mut w = PassWriter {
            repo: repo.clone(),
            dir,
            _lock: lock,
            image,
            direct,
            stage,
            stage_at,
            digests_file,
            digests,
            groups_file,
            groups,
            groups_dirty: None,
            journal,
            state,
            pass,
            replica_id,
            dirty: None,
            pending_index: Vec::new(),
            since_checkpoint: 0,
            checkpoint_bytes: CHECKPOINT_BYTES,
        };
        w.resize_image(size)?;
        Ok(w)
    }

    /// The pass in progress.
    pub fn pass(&self) -> &PassState {
        &self.pass
    }

    /// Current digest of every block (UNKNOWN where unsure after a crash).
    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    /// Numeric id of the replica in the global index.
    pub fn replica_id(&self) -> u32 {
        self.replica_id
    }

    /// The image file (for reading blocks).
    pub fn image(&self) -> &File {
        &self.image
    }

    fn size(&self) -> u64 {
        self.pass.size
    }

    fn read_block(&self, block: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; BLOCK_SIZE];
        read_padded(&self.image, &mut buf, block * BLOCK_SIZE as u64)?;
        Ok(buf)
    }

    fn resize_image(&mut self, size: u64) -> Result<()> {
        let cur = self.image.metadata().map_err(io("stat image"))?.len();
        if size < cur {
            let first = size / BLOCK_SIZE as u64;
            for b in first..blocks_for(cur) {
                if self.digests.get(b as usize) != Some(&zero_block()) {
                    let data = self.read_block(b)?;
                    self.journal.append(b, Some(&data));
                }
            }
            self.journal.sync()?;
            self.image.set_len(size).map_err(io("shrinking image"))?;
            self.digests.truncate(blocks_for(size) as usize);
            if !size.is_multiple_of(BLOCK_SIZE as u64) {
                let last = blocks_for(size) - 1;
                let d = Digest::of_block(&self.read_block(last)?);
                self.set_digest(last, d);
            }
            // The group cut by the new end is compared block by block next time.
            if !size.is_multiple_of(GROUP_SIZE as u64) {
                let g = groups_for(size) - 1;
                self.set_group_digests(&[(g, Digest::UNKNOWN)]);
            }
        } else if size > cur {
            self.image.set_len(size).map_err(io("growing image"))?;
        }
        if size != cur {
            self.image.sync_all().map_err(io("syncing image"))?;
            self.dirty = Some((0, blocks_for(size).saturating_sub(1)));
        }
        self.digests.resize(blocks_for(size) as usize, zero_block());
        self.groups.resize(groups_for(size) as usize, zero_group());
        if size != cur {
            self.groups_dirty = Some((0, groups_for(size).saturating_sub(1)));
        }
        Ok(())
    }

    /// Records the group digests (as the source computed them) of groups the pass
    /// brought up to date.
    pub fn set_group_digests(&mut self, groups: &[(u64, Digest)]) {
        for &(g, d) in groups {
            if let Some(x) = self.groups.get_mut(g as usize) {
                *x = d;
                self.groups_dirty = Some(match self.groups_dirty {
                    Some((a, b)) => (a.min(g), b.max(g)),
                    None => (g, g),
                });
            }
        }
    }

    /// Current digest of every 64 KiB group (UNKNOWN where unsure).
    pub fn group_digests(&self) -> &[Digest] {
        &self.groups
    }

    fn set_digest(&mut self, block: u64, d: Digest) {
        if let Some(x) = self.digests.get_mut(block as usize) {
            *x = d;
        }
        self.dirty = Some(match self.dirty {
            Some((a, b)) => (a.min(block), b.max(block)),
            None => (block, block),
        });
    }

    /// Adds a session's statistics to the pass (saved at the next checkpoint).
    pub fn add_stats(&mut self, s: &TargetStats) {
        let p = &mut self.pass.stats;
        p.unchanged_bytes += s.unchanged_bytes;
        p.zero_bytes += s.zero_bytes;
        p.dedup_bytes += s.dedup_bytes;
        p.received_bytes += s.received_bytes;
    }

    /// Applies block updates: journals the old content (fsynced), then writes.
    pub fn apply(&mut self, ops: &[BlockOp]) -> Result<()> {
        self.apply_prefetched(ops, BlockMap::new())
    }

    /// [`PassWriter::apply`] with old content already read ahead (`old`, which may be
    /// incomplete: missing blocks are read here).  The caller guarantees that the
    /// blocks in `old` were read after every earlier write to them.
    pub fn apply_prefetched(&mut self, ops: &[BlockOp], mut old: BlockMap) -> Result<()> {
        let nblocks = self.digests.len() as u64;
        // Content of each op, materialised in order (copies may refer to earlier ops).
        let mut pos: HashMap<u64, usize> = HashMap::new();
        let mut owned: Vec<Option<Vec<u8>>> = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if op.block >= nblocks {
                return Err(TransportError::Protocol(format!(
                    "block {} beyond the disk",
                    op.block
                )));
            }
            let data = match &op.kind {
                OpKind::Copy { from } => {
                    let d = match pos.get(from) {
                        Some(&j) => op_bytes(&ops[j], &owned[j]).map(|b| b.to_vec()),
                        None => Some(self.read_block(*from)?),
                    };
                    let d = d.unwrap_or_else(|| vec![0u8; BLOCK_SIZE]);
                    if Digest::of_block(&d) != op.digest {
                        return Err(TransportError::Repository(format!(
                            "dedup source block {from} changed under the pass"
                        )));
                    }
                    Some(d)
                }
                _ => None,
            };
            owned.push(data);
            pos.insert(op.block, i);
        }
        let mut old_blocks: Vec<u64> = ops
            .iter()
            .filter(|op| self.digests[op.block as usize] != zero_block())
            .filter(|op| !old.contains_key(&op.block))
            .map(|op| op.block)
            .collect();
        old_blocks.sort_unstable();
        old_blocks.dedup();
        if !old_blocks.is_empty() {
            old.extend(read_blocks(&self.image, &old_blocks)?);
        }
        for op in ops {
            let was_zero = self.digests[op.block as usize] == zero_block();
            match old.get(&op.block).filter(|_| !was_zero) {
                Some((buf, at)) => self
                    .journal
                    .append(op.block, Some(&buf[*at..*at + BLOCK_SIZE])),
                None => self.journal.append(op.block, None),
            }
        }
        self.journal.sync()?;
        let size = self.size();
        let mut run_len = 0usize;
        let mut run_start = 0u64;
        let mut hole: Option<(u64, u64)> = None;
        for (i, op) in ops.iter().enumerate() {
            match op_bytes(op, &owned[i]) {
                Some(bytes) => {
                    if let Some((a, n)) = hole.take() {
                        self.punch(a, n, size)?;
                    }
                    let off = op.block * BLOCK_SIZE as u64;
                    if run_len > 0 && (run_start + run_len as u64 != off || run_len >= WRITE_RUN) {
                        self.write_run(run_len, run_start, size)?;
                        run_len = 0;
                    }
                    if run_len == 0 {
                        run_start = off;
                    }
                    let at = self.stage_at + run_len;
                    self.stage[at..at + BLOCK_SIZE].copy_from_slice(bytes);
                    run_len += BLOCK_SIZE;
                }
                None => {
                    if run_len > 0 {
                        self.write_run(run_len, run_start, size)?;
                        run_len = 0;
                    }
                    hole = match hole {
                        Some((a, n)) if a + n == op.block => Some((a, n + 1)),
                        Some((a, n)) => {
                            self.punch(a, n, size)?;
                            Some((op.block, 1))
                        }
                        None => Some((op.block, 1)),
                    };
                }
            }
        }
        if run_len > 0 {
            self.write_run(run_len, run_start, size)?;
        }
        if let Some((a, n)) = hole {
            self.punch(a, n, size)?;
        }
        // Start writeback of the buffered (small) writes now, in the background, so
        // the fsync at the next checkpoint or commit finds most of them written.
        if let (Some(first), Some(last), Ok(f)) = (
            ops.iter().map(|o| o.block).min(),
            ops.iter().map(|o| o.block).max(),
            self.image.try_clone(),
        ) {
            io_pool().spawn(move || {
                use std::os::fd::AsRawFd;
                let off = first * BLOCK_SIZE as u64;
                let len = (last + 1 - first) * BLOCK_SIZE as u64;
                // SAFETY: a plain syscall on a descriptor `f` keeps open; a failure
                // only loses the hint.
                unsafe {
                    libc::sync_file_range(
                        f.as_raw_fd(),
                        off as libc::off64_t,
                        len as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            });
        }
        let rid = self.replica_id;
        for op in ops {
            self.set_digest(op.block, op.digest);
            if op.digest != zero_block() {
                self.pending_index.push((op.key, rid, op.block));
            }
        }
        self.since_checkpoint += (ops.len() * BLOCK_SIZE) as u64;
        Ok(())
    }

    /// Writes the first `run_len` staged bytes at `off` (clipped to the disk size).
    fn write_run(&mut self, run_len: usize, off: u64, size: u64) -> Result<()> {
        let len = (run_len as u64).min(size.saturating_sub(off)) as usize;
        let run = &self.stage[self.stage_at..self.stage_at + len];
        // Only large runs go direct: a small O_DIRECT write waits for the disk.
        if len.is_multiple_of(BLOCK_SIZE) && len >= DIRECT_MIN {
            if let Some(d) = &self.direct {
                match d.write_all_at(run, off) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::debug!("O_DIRECT refused; using buffered writes");
                        self.direct = None;
                    }
                    Err(e) => return Err(TransportError::io("writing image", e)),
                }
            }
        }
        self.image
            .write_all_at(run, off)
            .map_err(io("writing image"))
    }

    fn punch(&self, first: u64, n: u64, size: u64) -> Result<()> {
        let off = first * BLOCK_SIZE as u64;
        let len = (n * BLOCK_SIZE as u64).min(size.saturating_sub(off));
        punch_hole(&self.image, off, len)
    }

    /// Sets the bytes written between checkpoints.
    pub fn set_checkpoint_bytes(&mut self, n: u64) {
        self.checkpoint_bytes = n.max(1);
    }

    /// True when enough was written since the last checkpoint.
    pub fn wants_checkpoint(&self) -> bool {
        self.since_checkpoint >= self.checkpoint_bytes
    }

    /// Makes everything applied so far durable and records that every group below
    /// `next_group` is done.
    pub fn checkpoint(&mut self, next_group: u64) -> Result<()> {
        if let Some(d) = &self.direct {
            d.sync_data().map_err(io("syncing image"))?;
        }
        self.image.sync_data().map_err(io("syncing image"))?;
        if let Some((a, b)) = self.dirty.take() {
            let mut bytes = Vec::with_capacity(((b - a + 1) * 16) as usize);
            for d in &self.digests[a as usize..=(b as usize).min(self.digests.len() - 1)] {
                bytes.extend_from_slice(&d.0);
            }
            self.digests_file
                .write_all_at(&bytes, a * 16)
                .map_err(io("writing digests"))?;
        }
        if let Some((a, b)) = self.groups_dirty.take() {
            let end = (b as usize).min(self.groups.len().saturating_sub(1));
            let mut bytes = Vec::new();
            for d in self.groups.get(a as usize..=end).unwrap_or(&[]) {
                bytes.extend_from_slice(&d.0);
            }
            self.groups_file
                .write_all_at(&bytes, a * 16)
                .map_err(io("writing group digests"))?;
        }
        self.groups_file
            .set_len(self.groups.len() as u64 * 16)
            .map_err(io("resizing group digests"))?;
        self.groups_file
            .sync_data()
            .map_err(io("syncing group digests"))?;
        self.digests_file
            .set_len(self.digests.len() as u64 * 16)
            .map_err(io("resizing digests"))?;
        self.digests_file
            .sync_data()
            .map_err(io("syncing digests"))?;
        if !self.pending_index.is_empty() {
            // Sorted keys make the B-tree inserts sequential.
            self.pending_index.sort_unstable_by_key(|e| e.0);
            self.repo.index()?.insert(&self.pending_index, false)?;
            self.pending_index.clear();
        }
        self.pass.acked_group = next_group;
        self.pass.journal_len = self.journal.len();
        self.state.pass = Some(self.pass.clone());
        Repository::save_state(&self.dir, &self.state)?;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Commits the pass as a recovery point and applies retention.
    pub fn commit(mut self, retention: &Retention) -> Result<PointMeta> {
        let size = self.size();
        let stats = self.pass.stats.clone();
        self.checkpoint(groups_for(size))?;
        self.repo.index()?.insert(&[], true)?;
        let id = self.pass.id;
        let meta = PointMeta {
            id,
            created: now_unix(),
            size,
            stats,
        };
        write_atomic(
            &points::point_path(&self.dir, id),
            &serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )?;
        self.state.size = size;
        self.state.last_point = Some(id);
        self.state.pass = None;
        Repository::save_state(&self.dir, &self.state)?;
        points::apply_retention_locked(&self.dir, retention)?;
        Ok(meta)
    }
}

fn op_bytes<'a>(op: &'a BlockOp, owned: &'a Option<Vec<u8>>) -> Option<&'a [u8]> {
    match (&op.kind, owned) {
        (OpKind::Data { buf, at }, _) => buf.get(*at..*at + BLOCK_SIZE),
        (_, Some(v)) => Some(v),
        _ => None,
    }
}

/// Reads `buf.len()` bytes at `off`, zero-filling past the end of the file.
pub(crate) fn read_padded(f: &File, buf: &mut [u8], off: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], off + done as u64)
            .map_err(io("reading image"))?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
    Ok(())
}
