//! `/tokens` (create, list, revoke) and `/audit` (read): admin only.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use haven_store::{Command, Outcome};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, AUDIT};
use crate::auth::{self, NewToken, Permission, TokenRecord, TOKENS};
use crate::error::{parse_json, ApiError};
use crate::ApiState;

/// A token as listed (no secret, no hash).
#[derive(Debug, Serialize)]
pub struct TokenSummary {
    /// Token id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: auth::Role,
    /// Plan sets in scope.
    pub plan_sets: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// When, Unix ms.
    pub created_at_ms: u64,
}

impl From<TokenRecord> for TokenSummary {
    fn from(r: TokenRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            role: r.role,
            plan_sets: r.plan_sets,
            created_by: r.created_by,
            created_at_ms: r.created_at_ms,
        }
    }
}

/// An audit log entry as listed.
#[derive(Debug, Serialize)]
pub struct AuditLine {
    /// Sequence number in the audit stream.
    pub seq: u64,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Hex SHA-256 chaining it to the previous entry.
    pub hash: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// `GET /audit` query.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// Only entries after this sequence number.
    pub after: Option<String>,
}

/// `POST /tokens`: creates a token; the answer holds its secret, shown once.
pub async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let mut target = "tokens".to_owned();
    let result = async {
        caller.require(Permission::Administer)?;
        let new: NewToken = parse_json(&body)?;
        let created = auth::create_token(&*state.log(), new, &caller.who(), state.now_ms()).await?;
        target = format!("tokens/{}", created.record.id);
        Ok((StatusCode::CREATED, Json(created)).into_response())
    }
    .await;
    state.audit(&caller, "token.create", &target, result).await
}

/// `GET /tokens`
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenSummary>>, ApiError> {
    let caller = state.caller(&headers)?;
    caller.require(Permission::Administer)?;
    let mut out = Vec::new();
    for (id, raw) in state.log().store().list(TOKENS)? {
        let record: TokenRecord = serde_json::from_value(raw.value)
            .map_err(|e| ApiError::internal(format!("tokens/{id}: {e}")))?;
        out.push(record.into());
    }
    Ok(Json(out))
}

/// `DELETE /tokens/{id}`: revokes a token at once.
pub async fn revoke(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = state.caller(&headers)?;
    let result = async {
        caller.require(Permission::Administer)?;
        let Some(current) = state.log().store().get(TOKENS, &id)? else {
            return Err(ApiError::not_found(format!(
                "no token `{id}`; GET /api/v1/tokens lists them"
            )));
        };
        let applied = state
            .log()
            .commit(vec![Command::Delete {
                collection: TOKENS.into(),
                key: id.clone(),
                expected_version: Some(current.version),
            }])
            .await?;
        if applied
            .iter()
            .any(|a| matches!(a.outcome, Outcome::Conflict { .. }))
        {
            return Err(ApiError::conflict(format!(
                "token `{id}` changed meanwhile; retry"
            )));
        }
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    state
        .audit(&caller, "token.revoke", &format!("tokens/{id}"), result)
        .await
}

/// `GET /audit?after=N`: the audit log.
pub async fn audit_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditLine>>, ApiError> {
    let caller = state.caller(&headers)?;
    caller.require(Permission::Administer)?;
    let after = match query.after {
        Some(a) => a.parse().map_err(|_| {
            ApiError::bad_request(format!("after `{a}` is not a sequence number")).field("after")
        })?,
        None => 0,
    };
    let mut out = Vec::new();
    for e in state.log().store().stream(AUDIT, after)? {
        let entry: AuditEntry = serde_json::from_value(e.entry)
            .map_err(|err| ApiError::internal(format!("audit entry {}: {err}", e.seq)))?;
        out.push(AuditLine {
            seq: e.seq,
            at_ms: e.at_ms,
            hash: e.hash,
            entry,
        });
    }
    Ok(Json(out))
}
