//! Reports come as JSON or as printable HTML: `?format=json|html`, or
//! `Accept: text/html` when no format is given.

use axum::http::{header, HeaderMap};
use serde::Deserialize;

use crate::error::ApiError;

/// The `format` query parameter of report endpoints.
#[derive(Debug, Deserialize)]
pub struct FormatQuery {
    /// `json` (default) or `html`.
    pub format: Option<String>,
}

impl FormatQuery {
    /// Whether the caller asked for HTML.
    pub fn wants_html(&self, headers: &HeaderMap) -> Result<bool, ApiError> {
        match self.format.as_deref() {
            Some("html") => Ok(true),
            Some("json") | None => Ok(headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/html"))),
            Some(other) => Err(ApiError::bad_request(format!(
                "format `{other}`: use `json` or `html`"
            ))
            .field("format")),
        }
    }
}
