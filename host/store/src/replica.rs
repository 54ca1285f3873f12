//! What a replicated store needs beyond [`Store::apply_all`]: commands applied
//! together with the replication layer's own bookkeeping (in the same durable
//! transaction), and the whole store as one image for snapshots.
//!
//! The HA service keeps its "last applied log entry" and membership in the
//! replication table, written atomically with the commands of that entry, so a
//! crash can never leave the two disagreeing. Snapshots carry every table, the
//! replication table included, and installing one replaces the store whole.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::command::{Applied, Command};
use crate::error::StoreError;
use crate::store::{apply_in, check_commands, DOCS, HEADS, META, STREAMS};
use crate::Store;

/// Replication bookkeeping: key → opaque bytes owned by the replication layer.
const REPLICATION: TableDefinition<&str, &[u8]> = TableDefinition::new("replication");

/// Magic and version at the start of a store image.
const IMAGE_MAGIC: &[u8; 8] = b"HVNIMG01";

/// Table tags inside an image.
const TAG_META: u8 = 1;
const TAG_DOC: u8 = 2;
const TAG_STREAM: u8 = 3;
const TAG_HEAD: u8 = 4;
const TAG_REPLICATION: u8 = 5;

/// Checks that every command names valid collections, keys and streams, as
/// [`Store::apply_all`] does before applying; a replication layer calls it
/// before proposing, so that no replica ever fails to apply a command.
pub fn check_commands_valid(commands: &[Command]) -> Result<(), StoreError> {
    check_commands(commands)
}

/// A value of the replication table as recorded in `image` (from
/// [`Store::export_image`]); `None` when absent or the image is malformed.
pub fn image_replication_value(image: &[u8], key: &str) -> Option<Vec<u8>> {
    parse_image(image)
        .ok()?
        .into_iter()
        .find(|(tag, fields)| {
            *tag == TAG_REPLICATION && fields.len() == 2 && fields[0] == key.as_bytes()
        })
        .map(|(_, fields)| fields[1].to_vec())
}

impl Store {
    /// Applies `commands` (possibly none) and writes `bookkeeping` entries to
    /// the replication table, in one durable transaction: all or none.
    pub fn apply_replicated(
        &self,
        commands: &[Command],
        bookkeeping: &[(&str, &[u8])],
    ) -> Result<Vec<Applied>, StoreError> {
        check_commands(commands)?;
        let txn = self.db.begin_write()?;
        let results = apply_in(&txn, commands)?;
        {
            let mut table = txn.open_table(REPLICATION)?;
            for (key, value) in bookkeeping {
                table.insert(*key, *value)?;
            }
        }
        txn.commit()?;
        Ok(results)
    }

