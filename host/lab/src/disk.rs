//! Disk image files: sparse creation, sparse copies, and checked paths
//! inside the lab directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::{LabError, Result};

/// Resolves `rel` (a `/`-separated relative path with no `..`) inside `dir`;
/// errors name `field`.
pub fn resolve(dir: &Path, rel: &str, field: &str) -> Result<PathBuf> {
    let path = Path::new(rel);
    if rel.is_empty()
        || rel.contains('\\')
        || !path.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(LabError::invalid(
            field,
            format!("{rel:?} must be a relative path inside the lab directory, without `..`"),
        ));
    }
    Ok(dir.join(path))
}

/// Creates (or truncates to) a sparse raw image of `size` bytes.
pub fn create_sparse(path: &Path, size: u64) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| LabError::io(format!("creating {}", parent.display()), e))?;
    }
    let file =
        File::create(path).map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
    file.set_len(size)
        .map_err(|e| LabError::io(format!("sizing {}", path.display()), e))
}

/// Creates (or truncates to) a sparse raw image of `size` bytes in a directory
/// that exists.
pub fn create_sparse_in_existing_dir(path: &Path, size: u64) -> Result<()> {
    let file =
        File::create(path).map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
    file.set_len(size)
        .map_err(|e| LabError::io(format!("sizing {}", path.display()), e))
}

/// Copies an image, leaving holes where the source has zero blocks.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let mut src = File::open(from).map_err(|e| LabError::io(ctx("opening", from), e))?;
    let size = src
        .metadata()
        .map_err(|e| LabError::io(ctx("reading", from), e))?
        .len();
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| LabError::io(ctx("creating", parent), e))?;
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(|e| LabError::io(ctx("creating", to), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = src
            .read(&mut buf)
            .map_err(|e| LabError::io(ctx("reading", from), e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(offset))
                .and_then(|_| dst.write_all(&buf[..n]))
                .map_err(|e| LabError::io(ctx("writing", to), e))?;
        }
        offset += n as u64;
    }
    dst.set_len(size)
        .map_err(|e| LabError::io(ctx("sizing", to), e))
}

/// The allocated (data) regions of a sparse file, as `(offset, length)`;
/// holes read as zeros and need not be read at all.
pub fn allocated_extents(path: &Path) -> Result<Vec<(u64, u64)>> {
    let file =
        File::open(path).map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?
        .len();
    data_regions(&file, size).map_err(|e| LabError::io(format!("mapping {}", path.display()), e))
}

#[cfg(unix)]
fn data_regions(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let Ok(at) = libc::off_t::try_from(offset) else {
            break;
        };
        // SAFETY: lseek on a descriptor we own, with plain integers.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data after `offset`; EINVAL: the file system cannot say.
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                Some(libc::EINVAL) => Ok(vec![(0, size)]),
                _ => Err(e),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(size));
        if hole > data {
            out.push((data, hole - data));
        }
        offset = hole.max(data + 1);
    }
    Ok(out)
}

#[cfg(not(unix))]
fn data_regions(_file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    Ok(if size > 0 {
        vec![(0, size)]
    } else {
        Vec::new()
    })
}

/// Removes a file; an absent file is not an error.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, then a rename, so a
/// killed process leaves the old or the new content, never a mix. With `fsync`
/// the data is also flushed to the device first (survives a power loss).
pub fn write_atomic(path: &Path, bytes: &[u8], fsync: bool) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| LabError::io(format!("saving {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        let dir = Path::new("/lab");
        assert_eq!(resolve(dir, "a/b.img", "p").unwrap(), dir.join("a/b.img"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a", "a\\b"] {
            assert!(
                matches!(resolve(dir, bad, "disks.0.path"), Err(LabError::InvalidInput { field, .. }) if field == "disks.0.path"),
                "{bad}"
            );
        }
    }

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        create_sparse(&a, 8 << 20).unwrap();
        let mut f = OpenOptions::new().write(true).open(&a).unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(b"hello").unwrap();
        drop(f);
        let b = dir.path().join("sub/b.img");
        sparse_copy(&a, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // Only the written region is allocated (file systems allocate whole blocks).
        let extents = allocated_extents(&b).unwrap();
        assert_eq!(extents.len(), 1, "{extents:?}");
        let (off, len) = extents[0];
        assert!(
            off <= 3 << 20 && off + len >= (3 << 20) + 5 && len <= 1 << 20,
            "{extents:?}"
        );
        remove(&b).unwrap();
        remove(&b).unwrap();
    }
}
