//! The HTTP JSON API (axum). Every route except `GET /health` needs
//! `Authorization: Bearer <token>`. Errors answer `{"error": {"code", "message", "field"?}}`
//! with 400, 401, 404, 409, 503 or 500.

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::LabError;
use crate::lab::Lab;
use crate::model::Task;
use crate::requests::*;

impl IntoResponse for LabError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}

/// A JSON body whose errors answer 400 naming the field (an empty body reads as `{}`).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = LabError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| LabError::invalid("body", e.body_text()))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(Body)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { "body".to_owned() } else { path };
                LabError::invalid(field, e.into_inner().to_string())
            })
    }
}

fn accepted(task: Task) -> (StatusCode, Json<Task>) {
    (StatusCode::ACCEPTED, Json(task))
}

#[derive(Deserialize)]
struct SiteQuery {
    site: Option<String>,
}

#[derive(Deserialize)]
struct SnapshotQuery {
    snapshot: Option<String>,
}

async fn auth(State(lab): State<Lab>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| lab.token_matches(t.trim()));
    if ok {
        next.run(req).await
    } else {
        LabError::Unauthorized.into_response()
    }
}

/// Fencing: a mutating request with a `haven-fence` token lower than the
/// highest seen is refused with 409 `fenced`; requests without the header
/// (operators, tools) are admitted.
async fn fence(State(lab): State<Lab>, req: Request, next: Next) -> Response {
    let mutating = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if let (true, Some(value)) = (mutating, req.headers().get(FENCE_HEADER)) {
        let Some(token) = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return LabError::invalid(FENCE_HEADER, "must be an unsigned integer").into_response();
        };
        if let Err(e) = lab.admit_fence(token).await {
            tracing::warn!("{e}");
            return e.into_response();
        }
    }
    next.run(req).await
}

/// The header carrying a fencing token (`haven_connector::fence::HEADER`).
const FENCE_HEADER: &str = "haven-fence";

