//! Framed wire protocol between source and target.
//!
//! Every frame is `u32 length (big-endian) | u8 kind | payload`, `length` counting the
//! kind byte and payload and bounded by [`MAX_FRAME`].  Control messages carry JSON;
//! manifests, need-bitmaps and data carry compact binary payloads.  Per batch the
//! source sends [`Msg::Groups`] (64 KiB xxh3 group digests), the target answers
//! [`Msg::NeedGroups`]; the source sends [`Msg::Blocks`] (4 KiB xxh3 digests of the
//! needed groups), the target answers [`Msg::Changed`] (blocks that differ from its
//! replica and are not zero); if any, the source sends their BLAKE3 content keys in
//! [`Msg::Keys`] and the target answers [`Msg::NeedBlocks`] after checking its global
//! index; the source sends the needed blocks in [`Msg::Data`].  The target
//! acknowledges durable progress with [`Msg::Ack`] and a committed point with
//! [`Msg::Committed`].

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::digest::{Digest, BLOCK_SIZE, GROUP_BLOCKS};
use crate::error::{ErrorKind, Result, TransportError};

/// Protocol version; both sides must agree.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame accepted (kind byte + payload).
pub const MAX_FRAME: usize = 24 << 20;
/// Groups per batch (16 MiB of disk; also the resume granularity).
pub const BATCH_GROUPS: usize = 256;
/// Most chunks in one [`Msg::Data`] frame (a batch's blocks may take several frames).
pub const FRAME_CHUNKS: usize = 4;
/// Largest uncompressed chunk in a [`Msg::Data`] frame.
pub const MAX_CHUNK: usize = 4 << 20;
/// Largest JSON control message.
const MAX_JSON: usize = 1 << 20;

/// Why a client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// Replicate a disk.
    Replicate,
    /// Only ask the gateway for its load.
    Load,
}

/// First message of the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the source.
    pub version: u32,
    /// Why it connects.
    pub purpose: Purpose,
}

/// The target's answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`] of the target.
    pub version: u32,
    /// Replication sessions running on this gateway (its load).
    pub active_sessions: u32,
}

/// Starts (or resumes) a pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Begin {
    /// Replica name.
    pub replica: String,
    /// Source size in bytes.
    pub size: u64,
    /// Accept a size different from the replica's (disk resized).
    pub allow_resize: bool,
}

/// The target accepted the pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginOk {
    /// Id of the recovery point this pass will create.
    pub pass: u64,
    /// First group not yet durably written (0 for a fresh pass).
    pub resume_group: u64,
}

/// The source has sent everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finish {
    /// Source size at the end of the pass (checked against [`Begin::size`]).
    pub size: u64,
}

/// What the target did in a pass, as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStats {
    /// Bytes whose digest matched the replica at the same position.
    pub unchanged_bytes: u64,
    /// Bytes written as holes.
    pub zero_bytes: u64,
    /// Bytes filled from the target's own data (global index or earlier in the pass).
    pub dedup_bytes: u64,
    /// Bytes received from the source (uncompressed).
    pub received_bytes: u64,
}

/// A pass is committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Committed {
    /// Recovery point id.
    pub point: u64,
    /// Statistics of the last session of the pass.
    pub stats: TargetStats,
}

/// An error reported by the peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// Error class.
    pub kind: ErrorKind,
    /// Message.
    pub message: String,
}

/// Codec of a data chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// zstd frame.
    Zstd = 1,
}

/// A run of needed blocks, concatenated and possibly compressed.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Encoding of `bytes`.
    pub codec: Codec,
    /// Uncompressed length (a multiple of [`BLOCK_SIZE`], at most [`MAX_CHUNK`]).
    pub raw_len: u32,
    /// Encoded bytes.
    pub bytes: Vec<u8>,
}

impl Chunk {
    /// Decodes to the concatenated blocks, checking every bound.
    pub fn decode(self) -> Result<Vec<u8>> {
        let raw_len = self.raw_len as usize;
        match self.codec {
            Codec::Raw => {
                if self.bytes.len() != raw_len {
                    return Err(TransportError::Protocol("raw chunk length mismatch".into()));
                }
                Ok(self.bytes)
            }
            Codec::Zstd => {
                let out = zstd::bulk::decompress(&self.bytes, raw_len)
                    .map_err(|e| TransportError::Protocol(format!("bad zstd chunk: {e}")))?;
                if out.len() != raw_len {
                    return Err(TransportError::Protocol(
                        "zstd chunk decompressed to the wrong length".into(),
                    ));
                }
                Ok(out)
            }
        }
    }
}

