//! `/plans`: plans as code through the API — list, read (JSON or TOML),
//! write with `If-Match` versions, delete, diff, validate, and the
//! plan-definition report.
//!
//! The stored form is the canonical TOML ([`PlanRecord`]), so what `GET`
//! returns as TOML is exactly what `haven plan fmt` would write. A plan with
//! verification errors is refused (422, naming the field); warnings are
//! returned with the write.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use haven_engine::report;
use haven_engine::service::{PlanRecord, PLANS};
use haven_plan::{is_valid_id, Issue, Plan};
use haven_store::{Command, Outcome, Versioned};
use serde::Serialize;

use crate::auth::{Caller, Permission};
use crate::error::{parse_json, ApiError};
use crate::format::FormatQuery;
use crate::readiness::{is_verified, last_report};
use crate::ApiState;

/// A plan in a listing.
#[derive(Debug, Serialize)]
pub struct PlanSummary {
    /// Plan id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Plan set.
    pub plan_set: String,
    /// Document version (for `If-Match`).
    pub version: u64,
    /// Content digest.
    pub digest: String,
    /// Whether the last readiness check passed on exactly this content.
    pub verified: bool,
    /// Who wrote this version.
    pub updated_by: String,
    /// When, Unix ms.
    pub updated_at_ms: u64,
}

/// A plan with its text and model.
#[derive(Debug, Serialize)]
pub struct PlanDocument {
    /// Summary fields.
    #[serde(flatten)]
    pub summary: PlanSummary,
    /// Canonical TOML.
    pub toml: String,
    /// The model, as JSON.
    pub plan: Plan,
}

/// What a write answers.
#[derive(Debug, Serialize)]
pub struct PlanWritten {
    /// Plan id.
    pub id: String,
    /// The new version.
    pub version: u64,
    /// Content digest.
    pub digest: String,
    /// Verification warnings (errors refuse the write).
    pub warnings: Vec<Issue>,
}

/// The validation result.
#[derive(Debug, Serialize)]
pub struct Validation {
    /// No error-severity issue.
    pub ok: bool,
    /// Every issue, with its field path.
    pub issues: Vec<Issue>,
    /// The canonical TOML of the plan.
    pub toml: String,
}

/// A plan diff.
#[derive(Debug, Serialize)]
pub struct DiffAnswer {
    /// Version compared against.
    pub version: u64,
    /// Structured changes.
    pub changes: haven_plan::PlanDiff,
    /// The changes as text (what `haven plan diff` prints).
    pub text: String,
}

fn summary(
    state: &ApiState,
    id: &str,
    doc: &Versioned<PlanRecord>,
) -> Result<PlanSummary, ApiError> {
    let readiness = last_report(state.log().store(), id)?;
    Ok(PlanSummary {
        id: id.to_owned(),
        name: doc.value.name.clone(),
        plan_set: doc.value.plan_set.clone(),
        version: doc.version,
        digest: doc.value.digest.clone(),
        verified: is_verified(readiness.as_ref(), doc.version),
        updated_by: doc.value.updated_by.clone(),
        updated_at_ms: doc.value.updated_at_ms,
    })
}

/// Loads a plan the caller may read, or 404 (a plan outside the caller's
/// scope is not revealed).
pub fn load(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Versioned<PlanRecord>, ApiError> {
    state
        .log()
        .store()
        .get_as::<PlanRecord>(PLANS, id)?
        .filter(|doc| caller.in_scope(&doc.value.plan_set))
        .ok_or_else(|| ApiError::not_found(format!("no plan `{id}`; GET /api/v1/plans lists them")))
}

/// Reads a plan from a request body: TOML (`application/toml`, `text/*`) or
/// the JSON model (`application/json`).
pub fn parse_plan(headers: &HeaderMap, body: &Bytes) -> Result<Plan, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/toml");
    if content_type.starts_with("application/json") {
        let mut plan: Plan = parse_json(body)?;
        plan.assign_ids();
        Ok(plan)
    } else if content_type.starts_with("application/toml") || content_type.starts_with("text/") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the plan is not UTF-8 text"))?;
        Ok(Plan::from_toml(text)?)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("Content-Type `{content_type}`: send application/toml or application/json"),
        ))
    }
}

/// The version an `If-Match` header requires (`"3"` or `3`), if any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("If-Match must be a plan version, e.g. `\"3\"`").field("If-Match")
        })
}

fn etag(version: u64) -> (header::HeaderName, HeaderValue) {
    (
        header::ETAG,
        HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a header value"),
    )
}

/// `GET /plans`
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<PlanSummary>>, ApiError> {
    let caller = state.caller(&headers)?;
    let mut out = Vec::new();
    for (id, raw) in state.log().store().list(PLANS)? {
        let doc = Versioned {
            version: raw.version,
            value: serde_json::from_value::<PlanRecord>(raw.value)
                .map_err(|e| ApiError::internal(format!("plans/{id}: {e}")))?,
        };
        if caller.in_scope(&doc.value.plan_set) {
            out.push(summary(&state, &id, &doc)?);
        }
    }
    Ok(Json(out))
}

/// `GET /plans/{id}`: JSON, or the TOML text with `Accept: application/toml`.
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let doc = load(&state, &caller, &id)?;
    let wants_toml = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/toml"));
    if wants_toml {
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/toml"),
                ),
                etag(doc.version),
            ],
            doc.value.toml.clone(),
        )
            .into_response());
    }
    let plan = doc.value.plan()?;
    Ok((
        [etag(doc.version)],
        Json(PlanDocument {
            summary: summary(&state, &id, &doc)?,
            toml: doc.value.toml.clone(),
            plan,
        }),
    )
        .into_response())
}

