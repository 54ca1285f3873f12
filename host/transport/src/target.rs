//! The target service: accepts TLS connections, answers load probes, and runs
//! replication sessions into the repository.
//!
//! A session decides per 4 KiB block whether the replica already holds it at the
//! same position (unchanged), whether it is zero (hole), whether the target already
//! holds it elsewhere (earlier in the pass, or any replica via the global index,
//! verified by hashing), and only asks the source for the rest.  Received blocks are
//! verified against their digests before a writer thread journals and writes them.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::digest::{zero_block, Digest, BLOCK_SIZE, GROUP_BLOCKS};
use crate::error::{Result, TransportError};
use crate::events::{Event, EventSink};
use crate::repo::store::{blocks_for, groups_for, io_pool, read_blocks, BlockMap};
use crate::repo::{BlockOp, OpKind, PassWriter, PointMeta, Repository, Retention};
use crate::wire::{
    self, bitmap, read_msg, write_msg, BeginOk, Committed, Msg, Purpose, TargetStats, Welcome,
    WireError, PROTOCOL_VERSION,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest disk accepted (block digests are held in memory: 16 bytes per 4 KiB).
pub const MAX_DISK: u64 = 16 << 40;
/// Most block updates merged into one writer step (one journal fsync).
const MERGE_OPS: usize = 4 * wire::BATCH_GROUPS * GROUP_BLOCKS;
/// Fewest block updates the writer waits for before a step (unless the pass ends).
const MIN_APPLY_OPS: usize = 2048;

/// Configuration of the target service.
#[derive(Clone)]
pub struct TargetOptions {
    /// Repository to store replicas in.
    pub repo: Repository,
    /// TLS server configuration.
    pub tls: Arc<ServerConfig>,
    /// Retention applied after each commit.
    pub retention: Retention,
    /// Raise [`Event::RpoExceeded`] when a replica's last point is older than this.
    pub rpo_threshold: Option<Duration>,
    /// How often the RPO is checked.
    pub rpo_check_every: Duration,
    /// Event sink.
    pub events: EventSink,
    /// Bytes written between checkpoints (each checkpoint is acknowledged).
    pub checkpoint_bytes: u64,
}

impl TargetOptions {
    /// Options with no retention limit and no RPO threshold.
    pub fn new(repo: Repository, tls: Arc<ServerConfig>) -> TargetOptions {
        TargetOptions {
            repo,
            tls,
            retention: Retention::default(),
            rpo_threshold: None,
            rpo_check_every: Duration::from_secs(60),
            events: EventSink::default(),
            checkpoint_bytes: crate::repo::store::CHECKPOINT_BYTES,
        }
    }
}

/// A bound target service.
pub struct Target {
    listener: TcpListener,
    opts: Arc<TargetOptions>,
    active: Arc<AtomicU32>,
}

struct ActiveGuard(Arc<AtomicU32>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Target {
    /// Binds the listening socket.
    pub async fn bind(addr: &str, opts: TargetOptions) -> Result<Target> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| TransportError::io(format!("binding {addr}"), e))?;
        Ok(Target {
            listener,
            opts: Arc::new(opts),
            active: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| TransportError::io("reading local address", e))
    }

    /// Number of running replication sessions (shared counter).
    pub fn active_sessions(&self) -> Arc<AtomicU32> {
        self.active.clone()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.opts.tls.clone());
        if let Some(th) = self.opts.rpo_threshold {
            tokio::spawn(rpo_watch(self.opts.clone(), th));
        }
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let opts = self.opts.clone();
            let active = self.active.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(tcp, acceptor, opts, active).await {
                    tracing::warn!(%peer, error = %e, "session ended with an error");
                }
            });
        }
    }
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: &str,
    opts: TargetOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    Target::bind(addr, opts).await?.run(shutdown).await
}

