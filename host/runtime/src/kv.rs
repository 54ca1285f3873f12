//! The durable per-instance key-value store behind `haven:host/kv`.
//!
//! Small by design (session tokens, change ids, cursors): the whole map lives
//! in memory and every write replaces the file atomically (write, fsync,
//! rename), so a crash leaves either the old or the new content.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest total of keys and values of one instance.
pub const QUOTA_BYTES: usize = 4 << 20;

/// Why a write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// Key or value over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The instance's quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The file could not be written.
    #[error("{0}")]
    Io(String),
}

#[derive(Default, Serialize, Deserialize)]
struct Content {
    entries: BTreeMap<String, Vec<u8>>,
}

/// One instance's store.
pub struct KvStore {
    path: PathBuf,
    content: Content,
    used: usize,
}

impl KvStore {
    /// Opens the store in `path` (absent: empty). A file that cannot be
    /// parsed is kept aside as `.corrupt` and the store starts empty.
    pub fn open(path: &Path) -> Self {
        let content = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "kv store unreadable ({e}); starting empty");
                let _ = std::fs::rename(path, path.with_extension("corrupt"));
                Content::default()
            }),
            Err(_) => Content::default(),
        };
        let used = content.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self {
            path: path.to_owned(),
            content,
            used,
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.content.entries.get(key).cloned()
    }

    /// Keys starting with `prefix`, sorted.
    pub fn list_keys(&self, prefix: &str) -> Vec<String> {
        self.content
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stores `value` under `key` durably.
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge(format!(
                "key is {} bytes; the limit is {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge(format!(
                "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        let old = self
            .content
            .entries
            .get(key)
            .map_or(0, |v| key.len() + v.len());
        let used = self.used - old + key.len() + value.len();
        if used > QUOTA_BYTES {
            return Err(KvError::QuotaExceeded(format!(
                "the store would hold {used} bytes; the quota is {QUOTA_BYTES}"
            )));
        }
        let previous = self.content.entries.insert(key.to_owned(), value);
        if let Err(e) = self.persist() {
            match previous {
                Some(p) => self.content.entries.insert(key.to_owned(), p),
                None => self.content.entries.remove(key),
            };
            return Err(e);
        }
        self.used = used;
        Ok(())
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &str) -> Result<(), KvError> {
        let Some(previous) = self.content.entries.remove(key) else {
            return Ok(());
        };
        if let Err(e) = self.persist() {
            self.content.entries.insert(key.to_owned(), previous);
            return Err(e);
        }
        self.used -= key.len() + previous.len();
        Ok(())
    }

    fn persist(&self) -> Result<(), KvError> {
        let io = |e: std::io::Error| KvError::Io(format!("{}: {e}", self.path.display()));
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&serde_json::to_vec(&self.content).expect("kv content serializes"))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_enforces_limits_and_lists_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.json");
        let mut kv = KvStore::open(&path);
        kv.set("cbt/disk0", b"change-1".to_vec()).unwrap();
        kv.set("cbt/disk1", b"change-2".to_vec()).unwrap();
        kv.set("session", b"s".to_vec()).unwrap();
        kv.delete("session").unwrap();
        assert_eq!(kv.list_keys("cbt/"), ["cbt/disk0", "cbt/disk1"]);
        let reopened = KvStore::open(&path);
        assert_eq!(reopened.get("cbt/disk1").unwrap(), b"change-2");
        assert_eq!(reopened.get("session"), None);

        let mut kv = reopened;
        assert!(matches!(
            kv.set(&"k".repeat(2000), vec![]),
            Err(KvError::TooLarge(_))
        ));
        assert!(matches!(
            kv.set("v", vec![0; MAX_VALUE_BYTES + 1]),
            Err(KvError::TooLarge(_))
        ));
        for i in 0..4 {
            kv.set(&format!("big{i}"), vec![1; MAX_VALUE_BYTES - 1000])
                .unwrap();
        }
        assert!(matches!(
            kv.set("big4", vec![1; MAX_VALUE_BYTES - 1000]),
            Err(KvError::QuotaExceeded(_))
        ));
        // Overwriting within the quota is fine.
        kv.set("big0", vec![2; 10]).unwrap();
    }
}