/// A protocol message.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Source greeting.
    Hello(Hello),
    /// Target greeting.
    Welcome(Welcome),
    /// Start a pass.
    Begin(Begin),
    /// Pass accepted.
    BeginOk(BeginOk),
    /// Group digests of groups `first..first+digests.len()`.
    Groups {
        /// First group index.
        first: u64,
        /// One digest per group.
        digests: Vec<Digest>,
    },
    /// Bit i set: group i of the last [`Msg::Groups`] is needed.
    NeedGroups(Vec<u8>),
    /// The 16 block digests of each needed group, in order.
    Blocks(Vec<Digest>),
    /// Bit i set: block i of the last [`Msg::Blocks`] changed and is not zero; its
    /// content key is wanted.
    Changed(Vec<u8>),
    /// BLAKE3 content keys of the blocks flagged in the last [`Msg::Changed`], in order.
    Keys(Vec<Digest>),
    /// Bit i set: block i of the last [`Msg::Keys`] must be sent.
    NeedBlocks(Vec<u8>),
    /// The needed blocks, in order, in one or more frames of at most
    /// [`FRAME_CHUNKS`] chunks.
    Data(Vec<Chunk>),
    /// Every group below this one is durable on the target.
    Ack(u64),
    /// End of the pass.
    Finish(Finish),
    /// The pass is a recovery point.
    Committed(Committed),
    /// Failure.
    Error(WireError),
}

const K_HELLO: u8 = 1;
const K_WELCOME: u8 = 2;
const K_BEGIN: u8 = 3;
const K_BEGIN_OK: u8 = 4;
const K_GROUPS: u8 = 5;
const K_NEED_GROUPS: u8 = 6;
const K_BLOCKS: u8 = 7;
const K_NEED_BLOCKS: u8 = 8;
const K_DATA: u8 = 9;
const K_ACK: u8 = 10;
const K_FINISH: u8 = 11;
const K_COMMITTED: u8 = 12;
const K_ERROR: u8 = 13;
const K_CHANGED: u8 = 14;
const K_KEYS: u8 = 15;

/// Bit `i` of a bitmap.
pub fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// A bitmap of `n` bits from a predicate.
pub fn bitmap(n: usize, mut f: impl FnMut(usize) -> bool) -> Vec<u8> {
    let mut v = vec![0u8; n.div_ceil(8)];
    for i in 0..n {
        if f(i) {
            v[i / 8] |= 1 << (i % 8);
        }
    }
    v
}

fn json<T: Serialize>(kind: u8, v: &T) -> (u8, Vec<u8>) {
    (kind, serde_json::to_vec(v).unwrap_or_default())
}

fn digests_bytes(first: Option<u64>, d: &[Digest]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + d.len() * 16);
    if let Some(f) = first {
        v.extend_from_slice(&f.to_be_bytes());
    }
    for x in d {
        v.extend_from_slice(&x.0);
    }
    v
}

fn parse_digests(b: &[u8]) -> Result<Vec<Digest>> {
    if !b.len().is_multiple_of(16) {
        return Err(TransportError::Protocol(
            "digest list not a multiple of 16 bytes".into(),
        ));
    }
    Ok(b.chunks_exact(16)
        .map(|c| {
            let mut d = [0u8; 16];
            d.copy_from_slice(c);
            Digest(d)
        })
        .collect())
}

impl Msg {
    fn encode(&self) -> (u8, Vec<u8>) {
        match self {
            Msg::Hello(m) => json(K_HELLO, m),
            Msg::Welcome(m) => json(K_WELCOME, m),
            Msg::Begin(m) => json(K_BEGIN, m),
            Msg::BeginOk(m) => json(K_BEGIN_OK, m),
            Msg::Finish(m) => json(K_FINISH, m),
            Msg::Committed(m) => json(K_COMMITTED, m),
            Msg::Error(m) => json(K_ERROR, m),
            Msg::Groups { first, digests } => (K_GROUPS, digests_bytes(Some(*first), digests)),
            Msg::NeedGroups(b) => (K_NEED_GROUPS, b.clone()),
            Msg::Blocks(d) => (K_BLOCKS, digests_bytes(None, d)),
            Msg::NeedBlocks(b) => (K_NEED_BLOCKS, b.clone()),
            Msg::Changed(b) => (K_CHANGED, b.clone()),
            Msg::Keys(d) => (K_KEYS, digests_bytes(None, d)),
            Msg::Ack(g) => (K_ACK, g.to_be_bytes().to_vec()),
            Msg::Data(_) => (K_DATA, Vec::new()),
        }
    }

