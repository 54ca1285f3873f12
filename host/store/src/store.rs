//! The redb-backed store.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::command::{Applied, Command, Outcome};
use crate::error::StoreError;

/// `applied_index` → the index of the last applied command.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `(collection, key)` → version (8 bytes, little-endian) followed by JSON.
pub(crate) const DOCS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("docs");
/// `(stream, seq)` → JSON of a [`StreamEntry`].
pub(crate) const STREAMS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("streams");
/// `stream` → last seq (8 bytes, little-endian) followed by the last hash (hex).
pub(crate) const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("stream_heads");

pub(crate) const APPLIED_INDEX: &str = "applied_index";
/// The `prev_hash` of a stream's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A document with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Bumped by every write; 1 for a new document.
    pub version: u64,
    /// The document.
    pub value: T,
}

/// One entry of a stream, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// Position in the stream (1, 2, ...).
    pub seq: u64,
    /// When it happened, Unix milliseconds.
    pub at_ms: u64,
    /// The entry.
    pub entry: Value,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash`, `seq`, `at_ms` and the entry's JSON.
    pub hash: String,
}

/// Result of re-checking a stream's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ChainCheck {
    /// Every entry's hash is right and links to the previous one.
    Intact {
        /// Number of entries.
        entries: u64,
        /// Hash of the last entry (zeros when empty).
        head: String,
    },
    /// The chain breaks at `seq`.
    Broken {
        /// First entry that does not verify.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The hash of a stream entry: SHA-256 over the previous entry's hash, the
/// sequence number, the time and the entry's JSON text (hex).
pub fn entry_hash(prev_hash: &str, seq: u64, at_ms: u64, entry_json: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(format!("\n{seq}\n{at_ms}\n").as_bytes());
    hasher.update(entry_json.as_bytes());
    hex::encode(hasher.finalize())
}

fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.contains('\0') {
        return Err(StoreError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn encode_doc(version: u64, value: &Value) -> Vec<u8> {
    let mut bytes = version.to_le_bytes().to_vec();
    bytes.extend(serde_json::to_vec(value).expect("JSON values always serialize"));
    bytes
}

fn decode_doc(collection: &str, key: &str, bytes: &[u8]) -> Result<Versioned<Value>, StoreError> {
    let corrupt = |message: String| StoreError::Decode {
        collection: collection.into(),
        key: key.into(),
        message,
    };
    let (version, json) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("record shorter than its header".into()))?;
    Ok(Versioned {
        version: u64::from_le_bytes(*version),
        value: serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?,
    })
}

fn decode_head(bytes: &[u8]) -> (u64, String) {
    match bytes.split_first_chunk::<8>() {
        Some((seq, hash)) => (
            u64::from_le_bytes(*seq),
            String::from_utf8_lossy(hash).into_owned(),
        ),
        None => (0, GENESIS_HASH.to_owned()),
    }
}

/// The version of a document (0: absent).
fn current_version(
    docs: &redb::Table<(&str, &str), &[u8]>,
    collection: &str,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(docs
        .get((collection, key))?
        .map(|v| decode_doc(collection, key, v.value()))
        .transpose()?
        .map_or(0, |d| d.version))
}

/// The outcome of a write whose expected version is not the current one.
fn conflict(expected: Option<u64>, found: u64) -> Option<Outcome> {
    expected
        .filter(|&e| e != found)
        .map(|expected| Outcome::Conflict { expected, found })
}

/// Checks the names every command uses (before anything is applied).
pub(crate) fn check_commands(commands: &[Command]) -> Result<(), StoreError> {
    for command in commands {
        match command {
            Command::Put {
                collection, key, ..
            }
            | Command::Delete {
                collection, key, ..
            } => {
                check_name("collection", collection)?;
                check_name("key", key)?;
            }
            Command::Append { stream, .. } => check_name("stream", stream)?,
        }
    }
    Ok(())
}

/// Applies `commands` inside `txn` (names already checked); the caller commits.
pub(crate) fn apply_in(
    txn: &redb::WriteTransaction,
    commands: &[Command],
) -> Result<Vec<Applied>, StoreError> {
    let mut results = Vec::with_capacity(commands.len());
    {
        let mut meta = txn.open_table(META)?;
        let mut docs = txn.open_table(DOCS)?;
        let mut streams = txn.open_table(STREAMS)?;
        let mut heads = txn.open_table(HEADS)?;
        let mut index = meta.get(APPLIED_INDEX)?.map_or(0, |v| v.value());
        for command in commands {
            index += 1;
            let outcome = match command {
                Command::Put {
                    collection,
                    key,
                    value,
                    expected_version,
                } => {
                    let current = current_version(&docs, collection, key)?;
                    match conflict(*expected_version, current) {
                        Some(conflict) => conflict,
                        None => {
                            let record = encode_doc(current + 1, value);
                            docs.insert((collection.as_str(), key.as_str()), record.as_slice())?;
                            Outcome::Version(current + 1)
                        }
                    }
                }
                Command::Delete {
                    collection,
                    key,
                    expected_version,
                } => {
                    let current = current_version(&docs, collection, key)?;
                    match conflict(*expected_version, current) {
                        Some(conflict) => conflict,
                        None => {
                            docs.remove((collection.as_str(), key.as_str()))?;
                            Outcome::Version(0)
                        }
                    }
                }
                Command::Append {
                    stream,
                    at_ms,
                    entry,
                } => {
                    let (last_seq, prev_hash) = heads
                        .get(stream.as_str())?
                        .map_or((0, GENESIS_HASH.to_owned()), |v| decode_head(v.value()));
                    let seq = last_seq + 1;
                    let json = serde_json::to_string(entry).expect("JSON values always serialize");
                    let hash = entry_hash(&prev_hash, seq, *at_ms, &json);
                    let stored = StreamEntry {
                        seq,
                        at_ms: *at_ms,
                        entry: entry.clone(),
                        prev_hash,
                        hash: hash.clone(),
                    };
                    let bytes = serde_json::to_vec(&stored).expect("entries always serialize");
                    streams.insert((stream.as_str(), seq), bytes.as_slice())?;
                    let mut head = seq.to_le_bytes().to_vec();
                    head.extend_from_slice(hash.as_bytes());
                    heads.insert(stream.as_str(), head.as_slice())?;
                    Outcome::Appended { seq, hash }
                }
            };
            results.push(Applied { index, outcome });
        }
        meta.insert(APPLIED_INDEX, index)?;
    }
    Ok(results)
}

/// Haven's state store.
pub struct Store {
    pub(crate) db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating) the store in the file `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        }
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(DOCS)?;
        txn.open_table(STREAMS)?;
        txn.open_table(HEADS)?;
        txn.commit()?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies one command in one durable transaction.
    pub fn apply(&self, command: &Command) -> Result<Applied, StoreError> {
        Ok(self
            .apply_all(std::slice::from_ref(command))?
            .pop()
            .expect("one command, one result"))
    }

    /// Applies commands in order, in one durable transaction: all or none.
    pub fn apply_all(&self, commands: &[Command]) -> Result<Vec<Applied>, StoreError> {
        check_commands(commands)?;
        let txn = self.db.begin_write()?;
        let results = apply_in(&txn, commands)?;
        txn.commit()?;
        Ok(results)
    }

    /// The index of the last applied command (0 for a new store).
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(META)?
            .get(APPLIED_INDEX)?
            .map_or(0, |v| v.value()))
    }

    /// A document.
    pub fn get(&self, collection: &str, key: &str) -> Result<Option<Versioned<Value>>, StoreError> {
        let txn = self.db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        let found = docs.get((collection, key))?;
        found
            .map(|v| decode_doc(collection, key, v.value()))
            .transpose()
    }

    /// A document, decoded as `T`.
    pub fn get_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        self.get(collection, key)?
            .map(|d| {
                Ok(Versioned {
                    version: d.version,
                    value: serde_json::from_value(d.value).map_err(|e| StoreError::Decode {
                        collection: collection.into(),
                        key: key.into(),
                        message: e.to_string(),
                    })?,
                })
            })
            .transpose()
    }

    /// Every document of a collection, by key.
    pub fn list(&self, collection: &str) -> Result<Vec<(String, Versioned<Value>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        let mut out = Vec::new();
        for item in docs.range((collection, "")..)? {
            let (k, v) = item?;
            let (c, key) = k.value();
            if c != collection {
                break;
            }
            out.push((key.to_owned(), decode_doc(collection, key, v.value())?));
        }
        Ok(out)
    }

    /// Entries of a stream after sequence number `after` (0: from the start).
    pub fn stream(&self, stream: &str, after: u64) -> Result<Vec<StreamEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STREAMS)?;
        let mut out = Vec::new();
        for item in table.range((stream, after.saturating_add(1))..=(stream, u64::MAX))? {
            let (_, v) = item?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Decode {
                    collection: "streams".into(),
                    key: stream.into(),
                    message: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Re-checks a stream's hash chain from its first entry.
    pub fn verify_stream(&self, stream: &str) -> Result<ChainCheck, StoreError> {
        let mut prev = GENESIS_HASH.to_owned();
        let mut expected_seq = 1;
        for entry in self.stream(stream, 0)? {
            let broken = |reason: &str| ChainCheck::Broken {
                seq: entry.seq,
                reason: reason.to_owned(),
            };
            if entry.seq != expected_seq {
                return Ok(broken("sequence gap"));
            }
            if entry.prev_hash != prev {
                return Ok(broken("does not link to the previous entry"));
            }
            let json = serde_json::to_string(&entry.entry).expect("JSON values always serialize");
            if entry_hash(&entry.prev_hash, entry.seq, entry.at_ms, &json) != entry.hash {
                return Ok(broken("content does not match its hash"));
            }
            prev = entry.hash;
            expected_seq += 1;
        }
        Ok(ChainCheck::Intact {
            entries: expected_seq - 1,
            head: prev,
        })
    }

    /// Overwrites a stored stream entry as is (tests of tamper evidence).
    #[cfg(test)]
    pub(crate) fn tamper(
        &self,
        stream: &str,
        seq: u64,
        entry: &StreamEntry,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(STREAMS)?
            .insert((stream, seq), serde_json::to_vec(entry).unwrap().as_slice())?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        (dir, store)
    }

    fn put(key: &str, value: Value, expected: Option<u64>) -> Command {
        Command::Put {
            collection: "plans".into(),
            key: key.into(),
            value,
            expected_version: expected,
        }
    }

    #[test]
    fn documents_are_versioned_with_optimistic_concurrency() {
        let (_dir, store) = store();
        assert_eq!(
            store
                .apply(&put("p1", json!({"name": "a"}), Some(0)))
                .unwrap()
                .outcome,
            Outcome::Version(1)
        );
        assert_eq!(
            store
                .apply(&put("p1", json!({"name": "b"}), Some(1)))
                .unwrap()
                .outcome,
            Outcome::Version(2)
        );
        // A stale writer is refused and changes nothing.
        let stale = store
            .apply(&put("p1", json!({"name": "c"}), Some(1)))
            .unwrap();
        assert_eq!(
            stale.outcome,
            Outcome::Conflict {
                expected: 1,
                found: 2
            }
        );
        assert_eq!(
            store.get("plans", "p1").unwrap().unwrap().value["name"],
            "b"
        );
        assert_eq!(
            store.applied_index().unwrap(),
            3,
            "a conflict is still part of the history"
        );
        store.apply(&put("p2", json!(2), None)).unwrap();
        store
            .apply(&Command::Put {
                collection: "plansx".into(),
                key: "p0".into(),
                value: json!(0),
                expected_version: None,
            })
            .unwrap();
        let keys: Vec<_> = store
            .list("plans")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["p1", "p2"]);
        let deleted = store
            .apply(&Command::Delete {
                collection: "plans".into(),
                key: "p2".into(),
                expected_version: Some(1),
            })
            .unwrap();
        assert_eq!(deleted.outcome, Outcome::Version(0));
        assert!(store.get("plans", "p2").unwrap().is_none());
        assert!(matches!(
            store.apply(&put("", json!(1), None)),
            Err(StoreError::InvalidName { .. })
        ));
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            let bad = vec![put("a", json!(1), None), put("", json!(2), None)];
            assert!(store.apply_all(&bad).is_err());
            assert!(
                store.get("plans", "a").unwrap().is_none(),
                "a rejected batch applies nothing"
            );
            store
                .apply_all(&[put("a", json!(1), None), put("b", json!(2), None)])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.applied_index().unwrap(), 2);
        assert_eq!(store.get_as::<u32>("plans", "b").unwrap().unwrap().value, 2);
        assert!(matches!(
            store.get_as::<String>("plans", "b"),
            Err(StoreError::Decode { .. })
        ));
    }

    #[test]
    fn streams_are_tamper_evident_hash_chains() {
        let (_dir, store) = store();
        for i in 0..5 {
            let applied = store
                .apply(&Command::Append {
                    stream: "journal/e1".into(),
                    at_ms: 1_000 + i,
                    entry: json!({"step": i, "state": "done"}),
                })
                .unwrap();
            assert!(matches!(applied.outcome, Outcome::Appended { seq, .. } if seq == i + 1));
        }
        store
            .apply(&Command::Append {
                stream: "audit".into(),
                at_ms: 1,
                entry: json!("other stream"),
            })
            .unwrap();
        let entries = store.stream("journal/e1", 0).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(store.stream("journal/e1", 3).unwrap().len(), 2);
        let head = match store.verify_stream("journal/e1").unwrap() {
            ChainCheck::Intact { entries, head } => {
                assert_eq!(entries, 5);
                head
            }
            broken => panic!("{broken:?}"),
        };
        assert_eq!(head, entries[4].hash);

        let mut forged = entries[2].clone();
        forged.entry = json!({"step": 2, "state": "skipped"});
        store.tamper("journal/e1", 3, &forged).unwrap();
        assert_eq!(
            store.verify_stream("journal/e1").unwrap(),
            ChainCheck::Broken {
                seq: 3,
                reason: "content does not match its hash".into()
            }
        );
        // Re-hashing the forged entry still breaks the link of the next one.
        forged.hash = entry_hash(
            &forged.prev_hash,
            3,
            forged.at_ms,
            &forged.entry.to_string(),
        );
        store.tamper("journal/e1", 3, &forged).unwrap();
        assert!(matches!(
            store.verify_stream("journal/e1").unwrap(),
            ChainCheck::Broken { seq: 4, .. }
        ));
    }
}
