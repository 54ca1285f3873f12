//! Raw image files and block devices.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{io_err, BlockSource, SourceError};

/// A raw disk image (regular file or block device).
pub struct RawSource {
    name: String,
    file: File,
    size: u64,
}

impl RawSource {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<RawSource, SourceError> {
        let name = path.display().to_string();
        let mut file = File::open(path).map_err(io_err(&name))?;
        let size = file.seek(SeekFrom::End(0)).map_err(io_err(&name))?;
        Ok(RawSource { name, file, size })
    }
}

impl BlockSource for RawSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn current_size(&mut self) -> Result<u64, SourceError> {
        self.file.seek(SeekFrom::End(0)).map_err(io_err(&self.name))
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), SourceError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .file
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(io_err(&self.name))?;
            if n == 0 {
                return Err(SourceError::ShortRead(
                    self.name.clone(),
                    offset + done as u64,
                ));
            }
            done += n;
        }
        Ok(())
    }
}
