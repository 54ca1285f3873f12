//! The commands that talk to the web API: `haven plan push|pull|list|rm|readiness`,
//! `haven run ...`, `haven token ...`, `haven audit`.
//!
//! With `--server URL[,URL...]` (or `HAVEN_SERVER`) they call the servers,
//! follow 307 redirects to the primary and try the next node when one cannot
//! be reached. Without a server they run the same API in process over the
//! embedded store `<home>/state.redb`, as the home's admin: the same code,
//! the same checks, the same answers.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use axum::body::Body;
use futures_util::StreamExt;
use haven_api::ApiState;
use haven_plan::{Mode, Plan};

use serde_json::{json, Value};
use tower::ServiceExt;

/// Where API requests go.
#[derive(clap::Args, Clone, Debug)]
pub struct Connection {
    /// Haven API servers, comma-separated (`http://10.0.0.1:7400,http://10.0.0.2:7400`);
    /// requests follow the primary. Without one, the embedded store in the home is used.
    #[arg(long, env = "HAVEN_SERVER", value_delimiter = ',', global = true)]
    server: Vec<String>,
    /// API token. Default: $HAVEN_TOKEN, else the home's admin token (`<home>/admin-token`).
    #[arg(long, env = "HAVEN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl Connection {
    /// Whether requests go to servers (else the embedded store is used).
    pub fn is_remote(&self) -> bool {
        !self.server.is_empty()
    }
}

/// `haven plan push|pull|list|rm|readiness` (plans stored on the server).
#[derive(clap::Subcommand, Debug)]
pub enum PlanRemote {
    /// Upload a plan file (created or replaced; `--if-version` guards against lost updates).
    Push {
        /// The plan file (TOML).
        file: PathBuf,
        /// Replace only if the stored plan is at this version.
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
        /// Show what would change against the stored plan; store nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Download a plan's canonical TOML.
    Pull {
        /// Plan id.
        id: String,
        /// Write here instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List stored plans with their version and readiness.
    List {
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete a stored plan.
    Rm {
        /// Plan id.
        id: String,
        /// Delete only if the stored plan is at this version.
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Run a readiness check of a stored plan now.
    Readiness {
        /// Plan id.
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
}

/// `haven run ...`: executions.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(subcommand)]
    command: RunCommand,
    #[command(flatten)]
    conn: Connection,
}

#[derive(clap::Subcommand, Debug)]
enum RunCommand {
    /// Start an execution of a stored plan.
    Start {
        /// Plan id.
        plan: String,
        /// Mode.
        #[arg(long, value_enum)]
        mode: Mode,
        /// Follow its events until it finishes or waits for approval.
        #[arg(long)]
        watch: bool,
    },
    /// List executions, newest first.
    List {
        /// Only this plan's.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Show an execution's status and steps.
    Show {
        /// Execution id.
        id: String,
    },
    /// Approve a waiting approval step.
    Approve {
        /// Execution id.
        id: String,
        /// Step index (default: the only step waiting).
        #[arg(long)]
        step: Option<usize>,
    },
    /// Cancel: no new step starts except cleanup.
    Cancel {
        /// Execution id.
        id: String,
    },
    /// Drive an interrupted execution again.
    Resume {
        /// Execution id.
        id: String,
    },
    /// Follow an execution's events live, until it finishes or an approval waits.
    Watch {
        /// Execution id.
        id: String,
    },
    /// Write an execution's report (and evidence pack).
    Report {
        /// Execution id.
        id: String,
        /// Write the printable HTML report here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Write the evidence pack (journal with hash chain) here.
        #[arg(long, value_name = "FILE")]
        evidence: Option<PathBuf>,
    },
}

/// `haven token ...`: API tokens (admin).
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    conn: Connection,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; prints it once.
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
        /// viewer, author, operator or admin.
        #[arg(long)]
        role: String,
        /// Plan set in scope (repeatable; default: all).
        #[arg(long = "plan-set", value_name = "SET")]
        plan_sets: Vec<String>,
    },
    /// List tokens (without secrets).
    List,
    /// Revoke a token.
    Revoke {
        /// Token id (the part after `hvn_`).
        id: String,
    },
}

/// `haven audit`: the audit log (admin).
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Only entries after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    conn: Connection,
}

/// Extra request headers.
type Headers = Vec<(&'static str, String)>;

fn if_match(version: Option<u64>) -> Headers {
    version
        .map(|v| ("If-Match", format!("\"{v}\"")))
        .into_iter()
        .collect()
}

/// An API answer.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON when 2xx; else the API's error as one line.
    fn json(self) -> anyhow::Result<Value> {
        self.ok()?;
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).context("the server answered something that is not JSON")
    }

    fn ok(&self) -> anyhow::Result<()> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| {
                let e = &v["error"];
                let message = e["message"].as_str()?.to_owned();
                Some(match e["field"].as_str() {
                    Some(field) => format!("{message} (field `{field}`)"),
                    None => message,
                })
            })
            .unwrap_or_else(|| format!("HTTP {}: {}", self.status, self.text().trim()));
        Err(anyhow!(message))
    }
}

