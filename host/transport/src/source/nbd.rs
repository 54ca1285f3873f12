//! NBD client: fixed newstyle handshake, `NBD_OPT_GO`, simple replies, pipelined
//! reads.  Works over TCP (`nbd://host:port/export`) and Unix sockets
//! (`nbd+unix:///export?socket=/path`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use super::{BlockSource, SourceError};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
/// Bytes per read request (qemu-nbd and nbdkit accept 32 MiB; stay well below).
const REQUEST_BYTES: usize = 2 << 20;
/// Requests in flight at once.
const IN_FLIGHT: usize = 8;
/// Longest option reply payload we accept.
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// Address of an NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    /// TCP host:port and export name.
    Tcp {
        /// `host:port`.
        addr: String,
        /// Export name (may be empty).
        export: String,
    },
    /// Unix socket path and export name.
    Unix {
        /// Socket path.
        socket: String,
        /// Export name (may be empty).
        export: String,
    },
}

impl NbdAddress {
    /// Parses `nbd://host[:port]/export` or `nbd+unix:///export?socket=PATH`.
    pub fn parse(s: &str) -> Result<NbdAddress, SourceError> {
        let bad = |why: &str| SourceError::Address(s.to_string(), why.to_string());
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest
                .split_once('?')
                .ok_or_else(|| bad("missing ?socket="))?;
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .ok_or_else(|| bad("missing socket= parameter"))?;
            return Ok(NbdAddress::Unix {
                socket: socket.to_string(),
                export: path.trim_start_matches('/').to_string(),
            });
        }
        let rest = s
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("not an nbd URL"))?;
        let (host, export) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let addr = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:10809")
        };
        Ok(NbdAddress::Tcp {
            addr,
            export: export.to_string(),
        })
    }

    fn export(&self) -> &str {
        match self {
            NbdAddress::Tcp { export, .. } | NbdAddress::Unix { export, .. } => export,
        }
    }
}

impl std::fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddress::Tcp { addr, export } => write!(f, "nbd://{addr}/{export}"),
            NbdAddress::Unix { socket, export } => {
                write!(f, "nbd+unix:///{export}?socket={socket}")
            }
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A connected NBD export.
pub struct NbdSource {
    name: String,
    stream: Box<dyn Stream>,
    size: u64,
    next_handle: u64,
}

impl NbdSource {
    /// Connects and negotiates the export.
    pub fn connect(addr: &NbdAddress) -> Result<NbdSource, SourceError> {
        let name = addr.to_string();
        let stream: Box<dyn Stream> = match addr {
            NbdAddress::Tcp { addr: a, .. } => {
                let s =
                    TcpStream::connect(a).map_err(|e| nbd_err(&name, format!("connect: {e}")))?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            NbdAddress::Unix { socket, .. } => Box::new(
                UnixStream::connect(socket)
                    .map_err(|e| nbd_err(&name, format!("connect {socket}: {e}")))?,
            ),
        };
        let mut src = NbdSource {
            name,
            stream,
            size: 0,
            next_handle: 1,
        };
        src.size = src.handshake(addr.export())?;
        Ok(src)
    }

    fn err(&self, what: impl Into<String>) -> SourceError {
        nbd_err(&self.name, what.into())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SourceError> {
        let name = self.name.clone();
        self.stream
            .read_exact(buf)
            .map_err(|e| nbd_err(&name, format!("read: {e}")))
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), SourceError> {
        let name = self.name.clone();
        self.stream
            .write_all(buf)
            .map_err(|e| nbd_err(&name, format!("write: {e}")))
    }

    fn u64(&mut self) -> Result<u64, SourceError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, SourceError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn handshake(&mut self, export: &str) -> Result<u64, SourceError> {
        if self.u64()? != NBDMAGIC {
            return Err(self.err("not an NBD server (bad magic)"));
        }
        if self.u64()? != IHAVEOPT {
            return Err(self.err("server does not speak the newstyle protocol"));
        }
        let mut fb = [0u8; 2];
        self.read_exact(&mut fb)?;
        let flags = u16::from_be_bytes(fb);
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.err("server does not support fixed newstyle negotiation"));
        }
        let client_flags = u32::from(flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        self.write_all(&client_flags.to_be_bytes())?;
        let name = export.as_bytes();
        if name.len() > 4096 {
            return Err(self.err("export name longer than 4096 bytes"));
        }
        let mut opt = Vec::with_capacity(name.len() + 24);
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&((4 + name.len() + 2 + 2) as u32).to_be_bytes());
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name);
        opt.extend_from_slice(&1u16.to_be_bytes());
        opt.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        self.write_all(&opt)?;
        let mut size = None;
        loop {
            if self.u64()? != REPLY_MAGIC {
                return Err(self.err("bad option reply magic"));
            }
            let _option = self.u32()?;
            let kind = self.u32()?;
            let len = self.u32()?;
            if len > MAX_OPTION_REPLY {
                return Err(self.err(format!("option reply of {len} bytes is too long")));
            }
            let mut data = vec![0u8; len as usize];
            self.read_exact(&mut data)?;
            match kind {
                REP_ACK => break,
                REP_INFO
                    if data.len() >= 12
                        && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
                {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&data[2..10]);
                    size = Some(u64::from_be_bytes(s));
                }
                k if k & 0x8000_0000 != 0 => {
                    let msg = String::from_utf8_lossy(&data);
                    return Err(self.err(match k & 0x7fff_ffff {
                        1 => "server does not support NBD_OPT_GO".to_string(),
                        6 => format!("unknown export {export:?} {msg}"),
                        n => format!("option refused (error {n}) {msg}"),
                    }));
                }
                _ => {}
            }
        }
        size.ok_or_else(|| self.err("server sent no export size"))
    }
}