    /// A value of the replication table.
    pub fn replication_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(REPLICATION) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// The whole store (every table) as one self-contained image, read from
    /// one consistent snapshot.
    pub fn export_image(&self) -> Result<Vec<u8>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = IMAGE_MAGIC.to_vec();
        for item in txn.open_table(META)?.iter()? {
            let (k, v) = item?;
            record(
                &mut out,
                TAG_META,
                &[k.value().as_bytes(), &v.value().to_le_bytes()],
            );
        }
        for item in txn.open_table(DOCS)?.iter()? {
            let (k, v) = item?;
            let (c, key) = k.value();
            record(
                &mut out,
                TAG_DOC,
                &[c.as_bytes(), key.as_bytes(), v.value()],
            );
        }
        for item in txn.open_table(STREAMS)?.iter()? {
            let (k, v) = item?;
            let (s, seq) = k.value();
            record(
                &mut out,
                TAG_STREAM,
                &[s.as_bytes(), &seq.to_le_bytes(), v.value()],
            );
        }
        for item in txn.open_table(HEADS)?.iter()? {
            let (k, v) = item?;
            record(&mut out, TAG_HEAD, &[k.value().as_bytes(), v.value()]);
        }
        match txn.open_table(REPLICATION) {
            Ok(table) => {
                for item in table.iter()? {
                    let (k, v) = item?;
                    record(
                        &mut out,
                        TAG_REPLICATION,
                        &[k.value().as_bytes(), v.value()],
                    );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(out)
    }

    /// Replaces the whole store with `image` (from [`Store::export_image`]) in
    /// one durable transaction. A malformed image changes nothing.
    pub fn install_image(&self, image: &[u8]) -> Result<(), StoreError> {
        let records = parse_image(image)?;
        let txn = self.db.begin_write()?;
        txn.delete_table(META)?;
        txn.delete_table(DOCS)?;
        txn.delete_table(STREAMS)?;
        txn.delete_table(HEADS)?;
        txn.delete_table(REPLICATION)?;
        {
            let mut meta = txn.open_table(META)?;
            let mut docs = txn.open_table(DOCS)?;
            let mut streams = txn.open_table(STREAMS)?;
            let mut heads = txn.open_table(HEADS)?;
            let mut replication = txn.open_table(REPLICATION)?;
            for (tag, fields) in records {
                let text = |i: usize| {
                    std::str::from_utf8(fields[i]).map_err(|_| bad_image("a name is not UTF-8"))
                };
                let number = |i: usize| {
                    fields[i]
                        .try_into()
                        .map(u64::from_le_bytes)
                        .map_err(|_| bad_image("a number is not 8 bytes"))
                };
                match (tag, fields.len()) {
                    (TAG_META, 2) => {
                        meta.insert(text(0)?, number(1)?)?;
                    }
                    (TAG_DOC, 3) => {
                        docs.insert((text(0)?, text(1)?), fields[2])?;
                    }
                    (TAG_STREAM, 3) => {
                        streams.insert((text(0)?, number(1)?), fields[2])?;
                    }
                    (TAG_HEAD, 2) => {
                        heads.insert(text(0)?, fields[1])?;
                    }
                    (TAG_REPLICATION, 2) => {
                        replication.insert(text(0)?, fields[1])?;
                    }
                    _ => return Err(bad_image("unknown record")),
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn bad_image(why: &str) -> StoreError {
    StoreError::Database(format!("store image is malformed: {why}"))
}

/// Appends one record: tag, field count, then each field length-prefixed.
fn record(out: &mut Vec<u8>, tag: u8, fields: &[&[u8]]) {
    out.push(tag);
    out.push(fields.len() as u8);
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
}

type Record<'a> = (u8, Vec<&'a [u8]>);

fn parse_image(image: &[u8]) -> Result<Vec<Record<'_>>, StoreError> {
    let mut rest = image
        .strip_prefix(IMAGE_MAGIC.as_slice())
        .ok_or_else(|| bad_image("wrong header"))?;
    let mut records = Vec::new();
    while let [tag, count, tail @ ..] = rest {
        rest = tail;
        let mut fields = Vec::with_capacity(*count as usize);
        for _ in 0..*count {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| bad_image("truncated"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(bad_image("truncated"));
            }
            let (field, tail) = tail.split_at(len);
            fields.push(field);
            rest = tail;
        }
        records.push((*tag, fields));
    }
    if !rest.is_empty() {
        return Err(bad_image("trailing bytes"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_image_installs_into_an_identical_store_with_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a.redb")).unwrap();
        let b = Store::open(&dir.path().join("b.redb")).unwrap();
        b.apply(&Command::Put {
            collection: "stale".into(),
            key: "x".into(),
            value: json!(1),
            expected_version: None,
        })
        .unwrap();
        let commands = [
            Command::Put {
                collection: "plans".into(),
                key: "p1".into(),
                value: json!({"n": 1}),
                expected_version: None,
            },
            Command::Append {
                stream: "audit".into(),
                at_ms: 5,
                entry: json!("e"),
            },
        ];
        let applied = a
            .apply_replicated(&commands, &[("last-applied", b"7")])
            .unwrap();
        assert_eq!(applied.len(), 2);
        assert_eq!(a.replication_value("last-applied").unwrap().unwrap(), b"7");

        let image = a.export_image().unwrap();
        b.install_image(&image).unwrap();
        assert_eq!(b.applied_index().unwrap(), 2);
        assert!(b.get("stale", "x").unwrap().is_none(), "old state is gone");
        assert_eq!(b.get("plans", "p1").unwrap().unwrap().value["n"], 1);
        assert_eq!(b.stream("audit", 0).unwrap(), a.stream("audit", 0).unwrap());
        assert_eq!(b.replication_value("last-applied").unwrap().unwrap(), b"7");
        assert_eq!(
            image_replication_value(&image, "last-applied").unwrap(),
            b"7"
        );
        assert_eq!(b.export_image().unwrap(), image);

        // A damaged image is refused and changes nothing.
        assert!(b.install_image(&image[..image.len() - 3]).is_err());
        assert_eq!(b.applied_index().unwrap(), 2);
        assert!(a
            .apply_replicated(
                &[Command::Delete {
                    collection: String::new(),
                    key: "k".into(),
                    expected_version: None
                }],
                &[("last-applied", b"8")]
            )
            .is_err());
        assert_eq!(a.replication_value("last-applied").unwrap().unwrap(), b"7");
    }
}
