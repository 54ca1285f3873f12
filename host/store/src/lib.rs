//! # haven-store
//!
//! Haven's control-plane state: plans, executions and their journals, the
//! replica catalog, tokens, the audit log. Embedded (redb) by default.
//!
//! The store changes only by [`Command`]s — plain, serializable data, applied
//! deterministically, each in one durable transaction and numbered by a global
//! `index`. That is what lets the HA service replicate the store: it ships the
//! same commands through consensus and applies them on every node in order.
//! Anything that must be the same on every node (time, ids) is inside the
//! command, never read during `apply`.
//!
//! Two shapes of state:
//! - **documents**: JSON values by `(collection, key)` with a version that
//!   every write bumps; writes may require an expected version (optimistic
//!   concurrency), so two writers cannot silently overwrite each other;
//! - **streams**: append-only sequences (an execution's journal, the audit
//!   log); each entry carries the SHA-256 of the previous one, so a stream is a
//!   tamper-evident hash chain that [`Store::verify_stream`] re-checks.

mod command;
mod error;
mod log;
mod replica;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;

pub use command::{Applied, Command, Outcome};
pub use error::StoreError;
pub use log::{CommandLog, CommitError, LocalLog, Role};
pub use replica::{check_commands_valid, image_replication_value};
pub use store::{entry_hash, ChainCheck, Store, StreamEntry, Versioned, GENESIS_HASH};
