//! API errors: a status and `{"error": {"code", "message", "field"?}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use haven_engine::service::OrchestratorError;
use haven_plan::PlanError;
use haven_store::{CommitError, StoreError};
use serde::Serialize;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`invalid-body`, `not-found`, ...).
    pub code: &'static str,
    /// One line for people: what is wrong and how to fix it.
    pub message: String,
    /// The request field at fault (`mode`, `groups.1.vms.0`), when there is one.
    pub field: Option<String>,
    /// Where to retry, for 503 answers (seconds).
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 403: the caller's role or scope does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 401: no valid token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 422: well-formed but invalid content.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 409: the state does not allow this now.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 412: `If-Match` named another version.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "version-mismatch", message)
    }

    /// 503: try again (no primary known, the cluster did not commit).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(1);
        e
    }

    /// 500: a fault on this side (the store failed); logged.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("internal error: {message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        })
        .expect("errors serialize");
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => Self::precondition(e.to_string()),
            StoreError::InvalidName { .. } => Self::bad_request(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => e.into(),
            CommitError::NotPrimary { .. } | CommitError::Unavailable(_) => {
                Self::unavailable(e.to_string())
            }
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(e: PlanError) -> Self {
        let field = match &e {
            PlanError::Parse { path, .. } => path.clone(),
            PlanError::Invalid { issues } => {
                issues.first().map(|i| i.path.clone()).unwrap_or_default()
            }
            PlanError::Unresolved { path, .. } | PlanError::NoTestNetwork { path } => path.clone(),
        };
        Self::invalid(e.to_string()).field(field)
    }
}

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::PlanNotFound(_) | OrchestratorError::ExecutionNotFound(_) => {
                Self::not_found(e.to_string())
            }
            OrchestratorError::Plan(e) => e.into(),
            OrchestratorError::Resolve(ref r) => {
                let field = r.path.clone();
                Self::invalid(e.to_string()).field(field)
            }
            OrchestratorError::Finished(_) | OrchestratorError::NotAwaitingApproval { .. } => {
                Self::conflict(e.to_string())
            }
            OrchestratorError::NotPrimary { .. } | OrchestratorError::Unavailable(_) => {
                Self::unavailable(e.to_string())
            }
            OrchestratorError::Store(e) => e.into(),
            OrchestratorError::Executor(e) => Self::conflict(e.to_string()),
        }
    }
}

/// Turns the errors axum answers by itself (a body over the size limit, a
/// malformed query string) into this API's JSON errors; the API's own
/// errors pass through.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    };
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

/// Parses a JSON body, naming the field at fault in the error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Dotted like the plan crate's paths: `groups.0.parallelism`.
        let field = e.path().to_string().replace('[', ".").replace(']', "");
        let inner = e.into_inner();
        let field = if field == "." {
            missing_field(&inner.to_string()).unwrap_or_default()
        } else {
            field
        };
        ApiError::bad_request(format!("invalid JSON body: {inner}")).field(field)
    })
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}
