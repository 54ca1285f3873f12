//! Errors of the state store.

use std::path::PathBuf;

/// What can go wrong reading or changing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("state store {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// redb failed (I/O, a full disk); the command was not applied.
    #[error("state store: {0}")]
    Database(String),
    /// A stored value is not what the reader expected.
    #[error(
        "state store: `{collection}/{key}` does not hold the expected kind of value: {message}"
    )]
    Decode {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// A write named an expected version that is not the current one.
    #[error("`{collection}/{key}` changed meanwhile: expected version {expected}, found {found}; reload and retry")]
    Conflict {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// The version the writer expected (0: absent).
        expected: u64,
        /// The version found (0: absent).
        found: u64,
    },
    /// A name is empty or contains a character the store reserves.
    #[error("invalid {what} {name:?}: names are non-empty and contain no NUL")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
}

macro_rules! database_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(e.to_string())
            }
        }
    )*};
}
database_error!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