/// Sends API requests to servers or to the embedded API.
pub(crate) struct Client {
    transport: Transport,
    token: String,
}

enum Transport {
    /// Known nodes; the one that answered last (the primary) first.
    Remote(Arc<Mutex<Vec<String>>>),
    /// The API in process over the embedded store.
    Embedded(ApiState),
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// The `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let rest = url.find("://").map_or(0, |i| i + 3);
    url[rest..].find('/').map_or(url, |i| &url[..rest + i])
}

impl Client {
    pub(crate) async fn connect(conn: &Connection, home: &Path) -> anyhow::Result<Self> {
        let token = |home: &Path| -> anyhow::Result<String> {
            if let Some(t) = &conn.token {
                return Ok(t.trim().to_owned());
            }
            let file = home.join(haven_api::auth::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&file)
                .map(|t| t.trim().to_owned())
                .with_context(|| {
                    format!("no API token: pass --token or set HAVEN_TOKEN (the admin token is in {} on the server)", file.display())
                })
        };
        if !conn.server.is_empty() {
            let servers: Vec<String> = conn
                .server
                .iter()
                .map(|s| s.trim().trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(bad) = servers
                .iter()
                .find(|s| !s.starts_with("http://") && !s.starts_with("https://"))
            {
                bail!("--server {bad:?}: expected a URL such as http://127.0.0.1:7400");
            }
            return Ok(Self {
                token: token(home)?,
                transport: Transport::Remote(Arc::new(Mutex::new(servers))),
            });
        }
        let state = crate::app::assemble(home, crate::app::open_embedded(home)?).await?;
        Ok(Self {
            token: token(home)?,
            transport: Transport::Embedded(state),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        headers: Headers,
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        let path = format!("/api/v1{path}");
        match &self.transport {
            Transport::Embedded(state) => {
                let mut request = axum::http::Request::builder()
                    .method(method)
                    .uri(&path)
                    .header("Authorization", format!("Bearer {}", self.token));
                if let Some(ct) = content_type {
                    request = request.header("Content-Type", ct);
                }
                for (name, value) in &headers {
                    request = request.header(*name, value);
                }
                let response = haven_api::router(state.clone())
                    .oneshot(request.body(Body::from(body))?)
                    .await?;
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                Ok(Reply {
                    status,
                    body: body.to_vec(),
                })
            }
            Transport::Remote(servers) => {
                let (servers, method, token) =
                    (servers.clone(), method.to_owned(), self.token.clone());
                let content_type = content_type.map(str::to_owned);
                tokio::task::spawn_blocking(move || {
                    remote(
                        &servers,
                        &method,
                        &path,
                        &token,
                        content_type.as_deref(),
                        &headers,
                        &body,
                        |r| {
                            let status = r.status().as_u16();
                            let body = r.into_body().read_to_vec()?;
                            Ok(Reply { status, body })
                        },
                    )
                })
                .await?
            }
        }
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send("GET", path, None, Vec::new(), Vec::new())
            .await?
            .json()
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send("DELETE", path, None, Vec::new(), Vec::new())
            .await?
            .ok()
    }

    pub(crate) async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (ct, bytes) = match body {
            Some(v) => (Some("application/json"), serde_json::to_vec(&v)?),
            None => (None, Vec::new()),
        };
        self.send("POST", path, ct, Vec::new(), bytes).await?.json()
    }

    /// Prints an execution's events until it finishes (or, embedded, until
    /// nothing drives it any more); returns its final status.
    async fn watch(&self, id: &str) -> anyhow::Result<String> {
        let path = format!("/api/v1/executions/{}/events", encode(id));
        match &self.transport {
            Transport::Embedded(state) => {
                // Embedded, this process drives the run: follow until idle.
                let request = axum::http::Request::builder()
                    .uri(&path)
                    .header("Authorization", format!("Bearer {}", self.token))
                    .body(Body::empty())?;
                let response = haven_api::router(state.clone()).oneshot(request).await?;
                if !response.status().is_success() {
                    let status = response.status().as_u16();
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                    Reply {
                        status,
                        body: body.to_vec(),
                    }
                    .ok()?;
                    bail!("the API answered HTTP {status} to the event stream");
                }
                let mut stream = response.into_body().into_data_stream();
                let idle = state.orchestrator().wait_idle(id);
                tokio::pin!(idle);
                let mut lines = SseLines::default();
                loop {
                    tokio::select! {
                        chunk = stream.next() => match chunk {
                            Some(chunk) => lines.feed(&chunk?),
                            None => break,
                        },
                        () = &mut idle => {
                            // Drain what was journaled before the driver stopped.
                            while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                                lines.feed(&chunk?);
                            }
                            break;
                        }
                    }
                }
            }
            Transport::Remote(servers) => {
                let view = self.get(&format!("/executions/{}", encode(id))).await?;
                let settled = view["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| {
                        matches!(
                            s["state"].as_str(),
                            Some("succeeded" | "failed" | "skipped")
                        )
                    })
                    .filter_map(|s| s["index"].as_u64())
                    .collect();
                let (servers, token) = (servers.clone(), self.token.clone());
                tokio::task::spawn_blocking(move || {
                    remote(&servers, "GET", &path, &token, None, &[], &[], |r| {
                        if !r.status().is_success() {
                            let status = r.status().as_u16();
                            let body = r.into_body().read_to_vec()?;
                            Reply { status, body }.ok()?;
                            return Ok(());
                        }
                        let mut lines = SseLines {
                            settled,
                            ..SseLines::default()
                        };
                        // The stream stays open while an approval waits; the
                        // watcher's job ends when the operator's turn comes.
                        for line in BufReader::new(r.into_body().into_reader()).lines() {
                            lines.line(&line?);
                            if lines.operator_turn {
                                break;
                            }
                        }
                        Ok(())
                    })
                })
                .await??;
            }
        }
        let view = self.get(&format!("/executions/{}", encode(id))).await?;
        Ok(view["status"].as_str().unwrap_or_default().to_owned())
    }