async fn rpo_watch(opts: Arc<TargetOptions>, threshold: Duration) {
    let mut exceeded: HashMap<String, bool> = HashMap::new();
    loop {
        match opts.repo.rpo(threshold) {
            Ok(list) => {
                for s in list {
                    let was = exceeded
                        .insert(s.replica.clone(), s.exceeded)
                        .unwrap_or(false);
                    if s.exceeded && !was {
                        opts.events.emit(Event::RpoExceeded {
                            replica: s.replica,
                            age: s.age,
                            threshold,
                        });
                    } else if !s.exceeded && was {
                        opts.events.emit(Event::RpoRestored {
                            replica: s.replica,
                            age: s.age.unwrap_or_default(),
                        });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "RPO check failed"),
        }
        tokio::time::sleep(opts.rpo_check_every).await;
    }
}

async fn handle(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    opts: Arc<TargetOptions>,
    active: Arc<AtomicU32>,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| TransportError::Truncated("TLS handshake timed out".into()))?
        .map_err(|e| TransportError::Tls {
            peer: peer.clone(),
            message: e.to_string(),
        })?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let hello = match timed_read(&mut rd).await? {
        Msg::Hello(h) => h,
        m => {
            return Err(TransportError::Protocol(format!(
                "expected Hello, got {}",
                m.name()
            )))
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let e = TransportError::Protocol(format!(
            "protocol version {} not supported (target speaks {PROTOCOL_VERSION})",
            hello.version
        ));
        send_error(&mut wr, &e).await;
        return Err(e);
    }
    let guard = match hello.purpose {
        Purpose::Load => None,
        Purpose::Replicate => {
            active.fetch_add(1, Ordering::SeqCst);
            Some(ActiveGuard(active.clone()))
        }
    };
    let load = active.load(Ordering::SeqCst) - u32::from(guard.is_some());
    write_msg(
        &mut wr,
        &Msg::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            active_sessions: load,
        }),
    )
    .await?;
    if guard.is_none() {
        let _ = wr.shutdown().await;
        return Ok(());
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Msg>();
    let sender = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            write_msg(&mut wr, &m).await?;
        }
        let _ = wr.shutdown().await;
        Ok::<(), TransportError>(())
    });
    let r = session(&mut rd, &opts, out_tx.clone()).await;
    if let Err(e) = &r {
        let _ = out_tx.send(Msg::Error(WireError {
            kind: e.kind(),
            message: e.to_string(),
        }));
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), sender).await;
    drop(guard);
    r
}

async fn send_error<W: AsyncWrite + Unpin>(w: &mut W, e: &TransportError) {
    let _ = write_msg(
        w,
        &Msg::Error(WireError {
            kind: e.kind(),
            message: e.to_string(),
        }),
    )
    .await;
}

async fn timed_read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Msg> {
    tokio::time::timeout(IDLE_TIMEOUT, read_msg(r))
        .await
        .map_err(|_| TransportError::Truncated("peer idle for too long".into()))?
        .map(|(m, _)| m)
}

enum WriterCmd {
    Apply {
        batch: Received,
        groups: Vec<(u64, Digest)>,
        stats: TargetStats,
        next_group: u64,
    },
    Progress(u64),
    Commit,
}

