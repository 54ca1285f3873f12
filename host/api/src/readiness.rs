//! Readiness: whether a plan can run now. `POST /plans/{id}/readiness` runs
//! the engine's check ([`haven_engine::readiness`]) and stores the report in
//! the store collection `readiness` with the plan version it checked; `GET`
//! returns it. A plan is *verified* only while its document is still that
//! version, so any edit marks it unverified.

use async_trait::async_trait;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use haven_engine::readiness::{self, ReadinessChecker, ReadinessOptions, ReadinessReport};
use haven_plan::Plan;
use haven_store::Store;
use serde::Serialize;

use crate::auth::Permission;
use crate::error::ApiError;
use crate::format::FormatQuery;
use crate::plans::load;
use crate::ApiState;

/// Decides whether a plan can run now.
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Checks `plan`, stored at document version `plan_version`.
    async fn check(&self, store: &Store, plan: &Plan, plan_version: u64) -> ReadinessReport;
}

/// The engine's checker with the host's options.
pub struct EngineReadiness {
    checker: ReadinessChecker,
    options: ReadinessOptions,
}

impl EngineReadiness {
    /// A check by `checker` with `options`.
    pub fn new(checker: ReadinessChecker, options: ReadinessOptions) -> Self {
        Self { checker, options }
    }
}

#[async_trait]
impl ReadinessCheck for EngineReadiness {
    async fn check(&self, store: &Store, plan: &Plan, plan_version: u64) -> ReadinessReport {
        self.checker
            .check(store, plan, plan_version, &self.options)
            .await
    }
}

/// The readiness answer: the last check and whether it still applies.
#[derive(Debug, Serialize)]
pub struct ReadinessAnswer {
    /// The plan was found ready and has not changed since.
    pub verified: bool,
    /// The last check, if any.
    pub last: Option<ReadinessReport>,
}

/// The last readiness report of plan `id`.
pub fn last_report(store: &Store, id: &str) -> Result<Option<ReadinessReport>, ApiError> {
    Ok(store
        .get_as::<ReadinessReport>(readiness::COLLECTION, id)?
        .map(|v| v.value))
}

/// Whether `report` verifies a plan now at document version `version`.
pub fn is_verified(report: Option<&ReadinessReport>, version: u64) -> bool {
    report.is_some_and(|r| r.ready && r.plan_version == version)
}

/// `GET /plans/{id}/readiness`
pub async fn last(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let plan = load(&state, &caller, &id)?;
    let last = last_report(state.log().store(), &id)?;
    if query.wants_html(&headers)? {
        let report = last.ok_or_else(|| {
            ApiError::not_found(format!(
                "plan {id} has no readiness check yet; run one with POST /plans/{id}/readiness"
            ))
        })?;
        return Ok(Html(readiness::to_html(&report)).into_response());
    }
    Ok(Json(ReadinessAnswer {
        verified: is_verified(last.as_ref(), plan.version),
        last,
    })
    .into_response())
}

/// `POST /plans/{id}/readiness`: runs a check now and stores it.
pub async fn run(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ReadinessAnswer>, ApiError> {
    let caller = state.caller(&headers)?;
    let result = async {
        let doc = load(&state, &caller, &id)?;
        caller.require_in(Permission::CheckReadiness, &doc.value.plan_set)?;
        let plan = doc.value.plan()?;
        let log = state.log();
        let report = state
            .inner
            .readiness
            .check(log.store(), &plan, doc.version)
            .await;
        readiness::record(&*log, &report).await?;
        Ok(Json(ReadinessAnswer {
            verified: report.ready,
            last: Some(report),
        }))
    }
    .await;
    state
        .audit(&caller, "plan.readiness", &format!("plans/{id}"), result)
        .await
}