    /// Embedded, the process must not exit while this command's execution
    /// runs: wait until nothing drives it.
    async fn settle(&self, id: &str) {
        if let Transport::Embedded(state) = &self.transport {
            state.orchestrator().wait_idle(id).await;
        }
    }
}

/// Sends one request to the first node that answers, following redirects
/// to the primary (remembered for the next request), and hands the response
/// to `read`.
#[allow(clippy::too_many_arguments)]
fn remote<T>(
    servers: &Mutex<Vec<String>>,
    method: &str,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    headers: &[(&'static str, String)],
    body: &[u8],
    read: impl FnOnce(ureq::http::Response<ureq::Body>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let nodes = servers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let agent = agent();
    let mut failures = Vec::new();
    for node in &nodes {
        let mut url = format!("{node}{path}");
        for _hop in 0..5 {
            let mut request = ureq::http::Request::builder()
                .method(method)
                .uri(&url)
                .header("Authorization", format!("Bearer {token}"));
            if let Some(ct) = content_type {
                request = request.header("Content-Type", ct);
            }
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let response = match agent.run(request.body(body.to_vec())?) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{}: {e}", origin(&url)));
                    break;
                }
            };
            if response.status().as_u16() == 307 {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| anyhow!("{node} redirected without a Location"))?
                    .to_owned();
                tracing::debug!(from = %url, to = %location, "following the primary");
                let primary = origin(&location).to_owned();
                let mut known = servers.lock().unwrap_or_else(|p| p.into_inner());
                known.retain(|s| *s != primary);
                known.insert(0, primary);
                url = location;
                continue;
            }
            let answered = origin(&url).to_owned();
            let mut known = servers.lock().unwrap_or_else(|p| p.into_inner());
            if known.first() != Some(&answered) {
                known.retain(|s| *s != answered);
                known.insert(0, answered);
            }
            drop(known);
            return read(response);
        }
    }
    bail!(
        "cannot reach any Haven server ({}); is `haven serve` running? (check --server / HAVEN_SERVER)",
        failures.join("; ")
    )
}

