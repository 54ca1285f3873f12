//! The lab connector: drives Haven's lab site simulator (`haven lab`,
//! crate `haven-lab`) over its HTTP JSON API, as any vendor connector drives
//! its system.
//!
//! One instance manages one site of the lab (setting `site`); the secret
//! `token` is the lab's bearer token. Long operations are lab tasks, whose ids
//! are the job ids. Disks are raw sparse files in the lab directory: they are
//! returned as `file` descriptors in the granted directory named `lab` (the
//! administrator grants the lab directory under that name), so the native block
//! transport reads and writes the bytes.

use std::collections::BTreeMap;

use haven_plugin_sdk::http::{self, Request, Response};
use haven_plugin_sdk::types::*;
use haven_plugin_sdk::{
    error, host, parse_tag, Compute, Configured, Connector, DiskAccess, Inventory, Jobs, Result,
    Settings, VmSnapshots,
};
use serde::Deserialize;
use serde_json::json;

/// The connector.
pub struct Lab;

/// Name of the granted directory that disk `file` descriptors refer to.
pub const GRANTED_DIR: &str = "lab";

/// The lab's default address (`haven lab --listen`).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7480";

struct Config {
    endpoint: String,
    site: String,
}

static CONFIG: Configured<Config> = Configured::new();

#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiError,
}

#[derive(Deserialize)]
struct ApiError {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
}

#[derive(Deserialize)]
struct LabVm {
    id: String,
    name: String,
    site: String,
    host: String,
    power: String,
    cpus: u32,
    memory_mib: u64,
    #[serde(default)]
    guest_os: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    disks: Vec<LabDisk>,
    #[serde(default)]
    nics: Vec<LabNic>,
    #[serde(default)]
    snapshots: Vec<LabSnapshot>,
}

#[derive(Deserialize)]
struct LabDisk {
    id: String,
    path: String,
    size_bytes: u64,
}

#[derive(Deserialize)]
struct LabNic {
    id: String,
    network: String,
    mac: String,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Deserialize)]
