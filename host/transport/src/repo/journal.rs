//! Undo journals: the previous content of every block a pass overwrote.
//!
//! Layout: a 24-byte header (`HVUNDO02`, previous image size, encryption flag) then
//! records `block u64 | kind u8 | len u32 | payload | check [u8; 8]`, where kind 0
//! means "was zero" (no payload) and kind 1 carries the 4 KiB block (sealed when the
//! repository is encrypted) and `check` is the xxh3-64 of the record.  A torn
//! tail (crash while appending) is detected by the check and ignored.  Applying the
//! records in reverse order of appending restores the previous recovery point, even
//! when a block was journaled twice (resumed pass).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::crypto::Key;
use crate::digest::BLOCK_SIZE;
use crate::error::{Result, TransportError};

const MAGIC: &[u8; 8] = b"HVUNDO02";
/// Header size.
pub const HEADER_LEN: u64 = 24;
const REC_HEAD: usize = 13;
const MAX_PAYLOAD: usize = BLOCK_SIZE + 64;

/// One record found by scanning.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Block index.
    pub block: u64,
    /// Offset of the payload in the file (0 when the block was zero).
    pub payload_at: u64,
    /// Payload length.
    pub payload_len: u32,
    /// Offset just past the record.
    pub end: u64,
}

/// Record checksum (torn or corrupted writes): xxh3-64 of head and payload.  It
/// detects accidents only; sealed payloads carry their own authentication.
fn check(head: &[u8], payload: &[u8]) -> [u8; 8] {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(head);
    h.update(payload);
    h.digest().to_le_bytes()
}

fn jerr(path: &Path, what: &str) -> TransportError {
    TransportError::Repository(format!("undo journal {}: {what}", path.display()))
}

/// An undo journal opened for reading.
pub struct Journal {
    file: File,
    path: std::path::PathBuf,
    key: Option<Arc<Key>>,
    /// Image size before the pass.
    pub previous_size: u64,
    /// Valid records in append order.
    pub records: Vec<Record>,
    /// Length of the valid prefix of the file.
    pub valid_len: u64,
}

impl Journal {
    /// Opens and scans a journal; a torn tail is excluded from `records`.
    pub fn open(path: &Path, key: Option<Arc<Key>>) -> Result<Journal> {
        let file = File::open(path)
            .map_err(|e| TransportError::io(format!("opening {}", path.display()), e))?;
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let mut h = [0u8; HEADER_LEN as usize];
        r.read_exact(&mut h)
            .map_err(|_| jerr(path, "short header"))?;
        if &h[..8] != MAGIC {
            return Err(jerr(path, "bad magic"));
        }
        let mut ps = [0u8; 8];
        ps.copy_from_slice(&h[8..16]);
        let encrypted = h[16] == 1;
        if encrypted != key.is_some() {
            return Err(jerr(
                path,
                if encrypted {
                    "journal is encrypted but no key was given"
                } else {
                    "journal is not encrypted but the repository has a key"
                },
            ));
        }
        let mut records = Vec::new();
        let mut pos = HEADER_LEN;
        let mut payload = vec![0u8; MAX_PAYLOAD];
        loop {
            let mut rh = [0u8; REC_HEAD];
            if r.read_exact(&mut rh).is_err() {
                break;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&rh[..8]);
            let kind = rh[8];
            let len = u32::from_be_bytes([rh[9], rh[10], rh[11], rh[12]]) as usize;
            if kind > 1 || len > MAX_PAYLOAD || (kind == 0) != (len == 0) {
                break;
            }
            if r.read_exact(&mut payload[..len]).is_err() {
                break;
            }
            let mut c = [0u8; 8];
            if r.read_exact(&mut c).is_err() || c != check(&rh, &payload[..len]) {
                break;
            }
            let end = pos + (REC_HEAD + len + 8) as u64;
            records.push(Record {
                block: u64::from_be_bytes(b),
                payload_at: if len == 0 { 0 } else { pos + REC_HEAD as u64 },
                payload_len: len as u32,
                end,
            });
            pos = end;
        }
        drop(r);
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            key,
            previous_size: u64::from_be_bytes(ps),
            records,
            valid_len: pos,
        })
    }

    /// The saved block of a record (None when it was zero).
    pub fn data(&self, rec: &Record) -> Result<Option<Vec<u8>>> {
        if rec.payload_len == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; rec.payload_len as usize];
        self.file
            .read_exact_at(&mut buf, rec.payload_at)
            .map_err(|e| TransportError::io("reading undo journal", e))?;
        let data = match &self.key {
            Some(k) => k.open(&rec.block.to_be_bytes(), &buf)?,
            None => buf,
        };
        if data.len() != BLOCK_SIZE {
            return Err(jerr(&self.path, "record is not one block"));
        }
        Ok(Some(data))
    }

    /// Applies the journal to `image`: the image returns to the previous point.
    pub fn apply_to(&self, image: &File) -> Result<()> {
        let len = image
            .metadata()
            .map_err(|e| TransportError::io("stat image", e))?
            .len();
        if len < self.previous_size {
            image
                .set_len(self.previous_size)
                .map_err(|e| TransportError::io("resizing image", e))?;
        }
        for rec in self.records.iter().rev() {
            let off = rec.block * BLOCK_SIZE as u64;
            match self.data(rec)? {
                Some(d) => image
                    .write_all_at(&d, off)
                    .map_err(|e| TransportError::io("restoring block", e))?,
                None => punch_hole(image, off, BLOCK_SIZE as u64)?,
            }
        }
        image
            .set_len(self.previous_size)
            .map_err(|e| TransportError::io("resizing image", e))?;
        Ok(())
    }
}

