//! qcow2 images (v2 and v3): unencrypted, without backing file or external data
//! file, with standard (not extended) L2 entries.  Compressed clusters are refused
//! with [`SourceError::Qcow2Unsupported`].

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io_err, BlockSource, SourceError};

const MAGIC: u32 = 0x5146_49fb;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
/// Upper bound of an L1 table we accept (covers far more than any real disk).
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_CACHED_L2: usize = 64;

/// True when the file begins with the qcow2 magic.
pub fn has_magic(path: &Path) -> std::io::Result<bool> {
    let mut f = File::open(path)?;
    let mut m = [0u8; 4];
    match f.read_exact(&mut m) {
        Ok(()) => Ok(u32::from_be_bytes(m) == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// A qcow2 image opened for reading.
pub struct Qcow2Source {
    name: String,
    path: PathBuf,
    file: File,
    file_len: u64,
    size: u64,
    cluster_bits: u32,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl Qcow2Source {
    /// Opens and validates the header and L1 table.
    pub fn open(path: &Path) -> Result<Qcow2Source, SourceError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(io_err(&name))?;
        let file_len = file.metadata().map_err(io_err(&name))?.len();
        let corrupt = |what: String| SourceError::Qcow2Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let unsupported = |what: String| SourceError::Qcow2Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let mut h = [0u8; 112];
        let hl = (file_len as usize).min(h.len());
        if hl < 72 {
            return Err(corrupt("file shorter than a qcow2 header".into()));
        }
        file.read_exact_at(&mut h[..hl], 0).map_err(io_err(&name))?;
        if be32(&h, 0) != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(unsupported(format!("version {version}")));
        }
        if be64(&h, 8) != 0 {
            return Err(unsupported(
                "backing files (replicate a flattened image)".into(),
            ));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!("cluster_bits {cluster_bits} out of range")));
        }
        let size = be64(&h, 24);
        if be32(&h, 32) != 0 {
            return Err(unsupported("encryption".into()));
        }
        let l1_size = be32(&h, 36) as u64;
        let l1_offset = be64(&h, 40);
        if version == 3 {
            if hl < 104 {
                return Err(corrupt("truncated v3 header".into()));
            }
            let incompatible = be64(&h, 72);
            if incompatible & 2 != 0 {
                return Err(corrupt("image is marked corrupt".into()));
            }
            if incompatible & 4 != 0 {
                return Err(unsupported("external data file".into()));
            }
            if incompatible & 16 != 0 {
                return Err(unsupported("extended L2 entries (subclusters)".into()));
            }
            if incompatible & !0b1_1111 != 0 {
                return Err(unsupported(format!(
                    "incompatible features {incompatible:#x}"
                )));
            }
        }
        let l2_bits = cluster_bits - 3;
        let per_l1 = 1u64 << (cluster_bits + l2_bits);
        let needed = size.div_ceil(per_l1);
        if l1_size < needed || l1_size * 8 > MAX_L1_BYTES {
            return Err(corrupt(format!(
                "L1 size {l1_size} does not fit disk size {size}"
            )));
        }
        if l1_offset
            .checked_add(l1_size * 8)
            .is_none_or(|e| e > file_len)
        {
            return Err(corrupt("L1 table beyond end of file".into()));
        }
        let mut raw = vec![0u8; (l1_size * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset)
            .map_err(io_err(&name))?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Qcow2Source {
            name,
            path: path.to_path_buf(),
            file,
            file_len,
            size,
            cluster_bits,
            l1,
            l2_cache: HashMap::new(),
        })
    }

    fn corrupt(&self, what: String) -> SourceError {
        SourceError::Qcow2Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Host offset of the cluster holding guest `offset`, or None when it reads as zeros.
    fn lookup(&mut self, offset: u64) -> Result<Option<u64>, SourceError> {
        let cb = self.cluster_bits;
        let l2_bits = cb - 3;
        let l1_index = (offset >> (cb + l2_bits)) as usize;
        let l2_index = ((offset >> cb) & ((1 << l2_bits) - 1)) as usize;
        let l1e = *self
            .l1
            .get(l1_index)
            .ok_or_else(|| self.corrupt(format!("L1 index {l1_index} out of range")))?;
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            return Ok(None);
        }
        if !self.l2_cache.contains_key(&l2_off) {
            let cluster = 1u64 << cb;
            if l2_off
                .checked_add(cluster)
                .is_none_or(|e| e > self.file_len)
            {
                return Err(self.corrupt(format!("L2 table at {l2_off} beyond end of file")));
            }
            let mut raw = vec![0u8; cluster as usize];
            self.file
                .read_exact_at(&mut raw, l2_off)
                .map_err(io_err(&self.name))?;
            if self.l2_cache.len() >= MAX_CACHED_L2 {
                self.l2_cache.clear();
            }
            self.l2_cache
                .insert(l2_off, raw.chunks_exact(8).map(|c| be64(c, 0)).collect());
        }
        let l2e = self.l2_cache.get(&l2_off).map(|t| t[l2_index]).unwrap_or(0);
        if l2e & L2_COMPRESSED != 0 {
            return Err(SourceError::Qcow2Unsupported {
                path: self.path.clone(),
                what: format!(
                    "compressed cluster at guest offset {offset} (convert with qemu-img convert -O qcow2 first)"
                ),
            });
        }
        if l2e & L2_ZERO != 0 {
            return Ok(None);
        }
        let host = l2e & OFFSET_MASK;
        if host == 0 {
            return Ok(None);
        }
        // The last cluster may be short in the file (reads are clipped and
        // zero-filled), so only a cluster starting beyond the file is corrupt.
        if host >= self.file_len {
            return Err(self.corrupt(format!("data cluster at {host} beyond end of file")));
        }
        Ok(Some(host))
    }
}

