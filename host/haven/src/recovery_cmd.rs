//! `haven protect` (replicate lab or vendor VMs into a repository and record
//! them in the replica catalog) and `haven readiness` (check a plan against
//! live connectors and the catalog).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use haven_connector::Connector;
use haven_engine::catalog;
use haven_engine::readiness::{self, ReadinessChecker};
use haven_engine::replication::{ProtectRequest, Replicator};
use haven_engine::resolve::{ConnectorResolver, Resolver};
use haven_plan::Plan;
use haven_store::CommandLog;

use crate::app;

/// Arguments of `haven protect`.
#[derive(clap::Args)]
pub struct ProtectArgs {
    /// Production VM as `<connector instance>/<vm name>` (repeatable).
    #[arg(long = "vm", required = true, value_name = "CONNECTOR/VM")]
    vms: Vec<String>,
    /// Connector instance of the recovery site the VMs are recovered to.
    #[arg(long, value_name = "CONNECTOR")]
    to: String,
    /// Transport repository directory (created if missing).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// VMs replicated at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Keep protecting: take a new point of every VM this often (`15m`),
    /// until interrupted. VMs whose replication is stopped are skipped.
    #[arg(long, value_name = "DURATION")]
    every: Option<haven_plan::HumanDuration>,
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

/// Runs `haven protect`.
pub async fn run_protect(args: ProtectArgs, home: PathBuf) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for (i, vm) in args.vms.iter().enumerate() {
        match vm.split_once('/') {
            Some((c, n)) if !c.is_empty() && !n.is_empty() => {
                targets.push((c.to_owned(), n.to_owned()))
            }
            _ => bail!(
                "--vm {vm:?} (#{}): expected <connector>/<vm name>, e.g. lab-prod/web-01",
                i + 1
            ),
        }
    }
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let connectors = app::connectors(&app::plugin_runtime(&home)?);
    let needed: BTreeSet<&String> = targets.iter().map(|t| &t.0).chain([&args.to]).collect();
    for name in needed {
        if !connectors.contains_key(name) {
            bail!(
                "connector instance {name:?} is not available (configured and ready: {:?}); see `haven plugin instances`",
                connectors.keys().collect::<Vec<_>>()
            );
        }
    }
    let repo = std::path::absolute(&args.repo)
        .with_context(|| format!("--repo {}", args.repo.display()))?;
    let log = app::open_embedded(&home)?;
    // One inventory listing per production connector, however many VMs.
    let mut inventories = BTreeMap::new();
    for connector in targets.iter().map(|t| &t.0).collect::<BTreeSet<_>>() {
        let vms = connectors[connector]
            .list_vms()
            .await
            .with_context(|| format!("listing the VMs of {connector}"))?;
        inventories.insert(connector.clone(), Arc::new(vms));
    }
    let pass = Pass {
        log,
        replicator: Arc::new(Replicator::new()),
        semaphore: Arc::new(tokio::sync::Semaphore::new(args.parallel)),
        connectors,
        to: args.to,
        repo,
    };
    let Some(every) = args.every else {
        return pass.run(&targets, &inventories).await;
    };
    loop {
        let started = tokio::time::Instant::now();
        if let Err(e) = pass.run(&targets, &inventories).await {
            eprintln!("error: {e:#}");
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + every.to_std()) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One protection pass over a list of VMs.
struct Pass {
    log: Arc<dyn CommandLog>,
    replicator: Arc<Replicator>,
    semaphore: Arc<tokio::sync::Semaphore>,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    to: String,
    repo: PathBuf,
}

impl Pass {
    async fn run(
        &self,
        targets: &[(String, String)],
        inventories: &BTreeMap<String, Arc<Vec<haven_connector::Vm>>>,
    ) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for (connector, name) in targets {
            let vm = haven_plan::VmRef {
                connector: connector.clone(),
                name: name.clone(),
            };
            if catalog::get(self.log.store(), &vm)?.is_some_and(|r| r.value.stopped) {
                println!("{vm}: skipped, its replication is stopped (failed over or migrated)");
                continue;
            }
            let inventory = inventories[connector].clone();
            let (log, replicator, semaphore) = (
                self.log.clone(),
                self.replicator.clone(),
                self.semaphore.clone(),
            );
            let production = self.connectors[connector].clone();
            let (to, repo, name) = (self.to.clone(), self.repo.clone(), name.clone());
            tasks.spawn(async move {
                let _permit = semaphore.acquire().await;
                let result = replicator
                    .protect(
                        log.as_ref(),
                        ProtectRequest {
                            production: production.as_ref(),
                            vm: &name,
                            recovery_connector: &to,
                            repository: &repo,
                            final_sync: false,
                            job_timeout: Duration::from_secs(300),
                            inventory: Some(&inventory),
                        },
                    )
                    .await;
                (vm.to_string(), result)
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (vm, result) = done.context("a replication task failed")?;
            match result {
                Ok((record, point)) => println!(
                    "{vm}: {} disk(s) replicated as {} ({} point(s) in the catalog)",
                    record.disks.len(),
                    point.id,
                    record.points.len()
                ),
                Err(e) => failed.push(format!("{vm}: {e}")),
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
