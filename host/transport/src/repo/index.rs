//! The global digest index (redb): which replica holds a block with a given digest.
//!
//! The index is advisory: every hit is verified by reading and hashing the block
//! before use, so stale entries (blocks overwritten since) cost a lookup, never
//! correctness.  Writes therefore use non-durable commits, made durable at the end
//! of each pass.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::digest::Digest;
use crate::error::{Result, TransportError};

const BLOCKS: TableDefinition<[u8; 16], (u32, u64)> = TableDefinition::new("blocks");
const REPLICAS: TableDefinition<&str, u32> = TableDefinition::new("replicas");

fn e(what: impl std::fmt::Display) -> TransportError {
    TransportError::Repository(format!("digest index: {what}"))
}

/// The digest index of a repository.
pub struct Index {
    db: Database,
}

impl Index {
    /// Opens or creates the index file.
    pub fn open(path: &Path) -> Result<Index> {
        let db = Database::create(path).map_err(e)?;
        let tx = db.begin_write().map_err(e)?;
        tx.open_table(BLOCKS).map_err(e)?;
        tx.open_table(REPLICAS).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Index { db })
    }

    /// The numeric id of a replica (assigned on first use).
    pub fn replica_id(&self, name: &str) -> Result<u32> {
        let tx = self.db.begin_write().map_err(e)?;
        let id = {
            let mut t = tx.open_table(REPLICAS).map_err(e)?;
            let existing = t.get(name).map_err(e)?.map(|v| v.value());
            match existing {
                Some(id) => id,
                None => {
                    let mut max = 0;
                    for row in t.iter().map_err(e)? {
                        max = max.max(row.map_err(e)?.1.value());
                    }
                    t.insert(name, max + 1).map_err(e)?;
                    max + 1
                }
            }
        };
        tx.commit().map_err(e)?;
        Ok(id)
    }

    /// The name of a replica id.
    pub fn replica_name(&self, id: u32) -> Result<Option<String>> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(REPLICAS).map_err(e)?;
        for row in t.iter().map_err(e)? {
            let (k, v) = row.map_err(e)?;
            if v.value() == id {
                return Ok(Some(k.value().to_string()));
            }
        }
        Ok(None)
    }

    /// Looks up many digests in one read transaction.
    pub fn lookup(&self, digests: &[Digest]) -> Result<Vec<Option<(u32, u64)>>> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(BLOCKS).map_err(e)?;
        digests
            .iter()
            .map(|d| Ok(t.get(d.0).map_err(e)?.map(|v| v.value())))
            .collect()
    }

    /// Records where blocks live; `durable` forces the commit to disk.
    pub fn insert(&self, entries: &[(Digest, u32, u64)], durable: bool) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(e)?;
        if !durable {
            tx.set_durability(Durability::None).map_err(e)?;
        }
        {
            let mut t = tx.open_table(BLOCKS).map_err(e)?;
            for (d, r, b) in entries {
                t.insert(d.0, (*r, *b)).map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        Ok(())
    }
}
