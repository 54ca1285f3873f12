//! The `/cluster/v1/...` routes: raft RPCs between nodes, forwarded commits,
//! and the operator's status, switchover, failover and membership calls.
//! Every route requires the cluster secret; errors are JSON
//! `{"error": code, "message": text}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use haven_store::{check_commands_valid, Command, CommitError};
use openraft::Snapshot;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::client::SECRET_HEADER;
use crate::config::NodeRole;
use crate::error::HaError;
use crate::network::{decode_snapshot, APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::node::{ClusterNode, COMMIT_PATH, ELECT_PATH, STATUS_PATH};
use crate::types::{Member, NodeId};

/// An error answer.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<HaError> for ApiError {
    fn from(e: HaError) -> Self {
        let (status, code) = match &e {
            HaError::NotLeader { .. } => (StatusCode::CONFLICT, "not-primary"),
            HaError::UnknownNode { .. } => (StatusCode::NOT_FOUND, "unknown-node"),
            HaError::Refused(_) => (StatusCode::CONFLICT, "refused"),
            HaError::Config(_) => (StatusCode::BAD_REQUEST, "invalid"),
            HaError::Commit(CommitError::NotPrimary { .. }) => {
                (StatusCode::CONFLICT, "not-primary")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!("request body: {e}"),
        )
    })
}

/// The cluster routes of `node`, to be merged with the API on one listener.
pub fn router(node: Arc<ClusterNode>) -> Router {
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(COMMIT_PATH, post(commit))
        .route(STATUS_PATH, get(status))
        .route(ELECT_PATH, post(elect))
        .route("/cluster/v1/switchover", post(switchover))
        .route("/cluster/v1/failover", post(failover))
        .route("/cluster/v1/members", post(add_member))
        .route("/cluster/v1/members/{id}", delete(remove_member))
        .route_layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .with_state(node)
}

/// Constant-time comparison of the presented secret.
async fn authenticate(
    State(node): State<Arc<ClusterNode>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let expected = node.config().secret.as_bytes();
    let same = presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("missing or wrong `{SECRET_HEADER}` header: present the cluster secret"),
        )
        .into_response();
    }
    next.run(request).await
}

async fn append(State(node): State<Arc<ClusterNode>>, body: Bytes) -> Result<Response, ApiError> {
    let rpc = parse(&body)?;
    Ok(Json(node.raft().append_entries(rpc).await).into_response())
}

async fn vote(State(node): State<Arc<ClusterNode>>, body: Bytes) -> Result<Response, ApiError> {
    let rpc = parse(&body)?;
    Ok(Json(node.raft().vote(rpc).await).into_response())
}

async fn snapshot(State(node): State<Arc<ClusterNode>>, body: Bytes) -> Result<Response, ApiError> {
    let (vote, meta, image) = decode_snapshot(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-body", e))?;
    let snapshot = Snapshot {
        meta,
        snapshot: Box::new(image),
    };
    Ok(Json(node.raft().install_full_snapshot(vote, snapshot).await).into_response())
}

async fn commit(State(node): State<Arc<ClusterNode>>, body: Bytes) -> Result<Response, ApiError> {
    let commands: Vec<Command> = parse(&body)?;
    check_commands_valid(&commands)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-command", e.to_string()))?;
    match node.commit_as_leader(commands).await {
        Ok(committed) => Ok(Json(committed).into_response()),
        Err(CommitError::NotPrimary { primary }) => Ok((
            StatusCode::CONFLICT,
            Json(json!({"error": "not-primary", "message": "this node is not the primary", "primary": primary})),
        )
            .into_response()),
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())),
    }
}

async fn status(State(node): State<Arc<ClusterNode>>) -> Result<Response, ApiError> {
    Ok(Json(node.status()?).into_response())
}

async fn elect(State(node): State<Arc<ClusterNode>>) -> Result<Response, ApiError> {
    node.stand_for_election().await?;
    Ok(Json(json!({"standing": node.id()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverRequest {
    #[serde(default)]
    to: Option<NodeId>,
}

async fn switchover(
    State(node): State<Arc<ClusterNode>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: SwitchoverRequest = if body.is_empty() {
        SwitchoverRequest { to: None }
    } else {
        parse(&body)?
    };
    let started = std::time::Instant::now();
    let primary = node.switchover(request.to).await?;
    Ok(
        Json(json!({"primary": primary, "millis": started.elapsed().as_millis() as u64}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverRequest {
    force: bool,
}

async fn failover(State(node): State<Arc<ClusterNode>>, body: Bytes) -> Result<Response, ApiError> {
    let request: FailoverRequest = parse(&body)?;
    if !request.force {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "field `force` must be true: a forced failover is only done on purpose",
        ));
    }
    node.force_failover().await?;
    Ok(Json(json!({"primary": node.id()})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemberRequest {
    id: NodeId,
    addr: String,
    #[serde(default)]
    role: NodeRole,
}

async fn add_member(
    State(node): State<Arc<ClusterNode>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: AddMemberRequest = parse(&body)?;
    if request.id == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "field `id`: ids start at 1",
        ));
    }
    if request.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!("field `addr`: {:?} is not an ip:port address", request.addr),
        ));
    }
    node.add_node(
        request.id,
        Member {
            addr: request.addr,
            role: request.role,
        },
    )
    .await?;
    Ok(Json(node.status()?).into_response())
}

async fn remove_member(
    State(node): State<Arc<ClusterNode>>,
    Path(id): Path<NodeId>,
) -> Result<Response, ApiError> {
    node.remove_node(id).await?;
    Ok(Json(node.status()?).into_response())
}
