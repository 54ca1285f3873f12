//! An example Haven connector, built with `haven-plugin-sdk`.
//!
//! It reads VMs and networks from a small JSON HTTP API, the shape many CMDBs
//! and inventory services have:
//! - `POST /api/session` with `{"user", "password"}` answers `{"session": "..."}`;
//! - `GET /api/vms`, `GET /api/vms/{id}` and `GET /api/networks` need the header
//!   `x-session: <session>` and answer 401 when the session has expired.
//!
//! The session is kept in the instance's key-value store, so it survives a
//! re-instantiation of the plugin, and is renewed once on a 401.

use haven_plugin_sdk::http::{self, Request, Response};
use haven_plugin_sdk::types::*;
use haven_plugin_sdk::{
    error, host, parse_tag, Configured, Connector, Inventory, Result, Settings,
};
use serde::Deserialize;

/// The connector.
pub struct Example;

struct Config {
    endpoint: String,
    user: String,
}

static CONFIG: Configured<Config> = Configured::new();

const SESSION_KEY: &str = "session";

#[derive(Deserialize)]
struct SessionReply {
    session: String,
}

#[derive(Deserialize)]
struct ApiVm {
    id: String,
    name: String,
    power: String,
    cpus: u32,
    memory_mib: u64,
    #[serde(default)]
    guest_os: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    disks: Vec<ApiDisk>,
    #[serde(default)]
    nics: Vec<ApiNic>,
}

#[derive(Deserialize)]
struct ApiDisk {
    id: String,
    size_bytes: u64,
}

#[derive(Deserialize)]
struct ApiNic {
    id: String,
    network: String,
    mac: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Deserialize)]
struct ApiNetwork {
    id: String,
    name: String,
    #[serde(default)]
    isolated: bool,
}

impl From<ApiVm> for Vm {
    fn from(v: ApiVm) -> Self {
        Vm {
            id: v.id,
            name: v.name,
            power_state: match v.power.as_str() {
                "on" => PowerState::PoweredOn,
                "off" => PowerState::PoweredOff,
                "suspended" => PowerState::Suspended,
                _ => PowerState::Unknown,
            },
            cpus: v.cpus,
            memory_mib: v.memory_mib,
            guest_os: v.guest_os,
            location: v.location,
            tags: v.tags.iter().map(|t| parse_tag(t)).collect(),
            disks: v
                .disks
                .into_iter()
                .map(|d| DiskInfo {
                    label: d.id.clone(),
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
                    mac: n.mac,
                    ips: n.ips,
                })
                .collect(),
        }
    }
}

fn login(config: &Config) -> Result<String> {
    let password = host::secret("password")?;
    let reply: SessionReply = http::post(&format!("{}/api/session", config.endpoint))
        .json(&serde_json::json!({ "user": config.user, "password": password }))?
        .send()?
        .error_for_status()?
        .json()?;
    host::kv::set(SESSION_KEY, reply.session.as_bytes())?;
    host::debug("logged in; session stored");
    Ok(reply.session)
}

/// Sends an authenticated request, logging in first if needed and once more
/// if the session has expired.
fn authenticated(build: impl Fn(&Config) -> Request) -> Result<Response> {
    let config = CONFIG.get()?;
    let session = match host::kv::get_string(SESSION_KEY) {
        Some(s) => s,
        None => login(&config)?,
    };
    let response = build(&config).header("x-session", &session).send()?;
    if response.status != 401 {
        return response.error_for_status();
    }
    host::info("session expired; logging in again");
    let session = login(&config)?;
    build(&config)
        .header("x-session", &session)
        .send()?
        .error_for_status()
}

impl Connector for Example {
    fn describe() -> ConnectorInfo {
        let spec =
            |key: &str, description: &str, required: bool, default: Option<&str>| SettingSpec {
                key: key.into(),
                description: description.into(),
                required,
                default_value: default.map(Into::into),
            };
        ConnectorInfo {
            system: "JSON inventory API".into(),
            description: "VMs and networks from an HTTP API with session login (example).".into(),
            settings: vec![
                spec(
                    "endpoint",
                    "Base URL, such as https://cmdb.example.com",
                    true,
                    None,
                ),
                spec("user", "User name to log in with", false, Some("haven")),
            ],
        }
    }

    fn configure(settings: Vec<Setting>) -> Result<()> {
        let settings = Settings::from(settings);
        let endpoint = settings
            .required("endpoint")?
            .trim_end_matches('/')
            .to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(error::invalid_input(
                "endpoint",
                format!("{endpoint:?} must start with http:// or https://"),
            ));
        }
        let user = settings.optional("user").unwrap_or("haven").to_owned();
        CONFIG.set(Config { endpoint, user });
        Ok(())
    }

    fn check() -> Result<Vec<CheckItem>> {
        let config = CONFIG.get()?;
        let login = login(&config);
        let ok = login.is_ok();
        Ok(vec![CheckItem {
            name: "login".into(),
            ok,
            detail: match login {
                Ok(_) => format!("logged in to {} as {}", config.endpoint, config.user),
                Err(e) => error::describe(&e),
            },
        }])
    }
}