    /// Short name for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "Hello",
            Msg::Welcome(_) => "Welcome",
            Msg::Begin(_) => "Begin",
            Msg::BeginOk(_) => "BeginOk",
            Msg::Groups { .. } => "Groups",
            Msg::NeedGroups(_) => "NeedGroups",
            Msg::Blocks(_) => "Blocks",
            Msg::NeedBlocks(_) => "NeedBlocks",
            Msg::Changed(_) => "Changed",
            Msg::Keys(_) => "Keys",
            Msg::Data(_) => "Data",
            Msg::Ack(_) => "Ack",
            Msg::Finish(_) => "Finish",
            Msg::Committed(_) => "Committed",
            Msg::Error(_) => "Error",
        }
    }
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            TransportError::Truncated(format!("connection closed while {context}"))
        } else {
            TransportError::io(context, e)
        }
    }
}

/// Writes one message; returns the frame size.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg) -> Result<usize> {
    if let Msg::Data(chunks) = msg {
        let payload: usize = chunks.iter().map(|c| 9 + c.bytes.len()).sum();
        let len = 1 + payload;
        if len > MAX_FRAME {
            return Err(TransportError::Protocol("data frame too large".into()));
        }
        let mut head = Vec::with_capacity(5);
        head.extend_from_slice(&(len as u32).to_be_bytes());
        head.push(K_DATA);
        w.write_all(&head).await.map_err(io("sending data"))?;
        for c in chunks {
            let mut h = [0u8; 9];
            h[0] = c.codec as u8;
            h[1..5].copy_from_slice(&c.raw_len.to_be_bytes());
            h[5..9].copy_from_slice(&(c.bytes.len() as u32).to_be_bytes());
            w.write_all(&h).await.map_err(io("sending data"))?;
            w.write_all(&c.bytes).await.map_err(io("sending data"))?;
        }
        w.flush().await.map_err(io("sending data"))?;
        return Ok(4 + len);
    }
    let (kind, payload) = msg.encode();
    let len = 1 + payload.len();
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.push(kind);
    frame.extend_from_slice(&payload);
    w.write_all(&frame).await.map_err(io("sending a message"))?;
    w.flush().await.map_err(io("sending a message"))?;
    Ok(frame.len())
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> Result<T> {
    if b.len() > MAX_JSON {
        return Err(TransportError::Protocol(format!(
            "{what} message too large"
        )));
    }
    serde_json::from_slice(b).map_err(|e| TransportError::Protocol(format!("bad {what}: {e}")))
}