struct LabSnapshot {
    id: String,
    name: String,
    created_unix: u64,
    quiesced: bool,
    #[serde(default)]
    disks: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct LabNetwork {
    id: String,
    name: String,
    isolated: bool,
}

#[derive(Deserialize)]
struct LabSite {
    name: String,
}

#[derive(Deserialize)]
struct LabTask {
    id: String,
    kind: String,
    vm: String,
    state: String,
    #[serde(default)]
    percent: u8,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct LabHeartbeat {
    heartbeat: String,
}

#[derive(Deserialize)]
struct LabExtents {
    extents: Vec<LabExtent>,
}

#[derive(Deserialize)]
struct LabExtent {
    offset: u64,
    length: u64,
}

/// The change id `changed-extents` answers: the lab does not track writes, so
/// every answer lists all allocated regions (a superset of the changes).
pub const ALLOCATED: &str = "allocated";

#[derive(Deserialize)]
struct LabImage {
    path: String,
    size_bytes: u64,
}

impl From<LabVm> for Vm {
    fn from(v: LabVm) -> Self {
        Vm {
            power_state: match v.power.as_str() {
                "on" => PowerState::PoweredOn,
                "off" => PowerState::PoweredOff,
                _ => PowerState::Unknown,
            },
            location: format!("{}/{}", v.site, v.host),
            id: v.id,
            name: v.name,
            cpus: v.cpus,
            memory_mib: v.memory_mib,
            guest_os: v.guest_os,
            tags: v.tags.iter().map(|t| parse_tag(t)).collect(),
            disks: v
                .disks
                .into_iter()
                .map(|d| DiskInfo {
                    label: d.path,
                    id: d.id,
                    capacity_bytes: d.size_bytes,
                })
                .collect(),
            nics: v
                .nics
                .into_iter()
                .map(|n| NicInfo {
                    id: n.id,
                    network: n.network,
                    mac: Some(n.mac),
                    ips: n.ips,
                })
                .collect(),
        }
    }
}

/// The contract's error for a lab error code (an HTTP answer or a failed task).
fn typed(status: Option<u16>, e: ApiError, retry_after_s: Option<u64>) -> Error {
    let retry = retry_after_s.map(std::time::Duration::from_secs);
    match (e.code.as_str(), status) {
        ("unauthorized", _) | (_, Some(401 | 403)) => error::auth(e.message),
        ("not_found", _) | (_, Some(404)) => error::not_found(e.message),
        ("conflict", _) | (_, Some(409)) => error::conflict(e.message),
        ("invalid_input", _) | (_, Some(400)) => {
            error::invalid_input(e.field.unwrap_or_else(|| "request".into()), e.message)
        }
        ("unavailable", _) | (_, Some(429 | 503)) => error::transient(e.message, retry),
        ("timeout", _) => error::timeout(e.message),
        (code, _) => error::other(format!("{code}: {}", e.message)),
    }
}

/// Maps a lab error answer to the contract's typed error.
fn lab_error(response: Response) -> Error {
    match response.json::<ApiErrorBody>() {
        Ok(body) => {
            let retry = response
                .header("retry-after")
                .and_then(|v| v.trim().parse().ok());
            typed(Some(response.status), body.error, retry)
        }
        // Not the lab's error shape (a proxy, another server): the SDK's mapping.
        Err(_) => match response.error_for_status() {
            Err(e) => e,
            Ok(r) => error::other(format!("unexpected HTTP {}", r.status)),
        },
    }
}

/// Sends an authenticated request to the lab; error answers become typed errors.
fn send(build: impl FnOnce(&str) -> Request) -> Result<Response> {
    let config = CONFIG.get()?;
    let token = host::secret("token")?;
    let response = build(&config.endpoint).bearer(&token).send()?;
    if response.status >= 400 {
        return Err(lab_error(response));
    }
    Ok(response)
}

/// Adds a JSON body (a `Value` always serialises).
fn with_json(request: Request, body: &serde_json::Value) -> Request {
    request
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
}

/// Checks an id (VM, disk, snapshot, task) before it goes into a URL path.
fn id_arg<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty()
        || value.len() > 128
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(error::invalid_input(
            field,
            format!("{value:?} is not a lab id (such as vm-12)"),
        ));
    }
    Ok(value)
}

/// A started lab task.
fn started(response: Response) -> Result<Started> {
    let task: LabTask = response.json()?;
    host::debug(&format!(
        "lab task {} ({} on {})",
        task.id, task.kind, task.vm
    ));
    Ok(Started::Job(task.id))
}

fn get_lab_vm(id: &str) -> Result<LabVm> {
    let id = id_arg("vm", id)?;
    let vm: LabVm = send(|e| http::get(&format!("{e}/vms/{id}")))?.json()?;
    let site = CONFIG.get()?.site.clone();
    if vm.site != site {
        return Err(error::not_found(format!("VM {id} at site {site}")));
    }
    Ok(vm)
}

fn nic_body(nics: &[NicSpec]) -> serde_json::Value {
    nics.iter()
        .map(|n| {
            json!({
                "network": n.network,
                "mac": n.mac,
                "ip": n.ip.as_ref().map(|ip| json!({
                    "address": ip.address,
                    "gateway": ip.gateway,
                    "dns_servers": ip.dns_servers,
                })),
            })
        })
        .collect()
}

fn check_site(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(error::invalid_input(
            field,
            format!("{value:?} is not a lab site name (such as dr)"),
        ));
    }
    Ok(())
}

impl Connector for Lab {
    fn describe() -> ConnectorInfo {
        let spec =
            |key: &str, description: &str, required: bool, default: Option<&str>| SettingSpec {
                key: key.into(),
                description: description.into(),
                required,
                default_value: default.map(Into::into),
            };
        ConnectorInfo {
            system: "Haven lab site".into(),
            description: "A site of Haven's lab simulator (`haven lab`): VMs whose disks are \
                          sparse image files, with tasks, boot delays, heartbeats and injected \
                          faults. Disk files are in the granted directory `lab`."
                .into(),
            settings: vec![
                spec(
                    "endpoint",
                    "Base URL of the lab API",
                    false,
                    Some(DEFAULT_ENDPOINT),
                ),
                spec(
                    "site",
                    "Lab site this instance manages (prod, dr)",
                    true,
                    None,
                ),
            ],
        }
    }