/// Makes `[off, off+len)` read as zeros, deallocating it where the filesystem can.
pub fn punch_hole(file: &File, off: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    // fallocate on our own descriptor with plain integers: no memory is shared.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        let zeros = vec![0u8; len as usize];
        return file
            .write_all_at(&zeros, off)
            .map_err(|e| TransportError::io("zeroing blocks", e));
    }
    Err(TransportError::io("punching a hole", err))
}

/// Appends records to a journal; [`JournalWriter::sync`] makes them durable.
pub struct JournalWriter {
    file: File,
    key: Option<Arc<Key>>,
    len: u64,
    buf: Vec<u8>,
}

impl JournalWriter {
    /// Creates a journal (fsynced, with its directory entry).
    pub fn create(path: &Path, previous_size: u64, key: Option<Arc<Key>>) -> Result<JournalWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| TransportError::io("creating undo journal", e))?;
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&previous_size.to_be_bytes());
        h[16] = u8::from(key.is_some());
        file.write_all_at(&h, 0)
            .map_err(|e| TransportError::io("writing undo journal", e))?;
        file.sync_all()
            .map_err(|e| TransportError::io("syncing undo journal", e))?;
        if let Some(dir) = path.parent() {
            super::sync_dir(dir)?;
        }
        Ok(JournalWriter {
            file,
            key,
            len: HEADER_LEN,
            buf: Vec::new(),
        })
    }

    /// Reopens a journal for appending after its valid prefix (cutting a torn tail).
    pub fn reopen(path: &Path, key: Option<Arc<Key>>) -> Result<(JournalWriter, Journal)> {
        let j = Journal::open(path, key.clone())?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| TransportError::io("opening undo journal", e))?;
        file.set_len(j.valid_len)
            .map_err(|e| TransportError::io("truncating undo journal", e))?;
        Ok((
            JournalWriter {
                file,
                key,
                len: j.valid_len,
                buf: Vec::new(),
            },
            j,
        ))
    }

    /// Queues a record: `data` is the old block, None when it was zero.
    pub fn append(&mut self, block: u64, data: Option<&[u8]>) {
        let sealed;
        let payload: &[u8] = match (data, &self.key) {
            (None, _) => &[],
            (Some(d), None) => d,
            (Some(d), Some(k)) => {
                sealed = k.seal(&block.to_be_bytes(), d);
                &sealed
            }
        };
        let mut head = [0u8; REC_HEAD];
        head[..8].copy_from_slice(&block.to_be_bytes());
        head[8] = u8::from(data.is_some());
        head[9..13].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        let c = check(&head, payload);
        self.buf.extend_from_slice(&head);
        self.buf.extend_from_slice(payload);
        self.buf.extend_from_slice(&c);
    }

    /// Writes queued records and fsyncs them.
    pub fn sync(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.len)
            .map_err(|e| TransportError::io("writing undo journal", e))?;
        self.file
            .sync_data()
            .map_err(|e| TransportError::io("syncing undo journal", e))?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Durable length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no record was written.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }
}