/// Reads one message, bounding every length; returns it and its frame size.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Msg, usize)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)
        .await
        .map_err(io("reading a frame header"))?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(TransportError::Protocol(format!(
            "frame length {len} out of bounds"
        )));
    }
    let kind = head[4];
    let body = len - 1;
    if kind == K_DATA {
        let mut chunks = Vec::new();
        let mut left = body;
        while left > 0 {
            if left < 9 {
                return Err(TransportError::Protocol("short chunk header".into()));
            }
            let mut h = [0u8; 9];
            r.read_exact(&mut h).await.map_err(io("reading data"))?;
            let codec = match h[0] {
                0 => Codec::Raw,
                1 => Codec::Zstd,
                c => return Err(TransportError::Protocol(format!("unknown codec {c}"))),
            };
            let raw_len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            let enc_len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
            if raw_len == 0
                || raw_len as usize > MAX_CHUNK
                || !(raw_len as usize).is_multiple_of(BLOCK_SIZE)
            {
                return Err(TransportError::Protocol(format!(
                    "chunk length {raw_len} invalid"
                )));
            }
            if enc_len > left - 9 {
                return Err(TransportError::Protocol("chunk overruns its frame".into()));
            }
            let mut bytes = vec![0u8; enc_len];
            r.read_exact(&mut bytes).await.map_err(io("reading data"))?;
            left -= 9 + enc_len;
            chunks.push(Chunk {
                codec,
                raw_len,
                bytes,
            });
        }
        return Ok((Msg::Data(chunks), 4 + len));
    }
    let mut p = vec![0u8; body];
    r.read_exact(&mut p)
        .await
        .map_err(io("reading a message"))?;
    let msg = match kind {
        K_HELLO => Msg::Hello(from_json(&p, "Hello")?),
        K_WELCOME => Msg::Welcome(from_json(&p, "Welcome")?),
        K_BEGIN => Msg::Begin(from_json(&p, "Begin")?),
        K_BEGIN_OK => Msg::BeginOk(from_json(&p, "BeginOk")?),
        K_FINISH => Msg::Finish(from_json(&p, "Finish")?),
        K_COMMITTED => Msg::Committed(from_json(&p, "Committed")?),
        K_ERROR => Msg::Error(from_json(&p, "Error")?),
        K_GROUPS => {
            if p.len() < 8 {
                return Err(TransportError::Protocol("short Groups".into()));
            }
            let mut f = [0u8; 8];
            f.copy_from_slice(&p[..8]);
            let digests = parse_digests(&p[8..])?;
            if digests.is_empty() || digests.len() > BATCH_GROUPS {
                return Err(TransportError::Protocol(
                    "Groups count out of bounds".into(),
                ));
            }
            Msg::Groups {
                first: u64::from_be_bytes(f),
                digests,
            }
        }
        K_NEED_GROUPS => Msg::NeedGroups(p),
        K_BLOCKS => {
            let d = parse_digests(&p)?;
            if d.len() % GROUP_BLOCKS != 0 || d.len() > BATCH_GROUPS * GROUP_BLOCKS {
                return Err(TransportError::Protocol(
                    "Blocks count out of bounds".into(),
                ));
            }
            Msg::Blocks(d)
        }
        K_NEED_BLOCKS => Msg::NeedBlocks(p),
        K_CHANGED => Msg::Changed(p),
        K_KEYS => {
            let d = parse_digests(&p)?;
            if d.len() > BATCH_GROUPS * GROUP_BLOCKS {
                return Err(TransportError::Protocol("Keys count out of bounds".into()));
            }
            Msg::Keys(d)
        }
        K_ACK => {
            if p.len() != 8 {
                return Err(TransportError::Protocol("bad Ack".into()));
            }
            let mut f = [0u8; 8];
            f.copy_from_slice(&p);
            Msg::Ack(u64::from_be_bytes(f))
        }
        k => {
            return Err(TransportError::Protocol(format!(
                "unknown message kind {k}"
            )))
        }
    };
    Ok((msg, 4 + len))
}

/// Turns a peer's [`Msg::Error`] into a typed error.
pub fn remote_error(e: WireError) -> TransportError {
    TransportError::Remote {
        kind: e.kind,
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_oversized_and_garbage_frames() {
        let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff, 9];
        assert!(matches!(
            read_msg(&mut big).await,
            Err(TransportError::Protocol(_))
        ));
        let mut trunc: &[u8] = &[0, 0, 0, 10, K_ACK, 1, 2];
        assert!(matches!(
            read_msg(&mut trunc).await,
            Err(TransportError::Truncated(_))
        ));
        let mut unknown: &[u8] = &[0, 0, 0, 1, 99];
        assert!(matches!(
            read_msg(&mut unknown).await,
            Err(TransportError::Protocol(_))
        ));
        // A chunk claiming more bytes than its frame holds.
        let mut over: &[u8] = &[0, 0, 0, 10, K_DATA, 0, 0, 0, 16, 0, 0, 0, 0x10, 0];
        assert!(matches!(
            read_msg(&mut over).await,
            Err(TransportError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn roundtrip() {
        let mut buf = Vec::new();
        let d = Digest([7; 16]);
        write_msg(
            &mut buf,
            &Msg::Groups {
                first: 5,
                digests: vec![d; 3],
            },
        )
        .await
        .unwrap();
        let chunk = Chunk {
            codec: Codec::Raw,
            raw_len: 4096,
            bytes: vec![1; 4096],
        };
        write_msg(&mut buf, &Msg::Data(vec![chunk])).await.unwrap();
        let mut r: &[u8] = &buf;
        match read_msg(&mut r).await.unwrap().0 {
            Msg::Groups { first, digests } => assert_eq!((first, digests), (5, vec![d; 3])),
            m => panic!("{}", m.name()),
        }
        match read_msg(&mut r).await.unwrap().0 {
            Msg::Data(mut c) => assert_eq!(c.remove(0).decode().unwrap(), vec![1; 4096]),
            m => panic!("{}", m.name()),
        }
    }
}
