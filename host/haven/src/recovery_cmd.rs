//! `haven protect` (replicate lab or vendor VMs into a repository and record
//! them in the replica catalog, through the API or on the embedded store)
//! and `haven readiness` (check a plan against live connectors and the
//! catalog).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use haven_engine::catalog;
use haven_engine::executor::Clock;
use haven_engine::protection::{self, Protector, Target};
use haven_engine::readiness::{self, ReadinessChecker};
use haven_engine::replication::Replicator;
use haven_engine::resolve::{ConnectorResolver, Resolver};
use haven_plan::{Plan, VmRef};
use serde_json::json;

use crate::{api_cmd, app};

/// Arguments of `haven protect`.
#[derive(clap::Args)]
pub struct ProtectArgs {
    /// Production VM as `<connector instance>/<vm name>` (repeatable).
    #[arg(long = "vm", value_name = "CONNECTOR/VM", required_unless_present_any = ["list", "remove"])]
    vms: Vec<String>,
    /// Connector instance of the recovery site the VMs are recovered to.
    #[arg(long, value_name = "CONNECTOR", required_unless_present_any = ["list", "remove"])]
    to: Option<String>,
    /// Transport repository directory (created if missing; with --server, a
    /// directory on the server's host, made absolute here).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["list", "remove"])]
    repo: Option<PathBuf>,
    /// VMs replicated at once (without --server; the server replicates 4 at once).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Keep protecting: take a new point of every VM this often (`15m`).
    /// With --server, stored as a schedule the primary runs; without, this
    /// command loops until interrupted. VMs whose replication is stopped are skipped.
    #[arg(long, value_name = "DURATION")]
    every: Option<haven_plan::HumanDuration>,
    /// List the replication schedules instead.
    #[arg(long, conflicts_with_all = ["vms", "to", "repo", "every", "remove"])]
    list: bool,
    /// Remove the replication schedule of a VM (`<connector>/<vm>`); its
    /// catalog entry and points stay.
    #[arg(long, value_name = "CONNECTOR/VM", conflicts_with_all = ["vms", "to", "repo", "every"])]
    remove: Option<String>,
    #[command(flatten)]
    conn: api_cmd::Connection,
}

/// Arguments of `haven readiness`.
#[derive(clap::Args)]
pub struct ReadinessArgs {
    /// The plan file (TOML).
    plan: PathBuf,
    /// Write the JSON report here (default: print it).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the printable HTML report here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Also write the plan-definition report (groups in recovery order,
    /// steps per mode, targets, networks) as JSON here.
    #[arg(long, value_name = "FILE")]
    definition_json: Option<PathBuf>,
    /// Also write the plan-definition report as printable HTML here.
    #[arg(long, value_name = "FILE")]
    definition_html: Option<PathBuf>,
}

/// Runs `haven protect`: through the API with `--server` (the primary
/// replicates and runs the schedule), else on the embedded store.
pub async fn run_protect(args: ProtectArgs, home: PathBuf) -> anyhow::Result<()> {
    if args.list {
        return list_schedules(&args.conn, &home).await;
    }
    if let Some(vm) = &args.remove {
        return remove_schedule(&args.conn, &home, vm).await;
    }
    let (Some(to), Some(repo)) = (args.to.clone(), args.repo.clone()) else {
        bail!("--to and --repo are required to protect VMs");
    };
    let vms = args
        .vms
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            protection::parse_vm(vm, &format!("--vm #{}", i + 1)).map_err(|e| anyhow!("{e}"))
        })
        .collect::<anyhow::Result<Vec<VmRef>>>()?;
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let repo = std::path::absolute(&repo).with_context(|| format!("--repo {}", repo.display()))?;
    if args.conn.is_remote() {
        protect_remote(&args, &home, &to, &repo).await
    } else {
        protect_embedded(&args, &home, vms, to, repo).await
    }
}