/// The API's routes over `lab`.
pub fn router(lab: Lab) -> Router {
    let api = Router::new()
        .route("/sites", get(|State(lab): State<Lab>| async move { Json(lab.sites()) }))
        .route(
            "/networks",
            get(|State(lab): State<Lab>, Query(q): Query<SiteQuery>| async move {
                lab.networks(q.site.as_deref()).map(Json)
            }),
        )
        .route(
            "/vms",
            get(|State(lab): State<Lab>, Query(q): Query<SiteQuery>| async move {
                lab.vms(q.site.as_deref()).map(Json)
            })
            .post(|State(lab): State<Lab>, Body(req): Body<CreateVm>| async move {
                lab.create_vm(req).await.map(accepted)
            }),
        )
        .route(
            "/vms/{id}",
            get(|State(lab): State<Lab>, Path(id): Path<String>| async move { lab.vm(&id).map(Json) })
                .patch(
                    |State(lab): State<Lab>, Path(id): Path<String>, Body(req): Body<UpdateVm>| async move {
                        lab.update_vm(&id, req).await.map(Json)
                    },
                )
                .delete(|State(lab): State<Lab>, Path(id): Path<String>| async move {
                    lab.delete_vm(&id).await.map(accepted)
                }),
        )
        .route(
            "/vms/{id}/power-on",
            post(|State(lab): State<Lab>, Path(id): Path<String>| async move {
                lab.power_on(&id).await.map(accepted)
            }),
        )
        .route(
            "/vms/{id}/power-off",
            post(
                |State(lab): State<Lab>, Path(id): Path<String>, Body(req): Body<PowerOff>| async move {
                    lab.power_off(&id, req.mode).await.map(accepted)
                },
            ),
        )
        .route(
            "/vms/{id}/nics",
            post(
                |State(lab): State<Lab>, Path(id): Path<String>, Body(req): Body<ReconfigureNics>| async move {
                    lab.reconfigure_nics(&id, &req.nics).await.map(accepted)
                },
            ),
        )
        .route(
            "/vms/{id}/heartbeat",
            get(|State(lab): State<Lab>, Path(id): Path<String>| async move {
                lab.heartbeat(&id).map(|heartbeat| Json(HeartbeatView { vm: id, heartbeat }))
            }),
        )
        .route(
            "/vms/{id}/snapshots",
            get(|State(lab): State<Lab>, Path(id): Path<String>| async move {
                lab.snapshots(&id).map(Json)
            })
            .post(
                |State(lab): State<Lab>, Path(id): Path<String>, Body(req): Body<CreateSnapshot>| async move {
                    lab.create_snapshot(&id, req).await.map(accepted)
                },
            ),
        )
        .route(
            "/vms/{id}/snapshots/{snapshot}",
            axum::routing::delete(
                |State(lab): State<Lab>, Path((id, snapshot)): Path<(String, String)>| async move {
                    lab.delete_snapshot(&id, &snapshot).await.map(accepted)
                },
            ),
        )
        .route(
            "/vms/{id}/snapshots/{snapshot}/revert",
            post(
                |State(lab): State<Lab>, Path((id, snapshot)): Path<(String, String)>| async move {
                    lab.revert_snapshot(&id, &snapshot).await.map(accepted)
                },
            ),
        )
        .route(
            "/vms/{id}/disks/{disk}/extents",
            get(
                |State(lab): State<Lab>,
                 Path((id, disk)): Path<(String, String)>,
                 Query(q): Query<SnapshotQuery>| async move {
                    tokio::task::spawn_blocking(move || {
                        lab.disk_extents(&id, &disk, q.snapshot.as_deref())
                    })
                    .await
                    .map_err(|e| LabError::io("mapping extents", std::io::Error::other(e)))?
                    .map(Json)
                },
            ),
        )
        .route(
            "/tasks",
            get(|State(lab): State<Lab>| async move { Json(lab.running_tasks()) }),
        )
        .route(
            "/tasks/{id}",
            get(|State(lab): State<Lab>, Path(id): Path<String>| async move { lab.task(&id).map(Json) }),
        )
        .route(
            "/tasks/{id}/cancel",
            post(|State(lab): State<Lab>, Path(id): Path<String>| async move {
                lab.cancel(&id).await.map(Json)
            }),
        )
        .route(
            "/images",
            post(|State(lab): State<Lab>, Body(req): Body<CreateImage>| async move {
                lab.create_image(req).await.map(Json)
            }),
        )
        .route(
            "/seed",
            post(|State(lab): State<Lab>, Body(req): Body<SeedRequest>| async move {
                lab.seed(req).await.map(Json)
            }),
        )
        .route(
            "/faults",
            get(|State(lab): State<Lab>| async move { Json(lab.faults()) }).delete(
                |State(lab): State<Lab>| async move {
                    lab.clear_faults().await;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/faults/fail",
            post(|State(lab): State<Lab>, Body(req): Body<FailFault>| async move {
                lab.fail_next(req).await.map(|()| StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/faults/latency",
            post(|State(lab): State<Lab>, Body(req): Body<LatencyFault>| async move {
                lab.add_latency(req).await;
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/faults/no-heartbeat",
            post(|State(lab): State<Lab>, Body(req): Body<NoHeartbeatFault>| async move {
                lab.set_no_heartbeat(req).await.map(|()| StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/faults/host-loss",
            post(|State(lab): State<Lab>, Body(req): Body<HostLossFault>| async move {
                lab.set_host_loss(req).await.map(|()| StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/faults/random",
            post(|State(lab): State<Lab>, Body(req): Body<RandomFault>| async move {
                lab.set_random(req).await.map(|()| StatusCode::NO_CONTENT)
            }),
        )
        .route_layer(middleware::from_fn_with_state(lab.clone(), fence))
        .route_layer(middleware::from_fn_with_state(lab.clone(), auth));
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(api)
        .fallback(|req: Request| async move {
            LabError::NotFound(format!("route {} {}", req.method(), req.uri().path()))
        })
        .with_state(lab)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    lab: Lab,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(lab))
        .with_graceful_shutdown(shutdown)
        .await
}