/// Percent-encodes a path segment.
pub(crate) fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints server-sent events as one line each; notes when an operator is
/// needed (an approval) or the execution is over.
#[derive(Default)]
struct SseLines {
    pending: String,
    /// Steps already over when watching began: their old approval requests
    /// are history, not a turn for the operator.
    settled: std::collections::BTreeSet<u64>,
    /// An approval now waits, or the execution finished.
    operator_turn: bool,
}

impl SseLines {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.push_str(&String::from_utf8_lossy(bytes));
        while let Some(i) = self.pending.find('\n') {
            let line: String = self.pending.drain(..=i).collect();
            self.line(line.trim_end());
        }
    }

    fn line(&mut self, line: &str) {
        let Some(data) = line.strip_prefix("data:") else {
            return;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            return;
        };
        println!("{}", describe_event(&event));
        let _ = std::io::stdout().flush();
        self.operator_turn |= match event["event"].as_str() {
            Some("execution-finished") => true,
            Some("approval-requested") => event["step"]
                .as_u64()
                .is_some_and(|step| !self.settled.contains(&step)),
            _ => false,
        };
    }
}

fn describe_event(e: &Value) -> String {
    let kind = e["event"].as_str().unwrap_or("?");
    let step = e["step"]
        .as_u64()
        .map(|s| format!(" step {s}"))
        .unwrap_or_default();
    let detail = [
        "key", "detail", "error", "reason", "message", "by", "outcome",
    ]
    .iter()
    .filter_map(|k| e[*k].as_str().map(|v| format!(" {k}={v}")))
    .collect::<String>();
    format!(
        "#{:<4} {kind}{step}{detail}",
        e["seq"].as_u64().unwrap_or(0)
    )
}

fn print_execution(view: &Value) {
    println!(
        "{}  plan {}  mode {}  status {}  started by {}",
        view["id"].as_str().unwrap_or_default(),
        view["plan"].as_str().unwrap_or_default(),
        view["mode"].as_str().unwrap_or_default(),
        view["status"].as_str().unwrap_or_default(),
        view["started_by"].as_str().unwrap_or_default()
    );
    for s in view["steps"].as_array().into_iter().flatten() {
        let error = s["error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        println!(
            "  {:>3}  {:<18} {}{error}",
            s["index"],
            s["state"].as_str().unwrap_or_default(),
            s["key"].as_str().unwrap_or_default()
        );
    }
}

/// Fails (exit 1) unless the execution ended well or waits for an operator.
fn check_status(id: &str, status: &str) -> anyhow::Result<()> {
    if status == "awaiting-approval" {
        println!("approve with `haven run approve {id}`");
    }
    match status {
        "failed" => bail!("execution {id} failed; `haven run show {id}` lists the failed steps"),
        "cancelled" => bail!("execution {id} was cancelled"),
        _ => Ok(()),
    }
}