    fn configure(settings: Vec<Setting>) -> Result<()> {
        let settings = Settings::from(settings);
        let endpoint = settings
            .optional("endpoint")
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(error::invalid_input(
                "endpoint",
                format!("{endpoint:?} must start with http:// or https://"),
            ));
        }
        let site = settings.required("site")?.to_owned();
        check_site("site", &site)?;
        CONFIG.set(Config { endpoint, site });
        Ok(())
    }

    fn check() -> Result<Vec<CheckItem>> {
        let config = CONFIG.get()?;
        let item = |name: &str, result: Result<String>| CheckItem {
            name: name.into(),
            ok: result.is_ok(),
            detail: result.unwrap_or_else(|e| error::describe(&e)),
        };
        let health = http::get(&format!("{}/health", config.endpoint))
            .send()
            .and_then(Response::error_for_status)
            .map(|_| format!("{} answers", config.endpoint));
        if health.is_err() {
            return Ok(vec![item("reachable", health)]);
        }
        let sites =
            send(|e| http::get(&format!("{e}/sites"))).and_then(|r| r.json::<Vec<LabSite>>());
        let site = match &sites {
            Ok(list) if list.iter().any(|s| s.name == config.site) => {
                Ok(format!("site {} exists", config.site))
            }
            Ok(list) => Err(error::invalid_input(
                "site",
                format!(
                    "the lab has no site {:?} (it has {:?})",
                    config.site,
                    list.iter().map(|s| &s.name).collect::<Vec<_>>()
                ),
            )),
            Err(e) => Err(e.clone()),
        };
        Ok(vec![
            item("reachable", health),
            item("token", sites.map(|_| "accepted".into())),
            item(&format!("site {}", config.site), site),
        ])
    }
}

impl Inventory for Lab {
    fn list_vms() -> Result<Vec<Vm>> {
        let site = CONFIG.get()?.site.clone();
        let vms: Vec<LabVm> = send(|e| http::get(&format!("{e}/vms?site={site}")))?.json()?;
        host::progress(vms.len() as u64, vms.len() as u64, "listed VMs");
        Ok(vms.into_iter().map(Vm::from).collect())
    }

    fn get_vm(id: String) -> Result<Vm> {
        Ok(get_lab_vm(&id)?.into())
    }

    fn list_networks() -> Result<Vec<Network>> {
        let site = CONFIG.get()?.site.clone();
        let networks: Vec<LabNetwork> =
            send(|e| http::get(&format!("{e}/networks?site={site}")))?.json()?;
        Ok(networks
            .into_iter()
            .map(|n| Network {
                id: n.id,
                name: n.name,
                isolated: n.isolated,
            })
            .collect())
    }
}

impl Jobs for Lab {
    fn poll(job: JobId) -> Result<JobStatus> {
        let id = id_arg("job", &job)?;
        let task: LabTask = send(|e| http::get(&format!("{e}/tasks/{id}")))?.json()?;
        Ok(match task.state.as_str() {
            "running" => JobStatus::Running(JobProgress {
                percent: Some(task.percent.min(100)),
                message: format!("{} on {}", task.kind, task.vm),
            }),
            "succeeded" => JobStatus::Succeeded(task.result),
            _ => JobStatus::Failed(typed(
                None,
                task.error.unwrap_or_else(|| ApiError {
                    code: "other".into(),
                    message: format!("task {} failed", task.id),
                    field: None,
                }),
                None,
            )),
        })
    }

    fn cancel(job: JobId) -> Result<()> {
        let id = id_arg("job", &job)?;
        send(|e| http::post(&format!("{e}/tasks/{id}/cancel")))?;
        Ok(())
    }
}