fn writer_loop(
    mut w: PassWriter,
    mut rx: mpsc::Receiver<WriterCmd>,
    out: mpsc::UnboundedSender<Msg>,
    retention: Retention,
    checkpoint_bytes: u64,
) -> Result<Option<PointMeta>> {
    w.set_checkpoint_bytes(checkpoint_bytes);
    let mut next = w.pass().acked_group;
    let mut pending: Option<WriterCmd> = None;
    // Never defer past a checkpoint's worth of blocks (the resume granularity).
    let min_ops = MIN_APPLY_OPS.min((checkpoint_bytes / BLOCK_SIZE as u64).max(1) as usize);
    loop {
        let cmd = match pending.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        match cmd {
            WriterCmd::Apply {
                batch,
                mut groups,
                mut stats,
                next_group,
            } => {
                let (mut ops, mut old) = batch.into_ops()?;
                next = next_group;
                // Merge batches: one journal fsync covers them all.  Wait for at least
                // `min_ops` blocks (each fsync costs a disk round trip; scattered 4 KiB
                // changes give a few hundred blocks per batch), then take whatever else
                // is already queued.
                let mut closed = false;
                while ops.len() < MERGE_OPS {
                    let r = if ops.len() < min_ops {
                        match rx.blocking_recv() {
                            Some(c) => Ok(c),
                            None => {
                                closed = true;
                                break;
                            }
                        }
                    } else {
                        rx.try_recv()
                    };
                    match r {
                        Ok(WriterCmd::Apply {
                            batch,
                            groups: more_groups,
                            stats: s,
                            next_group,
                        }) => {
                            let (more, more_old) = batch.into_ops()?;
                            ops.extend(more);
                            old.extend(more_old);
                            groups.extend(more_groups);
                            stats.unchanged_bytes += s.unchanged_bytes;
                            stats.zero_bytes += s.zero_bytes;
                            stats.dedup_bytes += s.dedup_bytes;
                            stats.received_bytes += s.received_bytes;
                            next = next_group;
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                w.apply_prefetched(&ops, old)?;
                w.set_group_digests(&groups);
                w.add_stats(&stats);
                if w.wants_checkpoint() {
                    w.checkpoint(next)?;
                    let _ = out.send(Msg::Ack(next));
                }
                if closed {
                    break;
                }
            }
            WriterCmd::Progress(g) => next = g,
            WriterCmd::Commit => return w.commit(&retention).map(Some),
        }
    }
    // The session ended without a commit: keep what was applied (resume point).
    w.checkpoint(next)?;
    Ok(None)
}

enum Plan {
    Ready(OpKind),
    Need,
}

/// One planned block update: block, change digest (xxh3), content key (BLAKE3; unused
/// for holes), what to do.
type Planned = (u64, Digest, Digest, Plan);

/// A planned batch with the data received for it, not yet verified.
struct Received {
    plan: Vec<Planned>,
    chunks: Vec<wire::Chunk>,
    /// Needed blocks: (block, change digest, content key).
    needed: Vec<(u64, Digest, Digest)>,
    /// Old content of the blocks the batch overwrites, read ahead for the undo journal.
    old: Option<std::sync::mpsc::Receiver<Result<BlockMap>>>,
}

impl Received {
    /// Decodes and verifies the received blocks and turns the plan into block updates;
    /// also returns the old blocks read ahead (empty when the read failed: the writer
    /// then reads them itself).
    fn into_ops(self) -> Result<(Vec<BlockOp>, BlockMap)> {
        let blocks = if self.needed.is_empty() {
            Vec::new()
        } else {
            decode_verify(self.chunks, &self.needed)?
        };
        let mut it = blocks.into_iter();
        let mut ops = Vec::with_capacity(self.plan.len());
        for (block, digest, key, p) in self.plan {
            let kind = match p {
                Plan::Ready(k) => k,
                Plan::Need => {
                    let (buf, at) = it
                        .next()
                        .ok_or_else(|| TransportError::Protocol("missing block".into()))?;
                    OpKind::Data { buf, at }
                }
            };
            ops.push(BlockOp {
                block,
                digest,
                key,
                kind,
            });
        }
        let old = self
            .old
            .and_then(|rx| rx.recv().ok())
            .and_then(|r| r.ok())
            .unwrap_or_default();
        Ok((ops, old))
    }
}

struct Session<'a> {
    opts: &'a TargetOptions,
    name: String,
    replica_id: u32,
    own_image: File,
    digests: Vec<Digest>,
    groups: Vec<Digest>,
    /// Content key to a block written earlier in the pass.
    local: HashMap<Digest, u64>,
    files: HashMap<u32, Option<File>>,
    nblocks: u64,
}

impl Session<'_> {
    /// The image of a replica id (own image for our id), opened once.
    fn file_of(&mut self, replica: u32) -> Option<File> {
        if replica == self.replica_id {
            return self.own_image.try_clone().ok();
        }
        if !self.files.contains_key(&replica) {
            let f = self
                .opts
                .repo
                .index()
                .and_then(|i| i.replica_name(replica))
                .ok()
                .flatten()
                .and_then(|n| self.opts.repo.image_path(&n).ok())
                .and_then(|p| File::open(p).ok());
            self.files.insert(replica, f);
        }
        self.files
            .get(&replica)
            .and_then(|f| f.as_ref()?.try_clone().ok())
    }

    /// First step of planning a batch: compares the change digests of the blocks of
    /// the changed groups with the replica's.  Returns the plan (zero blocks become
    /// holes; the others are `Need` until their keys arrive), the plan indices whose
    /// content keys are wanted, and the blocks whose old content is not zero (to read
    /// ahead for the undo journal).
    fn plan_changes(
        &mut self,
        groups: &[u64],
        bd: &[Digest],
        stats: &mut TargetStats,
    ) -> (Vec<Planned>, Vec<usize>, Vec<u64>) {
        let mut plan = Vec::with_capacity(bd.len());
        let mut want = Vec::new();
        let mut old = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for k in 0..GROUP_BLOCKS {
                let b = g * GROUP_BLOCKS as u64 + k as u64;
                if b >= self.nblocks {
                    break;
                }
                let d = bd[gi * GROUP_BLOCKS + k];
                let cur = self.digests[b as usize];
                if d == cur {
                    stats.unchanged_bytes += BLOCK_SIZE as u64;
                    continue;
                }
                if cur != zero_block() {
                    old.push(b);
                }
                let p = if d == zero_block() {
                    stats.zero_bytes += BLOCK_SIZE as u64;
                    Plan::Ready(OpKind::Zero)
                } else {
                    want.push(plan.len());
                    Plan::Need
                };
                self.digests[b as usize] = d;
                plan.push((b, d, Digest::default(), p));
            }
        }
        (plan, want, old)
    }

    /// Second step: with the content keys of the changed blocks, finds the ones the
    /// target already holds (earlier in the pass, or any replica via the global index,
    /// verified by hashing) and leaves the rest as `Need`.
    fn plan_keys(
        &mut self,
        plan: &mut [Planned],
        want: &[usize],
        keys: &[Digest],
        stats: &mut TargetStats,
    ) -> Result<()> {
        let mut lookups = Vec::new();
        for (&i, &key) in want.iter().zip(keys) {
            plan[i].2 = key;
            if let Some(&from) = self.local.get(&key) {
                stats.dedup_bytes += BLOCK_SIZE as u64;
                plan[i].3 = Plan::Ready(OpKind::Copy { from });
            } else {
                lookups.push(i);
            }
        }
        if !lookups.is_empty() {
            let keys: Vec<Digest> = lookups.iter().map(|&i| plan[i].2).collect();
            let hits = self.opts.repo.index()?.lookup(&keys)?;
            // Candidates grouped by replica; each group is read with coalesced,
            // parallel reads, then every block is verified against its key and its
            // change digest.
            let mut by_replica: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
            for (&i, hit) in lookups.iter().zip(hits) {
                if let Some((r, blk)) = hit {
                    by_replica.entry(r).or_default().push((blk, i));
                }
            }
            let mut found: Vec<(usize, Option<Arc<Vec<u8>>>)> = Vec::new();
            for (r, mut cands) in by_replica {
                let Some(f) = self.file_of(r) else { continue };
                cands.sort_unstable();
                let mut blocks: Vec<u64> = cands.iter().map(|c| c.0).collect();
                blocks.dedup();
                let Ok(data) = read_blocks(&f, &blocks) else {
                    continue;
                };
                let plan_ref = &*plan;
                let checked: Vec<(usize, Option<Arc<Vec<u8>>>)> = cands
                    .par_iter()
                    .map(|&(blk, i)| {
                        let buf = data.get(&blk).and_then(|(buf, at)| {
                            let b = &buf[*at..*at + BLOCK_SIZE];
                            (Digest::key_of_block(b) == plan_ref[i].2
                                && Digest::of_block(b) == plan_ref[i].1)
                                .then(|| Arc::new(b.to_vec()))
                        });
                        (i, buf)
                    })
                    .collect();
                found.extend(checked);
            }
            for (i, buf) in found {
                if let Some(buf) = buf {
                    stats.dedup_bytes += BLOCK_SIZE as u64;
                    plan[i].3 = Plan::Ready(OpKind::Data { buf, at: 0 });
                }
            }
        }
        for &i in want {
            let (b, _, key, p) = &plan[i];
            if matches!(p, Plan::Need) {
                // A later block with the same key in this batch copies this one.
                self.local.insert(*key, *b);
            } else {
                self.local.entry(*key).or_insert(*b);
            }
        }
        // Blocks needed twice in one batch: only the first is requested.
        let mut first_need: HashMap<Digest, u64> = HashMap::new();
        for &i in want {
            let (b, _, key, p) = &mut plan[i];
            if matches!(p, Plan::Need) {
                match first_need.get(key) {
                    Some(&from) => {
                        stats.dedup_bytes += BLOCK_SIZE as u64;
                        *p = Plan::Ready(OpKind::Copy { from });
                    }
                    None => {
                        first_need.insert(*key, *b);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads the old content of `blocks` in the I/O pool, ahead of the writer.
fn read_ahead(
    image: &File,
    blocks: Vec<u64>,
) -> Option<std::sync::mpsc::Receiver<Result<BlockMap>>> {
    if blocks.is_empty() {
        return None;
    }
    let f = image.try_clone().ok()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    io_pool().spawn(move || {
        let _ = tx.send(read_blocks(&f, &blocks));
    });
    Some(rx)
}

async fn session<R: AsyncRead + Unpin>(
    rd: &mut R,
    opts: &TargetOptions,
    out: mpsc::UnboundedSender<Msg>,
) -> Result<()> {
    let begin = match timed_read(rd).await? {
        Msg::Begin(b) => b,
        m => {
            return Err(TransportError::Protocol(format!(
                "expected Begin, got {}",
                m.name()
            )))
        }
    };
    if begin.size > MAX_DISK {
        return Err(TransportError::Protocol(format!(
            "disk of {} bytes is larger than the supported {MAX_DISK}",
            begin.size
        )));
    }
    let repo = opts.repo.clone();
    let (name, size, allow) = (begin.replica.clone(), begin.size, begin.allow_resize);
    let writer = tokio::task::spawn_blocking(move || PassWriter::begin(&repo, &name, size, allow))
        .await
        .map_err(|e| TransportError::Repository(format!("writer task failed: {e}")))??;
    let pass = writer.pass().clone();
    let own_image = writer
        .image()
        .try_clone()
        .map_err(|e| TransportError::io("cloning image handle", e))?;
    let mut s = Session {
        opts,
        name: begin.replica.clone(),
        replica_id: writer.replica_id(),
        own_image,
        digests: writer.digests().to_vec(),
        groups: writer.group_digests().to_vec(),
        local: HashMap::new(),
        files: HashMap::new(),
        nblocks: blocks_for(size),
    };
    let total_groups = groups_for(size);
    let (cmd_tx, cmd_rx) = mpsc::channel::<WriterCmd>(8);
    let retention = opts.retention.clone();
    let wout = out.clone();
    let cpb = opts.checkpoint_bytes;
    let mut writer_task =
        tokio::task::spawn_blocking(move || writer_loop(writer, cmd_rx, wout, retention, cpb));
    tracing::info!(
        replica = s.name,
        pass = pass.id,
        resume_group = pass.acked_group,
        size,
        "pass started"
    );
    let _ = out.send(Msg::BeginOk(BeginOk {
        pass: pass.id,
        resume_group: pass.acked_group,
    }));
    let mut next_group = pass.acked_group;
    let name = s.name.clone();
    let mut writer_result = None;
    let (cmd, out2, wt, wr) = (
        cmd_tx.clone(),
        out.clone(),
        &mut writer_task,
        &mut writer_result,
    );
    let result: Result<()> = async move {
        let (cmd_tx, out, writer_task) = (cmd, out2, wt);
        loop {
            let msg = tokio::select! {
                m = timed_read(rd) => m?,
                r = &mut *writer_task => {
                    *wr = Some(r);
                    return Err(TransportError::Repository("writer stopped".into()));
                }
            };
            match msg {
                Msg::Groups { first, digests: gd } => {
                    let end = first + gd.len() as u64;
                    if first < next_group || end > total_groups {
                        return Err(TransportError::Protocol(format!(
                            "groups {first}..{end} out of order or beyond the disk ({total_groups} groups)"
                        )));
                    }
                    let mut stats = TargetStats::default();
                    let need: Vec<u64> = (first..end)
                        .filter(|&g| {
                            let same = s.groups[g as usize] == gd[(g - first) as usize];
                            if same {
                                let a = g * GROUP_BLOCKS as u64;
                                let b = (a + GROUP_BLOCKS as u64).min(s.nblocks);
                                stats.unchanged_bytes += (b - a) * BLOCK_SIZE as u64;
                            }
                            !same
                        })
                        .collect();
                    let bits = bitmap(gd.len(), |i| need.contains(&(first + i as u64)));
                    let _ = out.send(Msg::NeedGroups(bits));
                    next_group = end;
                    if need.is_empty() {
                        let batch = Received { plan: Vec::new(), chunks: Vec::new(), needed: Vec::new(), old: None };
                        send_cmd(&cmd_tx, WriterCmd::Apply { batch, groups: Vec::new(), stats, next_group }).await?;
                        continue;
                    }
                    let bd = match timed_read(rd).await? {
                        Msg::Blocks(bd) if bd.len() == need.len() * GROUP_BLOCKS => bd,
                        m => return Err(TransportError::Protocol(format!("expected {} block digests, got {}", need.len() * GROUP_BLOCKS, m.name()))),
                    };
                    let (mut plan, want, old_blocks) = s.plan_changes(&need, &bd, &mut stats);
                    let old = read_ahead(&s.own_image, old_blocks);
                    let _ = out.send(Msg::Changed(changed_bitmap(&need, bd.len(), &plan, &want)));
                    let mut needed: Vec<(u64, Digest, Digest)> = Vec::new();
                    let mut chunks = Vec::new();
                    if !want.is_empty() {
                        let keys = match timed_read(rd).await? {
                            Msg::Keys(k) if k.len() == want.len() => k,
                            m => return Err(TransportError::Protocol(format!("expected {} content keys, got {}", want.len(), m.name()))),
                        };
                        tokio::task::block_in_place(|| s.plan_keys(&mut plan, &want, &keys, &mut stats))?;
                        let mut bits = vec![0u8; want.len().div_ceil(8)];
                        for (n, &i) in want.iter().enumerate() {
                            if matches!(plan[i].3, Plan::Need) {
                                bits[n / 8] |= 1 << (n % 8);
                                needed.push((plan[i].0, plan[i].1, plan[i].2));
                            }
                        }
                        let _ = out.send(Msg::NeedBlocks(bits));
                        // The blocks may come in several Data frames.
                        let mut got = 0usize;
                        while got < needed.len() {
                            match timed_read(rd).await? {
                                Msg::Data(c) => {
                                    got += c.iter().map(|c| c.raw_len as usize / BLOCK_SIZE).sum::<usize>();
                                    chunks.extend(c);
                                }
                                m => return Err(TransportError::Protocol(format!("expected Data, got {}", m.name()))),
                            }
                        }
                        stats.received_bytes += (needed.len() * BLOCK_SIZE) as u64;
                    }
                    // Decoding and verification happen in the writer thread, so this
                    // loop already answers the next batch (the two overlap).
                    let groups = need.iter().map(|&g| (g, gd[(g - first) as usize])).collect();
                    let batch = Received { plan, chunks, needed, old };
                    send_cmd(&cmd_tx, WriterCmd::Apply { batch, groups, stats, next_group }).await?;
                }
                Msg::Finish(f) => {
                    if f.size != size {
                        return Err(TransportError::SourceResized {
                            expected: size,
                            actual: f.size,
                            when: "during the pass",
                        });
                    }
                    send_cmd(&cmd_tx, WriterCmd::Progress(total_groups)).await?;
                    send_cmd(&cmd_tx, WriterCmd::Commit).await?;
                    return Ok(());
                }
                m => return Err(TransportError::Protocol(format!("unexpected {}", m.name()))),
            }
        }
    }
    .await;
    drop(cmd_tx);
    let written = match writer_result {
        Some(r) => r,
        None => writer_task.await,
    }
    .map_err(|e| TransportError::Repository(format!("writer task failed: {e}")));
    match (result, written) {
        // A writer failure (full disk, I/O) is the root cause of whatever the session saw.
        (_, Ok(Err(e))) => Err(e),
        (Ok(()), Ok(Ok(Some(meta)))) => {
            // The event logs it.
            opts.events.emit(Event::Committed {
                replica: name,
                point: meta.id,
            });
            let _ = out.send(Msg::Committed(Committed {
                point: meta.id,
                stats: meta.stats,
            }));
            Ok(())
        }
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(Ok(None))) => Err(TransportError::Repository(
            "pass ended without commit".into(),
        )),
    }
}

/// Bit i set when block i of a Blocks message (16 per needed group) changed and is
/// not zero (its content key is wanted).
fn changed_bitmap(groups: &[u64], n: usize, plan: &[Planned], want: &[usize]) -> Vec<u8> {
    let mut v = vec![0u8; n.div_ceil(8)];
    let pos: HashMap<u64, usize> = groups.iter().enumerate().map(|(i, &g)| (g, i)).collect();
    for &i in want {
        let b = plan[i].0;
        let g = b / GROUP_BLOCKS as u64;
        if let Some(&gi) = pos.get(&g) {
            let k = gi * GROUP_BLOCKS + (b % GROUP_BLOCKS as u64) as usize;
            v[k / 8] |= 1 << (k % 8);
        }
    }
    v
}

async fn send_cmd(tx: &mpsc::Sender<WriterCmd>, cmd: WriterCmd) -> Result<()> {
    tx.send(cmd)
        .await
        .map_err(|_| TransportError::Repository("writer stopped".into()))
}

/// Decodes data chunks and checks every block against its expected content key and
/// change digest.
fn decode_verify(
    chunks: Vec<wire::Chunk>,
    needed: &[(u64, Digest, Digest)],
) -> Result<Vec<(Arc<Vec<u8>>, usize)>> {
    let total: usize = chunks.iter().map(|c| c.raw_len as usize / BLOCK_SIZE).sum();
    if total != needed.len() {
        return Err(TransportError::Protocol(format!(
            "received {total} blocks, expected {}",
            needed.len()
        )));
    }
    let decoded: Vec<Arc<Vec<u8>>> = chunks
        .into_par_iter()
        .map(|c| c.decode().map(Arc::new))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(needed.len());
    for buf in &decoded {
        for at in (0..buf.len()).step_by(BLOCK_SIZE) {
            out.push((buf.clone(), at));
        }
    }
    out.par_iter()
        .zip(needed.par_iter())
        .try_for_each(|((buf, at), (block, d, key))| {
            let b = &buf[*at..*at + BLOCK_SIZE];
            if Digest::key_of_block(b) == *key && Digest::of_block(b) == *d {
                Ok(())
            } else {
                Err(TransportError::DigestMismatch { block: *block })
            }
        })?;
    Ok(out)
}
