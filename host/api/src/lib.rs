//! # haven-api
//!
//! Haven's web API under `/api/v1` (axum), and the dashboard at `/`.
//!
//! - [`routes`]: every route in one table — the router and the OpenAPI
//!   document ([`openapi`]) are both built from it, so neither can drift;
//! - [`auth`]: API tokens (hashed in the store), roles and plan-set scopes;
//! - [`audit`]: every change (and every refused change) appended to the
//!   hash-chained stream `audit`;
//! - [`error`]: `{"error": {"code", "message", "field"}}` with a 4xx for
//!   every bad request;
//! - [`follower`]: on a follower node, writes are redirected to the primary
//!   (307) or refused with 503 + `Retry-After` while no primary is known;
//!   reads are served locally;
//! - [`plans`], [`executions`], [`admin`], [`inventory`], [`readiness`],
//!   [`protections`]: the handlers; executions go through
//!   [`haven_engine::service::Orchestrator`] (shared with the CLI's embedded
//!   mode), protection through a [`Protection`] (the engine's `Protector`);
//! - [`dashboard`]: the static web dashboard.

#![deny(missing_docs)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod executions;
pub mod follower;
pub mod format;
pub mod inventory;
pub mod openapi;
pub mod plans;
pub mod protections;
pub mod readiness;
pub mod routes;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::Router;
use haven_engine::service::Orchestrator;
use haven_store::CommandLog;

pub use auth::{bootstrap_admin, Caller, Permission, Role};
pub use error::ApiError;
pub use inventory::Inventory;
pub use protections::Protection;
pub use readiness::{EngineReadiness, ReadinessCheck};

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    orchestrator: Arc<Orchestrator>,
    readiness: Arc<dyn ReadinessCheck>,
    inventory: Arc<dyn Inventory>,
    protection: Arc<dyn Protection>,
}

impl ApiState {
    /// State over an orchestrator (which holds the command log), a readiness
    /// checker, the connector inventory and what protects VMs.
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        readiness: Arc<dyn ReadinessCheck>,
        inventory: Arc<dyn Inventory>,
        protection: Arc<dyn Protection>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                orchestrator,
                readiness,
                inventory,
                protection,
            }),
        }
    }

    /// The orchestrator.
    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.inner.orchestrator
    }

    /// The command log (writes) and the store (reads).
    pub fn log(&self) -> Arc<dyn CommandLog> {
        self.inner.orchestrator.log()
    }

    /// The caller of a request, from its bearer token.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        auth::authenticate(&*self.log(), headers)
    }

    /// Now, Unix ms.
    pub fn now_ms(&self) -> u64 {
        self.inner.orchestrator.now_ms()
    }
}

/// The whole web application: the API under `/api/v1` and the dashboard.
pub fn router(state: ApiState) -> Router {
    routes::router(state)
}