impl BlockSource for Qcow2Source {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn current_size(&mut self) -> Result<u64, SourceError> {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, 24)
            .map_err(io_err(&self.name))?;
        Ok(u64::from_be_bytes(b))
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(SourceError::ShortRead(self.name.clone(), self.size));
        }
        let cluster = 1u64 << self.cluster_bits;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_cluster = pos & (cluster - 1);
            let n = ((cluster - in_cluster) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.lookup(pos)? {
                None => out.fill(0),
                Some(host) => {
                    let start = host + in_cluster;
                    let avail = self.file_len.saturating_sub(start).min(n as u64) as usize;
                    self.file
                        .read_exact_at(&mut out[..avail], start)
                        .map_err(io_err(&self.name))?;
                    out[avail..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, cluster_bits: u32, size: u64, l1_size: u32, l1_off: u64) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[36..40].copy_from_slice(&l1_size.to_be_bytes());
        h[40..48].copy_from_slice(&l1_off.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    fn open_bytes(b: &[u8]) -> Result<Qcow2Source, SourceError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.qcow2");
        std::fs::write(&p, b).unwrap();
        Qcow2Source::open(&p)
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        assert!(open_bytes(b"QFI").is_err());
        assert!(open_bytes(&header(4, 16, 1 << 20, 1, 112)).is_err());
        assert!(open_bytes(&header(3, 40, 1 << 20, 1, 112)).is_err());
        // L1 table beyond the end of the file.
        assert!(matches!(
            open_bytes(&header(3, 16, 1 << 30, 1, 1 << 40)),
            Err(SourceError::Qcow2Corrupt { .. })
        ));
        // L1 table too small for the disk, or absurdly large.
        assert!(open_bytes(&header(3, 16, 1 << 40, 1, 112)).is_err());
        assert!(open_bytes(&header(3, 9, u64::MAX, u32::MAX, 112)).is_err());
        // A valid empty image reads zeros; an L2 pointer beyond the file is corrupt.
        let mut img = header(3, 16, 1 << 20, 1, 112);
        img.extend_from_slice(&0u64.to_be_bytes());
        let mut s = open_bytes(&img).unwrap();
        let mut buf = vec![1u8; 8192];
        s.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(s.read_at(&mut buf, (1 << 20) - 4096).is_err());
        let mut bad = header(3, 16, 1 << 20, 1, 112);
        bad.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut s = open_bytes(&bad).unwrap();
        assert!(matches!(
            s.read_at(&mut buf, 0),
            Err(SourceError::Qcow2Corrupt { .. })
        ));
    }
}