impl Compute for Lab {
    fn create_vm(spec: VmSpec) -> Result<Started> {
        let site = CONFIG.get()?.site.clone();
        let mut disks = Vec::new();
        for (i, d) in spec.disks.iter().enumerate() {
            match &d.location {
                DiskLocation::File(f) if f.granted_dir == GRANTED_DIR && f.format == "raw" => {
                    disks.push(json!({ "path": f.path }));
                }
                _ => {
                    return Err(error::invalid_input(
                        format!("disks.{i}.location"),
                        format!(
                            "the lab registers raw image files in the granted directory \
                             `{GRANTED_DIR}` (such as one from disk-access.open-target)"
                        ),
                    ))
                }
            }
        }
        // `location` is `<site>/<host>`, `<host>`, or empty (the lab places the VM).
        let host = match spec.location.rsplit_once('/') {
            Some((s, _)) if s != site => {
                return Err(error::invalid_input(
                    "location",
                    format!("{:?} is not at site {site}", spec.location),
                ))
            }
            Some((_, h)) => Some(h),
            None if spec.location.is_empty() => None,
            None => Some(spec.location.as_str()),
        };
        let body = json!({
            "site": site,
            "name": spec.name,
            "host": host,
            "cpus": spec.cpus,
            "memory_mib": spec.memory_mib,
            "guest_os": spec.guest_os,
            "disks": disks,
            "nics": nic_body(&spec.nics),
        });
        started(send(|e| with_json(http::post(&format!("{e}/vms")), &body))?)
    }

    fn power_on(vm: String) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        started(send(|e| http::post(&format!("{e}/vms/{id}/power-on")))?)
    }

    fn power_off(vm: String, mode: StopMode) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        let mode = match mode {
            StopMode::Graceful => "graceful",
            StopMode::Hard => "hard",
        };
        let body = json!({ "mode": mode });
        started(send(|e| {
            with_json(http::post(&format!("{e}/vms/{id}/power-off")), &body)
        })?)
    }

    fn reconfigure_nics(vm: String, nics: Vec<NicSpec>) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        let body = json!({ "nics": nic_body(&nics) });
        started(send(|e| {
            with_json(http::post(&format!("{e}/vms/{id}/nics")), &body)
        })?)
    }

    fn delete_vm(vm: String) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        started(send(|e| http::delete(&format!("{e}/vms/{id}")))?)
    }

    fn guest_heartbeat(vm: String) -> Result<Heartbeat> {
        let id = id_arg("vm", &vm)?;
        let hb: LabHeartbeat = send(|e| http::get(&format!("{e}/vms/{id}/heartbeat")))?.json()?;
        Ok(match hb.heartbeat.as_str() {
            "ok" => Heartbeat::Ok,
            "degraded" => Heartbeat::Degraded,
            _ => Heartbeat::None,
        })
    }
}

impl VmSnapshots for Lab {
    fn list_snapshots(vm: String) -> Result<Vec<VmSnapshot>> {
        Ok(get_lab_vm(&vm)?
            .snapshots
            .into_iter()
            .map(|s| VmSnapshot {
                id: s.id,
                name: s.name,
                created_unix: s.created_unix,
                quiesced: s.quiesced,
            })
            .collect())
    }

    fn create_snapshot(vm: String, name: String, quiesce: bool) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        let body = json!({ "name": name, "quiesce": quiesce });
        started(send(|e| {
            with_json(http::post(&format!("{e}/vms/{id}/snapshots")), &body)
        })?)
    }

    fn revert_snapshot(vm: String, snapshot: String) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        let snap = id_arg("snapshot", &snapshot)?;
        started(send(|e| {
            http::post(&format!("{e}/vms/{id}/snapshots/{snap}/revert"))
        })?)
    }

    fn delete_snapshot(vm: String, snapshot: String) -> Result<Started> {
        let id = id_arg("vm", &vm)?;
        let snap = id_arg("snapshot", &snapshot)?;
        started(send(|e| {
            http::delete(&format!("{e}/vms/{id}/snapshots/{snap}"))
        })?)
    }
}

