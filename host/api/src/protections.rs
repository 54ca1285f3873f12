//! Protection of VMs through the API: `POST /replicas/protect` takes a new
//! point of VMs now on the primary and/or stores their replication schedule
//! (the store collection `protections`, run by the primary's [`Protector`]);
//! `GET /protections` lists the schedules, `DELETE
//! /protections/{connector}/{vm}` removes one.

use std::path::PathBuf;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use haven_engine::catalog::{self, CatalogError};
use haven_engine::protection::{self, Policy, PolicyError, Protected, Protector, Target};
use haven_plan::{HumanDuration, VmRef};
use serde::{Deserialize, Serialize};

use crate::auth::Permission;
use crate::error::{parse_json, ApiError};
use crate::ApiState;

/// What protects VMs on this host. Implemented by the engine's
/// [`Protector`] over the host's connectors.
#[async_trait]
pub trait Protection: Send + Sync + 'static {
    /// The connector instances VMs can be protected from and to.
    fn connectors(&self) -> Vec<String>;
    /// Takes a new point of every target now; one result per target.
    async fn protect(&self, targets: &[Target]) -> Vec<Protected>;
}

#[async_trait]
impl Protection for Protector {
    fn connectors(&self) -> Vec<String> {
        self.connector_names()
    }

    async fn protect(&self, targets: &[Target]) -> Vec<Protected> {
        Protector::protect(self, targets).await
    }
}

/// `POST /replicas/protect` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectBody {
    /// Production VMs as `<connector>/<vm>`.
    pub vms: Vec<String>,
    /// Connector instance of the recovery site.
    pub to: String,
    /// Repository directory on the primary's host (absolute).
    pub repository: PathBuf,
    /// Keep protecting: a new point this often (`15m`); stored as a schedule.
    #[serde(default)]
    pub every: Option<HumanDuration>,
    /// Take a point now (default true).
    #[serde(default = "yes")]
    pub now: bool,
}

fn yes() -> bool {
    true
}

/// The outcome of protecting one VM now.
#[derive(Debug, Serialize)]
pub struct VmResult {
    /// `<connector>/<vm>`.
    pub vm: String,
    /// Whether the point was taken.
    pub ok: bool,
    /// The point's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// Disks replicated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<usize>,
    /// Points of the VM in the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<usize>,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<Protected> for VmResult {
    fn from(p: Protected) -> Self {
        let vm = p.vm.to_string();
        match p.result {
            Ok((record, point)) => Self {
                vm,
                ok: true,
                point: Some(point.id),
                disks: Some(record.disks.len()),
                points: Some(record.points.len()),
                error: None,
            },
            Err(e) => Self {
                vm,
                ok: false,
                point: None,
                disks: None,
                points: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// `POST /replicas/protect` answer.
#[derive(Debug, Serialize)]
pub struct ProtectAnswer {
    /// One result per VM, when a point was taken now.
    pub results: Vec<VmResult>,
    /// The schedules stored, when `every` was given.
    pub schedules: Vec<Policy>,
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        Self::invalid(e.message).field(e.field)
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Store(e) => e.into(),
            CatalogError::Commit(e) => e.into(),
            CatalogError::Conflict(_) => Self::conflict(e.to_string()),
            CatalogError::Corrupt { .. } => Self::internal(e.to_string()),
        }
    }
}

/// The request's VMs, checked against the rules, this host's connectors and
/// the catalog (a VM already protected elsewhere keeps its destination).
fn targets(state: &ApiState, body: &ProtectBody) -> Result<Vec<Target>, ApiError> {
    let vms = body
        .vms
        .iter()
        .enumerate()
        .map(|(i, vm)| protection::parse_vm(vm, &format!("vms.{i}")))
        .collect::<Result<Vec<VmRef>, _>>()?;
    let every_ms = body.every.map(|e| e.as_millis());
    protection::validate(
        &vms,
        &body.to,
        &body.repository,
        every_ms,
        &state.inner.protection.connectors(),
    )?;
    if every_ms.is_none() && !body.now {
        return Err(ApiError::invalid(
            "nothing to do: set `now` to true or give a schedule interval in `every`",
        )
        .field("now"));
    }
    let store = state.log();
    let mut targets = Vec::with_capacity(vms.len());
    for (i, vm) in vms.into_iter().enumerate() {
        if let Some(existing) = catalog::get(store.store(), &vm)? {
            let r = existing.value;
            if r.recovery_connector != body.to || r.repository != body.repository {
                return Err(ApiError::conflict(format!(
                    "{vm} is already protected to {} in {}; use the same `to` and `repository`",
                    r.recovery_connector,
                    r.repository.display()
                ))
                .field(format!("vms.{i}")));
            }
        }
        targets.push(Target {
            vm,
            recovery_connector: body.to.clone(),
            repository: body.repository.clone(),
        });
    }
    Ok(targets)
}

/// `POST /replicas/protect`
pub async fn protect(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ProtectAnswer>, ApiError> {
    let caller = state.caller(&headers)?;
    let mut target = "replicas".to_owned();
    let result = async {
        caller.require(Permission::Operate)?;
        let body: ProtectBody = parse_json(&body)?;
        target = format!("replicas/{}", body.vms.join(","));
        let targets = targets(&state, &body)?;
        let log = state.log();
        let mut schedules = Vec::new();
        if let Some(every) = body.every {
            schedules = targets
                .iter()
                .map(|t| Policy {
                    vm: t.vm.clone(),
                    recovery_connector: t.recovery_connector.clone(),
                    repository: t.repository.clone(),
                    every_ms: Some(every.as_millis()),
                    created_by: caller.who(),
                    created_at_ms: state.now_ms(),
                })
                .collect();
            protection::put_policies(&*log, &schedules).await?;
        }
        let results = if body.now {
            state.inner.protection.protect(&targets).await
        } else {
            Vec::new()
        };
        Ok(Json(ProtectAnswer {
            results: results.into_iter().map(VmResult::from).collect(),
            schedules,
        }))
    }
    .await;
    state
        .audit(&caller, "replica.protect", &target, result)
        .await
}

/// A stored schedule with its key.
#[derive(Debug, Serialize)]
pub struct ProtectionView {
    /// Key: `<connector>/<vm>`.
    pub id: String,
    /// The policy.
    #[serde(flatten)]
    pub policy: Policy,
}

/// `GET /protections`
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<Vec<ProtectionView>>, ApiError> {
    state.caller(&headers)?;
    let stored = protection::policies(state.log().store())?;
    Ok(Json(
        stored
            .into_iter()
            .map(|(id, policy)| ProtectionView { id, policy })
            .collect(),
    ))
}

/// `DELETE /protections/{connector}/{vm}`: the primary stops scheduling the
/// VM; its catalog entry and points stay.
pub async fn delete(
    State(state): State<ApiState>,
    Path((connector, vm)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = state.caller(&headers)?;
    let key = format!("{connector}/{vm}");
    let result = async {
        caller.require(Permission::Operate)?;
        if protection::delete_policy(&*state.log(), &key).await? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!(
                "no protection schedule `{key}`; GET /api/v1/protections lists them"
            )))
        }
    }
    .await;
    state
        .audit(
            &caller,
            "protection.delete",
            &format!("protections/{key}"),
            result,
        )
        .await
}