/// `PUT /plans/{id}`: creates or replaces a plan (`If-Match` to require the
/// version read).
pub async fn put(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let result = put_inner(&state, &caller, &id, &headers, &body).await;
    state
        .audit(&caller, "plan.put", &format!("plans/{id}"), result)
        .await
}

async fn put_inner(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    caller.require(Permission::EditPlans)?;
    if !is_valid_id(id) {
        return Err(ApiError::bad_request(format!(
            "`{id}` is not a plan id: use lowercase letters, digits, `_`, `.` and `-`"
        ))
        .field("id"));
    }
    let expected = if_match(headers)?;
    let plan = parse_plan(headers, body)?;
    if plan.id.as_str() != id {
        return Err(ApiError::invalid(format!(
            "the plan's id is `{}` (derived from its name when absent) but the URL names `{id}`; set `id = \"{id}\"` in the plan",
            plan.id
        ))
        .field("id"));
    }
    caller.require_in(Permission::EditPlans, &plan.plan_set)?;
    let store = state.log().store().clone();
    let current = store.get_as::<PlanRecord>(PLANS, id)?;
    if let Some(current) = &current {
        // Moving a plan out of a set needs the right on that set too.
        caller.require_in(Permission::EditPlans, &current.value.plan_set)?;
    }
    let issues = plan.verify();
    if let Some(first) = issues.iter().find(|i| i.is_error()) {
        let count = issues.iter().filter(|i| i.is_error()).count();
        return Err(
            ApiError::invalid(format!("{first} ({count} error(s) in total)"))
                .field(first.path.clone()),
        );
    }
    let record = PlanRecord::new(&plan, &caller.who(), state.now_ms());
    let applied = state
        .log()
        .commit(vec![Command::Put {
            collection: PLANS.into(),
            key: id.to_owned(),
            value: serde_json::to_value(&record).expect("records serialize"),
            expected_version: expected,
        }])
        .await?;
    let version = match applied.first().map(|a| &a.outcome) {
        Some(Outcome::Version(v)) => *v,
        Some(Outcome::Conflict { expected, found }) => {
            return Err(ApiError::precondition(format!(
                "plan `{id}` is at version {found}, not {expected}: someone changed it; GET it again and reapply your edit"
            ))
            .field("If-Match"))
        }
        other => return Err(ApiError::internal(format!("unexpected store outcome {other:?}"))),
    };
    let status = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        [etag(version)],
        Json(PlanWritten {
            id: id.to_owned(),
            version,
            digest: record.digest,
            warnings: issues,
        }),
    )
        .into_response())
}

/// `DELETE /plans/{id}` (`If-Match` to require the version read).
pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = state.caller(&headers)?;
    let result = async {
        caller.require(Permission::EditPlans)?;
        let expected = if_match(&headers)?;
        let doc = load(&state, &caller, &id)?;
        caller.require_in(Permission::EditPlans, &doc.value.plan_set)?;
        let applied = state
            .log()
            .commit(vec![Command::Delete {
                collection: PLANS.into(),
                key: id.clone(),
                expected_version: Some(expected.unwrap_or(doc.version)),
            }])
            .await?;
        if let Some(Outcome::Conflict { expected, found }) = applied.first().map(|a| &a.outcome) {
            return Err(ApiError::precondition(format!(
                "plan `{id}` is at version {found}, not {expected}; GET it again before deleting"
            ))
            .field("If-Match"));
        }
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    state
        .audit(&caller, "plan.delete", &format!("plans/{id}"), result)
        .await
}

/// `POST /plans/{id}/diff`: the changes from the stored plan to the body's.
pub async fn diff(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DiffAnswer>, ApiError> {
    let caller = state.caller(&headers)?;
    let doc = load(&state, &caller, &id)?;
    let old = doc.value.plan()?;
    let new = parse_plan(&headers, &body)?;
    let changes = haven_plan::diff(&old, &new);
    Ok(Json(DiffAnswer {
        version: doc.version,
        text: changes.to_string(),
        changes,
    }))
}

/// `GET /plans/{id}/definition`: the plan-definition report — groups in
/// recovery order with the VMs they hold now, steps per mode, targets,
/// networks — as JSON or printable HTML. Groups that cannot be resolved right
/// now (a connector is down) are listed by their selectors alone.
pub async fn definition(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let html = query.wants_html(&headers)?;
    let plan = load(&state, &caller, &id)?.value.plan()?;
    let resolved = state
        .orchestrator()
        .resolve(&plan)
        .await
        .unwrap_or_else(|e| {
            tracing::info!(plan = %id, "plan definition without VMs: {e}");
            BTreeMap::new()
        });
    let definition = report::plan_definition(&plan, &resolved);
    Ok(if html {
        Html(report::plan_definition_html(&definition)).into_response()
    } else {
        Json(definition).into_response()
    })
}

/// `POST /plans/validate`: parses and verifies the body's plan; stores nothing.
pub async fn validate(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Validation>, ApiError> {
    state.caller(&headers)?;
    let plan = parse_plan(&headers, &body)?;
    let issues = plan.verify();
    Ok(Json(Validation {
        ok: !issues.iter().any(Issue::is_error),
        toml: plan.to_toml(),
        issues,
    }))
}
