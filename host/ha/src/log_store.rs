//! The raft log and vote, in their own redb file. Every method returns only
//! once its change is durable (redb commits with fsync), as raft requires: a
//! vote or an acknowledged entry forgotten after a crash breaks safety.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// index → JSON of the entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// `vote`, `committed`, `last-purged` → JSON.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

fn io(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn logs_err(verb: ErrorVerb) -> impl Fn(String) -> StorageError {
    move |e| io(ErrorSubject::Logs, verb, e)
}

/// The redb-backed raft log (cheap to clone: readers share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (creating) the log in `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(STATE).map_err(|e| e.to_string())?;
        let value = table.get(key).map_err(|e| e.to_string())?;
        value
            .map(|v| serde_json::from_slice(v.value()).map_err(|e| e.to_string()))
            .transpose()
    }

    fn put_state<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(STATE)
            .map_err(|e| e.to_string())?
            .insert(key, bytes.as_slice())
            .map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())
    }

    /// Whether this node has never voted nor logged anything (safe to bootstrap).
    pub fn is_pristine(&self) -> Result<bool, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let log_empty = txn
            .open_table(LOG)
            .map_err(|e| e.to_string())?
            .first()
            .map_err(|e| e.to_string())?
            .is_none();
        Ok(log_empty && self.get_state::<Vote>("vote")?.is_none())
    }

    /// The last entry in the log, if any.
    pub fn last_entry(&self) -> Result<Option<Entry>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let last = table.last().map_err(|e| e.to_string())?;
        last.map(|(_, v)| serde_json::from_slice(v.value()).map_err(|e| e.to_string()))
            .transpose()
    }

    /// Appends entries and sets the vote in one durable transaction, with the
    /// raft core stopped: the forced failover of a two-node cluster.
    pub fn force_append(&self, entries: &[Entry], vote: &Vote) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            for entry in entries {
                let bytes = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
                log.insert(entry.log_id.index, bytes.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            let vote = serde_json::to_vec(vote).map_err(|e| e.to_string())?;
            txn.open_table(STATE)
                .map_err(|e| e.to_string())?
                .insert("vote", vote.as_slice())
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = || -> Result<Vec<Entry>, String> {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for item in table.range(range).map_err(|e| e.to_string())? {
                let (_, v) = item.map_err(|e| e.to_string())?;
                out.push(serde_json::from_slice(v.value()).map_err(|e| e.to_string())?);
            }
            Ok(out)
        };
        read().map_err(logs_err(ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self
            .get_state("last-purged")
            .map_err(logs_err(ErrorVerb::Read))?;
        let last = self
            .last_entry()
            .map_err(logs_err(ErrorVerb::Read))?
            .map(|e| e.log_id)
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_state("vote", vote)
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_state("vote")
            .map_err(|e| io(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_state("committed", &committed)
            .map_err(logs_err(ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_state::<Option<LogId>>("committed")
            .map_err(logs_err(ErrorVerb::Read))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let write = || -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
                    log.insert(entry.log_id.index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            txn.commit().map_err(|e| e.to_string())
        };
        let result = write();
        // The commit above fsynced: the entries are durable now.
        callback.log_io_completed(
            result
                .clone()
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result.map_err(logs_err(ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = || -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            txn.open_table(LOG)
                .map_err(|e| e.to_string())?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        };
        write().map_err(logs_err(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = || -> Result<(), String> {
            let bytes = serde_json::to_vec(&log_id).map_err(|e| e.to_string())?;
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            txn.open_table(STATE)
                .map_err(|e| e.to_string())?
                .insert("last-purged", bytes.as_slice())
                .map_err(|e| e.to_string())?;
            txn.open_table(LOG)
                .map_err(|e| e.to_string())?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        };
        write().map_err(logs_err(ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn log_and_vote_survive_reopen_and_truncate_and_purge_keep_the_state_right() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let mut log = LogStore::open(&path).unwrap();
            assert!(log.is_pristine().unwrap());
            let entries: Vec<Entry> = (1..=6).map(|i| entry(1, i)).collect();
            log.force_append(&entries, &Vote::new(1, 1)).unwrap();
            assert!(!log.is_pristine().unwrap());
            log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
            log.truncate(entry(1, 5).log_id).await.unwrap();
            log.purge(entry(1, 2).log_id).await.unwrap();
        }
        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 2).log_id));
        assert_eq!(state.last_log_id, Some(entry(1, 4).log_id));
        let kept: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(kept, [3, 4]);
        // Everything purged: the last log id is the purge point.
        log.purge(entry(1, 4).log_id).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entry(1, 4).log_id));
    }
}
