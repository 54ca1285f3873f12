//! Read-only inventory: connector instances and installed plugins (from the
//! host's [`Inventory`]), replicas (the store's `replicas` collection), and
//! this node's place in the cluster.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use haven_store::Role;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::ApiState;

/// Collection of replica documents (written by the replication service).
pub const REPLICAS: &str = "replicas";

/// What the host knows of its connectors. Implemented by the `haven` binary
/// over the plugin runtime (`<home>/instances.toml`, `<home>/plugins`).
pub trait Inventory: Send + Sync + 'static {
    /// Connector instances, as JSON objects (no secrets).
    fn connectors(&self) -> Result<Vec<Value>, String>;
    /// Installed plugins, as JSON objects.
    fn plugins(&self) -> Result<Vec<Value>, String>;
}

/// A replica document with its key.
#[derive(Debug, Serialize)]
pub struct Replica {
    /// Key in `replicas`.
    pub id: String,
    /// Version.
    pub version: u64,
    /// The document.
    #[serde(flatten)]
    pub value: Value,
}

/// This node's role.
#[derive(Debug, Serialize)]
pub struct ClusterAnswer {
    /// `primary` or `follower`.
    pub role: &'static str,
    /// Consensus term (primary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// The primary's API URL, when this node is a follower that knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
}

fn inventory_error(what: &str, e: String) -> ApiError {
    ApiError::internal(format!("cannot read {what}: {e}"))
}

/// `GET /connectors`
pub async fn connectors(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Value>>, ApiError> {
    state.caller(&headers)?;
    state
        .inner
        .inventory
        .connectors()
        .map(Json)
        .map_err(|e| inventory_error("connector instances", e))
}

/// `GET /plugins`
pub async fn plugins(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Value>>, ApiError> {
    state.caller(&headers)?;
    state
        .inner
        .inventory
        .plugins()
        .map(Json)
        .map_err(|e| inventory_error("installed plugins", e))
}

/// `GET /replicas`
pub async fn replicas(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Replica>>, ApiError> {
    state.caller(&headers)?;
    Ok(Json(
        state
            .log()
            .store()
            .list(REPLICAS)?
            .into_iter()
            .map(|(id, v)| Replica {
                id,
                version: v.version,
                value: v.value,
            })
            .collect(),
    ))
}

/// `GET /cluster`: no token needed, so clients can find the primary.
pub async fn cluster(State(state): State<ApiState>) -> Json<ClusterAnswer> {
    let role = state.log().role().borrow().clone();
    Json(match role {
        Role::Primary { term } => ClusterAnswer {
            role: "primary",
            term: Some(term),
            primary: None,
        },
        Role::Follower { primary } => ClusterAnswer {
            role: "follower",
            term: None,
            primary,
        },
    })
}
