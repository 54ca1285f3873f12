//! Constructors for the contract's typed [`Error`], and its `Display`.
//!
//! Return the variant that lets Haven decide: `transient` is retried, `auth`
//! and `invalid-input` are shown to the administrator, `not-found` fails the
//! step, `unsupported` tells the plan author to pick another connector.

use std::time::Duration;

pub use crate::types::Error;
use crate::types::{InvalidInput, Transient};

/// Credentials were refused or have expired.
pub fn auth(message: impl Into<String>) -> Error {
    Error::Auth(message.into())
}

/// The named object does not exist.
pub fn not_found(what: impl Into<String>) -> Error {
    Error::NotFound(what.into())
}

/// An argument or setting is wrong; `field` names it (`endpoint`, `nics.0.network`).
pub fn invalid_input(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidInput(InvalidInput {
        field: field.into(),
        message: message.into(),
    })
}

/// The object's state forbids the operation.
pub fn conflict(message: impl Into<String>) -> Error {
    Error::Conflict(message.into())
}

/// A passing failure; `retry_after` when the system said how long to wait.
pub fn transient(message: impl Into<String>, retry_after: Option<Duration>) -> Error {
    Error::Transient(Transient {
        message: message.into(),
        retry_after_ms: retry_after.map(|d| d.as_millis().min(u64::MAX as u128) as u64),
    })
}

/// This connector, or the system behind it, cannot do `what`.
pub fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported(what.into())
}

/// The system behind the connector did not answer in time.
pub fn timeout(message: impl Into<String>) -> Error {
    Error::Timeout(message.into())
}

/// Anything else.
pub fn other(message: impl Into<String>) -> Error {
    Error::Other(message.into())
}

/// Describes an error in one line, as Haven shows it.
pub fn describe(error: &Error) -> String {
    match error {
        Error::Auth(m) => format!("authentication failed: {m}"),
        Error::NotFound(m) => format!("not found: {m}"),
        Error::InvalidInput(i) => format!("invalid input in `{}`: {}", i.field, i.message),
        Error::Conflict(m) => format!("conflict: {m}"),
        Error::Transient(t) => match t.retry_after_ms {
            Some(ms) => format!("transient failure (retry after {ms} ms): {}", t.message),
            None => format!("transient failure: {}", t.message),
        },
        Error::Unsupported(m) => format!("unsupported: {m}"),
        Error::Timeout(m) => format!("timed out: {m}"),
        Error::Other(m) => m.clone(),
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        other(format!("unexpected JSON from the system: {e}"))
    }
}

impl From<quick_xml::DeError> for Error {
    fn from(e: quick_xml::DeError) -> Self {
        other(format!("unexpected XML from the system: {e}"))
    }
}