impl DiskAccess for Lab {
    fn open_disk(vm: String, disk: String, point: Option<String>) -> Result<DiskDescriptor> {
        let found = get_lab_vm(&vm)?;
        let d = found
            .disks
            .iter()
            .find(|d| d.id == disk)
            .ok_or_else(|| error::not_found(format!("disk {disk} of {vm}")))?;
        let (path, session) = match &point {
            None => (d.path.clone(), format!("{vm}/{disk}")),
            Some(point) => {
                let snap = found
                    .snapshots
                    .iter()
                    .find(|s| &s.id == point)
                    .ok_or_else(|| error::not_found(format!("snapshot {point} of {vm}")))?;
                let path = snap.disks.get(&disk).cloned().ok_or_else(|| {
                    error::not_found(format!("disk {disk} in snapshot {point} of {vm}"))
                })?;
                (path, format!("{vm}/{disk}@{point}"))
            }
        };
        Ok(DiskDescriptor {
            session,
            location: DiskLocation::File(FileLocation {
                granted_dir: GRANTED_DIR.into(),
                path,
                format: "raw".into(),
            }),
            capacity_bytes: d.size_bytes,
            writable: false,
        })
    }

    fn open_target(name: String, capacity_bytes: u64) -> Result<DiskDescriptor> {
        let body = json!({ "name": name, "size_bytes": capacity_bytes });
        let image: LabImage =
            send(|e| with_json(http::post(&format!("{e}/images")), &body))?.json()?;
        Ok(DiskDescriptor {
            session: format!("image/{name}"),
            location: DiskLocation::File(FileLocation {
                granted_dir: GRANTED_DIR.into(),
                path: image.path,
                format: "raw".into(),
            }),
            capacity_bytes: image.size_bytes,
            writable: true,
        })
    }

    fn changed_extents(session: String, since: Option<String>) -> Result<Changes> {
        // Sessions from open-disk: `vm/disk` or `vm/disk@snapshot`.
        let (vm, rest) = session
            .split_once('/')
            .filter(|(vm, _)| *vm != "image")
            .ok_or_else(|| {
                error::invalid_input(
                    "session",
                    format!("{session:?} is not a session from disk-access.open-disk"),
                )
            })?;
        let (disk, point) = match rest.split_once('@') {
            Some((d, p)) => (d, Some(id_arg("session", p)?)),
            None => (rest, None),
        };
        let (vm, disk) = (id_arg("session", vm)?, id_arg("session", disk)?);
        if since.is_some() {
            host::debug("the lab does not track writes: answering every allocated region");
        }
        let query = point.map_or_else(String::new, |p| format!("?snapshot={p}"));
        let found: LabExtents =
            send(|e| http::get(&format!("{e}/vms/{vm}/disks/{disk}/extents{query}")))?.json()?;
        Ok(Changes {
            extents: found
                .extents
                .into_iter()
                .map(|x| Extent {
                    offset: x.offset,
                    length: x.length,
                })
                .collect(),
            change_id: ALLOCATED.into(),
        })
    }

    fn close_disk(session: String) -> Result<()> {
        // Lab disks hold no lease or temporary snapshot: nothing to release.
        host::debug(&format!("closed {session}"));
        Ok(())
    }
}

haven_plugin_sdk::export_compute_connector!(Lab);

#[cfg(test)]
mod tests {
    //! The connector against a fake lab (the SDK harness); `tests/` runs it
    //! against the real lab server.
    use super::*;
    use haven_plugin_sdk::harness::{settings, FakeServer, Reply, TestHost};

    fn configure(server: &FakeServer) {
        Lab::configure(settings(&[("endpoint", &server.url()), ("site", "dr")])).unwrap();
    }

