//! The commands that change the store, and what applying one produced.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A change to the store. Deterministic: everything `apply` needs is inside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Command {
    /// Writes a document. With `expected_version`, only if the current
    /// version is that (0: the document must not exist).
    Put {
        /// Collection (`plans`, `executions`, `tokens`, ...).
        collection: String,
        /// Key within the collection.
        key: String,
        /// The new value.
        value: Value,
        /// Required current version, for optimistic concurrency.
        expected_version: Option<u64>,
    },
    /// Deletes a document, with the same optional version check.
    Delete {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Required current version.
        expected_version: Option<u64>,
    },
    /// Appends an entry to a stream (a journal, the audit log).
    Append {
        /// Stream name (`journal/<execution>`, `audit`).
        stream: String,
        /// When it happened, Unix milliseconds, set by whoever issued the
        /// command (so every replica stores the same time).
        at_ms: u64,
        /// The entry.
        entry: Value,
    },
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Global position of the command in the store's history (1, 2, ...).
    pub index: u64,
    /// What it did.
    pub outcome: Outcome,
}

/// What a command did. A version conflict is an outcome, not a failure: the
/// command is part of the history either way, so every replica agrees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A document now has this version (0 after a delete).
    Version(u64),
    /// A stream entry got this sequence number and hash.
    Appended {
        /// Sequence number in the stream (1, 2, ...).
        seq: u64,
        /// Hex SHA-256 of the entry (chained to the previous one).
        hash: String,
    },
    /// The expected version did not match; nothing changed.
    Conflict {
        /// What the command expected.
        expected: u64,
        /// What was there.
        found: u64,
    },
}