/// Runs `haven plan push|pull|list|rm|readiness`.
pub async fn run_plan(cmd: PlanRemote, home: PathBuf) -> anyhow::Result<()> {
    match cmd {
        PlanRemote::Push {
            file,
            if_version,
            dry_run,
            conn,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let plan = Plan::from_toml(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let client = Client::connect(&conn, &home).await?;
            let path = format!("/plans/{}", encode(plan.id.as_str()));
            if dry_run {
                let reply = client
                    .send(
                        "POST",
                        &format!("{path}/diff"),
                        Some("application/toml"),
                        Vec::new(),
                        text.into_bytes(),
                    )
                    .await?;
                let answer = reply.json()?;
                let changes = answer["text"].as_str().unwrap_or_default();
                if changes.trim().is_empty() {
                    println!(
                        "plan {}: no changes against version {}",
                        plan.id, answer["version"]
                    );
                } else {
                    println!(
                        "plan {}: changes against version {}:\n{}",
                        plan.id,
                        answer["version"],
                        changes.trim_end()
                    );
                }
                return Ok(());
            }
            let reply = client
                .send(
                    "PUT",
                    &path,
                    Some("application/toml"),
                    if_match(if_version),
                    text.into_bytes(),
                )
                .await?;
            let answer = reply.json()?;
            println!("plan {} stored: version {}", plan.id, answer["version"]);
            for w in answer["warnings"].as_array().into_iter().flatten() {
                println!(
                    "warning: {}: {}",
                    w["path"].as_str().unwrap_or_default(),
                    w["message"].as_str().unwrap_or_default()
                );
            }
        }
        PlanRemote::Pull { id, output, conn } => {
            let client = Client::connect(&conn, &home).await?;
            let reply = client
                .send(
                    "GET",
                    &format!("/plans/{}", encode(&id)),
                    None,
                    vec![("Accept", "application/toml".into())],
                    Vec::new(),
                )
                .await?;
            reply.ok()?;
            match output {
                Some(path) => std::fs::write(&path, &reply.body)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().write_all(&reply.body)?,
            }
        }
        PlanRemote::List { conn } => {
            let client = Client::connect(&conn, &home).await?;
            let plans = client.get("/plans").await?;
            println!(
                "{:<24} {:>7}  {:<14} {:<11} NAME",
                "ID", "VERSION", "SET", "READINESS"
            );
            for p in plans.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>7}  {:<14} {:<11} {}",
                    p["id"].as_str().unwrap_or_default(),
                    p["version"],
                    p["plan_set"].as_str().unwrap_or_default(),
                    if p["verified"] == true {
                        "verified"
                    } else {
                        "unverified"
                    },
                    p["name"].as_str().unwrap_or_default()
                );
            }
        }
        PlanRemote::Rm {
            id,
            if_version,
            conn,
        } => {
            let client = Client::connect(&conn, &home).await?;
            let path = format!("/plans/{}", encode(&id));
            client
                .send("DELETE", &path, None, if_match(if_version), Vec::new())
                .await?
                .ok()?;
            println!("plan {id} deleted");
        }
        PlanRemote::Readiness { id, conn } => {
            let client = Client::connect(&conn, &home).await?;
            let answer = client
                .post(&format!("/plans/{}/readiness", encode(&id)), None)
                .await?;
            let problems = answer["last"]["problems"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for p in &problems {
                println!(
                    "problem: {}: {}",
                    p["path"].as_str().unwrap_or_default(),
                    p["message"].as_str().unwrap_or_default()
                );
            }
            if answer["verified"] != true {
                bail!("plan {id} is not ready: {} problem(s)", problems.len());
            }
            println!("plan {id} is ready (verified)");
        }
    }
    Ok(())
}