/// `POST /replicas/protect`; prints one line per VM, and the schedule.
async fn protect_remote(
    args: &ProtectArgs,
    home: &Path,
    to: &str,
    repo: &Path,
) -> anyhow::Result<()> {
    let client = api_cmd::Client::connect(&args.conn, home).await?;
    let mut body = json!({"vms": args.vms, "to": to, "repository": repo});
    if let Some(every) = args.every {
        body["every"] = json!(every.to_string());
    }
    let answer = client.post("/replicas/protect", Some(body)).await?;
    let mut failed = Vec::new();
    for r in answer["results"].as_array().into_iter().flatten() {
        let vm = r["vm"].as_str().unwrap_or_default();
        if r["ok"].as_bool() == Some(true) {
            println!(
                "{vm}: {} disk(s) replicated as {} ({} point(s) in the catalog)",
                r["disks"],
                r["point"].as_str().unwrap_or_default(),
                r["points"]
            );
        } else {
            failed.push(format!("{vm}: {}", r["error"].as_str().unwrap_or_default()));
        }
    }
    if let Some(every) = args.every {
        println!(
            "schedule stored: a new point of {} VM(s) every {every}, taken by the primary",
            args.vms.len()
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} VM(s) not protected: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// Protects on the embedded store with the engine's [`Protector`]; with
/// `--every`, again every interval until interrupted.
async fn protect_embedded(
    args: &ProtectArgs,
    home: &Path,
    vms: Vec<VmRef>,
    to: String,
    repo: PathBuf,
) -> anyhow::Result<()> {
    let connectors = app::connectors(&app::plugin_runtime(home)?);
    let known: Vec<String> = connectors.keys().cloned().collect();
    // This loop is the caller's own process: any `--every` goes.
    protection::validate(&vms, &to, &repo, None, &known).map_err(|e| {
        let connectors_hint = "; see `haven plugin instances`";
        let (option, hint) = match e.field.as_str() {
            "to" => ("--to".to_owned(), connectors_hint),
            "repository" => ("--repo".to_owned(), ""),
            f => match f.strip_prefix("vms.").and_then(|i| i.parse::<usize>().ok()) {
                Some(i) => (format!("--vm #{}", i + 1), connectors_hint),
                None => ("--vm".to_owned(), ""),
            },
        };
        anyhow!("{option}: {}{hint}", e.message)
    })?;
    let log = app::open_embedded(home)?;
    let protector = Protector::new(
        log.clone(),
        connectors,
        Arc::new(Replicator::new()),
        Clock::system(),
    )
    .with_parallel(args.parallel);
    let targets: Vec<Target> = vms
        .into_iter()
        .map(|vm| Target {
            vm,
            recovery_connector: to.clone(),
            repository: repo.clone(),
        })
        .collect();
    let Some(every) = args.every else {
        return pass(&protector, &targets).await;
    };
    loop {
        let started = tokio::time::Instant::now();
        if let Err(e) = pass(&protector, &targets).await {
            eprintln!("error: {e:#}");
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + every.to_std()) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One embedded pass: skips VMs whose replication is stopped, protects the
/// others, prints one line per VM.
async fn pass(protector: &Protector, targets: &[Target]) -> anyhow::Result<()> {
    let store = protector.log().store();
    let mut live = Vec::new();
    for t in targets {
        if catalog::get(store, &t.vm)?.is_some_and(|r| r.value.stopped) {
            println!(
                "{}: skipped, its replication is stopped (failed over or migrated)",
                t.vm
            );
        } else {
            live.push(t.clone());
        }
    }
    let mut failed = Vec::new();
    for done in protector.protect(&live).await {
        match done.result {
            Ok((record, point)) => println!(
                "{}: {} disk(s) replicated as {} ({} point(s) in the catalog)",
                done.vm,
                record.disks.len(),
                point.id,
                record.points.len()
            ),
            Err(e) => failed.push(format!("{}: {e}", done.vm)),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} VM(s) not protected: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// `haven protect --list`: the replication schedules.
async fn list_schedules(conn: &api_cmd::Connection, home: &Path) -> anyhow::Result<()> {
    let client = api_cmd::Client::connect(conn, home).await?;
    let schedules = client.get("/protections").await?;
    println!("{:<32} {:<16} {:<10} REPOSITORY", "VM", "TO", "EVERY");
    for s in schedules.as_array().into_iter().flatten() {
        let every = s["every_ms"]
            .as_u64()
            .map(|ms| haven_plan::HumanDuration::from_millis(ms).to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<32} {:<16} {:<10} {}",
            s["id"].as_str().unwrap_or_default(),
            s["recovery_connector"].as_str().unwrap_or_default(),
            every,
            s["repository"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `haven protect --remove <connector>/<vm>`.
async fn remove_schedule(conn: &api_cmd::Connection, home: &Path, vm: &str) -> anyhow::Result<()> {
    let vm = protection::parse_vm(vm, "--remove").map_err(|e| anyhow!("{e}"))?;
    let client = api_cmd::Client::connect(conn, home).await?;
    client
        .delete(&format!(
            "/protections/{}/{}",
            api_cmd::encode(&vm.connector),
            api_cmd::encode(&vm.name)
        ))
        .await?;
    println!("schedule of {vm} removed; its catalog entry and points stay");
    Ok(())
}

/// Runs `haven readiness`; fails (exit 1) when the plan is not ready.
pub async fn run_readiness(args: ReadinessArgs, home: PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("cannot read {}", args.plan.display()))?;
    let plan =
        Plan::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.plan.display()))?;
    let log = app::open_embedded(&home)?;
    // The plan document version, when the plan is stored (the API's `plans`).
    let version = log
        .store()
        .get("plans", plan.id.as_str())?
        .map_or(0, |v| v.version);
    let runtime = app::plugin_runtime(&home)?;
    let connectors = app::connectors(&runtime);
    let options = app::StepServices::load(&home, &runtime)?.readiness_options();
    let checker = ReadinessChecker::new(connectors.clone());
    let report = checker.check(log.store(), &plan, version, &options).await;
    readiness::record(log.as_ref(), &report).await?;
    let json = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) => std::fs::write(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{json}"),
    }
    if let Some(path) = &args.html {
        std::fs::write(path, readiness::to_html(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.definition_json.is_some() || args.definition_html.is_some() {
        let resolver = ConnectorResolver::new(connectors).with_catalog(log.store().clone());
        let resolved = resolver.resolve(&plan).await.unwrap_or_default();
        let definition = haven_engine::report::plan_definition(&plan, &resolved);
        if let Some(path) = &args.definition_json {
            std::fs::write(path, serde_json::to_string_pretty(&definition)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &args.definition_html {
            std::fs::write(
                path,
                haven_engine::report::plan_definition_html(&definition),
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if !report.ready {
        let first = &report.problems[0];
        bail!(
            "plan {} is not ready: {} problem(s) (see the report), first: {}: {}",
            report.plan,
            report.problems.len(),
            first.path,
            first.message
        );
    }
    eprintln!(
        "plan {} is ready ({} VMs, checked in {} ms)",
        report.plan,
        report.vms.len(),
        report.duration_ms
    );
    Ok(())
}
