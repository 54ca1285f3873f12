//! Writes on a follower node: redirected to the primary (307, same path and
//! query, so the method and body are kept) or, while no primary is known,
//! refused with 503 and `Retry-After`. Reads are served locally.

use axum::extract::{OriginalUri, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use haven_store::Role;

use crate::error::ApiError;
use crate::ApiState;

/// The middleware.
pub async fn redirect_writes(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let role = state.log().role().borrow().clone();
    match role {
        Role::Primary { .. } => next.run(request).await,
        Role::Follower { primary: Some(primary) } => {
            // The full path, `/api/v1` included (this runs inside the nest).
            let uri = request
                .extensions()
                .get::<OriginalUri>()
                .map_or_else(|| request.uri().clone(), |o| o.0.clone());
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let location = format!("{}{}", primary.trim_end_matches('/'), path);
            match HeaderValue::from_str(&location) {
                Ok(value) => (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, value)],
                    format!("this node is a follower; the primary is {primary}"),
                )
                    .into_response(),
                Err(_) => ApiError::unavailable(format!(
                    "this node is a follower and the primary's address {primary:?} is not a URL"
                ))
                .into_response(),
            }
        }
        Role::Follower { primary: None } => ApiError::unavailable(
            "this node is a follower and no primary is known yet (election in progress); retry shortly",
        )
        .into_response(),
    }
}