impl Inventory for Example {
    fn list_vms() -> Result<Vec<Vm>> {
        let vms: Vec<ApiVm> =
            authenticated(|c| http::get(&format!("{}/api/vms", c.endpoint)))?.json()?;
        host::progress(vms.len() as u64, vms.len() as u64, "listed VMs");
        Ok(vms.into_iter().map(Vm::from).collect())
    }

    fn get_vm(id: String) -> Result<Vm> {
        if id.is_empty() || id.contains(['/', '?', '#']) {
            return Err(error::invalid_input("id", format!("{id:?} is not a VM id")));
        }
        let vm: ApiVm =
            authenticated(|c| http::get(&format!("{}/api/vms/{id}", c.endpoint)))?.json()?;
        Ok(vm.into())
    }

    fn list_networks() -> Result<Vec<Network>> {
        let networks: Vec<ApiNetwork> =
            authenticated(|c| http::get(&format!("{}/api/networks", c.endpoint)))?.json()?;
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

haven_plugin_sdk::export_inventory_connector!(Example);

#[cfg(test)]
mod tests {
    //! The connector run natively against a fake API, with the SDK's harness.
    use super::*;
    use haven_plugin_sdk::harness::{settings, FakeServer, Reply, TestHost};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn api() -> FakeServer {
        let server = FakeServer::start();
        let logins = Arc::new(AtomicUsize::new(0));
        let l = logins.clone();
        server.route("POST", "/api/session", move |req| {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            if body["password"] != "s3cret" {
                return Reply::json(401, &json!({"error": "bad password"}));
            }
            let n = l.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(200, &json!({ "session": format!("s{n}") }))
        });
        server.route("GET", "/api/vms", |req| {
            if req.header("x-session") != Some("s1") && req.header("x-session") != Some("s2") {
                return Reply::json(401, &json!({}));
            }
            Reply::json(
                200,
                &json!([
                    {"id": "vm-1", "name": "db", "power": "on", "cpus": 4, "memory_mib": 8192,
                     "tags": ["tier=db", "critical"], "disks": [{"id": "d0", "size_bytes": 1024}],
                     "nics": [{"id": "n0", "network": "prod", "mac": "00:11:22:33:44:55", "ips": ["10.0.0.5"]}]},
                    {"id": "vm-2", "name": "web", "power": "off", "cpus": 2, "memory_mib": 2048,
                     "tags": ["tier=web"]}
                ]),
            )
        });
        server
    }

    fn configure(server: &FakeServer) {
        Example::configure(settings(&[("endpoint", &server.url())])).unwrap();
    }

    #[test]
    fn lists_vms_with_session_login() {
        let server = api();
        let host = TestHost::install().secret("password", "s3cret");
        configure(&server);
        let vms = Example::list_vms().unwrap();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].power_state, PowerState::PoweredOn);
        assert_eq!(vms[0].tags[1].key, "critical");
        assert_eq!(vms[0].nics[0].ips, vec!["10.0.0.5".to_owned()]);
        assert_eq!(host.kv().get(SESSION_KEY).unwrap(), b"s1");
        // The session is reused: one login for two listings.
        Example::list_vms().unwrap();
        let logins = server
            .requests()
            .iter()
            .filter(|r| r.path == "/api/session")
            .count();
        assert_eq!(logins, 1);
    }

    #[test]
    fn renews_an_expired_session_once() {
        let server = api();
        let host = TestHost::install().secret("password", "s3cret");
        configure(&server);
        haven_plugin_sdk::host::kv::set(SESSION_KEY, b"expired").unwrap();
        assert_eq!(Example::list_vms().unwrap().len(), 2);
        assert_eq!(host.kv().get(SESSION_KEY).unwrap(), b"s1");
        assert!(host
            .logs()
            .iter()
            .any(|(_, m)| m.contains("session expired")));
    }

    #[test]
    fn derived_find_and_get_use_the_listing() {
        let server = api();
        TestHost::install().secret("password", "s3cret");
        configure(&server);
        let selector = TagSelector {
            all_of: vec![Tag {
                key: "tier".into(),
                value: "web".into(),
            }],
        };
        let found = Example::find_vms(selector).unwrap();
        assert_eq!(
            found.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["web"]
        );
    }

    #[test]
    fn errors_are_typed() {
        let server = api();
        TestHost::install().secret("password", "wrong");
        configure(&server);
        assert!(matches!(Example::list_vms(), Err(Error::Auth(_))));
        assert!(
            matches!(Example::get_vm("a/b".into()), Err(Error::InvalidInput(i)) if i.field == "id")
        );
        TestHost::install();
        configure(&server);
        assert!(
            matches!(Example::list_vms(), Err(Error::InvalidInput(i)) if i.field == "secrets.password")
        );
        assert!(matches!(
            Example::configure(settings(&[("endpoint", "ftp://x")])),
            Err(Error::InvalidInput(i)) if i.field == "endpoint"
        ));
        assert!(matches!(
            Example::configure(settings(&[])),
            Err(Error::InvalidInput(i)) if i.field == "endpoint"
        ));
        TestHost::install().secret("password", "s3cret");
        configure(&server);
        assert!(matches!(Example::list_networks(), Err(Error::NotFound(_))));
    }
}
