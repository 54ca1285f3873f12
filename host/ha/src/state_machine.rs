//! The replicated state machine: Haven's state store. Each committed entry's
//! commands are applied together with the raft bookkeeping (last applied log
//! id, membership) in one durable transaction; snapshots are whole-store images.

// openraft's traits return its `StorageError`, large as it is.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use haven_store::{Command, Store};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};

use crate::types::{
    BatchResult, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const LAST_APPLIED: &str = "raft/last-applied";
const MEMBERSHIP: &str = "raft/membership";
const SNAPSHOT_FILE: &str = "snapshot.bin";

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

/// The state machine over a [`Store`], plus the last snapshot kept in a file.
pub struct StateMachine {
    store: Arc<Store>,
    dir: PathBuf,
}

impl StateMachine {
    /// A state machine applying into `store`, keeping snapshots in `dir`.
    pub fn new(store: Arc<Store>, dir: &Path) -> Self {
        Self {
            store,
            dir: dir.to_owned(),
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        self.store
            .replication_value(key)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .map(|b| serde_json::from_slice(&b).map_err(|e| sm_err(ErrorVerb::Read, e)))
            .transpose()
    }
}

/// Builds snapshots from a consistent image of the store.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    dir: PathBuf,
}

fn image_bookkeeping(image: &[u8]) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    // Read from the image itself, so that the bookkeeping matches the image
    // even if entries were applied meanwhile.
    let last = haven_store::image_replication_value(image, LAST_APPLIED)
        .map(|b| serde_json::from_slice::<Option<LogId>>(&b))
        .transpose()
        .map_err(|e| snap_err(ErrorVerb::Read, e))?
        .flatten();
    let membership = haven_store::image_replication_value(image, MEMBERSHIP)
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .map_err(|e| snap_err(ErrorVerb::Read, e))?
        .unwrap_or_default();
    Ok((last, membership))
}

fn write_snapshot_file(dir: &Path, meta: &SnapshotMeta, image: &[u8]) -> std::io::Result<()> {
    let meta = serde_json::to_vec(meta)?;
    let mut bytes = (meta.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(image);
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    std::fs::write(&tmp, &bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))
}

fn read_snapshot_file(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("snapshot file truncated")?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err("snapshot file truncated".into());
    }
    let meta = serde_json::from_slice(&rest[..len]).map_err(|e| e.to_string())?;
    Ok(Some((meta, rest[len..].to_vec())))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let image = self
            .store
            .export_image()
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let (last_log_id, last_membership) = image_bookkeeping(&image)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!(
                "{}-{}",
                last_log_id.map_or(0, |l| l.leader_id.term),
                last_log_id.map_or(0, |l| l.index)
            ),
        };
        write_snapshot_file(&self.dir, &meta, &image).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = image.len(), "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(image),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((
            self.read_json::<Option<LogId>>(LAST_APPLIED)?.flatten(),
            self.read_json(MEMBERSHIP)?.unwrap_or_default(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // All entries of one call in one transaction (one fsync); results are
        // split back per entry by their command counts.
        let mut commands: Vec<Command> = Vec::new();
        let mut counts = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => counts.push(0),
                EntryPayload::Normal(batch) => {
                    counts.push(batch.commands.len());
                    commands.extend(batch.commands);
                }
                EntryPayload::Membership(m) => {
                    counts.push(0);
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
            }
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let last_json = serde_json::to_vec(&last).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let membership_json = membership
            .map(|m| serde_json::to_vec(&m))
            .transpose()
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mut bookkeeping: Vec<(&str, &[u8])> = vec![(LAST_APPLIED, &last_json)];
        if let Some(m) = &membership_json {
            bookkeeping.push((MEMBERSHIP, m));
        }
        let applied = self
            .store
            .apply_replicated(&commands, &bookkeeping)
            .map_err(|e| StorageIOError::apply(last, AnyError::error(e.to_string())))?;
        let mut applied = applied.into_iter();
        Ok(counts
            .into_iter()
            .map(|n| BatchResult {
                applied: applied.by_ref().take(n).collect(),
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError> {
        self.store
            .install_image(&snapshot)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // The image carries the same bookkeeping; writing it from the meta
        // makes the state machine agree with what raft was told, whatever the image held.
        let last =
            serde_json::to_vec(&meta.last_log_id).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let membership =
            serde_json::to_vec(&meta.last_membership).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.store
            .apply_replicated(&[], &[(LAST_APPLIED, &last), (MEMBERSHIP, &membership)])
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        write_snapshot_file(&self.dir, meta, &snapshot)
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(read_snapshot_file(&self.dir)
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .map(|(meta, image)| Snapshot {
                meta,
                snapshot: Box::new(image),
            }))
    }
}
