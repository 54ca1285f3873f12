//! The route table: one entry per operation, from which both the router and
//! the OpenAPI document are built.

use axum::http::{Method, Uri};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::error::{self, ApiError};
use crate::{
    admin, dashboard, executions, follower, inventory, openapi, plans, protections, readiness,
    ApiState,
};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// Any valid token (results limited to its plan sets).
    Read,
    /// A token with this role (or admin), within its plan sets.
    Role(&'static str),
}

/// What an operation takes as its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Nothing.
    None,
    /// A plan: TOML (`application/toml`) or its JSON model.
    Plan,
    /// A JSON object with these fields (`name: type`, `?` when optional).
    Json(&'static [&'static str]),
}

/// One operation of the API.
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path under `/api/v1`, with `{param}`s.
    pub path: &'static str,
    /// One line for the docs.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Its body.
    pub body: Body,
    /// Query parameters (`name: meaning`).
    pub query: &'static [&'static str],
    /// What it answers with on success (`application/json` unless stated).
    pub answers: &'static str,
    handler: MethodRouter<ApiState>,
}

// One positional row per operation keeps the table readable at a glance.
#[allow(clippy::too_many_arguments)]
fn route(
    method: Method,
    path: &'static str,
    summary: &'static str,
    access: Access,
    body: Body,
    query: &'static [&'static str],
    answers: &'static str,
    handler: MethodRouter<ApiState>,
) -> Route {
    Route {
        method,
        path,
        summary,
        access,
        body,
        query,
        answers,
        handler,
    }
}

