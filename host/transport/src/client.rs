//! The source side of a pass: reads and digests the disk in a reader thread, asks
//! the target what it lacks, compresses and sends only that, and carries the pass
//! over gateways when a connection fails (resuming at the last acknowledged group).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rustls::ClientConfig;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::digest::{digest_batch, zero_block, Digest, BLOCK_SIZE, GROUP_BLOCKS, GROUP_SIZE};
use crate::error::{Result, TransportError};
use crate::events::{Event, EventSink};
use crate::gateway;
use crate::repo::store::groups_for;
use crate::source::{Extents, SourceSpec};
use crate::throttle::Throttle;
use crate::tls::{self, Counters, Trust};
use crate::wire::{
    bit, read_msg, remote_error, write_msg, Begin, Chunk, Codec, Committed, Finish, Hello, Msg,
    Purpose, TargetStats, BATCH_GROUPS, FRAME_CHUNKS, MAX_CHUNK, PROTOCOL_VERSION,
};

/// What to replicate, where, and how.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// The disk to read.
    pub source: SourceSpec,
    /// Replica name on the target.
    pub replica: String,
    /// Target gateways (`host:port`); the least loaded is used first.
    pub gateways: Vec<String>,
    /// How to authenticate the target.
    pub trust: Trust,
    /// TLS server name (defaults to the gateway's host).
    pub server_name: Option<String>,
    /// Only read these changed extents (CBT).
    pub extents: Option<Extents>,
    /// zstd level (1 by default).
    pub zstd_level: i32,
    /// Bandwidth limit in bytes per second.
    pub bwlimit: Option<u64>,
    /// Accept a source whose size differs from the replica's.
    pub allow_resize: bool,
    /// Connections to try before giving up (across gateways).
    pub max_attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Progress and gateway events.
    pub events: EventSink,
}