    #[test]
    fn lab_errors_become_typed_errors() {
        let server = FakeServer::start();
        server.route("POST", "/vms", |_| {
            Reply::json(
                400,
                &json!({"error": {"code": "invalid_input", "message": "bad", "field": "nics.0.network"}}),
            )
        });
        server.route("POST", "/vms/vm-1/power-on", |_| {
            Reply::json(
                409,
                &json!({"error": {"code": "conflict", "message": "vm-1 is already powered on"}}),
            )
        });
        server.route("POST", "/vms/vm-2/power-on", |_| {
            Reply::json(503, &json!({"error": {"code": "unavailable", "message": "site dr: its hosts are down"}}))
                .with_header("retry-after", "5")
        });
        server.route("GET", "/vms/vm-3/heartbeat", |_| {
            Reply::text(502, "bad gateway")
        });
        server.route("GET", "/tasks/task-1", |_| {
            Reply::json(200, &json!({"id": "task-1", "kind": "power-on", "vm": "vm-1", "state": "failed",
                                     "percent": 100, "error": {"code": "unavailable", "message": "hosts went down"}}))
        });
        server.route("GET", "/tasks/task-2", |_| {
            Reply::json(200, &json!({"id": "task-2", "kind": "create-vm", "vm": "vm-4", "state": "running", "percent": 40}))
        });
        server.route("GET", "/tasks/task-3", |_| {
            Reply::json(
                200,
                &json!({"id": "task-3", "kind": "create-vm", "vm": "vm-4", "state": "succeeded",
                                     "percent": 100, "result": "vm-4"}),
            )
        });
        TestHost::install().secret("token", "t");
        configure(&server);
        let spec = VmSpec {
            name: "x".into(),
            cpus: 1,
            memory_mib: 512,
            guest_os: String::new(),
            location: String::new(),
            disks: vec![],
            nics: vec![],
        };
        assert!(
            matches!(Lab::create_vm(spec), Err(Error::InvalidInput(i)) if i.field == "nics.0.network")
        );
        let on = Lab::power_on("vm-1".into());
        assert!(matches!(on, Err(Error::Conflict(_))), "{on:?}");
        match Lab::power_on("vm-2".into()) {
            Err(Error::Transient(t)) => assert_eq!(t.retry_after_ms, Some(5000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Lab::guest_heartbeat("vm-3".into()),
            Err(Error::Transient(_))
        ));
        assert!(matches!(
            Lab::get_vm("vm-9".into()),
            Err(Error::NotFound(_))
        ));
        assert!(
            matches!(Lab::power_on("../x".into()), Err(Error::InvalidInput(i)) if i.field == "vm")
        );
        assert!(matches!(
            Lab::poll("task-1".into()),
            Ok(JobStatus::Failed(Error::Transient(_)))
        ));
        assert!(
            matches!(Lab::poll("task-2".into()), Ok(JobStatus::Running(p)) if p.percent == Some(40))
        );
        let done = Lab::poll("task-3".into());
        assert!(
            matches!(&done, Ok(JobStatus::Succeeded(Some(id))) if id == "vm-4"),
            "{done:?}"
        );
        let auth = server.requests();
        assert!(auth
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer t")));
    }

    #[test]
    fn settings_and_descriptors_are_checked() {
        let server = FakeServer::start();
        TestHost::install().secret("token", "t");
        assert!(matches!(
            Lab::configure(settings(&[("site", "dr"), ("endpoint", "ftp://x")])),
            Err(Error::InvalidInput(i)) if i.field == "endpoint"
        ));
        assert!(matches!(
            Lab::configure(settings(&[("site", "d r")])),
            Err(Error::InvalidInput(i)) if i.field == "site"
        ));
        assert!(matches!(
            Lab::configure(settings(&[])),
            Err(Error::InvalidInput(i)) if i.field == "site"
        ));
        configure(&server);
        let spec = VmSpec {
            name: "x".into(),
            cpus: 1,
            memory_mib: 512,
            guest_os: String::new(),
            location: "prod/prod-host-1".into(),
            disks: vec![DiskSpec {
                location: DiskLocation::Nbd(NbdLocation {
                    host: "h".into(),
                    port: 10809,
                    export_name: "e".into(),
                    tls: false,
                }),
                capacity_bytes: 1,
            }],
            nics: vec![],
        };
        assert!(
            matches!(Lab::create_vm(spec.clone()), Err(Error::InvalidInput(i)) if i.field == "disks.0.location")
        );
        let spec = VmSpec {
            disks: vec![],
            ..spec
        };
        assert!(
            matches!(Lab::create_vm(spec), Err(Error::InvalidInput(i)) if i.field == "location")
        );
        assert!(server.requests().is_empty());
        assert_eq!(Lab::describe().settings.len(), 2);
    }
}
