//! Disk sources: raw files, qcow2 images and NBD exports, plus changed-extents lists.

pub mod extents;
pub mod nbd;
pub mod qcow2;
pub mod raw;

use std::path::PathBuf;

pub use extents::Extents;

/// Errors of reading a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the source failed.
    #[error("reading source {source_name}: {error}")]
    Io {
        /// The source.
        source_name: String,
        /// The error.
        #[source]
        error: std::io::Error,
    },
    /// The source ended before the expected size (it shrank).
    #[error("source {0} ended at offset {1}, before its announced size (it shrank)")]
    ShortRead(String, u64),
    /// A qcow2 feature this reader does not implement.
    #[error("unsupported qcow2 image {path}: {what}")]
    Qcow2Unsupported {
        /// Image path.
        path: PathBuf,
        /// The unsupported feature.
        what: String,
    },
    /// A malformed qcow2 image.
    #[error("corrupt qcow2 image {path}: {what}")]
    Qcow2Corrupt {
        /// Image path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// NBD negotiation or transmission failure.
    #[error("NBD export {export}: {what}")]
    Nbd {
        /// Export address.
        export: String,
        /// What went wrong.
        what: String,
    },
    /// A malformed changed-extents list.
    #[error("changed-extents list {path}, line {line}: {what}")]
    Extents {
        /// List path.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A malformed source address.
    #[error("bad source address {0:?}: {1}")]
    Address(String, String),
}

/// A readable virtual disk.  Reads past the end fail; reads of unallocated areas
/// return zeros.
pub trait BlockSource: Send {
    /// Human-readable name (path or URL) for logs and errors.
    fn name(&self) -> &str;
    /// Size in bytes, as seen when the source was opened.
    fn size(&self) -> u64;
    /// Queries the size again (to detect a source that shrinks or grows).
    fn current_size(&mut self) -> Result<u64, SourceError>;
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), SourceError>;
}

/// Where to read a disk from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A raw image file or block device.
    Raw(PathBuf),
    /// A qcow2 image.
    Qcow2(PathBuf),
    /// An NBD export.
    Nbd(nbd::NbdAddress),
}

impl SourceSpec {
    /// Parses a source argument: `nbd://host:port/export`, `nbd+unix:///export?socket=PATH`,
    /// or a file path (qcow2 when the file starts with the qcow2 magic, raw otherwise).
    pub fn parse(s: &str) -> Result<SourceSpec, SourceError> {
        if s.starts_with("nbd://") || s.starts_with("nbd+unix://") {
            return Ok(SourceSpec::Nbd(nbd::NbdAddress::parse(s)?));
        }
        let path = PathBuf::from(s);
        if qcow2::has_magic(&path).map_err(|error| SourceError::Io {
            source_name: s.to_string(),
            error,
        })? {
            Ok(SourceSpec::Qcow2(path))
        } else {
            Ok(SourceSpec::Raw(path))
        }
    }

    /// Opens the source.
    pub fn open(&self) -> Result<Box<dyn BlockSource>, SourceError> {
        Ok(match self {
            SourceSpec::Raw(p) => Box::new(raw::RawSource::open(p)?),
            SourceSpec::Qcow2(p) => Box::new(qcow2::Qcow2Source::open(p)?),
            SourceSpec::Nbd(a) => Box::new(nbd::NbdSource::connect(a)?),
        })
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Raw(p) | SourceSpec::Qcow2(p) => write!(f, "{}", p.display()),
            SourceSpec::Nbd(a) => write!(f, "{a}"),
        }
    }
}

pub(crate) fn io_err(name: &str) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |error| SourceError::Io {
        source_name: name.to_string(),
        error,
    }
}
