//! Services the host gives every plugin instance: log, progress, secrets and a
//! private key-value store.
//!
//! In a component these call the `haven:host` imports; in a native `cargo test`
//! they use the [`crate::harness`]'s in-memory state.

use crate::error::invalid_input;
use crate::Result;

pub use crate::bindings::base::haven::host::kv::KvError;
pub use crate::bindings::base::haven::host::log::Level;

#[cfg(target_arch = "wasm32")]
use crate::bindings::base::haven::host as imports;
#[cfg(not(target_arch = "wasm32"))]
use crate::harness::imports;

/// Writes a log record into Haven's log, tagged with this instance.
pub fn log(level: Level, message: &str) {
    imports::log::log(level, message);
}

/// Logs at `info`.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at `warn`.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at `debug`.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Reports progress of the call in flight (`total` 0 when unknown).
pub fn progress(completed: u64, total: u64, message: &str) {
    imports::progress::report(completed, total, message);
}

/// Reads a secret bound to this instance. The error names the secret so that
/// the administrator knows what to bind.
pub fn secret(name: &str) -> Result<String> {
    use imports::secrets::SecretError;
    imports::secrets::get(name).map_err(|e| match e {
        SecretError::Undeclared(n) => invalid_input(
            format!("secrets.{n}"),
            "the plugin's manifest does not declare this secret",
        ),
        SecretError::Unbound(n) => invalid_input(
            format!("secrets.{n}"),
            "no value is bound for this instance; bind it in the instance configuration",
        ),
    })
}

/// The instance's private, durable key-value store.
pub mod kv {
    use super::{imports, KvError};
    use crate::error::other;
    use crate::Result;

    fn map(e: KvError) -> crate::Error {
        match e {
            KvError::TooLarge(m) | KvError::QuotaExceeded(m) | KvError::Io(m) => {
                other(format!("key-value store: {m}"))
            }
        }
    }

    /// The value under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        imports::kv::get(key)
    }

    /// The value under `key` as UTF-8 text.
    pub fn get_string(key: &str) -> Option<String> {
        get(key).and_then(|v| String::from_utf8(v).ok())
    }

    /// Stores `value` under `key`, durably.
    pub fn set(key: &str, value: &[u8]) -> Result<()> {
        imports::kv::set(key, value).map_err(map)
    }

    /// Removes `key`.
    pub fn delete(key: &str) -> Result<()> {
        imports::kv::delete(key).map_err(map)
    }

    /// Keys starting with `prefix`, sorted.
    pub fn list_keys(prefix: &str) -> Vec<String> {
        imports::kv::list_keys(prefix)
    }
}
