//! The lab's typed errors, and how each one is answered over HTTP.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The named object (VM, task, snapshot, site, network) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The object's state forbids the operation (already powered on, busy, name taken).
    #[error("{0}")]
    Conflict(String),
    /// The request carries a fencing token lower than one already seen: it
    /// comes from a deposed primary and must not act.
    #[error(
        "fenced: token {presented} is older than {highest}, already seen from a newer primary"
    )]
    Fenced {
        /// The request's token.
        presented: u64,
        /// The highest token seen.
        highest: u64,
    },
    /// A request field is wrong; `field` is its dotted path (`nics.0.network`).
    #[error("invalid `{field}`: {message}")]
    InvalidInput {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The bearer token is missing or wrong.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The site's hosts are down (injected host loss); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A file of the lab directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The persisted state file is unreadable.
    #[error("state file {}: {message}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl LabError {
    /// A [`LabError::InvalidInput`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A [`LabError::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The machine-readable code of the error, as in [`ErrorBody`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Fenced { .. } => "fenced",
            Self::InvalidInput { .. } => "invalid_input",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable(_) => "unavailable",
            Self::Io { .. } | Self::State { .. } => "internal",
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotFound(_) => 404,
            Self::Conflict(_) | Self::Fenced { .. } => 409,
            Self::InvalidInput { .. } => 400,
            Self::Unauthorized => 401,
            Self::Unavailable(_) => 503,
            Self::Io { .. } | Self::State { .. } => 500,
        }
    }

    /// The error as the API's JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ApiError {
                code: self.code().to_owned(),
                message: self.to_string(),
                field: match self {
                    Self::InvalidInput { field, .. } => Some(field.clone()),
                    _ => None,
                },
            },
        }
    }
}

/// The body of every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

/// One error: a code (`not_found`, `conflict`, `invalid_input`, `unauthorized`,
/// `unavailable`, `internal`; for failed tasks also `injected`, `cancelled`),
/// a message for people, and the field at fault for `invalid_input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The request field at fault (`invalid_input` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }
}

impl From<&LabError> for ApiError {
    fn from(e: &LabError) -> Self {
        e.body().error
    }
}

/// `Result` with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;