/// Every operation under `/api/v1`.
pub fn table() -> Vec<Route> {
    use Access::*;
    use Method as M;
    vec![
        route(M::GET, "/openapi.json", "This document.", Public, Body::None, &[], "OpenAPI 3.1 JSON", get(openapi::serve)),
        route(M::GET, "/cluster", "This node's role and the primary's URL (clients follow the primary).", Public, Body::None, &[], "role, term, primary", get(inventory::cluster)),
        route(M::GET, "/plans", "Plans in the caller's plan sets, with version and verified flag.", Read, Body::None, &[], "array of plan summaries", get(plans::list)),
        route(M::POST, "/plans/validate", "Parse and verify a plan; stores nothing.", Read, Body::Plan, &[], "ok, issues (with field paths), canonical toml", post(plans::validate)),
        route(M::GET, "/plans/{id}", "A plan as JSON (summary, toml, model), or its canonical TOML with `Accept: application/toml`. ETag: the version.", Read, Body::None, &[], "plan document or TOML", get(plans::get)),
        route(M::PUT, "/plans/{id}", "Create or replace a plan. `If-Match: \"<version>\"` refuses the write (412) if the plan changed since it was read. Any edit marks the plan unverified.", Role("author"), Body::Plan, &[], "id, version, digest, warnings", put(plans::put)),
        route(M::DELETE, "/plans/{id}", "Delete a plan (`If-Match` optional).", Role("author"), Body::None, &[], "204", delete(plans::delete)),
        route(M::GET, "/plans/{id}/definition", "The plan-definition report: groups in recovery order with the VMs they hold now, steps per mode, RTO/RPO targets, networks.", Read, Body::None, &["format: json (default) or html"], "plan definition JSON or printable HTML", get(plans::definition)),
        route(M::POST, "/plans/{id}/diff", "Changes from the stored plan to the body's plan.", Read, Body::Plan, &[], "version, changes, text", post(plans::diff)),
        route(M::GET, "/plans/{id}/readiness", "The last readiness check and whether it still applies to the plan as it is now; `format=html` (or `Accept: text/html`) gives the printable report.", Read, Body::None, &["format: json (default) or html"], "verified, last; or the HTML report", get(readiness::last)),
        route(M::POST, "/plans/{id}/readiness", "Run a readiness check now and store the result.", Role("author or operator"), Body::None, &[], "verified, last", post(readiness::run)),
        route(M::POST, "/executions", "Start an execution of a plan in a mode.", Role("operator"), Body::Json(&["plan: string", "mode: test|failover|migration|failback|undo"]), &[], "201, the execution", post(executions::start)),
        route(M::GET, "/executions", "Executions in the caller's plan sets, newest first.", Read, Body::None, &["plan: only this plan's executions"], "array of executions", get(executions::list)),
        route(M::GET, "/executions/{id}", "An execution: status and every step's state.", Read, Body::None, &[], "the execution", get(executions::get)),
        route(M::POST, "/executions/{id}/approve", "Approve a waiting approval step.", Role("operator"), Body::Json(&["step: integer"]), &[], "the execution", post(executions::approve)),
        route(M::POST, "/executions/{id}/cancel", "Cancel: no new step starts except cleanup; the outcome is `cancelled`.", Role("operator"), Body::None, &[], "the execution", post(executions::cancel)),
        route(M::POST, "/executions/{id}/resume", "Drive an interrupted execution again (the primary also resumes all of them when it starts).", Role("operator"), Body::None, &[], "the execution", post(executions::resume)),
        route(M::GET, "/executions/{id}/events", "Journal events as server-sent events: the journal so far, then live; ends after `execution-finished`. Resume with `Last-Event-ID` or `after`.", Read, Body::None, &["after: journal sequence number to resume after"], "text/event-stream", get(executions::events)),
        route(M::GET, "/executions/{id}/report", "Execution report: timeline per step, measured RTO against the target.", Read, Body::None, &["format: json (default) or html"], "report JSON or printable HTML", get(executions::report)),
        route(M::GET, "/executions/{id}/evidence", "Evidence pack: the journal with its hash chain and the graph.", Read, Body::None, &[], "evidence pack JSON", get(executions::evidence)),
        route(M::GET, "/connectors", "Connector instances configured on this host.", Read, Body::None, &[], "array", get(inventory::connectors)),
        route(M::GET, "/plugins", "Installed connector plugins.", Read, Body::None, &[], "array", get(inventory::plugins)),
        route(M::GET, "/replicas", "Replicas known to the store.", Read, Body::None, &[], "array", get(inventory::replicas)),
        route(M::POST, "/replicas/protect", "Protect VMs: on the primary, take a new point of each now (one result per VM) and/or store their replication schedule, which the primary runs.", Role("operator"), Body::Json(&["vms: array of <connector>/<vm>", "to: connector instance of the recovery site", "repository: absolute directory on the server", "every?: interval such as 15m (stores a schedule; at least 1m)", "now?: boolean, take a point now (default true)"]), &[], "results (one per VM), schedules", post(protections::protect)),
        route(M::GET, "/protections", "Replication schedules the primary runs.", Read, Body::None, &[], "array", get(protections::list)),
        route(M::DELETE, "/protections/{connector}/{vm}", "Stop scheduling a VM's replication (its catalog entry and points stay).", Role("operator"), Body::None, &[], "204", delete(protections::delete)),
        route(M::POST, "/tokens", "Create an API token; its secret is in the answer, once.", Role("admin"), Body::Json(&["name: string", "role: viewer|author|operator|admin", "plan_sets?: array of plan sets (default [\"*\"])"]), &[], "201, token and record", post(admin::create)),
        route(M::GET, "/tokens", "API tokens (without secrets).", Role("admin"), Body::None, &[], "array", get(admin::list)),
        route(M::DELETE, "/tokens/{id}", "Revoke a token.", Role("admin"), Body::None, &[], "204", delete(admin::revoke)),
        route(M::GET, "/audit", "The audit log: every change requested through the API, hash-chained.", Role("admin"), Body::None, &["after: only entries after this sequence number"], "array", get(admin::audit_log)),
    ]
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no API route {}; GET /api/v1/openapi.json lists them",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{method} is not allowed on {}; GET /api/v1/openapi.json lists the operations",
            uri.path()
        ),
    )
}

/// The application: `/api/v1` from [`table`] and the dashboard.
pub fn router(state: ApiState) -> Router {
    let api = table()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            follower::redirect_writes,
        ))
        .layer(axum::middleware::map_response(error::json_errors));
    Router::new()
        .nest("/api/v1", api)
        .merge(dashboard::router())
        .with_state(state)
}