impl ReplicateOptions {
    /// Options with defaults: zstd 1, no limit, 8 attempts 300 ms apart.
    pub fn new(source: SourceSpec, replica: &str, gateways: Vec<String>, trust: Trust) -> Self {
        ReplicateOptions {
            source,
            replica: replica.to_string(),
            gateways,
            trust,
            server_name: None,
            extents: None,
            zstd_level: 1,
            bwlimit: None,
            allow_resize: false,
            max_attempts: 8,
            retry_delay: Duration::from_millis(300),
            events: EventSink::default(),
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationReport {
    /// Replica name.
    pub replica: String,
    /// Recovery point created.
    pub point: u64,
    /// Source size.
    pub source_bytes: u64,
    /// Source bytes read and digested (all sessions).
    pub read_bytes: u64,
    /// Target's account of the pass (unchanged, zero, dedup, received bytes).
    pub target: TargetStats,
    /// Uncompressed bytes of the blocks sent.
    pub sent_bytes: u64,
    /// Compressed payload of the blocks sent.
    pub payload_bytes: u64,
    /// Bytes written to the network (TLS included), all sessions.
    pub wire_out_bytes: u64,
    /// Bytes read from the network (TLS included), all sessions.
    pub wire_in_bytes: u64,
    /// Wall time.
    pub duration: Duration,
    /// Connections used.
    pub attempts: u32,
    /// Gateways used, in order.
    pub gateways: Vec<String>,
    /// Byte offset each session started at (non-zero: resumed).
    pub session_offsets: Vec<u64>,
}

impl ReplicationReport {
    /// Bytes the target already had (dedup across passes and replicas).
    pub fn dedup_saved_bytes(&self) -> u64 {
        self.target.dedup_bytes
    }

    /// Total bytes on the wire, both directions.
    pub fn wire_bytes(&self) -> u64 {
        self.wire_out_bytes + self.wire_in_bytes
    }
}

struct Batch {
    first: u64,
    data: Vec<u8>,
    /// Change digest of every block of `data`.
    blocks: Vec<Digest>,
    groups: Vec<Digest>,
}

/// Replicates one disk to the target; returns when the recovery point is committed.
pub async fn replicate(opts: ReplicateOptions) -> Result<ReplicationReport> {
    let start = Instant::now();
    let config = tls::client_config(&opts.trust)?;
    if opts.gateways.is_empty() {
        return Err(TransportError::TlsConfig("no target gateway given".into()));
    }
    let ranked = gateway::rank(&opts.gateways, config.clone(), opts.server_name.as_deref()).await;
    let counters = Arc::new(Counters::default());
    let mut report = ReplicationReport {
        replica: opts.replica.clone(),
        ..Default::default()
    };
    let mut last_err = None;
    for attempt in 0..opts.max_attempts.max(1) {
        let (gw, load) = &ranked[attempt as usize % ranked.len()];
        if report.gateways.last() != Some(gw) {
            opts.events.emit(Event::GatewaySelected {
                gateway: gw.clone(),
                load: *load,
            });
            report.gateways.push(gw.clone());
        }
        report.attempts += 1;
        match run_session(&opts, gw, config.clone(), counters.clone(), &mut report).await {
            Ok(c) => {
                report.point = c.point;
                report.target = c.stats;
                report.wire_out_bytes = counters.written.load(Ordering::Relaxed);
                report.wire_in_bytes = counters.read.load(Ordering::Relaxed);
                report.duration = start.elapsed();
                opts.events.emit(Event::Committed {
                    replica: opts.replica.clone(),
                    point: c.point,
                });
                return Ok(report);
            }
            Err(e) if e.is_retryable() => {
                opts.events.emit(Event::GatewayFailed {
                    gateway: gw.clone(),
                    error: e.to_string(),
                });
                last_err = Some(e);
                tokio::time::sleep(opts.retry_delay).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(TransportError::AllGatewaysFailed(Box::new(
        last_err.unwrap_or_else(|| TransportError::Truncated("no attempt made".into())),
    )))
}

/// Reads the next message that is not an [`Msg::Ack`].
async fn reply<R: AsyncRead + Unpin>(rd: &mut R, acked: &mut u64) -> Result<Msg> {
    loop {
        match read_msg(rd).await?.0 {
            Msg::Ack(g) => *acked = g,
            Msg::Error(e) => return Err(remote_error(e)),
            m => return Ok(m),
        }
    }
}

fn spawn_reader(
    source: SourceSpec,
    extents: Option<Extents>,
    expected_size: u64,
    from_group: u64,
    tx: mpsc::Sender<Result<Batch>>,
    recycle: std::sync::mpsc::Receiver<Vec<u8>>,
) {
    std::thread::spawn(move || {
        let run = || -> Result<()> {
            let mut src = source.open()?;
            let size = src.size();
            if size != expected_size {
                return Err(TransportError::SourceResized {
                    expected: expected_size,
                    actual: size,
                    when: "during the pass",
                });
            }
            let total = groups_for(size);
            let ranges = match &extents {
                Some(e) => e.group_ranges(from_group, total),
                None if from_group < total => vec![(from_group, total)],
                None => Vec::new(),
            };
            for (a, b) in ranges {
                let mut g = a;
                while g < b {
                    let n = (b - g).min(BATCH_GROUPS as u64);
                    let off = g * GROUP_SIZE as u64;
                    let len = (n * GROUP_SIZE as u64).min(size - off) as usize;
                    // Reuse buffers the session is done with: fresh 16 MiB
                    // allocations cost page faults and zeroing on every batch.
                    let mut data = recycle.try_recv().unwrap_or_default();
                    data.resize(len, 0);
                    src.read_at(&mut data, off)?;
                    // Every block is hashed once (xxh3); group digests derive from them.
                    let (blocks, groups) = digest_batch(&data);
                    if tx
                        .blocking_send(Ok(Batch {
                            first: g,
                            data,
                            blocks,
                            groups,
                        }))
                        .is_err()
                    {
                        return Ok(());
                    }
                    g += n;
                }
            }
            let now = src.current_size()?;
            if now != size {
                return Err(TransportError::SourceResized {
                    expected: size,
                    actual: now,
                    when: "during the pass",
                });
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
}

/// Compresses the needed blocks into chunks, in parallel.
fn build_chunks(batch: &Batch, needed: &[usize], level: i32) -> Vec<Chunk> {
    let per_chunk = MAX_CHUNK / BLOCK_SIZE;
    needed
        .par_chunks(per_chunk)
        .map(|idx| {
            let mut raw = Vec::with_capacity(idx.len() * BLOCK_SIZE);
            for &b in idx {
                let a = b * BLOCK_SIZE;
                let e = (a + BLOCK_SIZE).min(batch.data.len());
                raw.extend_from_slice(&batch.data[a..e]);
                raw.resize(raw.len() + BLOCK_SIZE - (e - a), 0);
            }
            let raw_len = raw.len() as u32;
            match zstd::bulk::compress(&raw, level) {
                Ok(z) if z.len() < raw.len() => Chunk {
                    codec: Codec::Zstd,
                    raw_len,
                    bytes: z,
                },
                _ => Chunk {
                    codec: Codec::Raw,
                    raw_len,
                    bytes: raw,
                },
            }
        })
        .collect()
}

async fn run_session(
    opts: &ReplicateOptions,
    gw: &str,
    config: Arc<ClientConfig>,
    counters: Arc<Counters>,
    report: &mut ReplicationReport,
) -> Result<Committed> {
    let stream = tls::connect(gw, config, opts.server_name.as_deref(), counters.clone()).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut acked = 0u64;
    write_msg(
        &mut wr,
        &Msg::Hello(Hello {
            version: PROTOCOL_VERSION,
            purpose: Purpose::Replicate,
        }),
    )
    .await?;
    match reply(&mut rd, &mut acked).await? {
        Msg::Welcome(w) if w.version == PROTOCOL_VERSION => {}
        m => {
            return Err(TransportError::Protocol(format!(
                "expected Welcome, got {}",
                m.name()
            )))
        }
    }
    let spec = opts.source.clone();
    let size = tokio::task::spawn_blocking(move || spec.open().map(|s| s.size()))
        .await
        .map_err(|e| TransportError::Protocol(format!("source task failed: {e}")))??;
    report.source_bytes = size;
    write_msg(
        &mut wr,
        &Msg::Begin(Begin {
            replica: opts.replica.clone(),
            size,
            allow_resize: opts.allow_resize,
        }),
    )
    .await?;
    let resume = match reply(&mut rd, &mut acked).await? {
        Msg::BeginOk(b) => b.resume_group,
        m => {
            return Err(TransportError::Protocol(format!(
                "expected BeginOk, got {}",
                m.name()
            )))
        }
    };
    report.session_offsets.push(resume * GROUP_SIZE as u64);
    if resume > 0 {
        tracing::info!(
            replica = opts.replica,
            group = resume,
            offset = resume * GROUP_SIZE as u64,
            "resuming pass"
        );
    }
    let (tx, mut rx) = mpsc::channel(3);
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel();
    spawn_reader(
        opts.source.clone(),
        opts.extents.clone(),
        size,
        resume,
        tx,
        recycle_rx,
    );
    let todo = size.saturating_sub(resume * GROUP_SIZE as u64);
    let mut throttle = Throttle::new(opts.bwlimit);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut done = 0u64;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        report.read_bytes += batch.data.len() as u64;
        done += batch.data.len() as u64;
        write_msg(
            &mut wr,
            &Msg::Groups {
                first: batch.first,
                digests: batch.groups.clone(),
            },
        )
        .await?;
        let gbits = match reply(&mut rd, &mut acked).await? {
            Msg::NeedGroups(b) => b,
            m => {
                return Err(TransportError::Protocol(format!(
                    "expected NeedGroups, got {}",
                    m.name()
                )))
            }
        };
        let groups: Vec<usize> = (0..batch.groups.len())
            .filter(|&i| bit(&gbits, i))
            .collect();
        if !groups.is_empty() {
            // Block change digests of the groups that changed (16 each, zero-padded).
            let data = &batch.data;
            let nblocks = data.len().div_ceil(BLOCK_SIZE);
            let mut digests = Vec::with_capacity(groups.len() * GROUP_BLOCKS);
            for &g in &groups {
                let a = (g * GROUP_BLOCKS).min(batch.blocks.len());
                let e = (a + GROUP_BLOCKS).min(batch.blocks.len());
                digests.extend_from_slice(&batch.blocks[a..e]);
                digests.resize(digests.len() + GROUP_BLOCKS - (e - a), zero_block());
            }
            write_msg(&mut wr, &Msg::Blocks(digests)).await?;
            let cbits = match reply(&mut rd, &mut acked).await? {
                Msg::Changed(b) => b,
                m => {
                    return Err(TransportError::Protocol(format!(
                        "expected Changed, got {}",
                        m.name()
                    )))
                }
            };
            let changed: Vec<usize> = (0..groups.len() * GROUP_BLOCKS)
                .filter(|&i| bit(&cbits, i))
                .map(|i| groups[i / GROUP_BLOCKS] * GROUP_BLOCKS + i % GROUP_BLOCKS)
                .collect();
            if changed.iter().any(|&b| b >= nblocks) {
                return Err(TransportError::Protocol(
                    "target asked for a block beyond the disk".into(),
                ));
            }
            let mut needed: Vec<usize> = Vec::new();
            if !changed.is_empty() {
                // BLAKE3 content keys (the dedup key) only for blocks that changed.
                let key = |&b: &usize| {
                    let a = b * BLOCK_SIZE;
                    Digest::key_of_block(&data[a..(a + BLOCK_SIZE).min(data.len())])
                };
                // A few hundred blocks (scattered changes) are hashed right here: a
                // round trip through the shared thread pool costs more than it saves.
                let keys: Vec<Digest> = if changed.len() <= 1024 {
                    changed.iter().map(key).collect()
                } else {
                    tokio::task::block_in_place(|| changed.par_iter().map(key).collect())
                };
                write_msg(&mut wr, &Msg::Keys(keys)).await?;
                let bbits = match reply(&mut rd, &mut acked).await? {
                    Msg::NeedBlocks(b) => b,
                    m => {
                        return Err(TransportError::Protocol(format!(
                            "expected NeedBlocks, got {}",
                            m.name()
                        )))
                    }
                };
                needed = (0..changed.len())
                    .filter(|&i| bit(&bbits, i))
                    .map(|i| changed[i])
                    .collect();
            }
            if !needed.is_empty() {
                let level = opts.zstd_level;
                let chunks = tokio::task::block_in_place(|| build_chunks(&batch, &needed, level));
                let payload: u64 = chunks.iter().map(|c| c.bytes.len() as u64).sum();
                report.sent_bytes += (needed.len() * BLOCK_SIZE) as u64;
                report.payload_bytes += payload;
                throttle.consume(payload).await;
                for part in chunks.chunks(FRAME_CHUNKS) {
                    write_msg(&mut wr, &Msg::Data(part.to_vec())).await?;
                }
            }
        }
        let _ = recycle_tx.send(batch.data);
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            opts.events.emit(Event::Progress {
                replica: opts.replica.clone(),
                done_bytes: done,
                total_bytes: todo,
                wire_bytes: counters.written.load(Ordering::Relaxed),
                rate,
                eta: (rate > 0.0)
                    .then(|| Duration::from_secs_f64(todo.saturating_sub(done) as f64 / rate)),
            });
        }
    }
    // The disk must still have the size the pass started with.
    let spec = opts.source.clone();
    let now = tokio::task::spawn_blocking(move || spec.open()?.current_size())
        .await
        .map_err(|e| TransportError::Protocol(format!("source task failed: {e}")))??;
    if now != size {
        return Err(TransportError::SourceResized {
            expected: size,
            actual: now,
            when: "during the pass",
        });
    }
    write_msg(&mut wr, &Msg::Finish(Finish { size })).await?;
    let committed = match reply(&mut rd, &mut acked).await? {
        Msg::Committed(c) => c,
        m => {
            return Err(TransportError::Protocol(format!(
                "expected Committed, got {}",
                m.name()
            )))
        }
    };
    let _ = wr.shutdown().await;
    tracing::debug!(acked, "session done");
    Ok(committed)
}