/// Runs `haven run ...`.
pub async fn run_run(args: RunArgs, home: PathBuf) -> anyhow::Result<()> {
    let client = Client::connect(&args.conn, &home).await?;
    match args.command {
        RunCommand::Start { plan, mode, watch } => {
            let view = client
                .post("/executions", Some(json!({"plan": plan, "mode": mode})))
                .await?;
            let id = view["id"].as_str().unwrap_or_default().to_owned();
            println!("execution {id} started");
            let embedded = matches!(client.transport, Transport::Embedded(_));
            if watch || embedded {
                let status = client.watch(&id).await?;
                println!("execution {id}: {status}");
                check_status(&id, &status)?;
            }
        }
        RunCommand::List { plan } => {
            let path = match plan {
                Some(p) => format!("/executions?plan={}", encode(&p)),
                None => "/executions".into(),
            };
            let list = client.get(&path).await?;
            println!(
                "{:<32} {:<24} {:<10} {:<18} STARTED BY",
                "ID", "PLAN", "MODE", "STATUS"
            );
            for x in list.as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:<24} {:<10} {:<18} {}",
                    x["id"].as_str().unwrap_or_default(),
                    x["plan"].as_str().unwrap_or_default(),
                    x["mode"].as_str().unwrap_or_default(),
                    x["status"].as_str().unwrap_or_default(),
                    x["started_by"].as_str().unwrap_or_default()
                );
            }
        }
        RunCommand::Show { id } => {
            print_execution(&client.get(&format!("/executions/{}", encode(&id))).await?)
        }
        RunCommand::Approve { id, step } => {
            let step = match step {
                Some(s) => s,
                None => {
                    let view = client.get(&format!("/executions/{}", encode(&id))).await?;
                    let waiting: Vec<u64> = view["steps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|s| s["state"] == "awaiting-approval")
                        .filter_map(|s| s["index"].as_u64())
                        .collect();
                    match waiting.as_slice() {
                        [one] => *one as usize,
                        [] => bail!("execution {id} has no step waiting for approval"),
                        many => bail!(
                            "execution {id} has several steps waiting ({many:?}); pass --step"
                        ),
                    }
                }
            };
            client
                .post(
                    &format!("/executions/{}/approve", encode(&id)),
                    Some(json!({"step": step})),
                )
                .await?;
            println!("step {step} of execution {id} approved");
            after_action(&client, &id).await?;
        }
        RunCommand::Cancel { id } => {
            client
                .post(&format!("/executions/{}/cancel", encode(&id)), None)
                .await?;
            println!("execution {id}: cancel requested");
            after_action(&client, &id).await?;
        }
        RunCommand::Resume { id } => {
            client
                .post(&format!("/executions/{}/resume", encode(&id)), None)
                .await?;
            println!("execution {id} resumed");
            after_action(&client, &id).await?;
        }
        RunCommand::Watch { id } => {
            let status = client.watch(&id).await?;
            println!("execution {id}: {status}");
            check_status(&id, &status)?;
        }
        RunCommand::Report { id, html, evidence } => {
            let report = client
                .get(&format!("/executions/{}/report", encode(&id)))
                .await?;
            if let Some(path) = html {
                let page = client
                    .send(
                        "GET",
                        &format!("/executions/{}/report?format=html", encode(&id)),
                        None,
                        Vec::new(),
                        Vec::new(),
                    )
                    .await?;
                page.ok()?;
                std::fs::write(&path, &page.body)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(path) = evidence {
                let pack = client
                    .get(&format!("/executions/{}/evidence", encode(&id)))
                    .await?;
                std::fs::write(&path, serde_json::to_vec_pretty(&pack)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

/// Embedded, drive the execution until it is idle and report where it stands.
async fn after_action(client: &Client, id: &str) -> anyhow::Result<()> {
    if matches!(client.transport, Transport::Embedded(_)) {
        client.settle(id).await;
        let view = client.get(&format!("/executions/{}", encode(id))).await?;
        let status = view["status"].as_str().unwrap_or_default();
        println!("execution {id}: {status}");
        check_status(id, status)?;
    }
    Ok(())
}

/// Runs `haven token ...`.
pub async fn run_token(args: TokenArgs, home: PathBuf) -> anyhow::Result<()> {
    let client = Client::connect(&args.conn, &home).await?;
    match args.command {
        TokenCommand::Create {
            name,
            role,
            plan_sets,
        } => {
            let sets = if plan_sets.is_empty() {
                vec!["*".to_owned()]
            } else {
                plan_sets
            };
            let created = client
                .post(
                    "/tokens",
                    Some(json!({"name": name, "role": role, "plan_sets": sets})),
                )
                .await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "token {} created; this is the only time its secret is shown",
                created["id"].as_str().unwrap_or_default()
            );
        }
        TokenCommand::List => {
            let tokens = client.get("/tokens").await?;
            println!("{:<14} {:<9} {:<20} NAME", "ID", "ROLE", "PLAN SETS");
            for t in tokens.as_array().into_iter().flatten() {
                let sets: Vec<&str> = t["plan_sets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<14} {:<9} {:<20} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["role"].as_str().unwrap_or_default(),
                    sets.join(","),
                    t["name"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .send(
                    "DELETE",
                    &format!("/tokens/{}", encode(&id)),
                    None,
                    Vec::new(),
                    Vec::new(),
                )
                .await?
                .ok()?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

/// Runs `haven audit`.
pub async fn run_audit(args: AuditArgs, home: PathBuf) -> anyhow::Result<()> {
    let client = Client::connect(&args.conn, &home).await?;
    let entries = client.get(&format!("/audit?after={}", args.after)).await?;
    for e in entries.as_array().into_iter().flatten() {
        let detail = e["detail"]
            .as_str()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        println!(
            "#{:<5} {} {:<18} {:<32} {:<10} {}{detail}",
            e["seq"],
            e["at_ms"],
            e["action"].as_str().unwrap_or_default(),
            e["target"].as_str().unwrap_or_default(),
            e["outcome"].as_str().unwrap_or_default(),
            e["who"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