fn nbd_err(name: &str, what: String) -> SourceError {
    SourceError::Nbd {
        export: name.to_string(),
        what,
    }
}

impl BlockSource for NbdSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn current_size(&mut self) -> Result<u64, SourceError> {
        Ok(self.size)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(SourceError::ShortRead(self.name.clone(), self.size));
        }
        for window in buf.chunks_mut(REQUEST_BYTES * IN_FLIGHT).enumerate() {
            let (w, chunk) = window;
            let base = offset + (w * REQUEST_BYTES * IN_FLIGHT) as u64;
            let pieces: Vec<(u64, usize, usize)> = (0..chunk.len())
                .step_by(REQUEST_BYTES)
                .map(|at| {
                    let h = self.next_handle;
                    self.next_handle += 1;
                    (h, at, REQUEST_BYTES.min(chunk.len() - at))
                })
                .collect();
            let mut req = Vec::with_capacity(pieces.len() * 28);
            for &(h, at, len) in &pieces {
                req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
                req.extend_from_slice(&0u16.to_be_bytes());
                req.extend_from_slice(&CMD_READ.to_be_bytes());
                req.extend_from_slice(&h.to_be_bytes());
                req.extend_from_slice(&(base + at as u64).to_be_bytes());
                req.extend_from_slice(&(len as u32).to_be_bytes());
            }
            self.write_all(&req)?;
            for _ in 0..pieces.len() {
                if self.u32()? != SIMPLE_REPLY_MAGIC {
                    return Err(self.err("bad reply magic"));
                }
                let error = self.u32()?;
                let h = self.u64()?;
                let &(_, at, len) = pieces
                    .iter()
                    .find(|p| p.0 == h)
                    .ok_or_else(|| nbd_err(&self.name, format!("reply for unknown handle {h}")))?;
                if error != 0 {
                    return Err(self.err(format!(
                        "read at {} failed: errno {error}",
                        base + at as u64
                    )));
                }
                let name = self.name.clone();
                self.stream
                    .read_exact(&mut chunk[at..at + len])
                    .map_err(|e| nbd_err(&name, format!("read: {e}")))?;
            }
        }
        Ok(())
    }
}

impl Drop for NbdSource {
    fn drop(&mut self) {
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&CMD_DISC.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&0u64.to_be_bytes());
        req.extend_from_slice(&0u32.to_be_bytes());
        let _ = self.stream.write_all(&req);
    }
}
