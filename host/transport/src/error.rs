//! Typed errors of the transport.

use serde::{Deserialize, Serialize};

/// Machine-readable class of a [`TransportError`]; also carried on the wire when the
/// target refuses or aborts a pass, so the source can report the target's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Local or remote I/O failure.
    Io,
    /// TLS handshake or certificate failure.
    Tls,
    /// The peer broke the protocol (bad frame, bad length, unexpected message).
    Protocol,
    /// The stream ended in the middle of a pass.
    Truncated,
    /// A block's content did not match its announced digest.
    DigestMismatch,
    /// The source changed size during or between passes.
    SourceResized,
    /// The target's storage is full.
    StorageFull,
    /// Another pass of the same replica is running.
    ReplicaBusy,
    /// The source could not be read or decoded.
    Source,
    /// The repository is damaged or an operation on it failed.
    Repository,
    /// Every gateway failed.
    Unavailable,
}

/// Every failure of the transport, typed so callers can react to each case.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An I/O operation failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong peer, unknown CA, pin mismatch...).
    #[error("TLS handshake with {peer} failed: {message}")]
    Tls {
        /// Address of the peer.
        peer: String,
        /// The rustls reason.
        message: String,
    },
    /// Certificates or keys could not be loaded or generated.
    #[error("TLS configuration error: {0}")]
    TlsConfig(String),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The stream ended before the pass finished.
    #[error("stream truncated: {0}")]
    Truncated(String),
    /// A block failed its digest check.
    #[error("block {block} failed its digest check (corrupt data)")]
    DigestMismatch {
        /// Index of the 4 KiB block.
        block: u64,
    },
    /// The source changed size.
    #[error("source size changed {when}: expected {expected} bytes, found {actual}")]
    SourceResized {
        /// Size the pass was started with (or the replica's size).
        expected: u64,
        /// Size found.
        actual: u64,
        /// "during the pass" or "since the last pass".
        when: &'static str,
    },
    /// The target ran out of space.
    #[error("target storage is full: {0}")]
    StorageFull(String),
    /// The replica is locked by another pass.
    #[error("replica {0} is busy: another pass is running")]
    ReplicaBusy(String),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The repository is damaged or an operation on it is invalid.
    #[error("repository error: {0}")]
    Repository(String),
    /// The target reported an error.
    #[error("target reported {kind:?}: {message}")]
    Remote {
        /// The target's error class.
        kind: ErrorKind,
        /// The target's message.
        message: String,
    },
    /// No gateway could complete the pass.
    #[error("all gateways failed; last error: {0}")]
    AllGatewaysFailed(Box<TransportError>),
}

impl TransportError {
    /// Wraps an I/O error with context; ENOSPC/EDQUOT become [`TransportError::StorageFull`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                TransportError::StorageFull(format!("{context}: {source}"))
            }
            _ => TransportError::Io { context, source },
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransportError::Io { .. } => ErrorKind::Io,
            TransportError::Tls { .. } | TransportError::TlsConfig(_) => ErrorKind::Tls,
            TransportError::Protocol(_) => ErrorKind::Protocol,
            TransportError::Truncated(_) => ErrorKind::Truncated,
            TransportError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            TransportError::SourceResized { .. } => ErrorKind::SourceResized,
            TransportError::StorageFull(_) => ErrorKind::StorageFull,
            TransportError::ReplicaBusy(_) => ErrorKind::ReplicaBusy,
            TransportError::Source(_) => ErrorKind::Source,
            TransportError::Repository(_) => ErrorKind::Repository,
            TransportError::Remote { kind, .. } => *kind,
            TransportError::AllGatewaysFailed(_) => ErrorKind::Unavailable,
        }
    }

    /// True when retrying on another connection may succeed (network loss, busy replica).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Io | ErrorKind::Truncated | ErrorKind::ReplicaBusy
        )
    }
}

/// Result alias of the crate.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
