//! `/executions`: start, list, read, approve, cancel, resume; live journal
//! events over SSE; the report (JSON, HTML) and the evidence pack.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use haven_engine::report::{execution_report, to_html, EvidencePack};
use haven_engine::service::{ExecutionRecord, ExecutionView, JournalFollower};
use haven_plan::Mode;
use serde::Deserialize;

use crate::auth::{Caller, Permission};
use crate::error::{parse_json, ApiError};
use crate::format::FormatQuery;
use crate::plans;
use crate::ApiState;

/// `POST /executions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Plan id.
    pub plan: String,
    /// `test`, `failover`, `migration`, `failback` or `undo`.
    pub mode: Mode,
}

/// `POST /executions/{id}/approve` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Index of the approval step.
    pub step: usize,
}

/// `GET /executions` query.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only this plan's executions.
    pub plan: Option<String>,
}

/// `GET /executions/{id}/events` query.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Resume after this journal sequence number (also `Last-Event-ID`).
    pub after: Option<String>,
}

/// The record of an execution the caller may see, or 404.
fn visible(state: &ApiState, caller: &Caller, id: &str) -> Result<ExecutionRecord, ApiError> {
    state
        .orchestrator()
        .record(id)
        .ok()
        .filter(|r| caller.in_scope(&r.plan_set))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no execution `{id}`; GET /api/v1/executions lists them"
            ))
        })
}

/// `POST /executions`
pub async fn start(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let mut target = "executions".to_owned();
    let result = async {
        caller.require(Permission::Operate)?;
        let request: StartRequest = parse_json(&body)?;
        target = format!("plans/{}", request.plan);
        let plan = plans::load(&state, &caller, &request.plan).map_err(|e| e.field("plan"))?;
        caller.require_in(Permission::Operate, &plan.value.plan_set)?;
        let record = state
            .orchestrator()
            .start(&request.plan, request.mode, &caller.who())
            .await?;
        target = format!("executions/{}", record.id);
        let view = state.orchestrator().get(&record.id)?;
        Ok((StatusCode::CREATED, Json(view)).into_response())
    }
    .await;
    state
        .audit(&caller, "execution.start", &target, result)
        .await
}

/// `GET /executions`
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<ExecutionView>>, ApiError> {
    let caller = state.caller(&headers)?;
    let views = state.orchestrator().list()?;
    Ok(Json(
        views
            .into_iter()
            .filter(|v| caller.in_scope(&v.plan_set))
            .filter(|v| query.plan.as_ref().is_none_or(|p| *p == v.plan))
            .collect(),
    ))
}

/// `GET /executions/{id}`
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ExecutionView>, ApiError> {
    let caller = state.caller(&headers)?;
    visible(&state, &caller, &id)?;
    Ok(Json(state.orchestrator().get(&id)?))
}

/// Runs an operator action on an execution, checked and audited.
async fn act<F, Fut>(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    f: F,
) -> Result<Json<ExecutionView>, ApiError>
where
    F: FnOnce(Caller) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let caller = state.caller(headers)?;
    let result = async {
        let record = visible(state, &caller, id)?;
        caller.require_in(Permission::Operate, &record.plan_set)?;
        f(caller.clone()).await?;
        Ok(Json(state.orchestrator().get(id)?))
    }
    .await;
    state
        .audit(&caller, action, &format!("executions/{id}"), result)
        .await
}

/// `POST /executions/{id}/approve`
pub async fn approve(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ExecutionView>, ApiError> {
    let (orchestrator, execution) = (state.orchestrator(), id.as_str());
    act(
        &state,
        &headers,
        &id,
        "execution.approve",
        move |caller| async move {
            let request: ApproveRequest = parse_json(&body)?;
            orchestrator
                .approve(execution, request.step, &caller.who())
                .await
                .map_err(|e| ApiError::from(e).field("step"))
        },
    )
    .await
}

/// `POST /executions/{id}/cancel`
pub async fn cancel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ExecutionView>, ApiError> {
    let (orchestrator, execution) = (state.orchestrator(), id.as_str());
    act(
        &state,
        &headers,
        &id,
        "execution.cancel",
        move |caller| async move { Ok(orchestrator.cancel(execution, &caller.who()).await?) },
    )
    .await
}

/// `POST /executions/{id}/resume`
pub async fn resume(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ExecutionView>, ApiError> {
    let (orchestrator, execution) = (state.orchestrator(), id.as_str());
    act(
        &state,
        &headers,
        &id,
        "execution.resume",
        move |_| async move { Ok(orchestrator.resume(execution)?) },
    )
    .await
}

/// `GET /executions/{id}/events`: the journal so far, then live, as
/// server-sent events (`id` = journal sequence number, `event` = the
/// journal event's kind, `data` = the event as JSON). The stream ends after
/// `execution-finished`.
pub async fn events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let caller = state.caller(&headers)?;
    visible(&state, &caller, &id)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let after = match query.after {
        Some(after) => after.parse().map_err(|_| {
            ApiError::bad_request(format!("after `{after}` is not a journal sequence number"))
                .field("after")
        })?,
        None => last_event_id.unwrap_or(0),
    };
    let follower = state.orchestrator().subscribe(&id, after)?;
    let stream = futures_util::stream::unfold(
        (follower, Vec::new().into_iter()),
        |(mut follower, mut pending): (JournalFollower, std::vec::IntoIter<_>)| async move {
            loop {
                if let Some(event) = pending.next() {
                    return Some((Ok(sse_event(&event)), (follower, pending)));
                }
                match follower.next().await {
                    Ok(Some(batch)) => pending = batch.into_iter(),
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!("journal stream ended: {e}");
                        return None;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_event(event: &haven_engine::service::JournalEvent) -> SseEvent {
    let data = serde_json::to_value(event).expect("events serialize");
    let kind = data
        .get("event")
        .and_then(|v| v.as_str())
        .unwrap_or("event")
        .to_owned();
    SseEvent::default()
        .id(event.seq.to_string())
        .event(kind)
        .data(data.to_string())
}

/// `GET /executions/{id}/report`: JSON, or printable HTML with
/// `?format=html` or `Accept: text/html`.
pub async fn report(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let record = visible(&state, &caller, &id)?;
    let report = execution_report(
        state.log().store(),
        &id,
        &record.graph,
        record.rto_target_ms,
    )?;
    Ok(if query.wants_html(&headers)? {
        Html(to_html(&report)).into_response()
    } else {
        Json(report).into_response()
    })
}

/// `GET /executions/{id}/evidence`: the journal with its hash chain.
pub async fn evidence(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let record = visible(&state, &caller, &id)?;
    let pack = EvidencePack::collect(state.log().store(), &id, &record.graph)?;
    Ok((
        [(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&format!("attachment; filename=\"{id}-evidence.json\""))
                .unwrap_or(HeaderValue::from_static("attachment")),
        )],
        Json(pack),
    )
        .into_response())
}
