//! `haven plan simulate FILE --mode MODE [--seed N] [faults]`: a deterministic
//! dry run of a plan against simulated connectors, with injected faults,
//! printed as a timeline with the predicted RTO against the plan's target.
//!
//! Wired by the `haven` binary as a `plan` subcommand.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use haven_plan::{GroupId, Mode, Plan, VmRef};
use haven_store::{LocalLog, Store};

use crate::executor::Clock;
use crate::simulate::{Faults, SimulatedRunner};
use crate::{Event, ExecutionOutcome, Executor};

/// Arguments of `haven plan simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The plan file (TOML).
    pub file: PathBuf,
    /// The mode to simulate.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Seed of the injected faults: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Probability that an attempt fails with a retryable error.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub transient: f64,
    /// Probability that an attempt fails for good.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub permanent: f64,
    /// Probability that an attempt hangs until its timeout.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub hang: f64,
    /// A connector instance whose site is lost (repeatable).
    #[arg(long = "lose", value_name = "CONNECTOR")]
    pub lost: Vec<String>,
    /// Simulated VMs for each group that selects VMs by tag.
    #[arg(long, default_value_t = 2)]
    pub vms_per_tag_group: usize,
    /// Typical duration of a step, in seconds.
    #[arg(long, default_value_t = 5)]
    pub step_seconds: u64,
    /// Write the execution report (report.json, report.html) and the evidence
    /// pack (evidence.json) into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability between 0 and 1")),
    }
}

/// Runs the simulation and prints its timeline; fails when the simulated
/// execution fails.
pub fn run_simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let plan =
        Plan::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let mut resolved: BTreeMap<GroupId, Vec<VmRef>> = BTreeMap::new();
    for group in plan.groups.iter().filter(|g| g.vms.is_empty()) {
        let connector = group
            .connector
            .clone()
            .unwrap_or_else(|| "simulated".into());
        let vms = (1..=args.vms_per_tag_group)
            .map(|n| VmRef {
                connector: connector.clone(),
                name: format!("{}-sim-{n:02}", group.id.as_str()),
            })
            .collect();
        resolved.insert(group.id.clone(), vms);
    }
    let graph = plan
        .compile(args.mode, &resolved)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let faults = Faults {
        transient: args.transient,
        permanent: args.permanent,
        hang: args.hang,
        lost_connectors: args.lost.iter().cloned().collect(),
    };
    let mut runner = SimulatedRunner::new(args.seed, faults);
    runner.step_time = Duration::from_secs(args.step_seconds);

    let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    let store = Arc::new(Store::open(&dir.path().join("simulation.redb"))?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context("cannot start the simulation runtime")?;
    let executor = Executor::new(
        Arc::new(LocalLog::new(store.clone())),
        Arc::new(runner),
        Clock::starting_at(0),
    );
    // The timeline below reports every step; the executor's own log would repeat it.
    let outcome =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            let mut outcome = runtime.block_on(executor.run("simulation", &graph))?;
            // Simulated operators approve at once.
            while let ExecutionOutcome::AwaitingApproval { steps } = &outcome {
                for &step in steps {
                    runtime.block_on(executor.approve("simulation", &graph, step, "simulation"))?;
                }
                outcome = runtime.block_on(executor.run("simulation", &graph))?;
            }
            anyhow::Ok(outcome)
        })?;

    println!(
        "simulating `{}` ({}) in mode {}: {} steps, seed {}",
        plan.name,
        plan.id.as_str(),
        args.mode.as_str(),
        graph.steps.len(),
        args.seed
    );
    let mut last_ms = 0;
    for entry in store.stream("journal/simulation", 0)? {
        last_ms = entry.at_ms;
        let event: Event = serde_json::from_value(entry.entry)?;
        let at = format!(
            "+{:02}:{:02}",
            entry.at_ms / 60_000,
            entry.at_ms / 1000 % 60
        );
        let line = match event {
            Event::StepStarted { .. }
            | Event::ExecutionResumed
            | Event::ExecutionStarted { .. } => continue,
            Event::StepSucceeded { step, attempt, .. } => {
                format!("ok      {} (attempt {attempt})", graph.steps[step].key)
            }
            Event::StepFailed {
                step,
                attempt,
                error,
                is_final,
            } => format!(
                "{}  {} (attempt {attempt}): {error}",
                if is_final { "FAILED" } else { "retry " },
                graph.steps[step].key
            ),
            Event::StepSkipped { step, reason } => {
                format!("skipped {}: {reason}", graph.steps[step].key)
            }
            Event::ApprovalRequested { step, .. } => {
                format!("approve {} (simulated operator)", graph.steps[step].key)
            }
            Event::ApprovalGranted { .. } => continue,
            Event::CancelRequested { by } => format!("cancel  requested by {by}"),
            Event::ExecutionFinished { outcome } => format!("execution {outcome}"),
        };
        println!("{at}  {line}");
    }
    if let Some(dir) = &args.report {
        write_reports(dir, &store, &graph, plan.rto.map(|r| r.as_millis()))?;
        println!("reports written to {}", dir.display());
    }
    let predicted = Duration::from_millis(last_ms);
    if let ExecutionOutcome::Failed { failed } = outcome {
        bail!(
            "the simulated execution failed at {} critical step(s) after {}; the plan would not recover",
            failed.len(),
            human(predicted)
        );
    }
    match plan.rto {
        Some(rto) if predicted <= rto.to_std() => {
            println!("predicted RTO {} (target {rto}: met)", human(predicted))
        }
        Some(rto) => println!("predicted RTO {} (target {rto}: MISSED)", human(predicted)),
        None => println!("predicted RTO {} (no target set)", human(predicted)),
    }
    Ok(())
}

/// Writes report.json, report.html and evidence.json for the simulation.
fn write_reports(
    dir: &std::path::Path,
    store: &Store,
    graph: &haven_plan::ExecutionGraph,
    rto_ms: Option<u64>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let report = crate::report::execution_report(store, "simulation", graph, rto_ms)?;
    let evidence = crate::report::EvidencePack::collect(store, "simulation", graph)?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.json", serde_json::to_string_pretty(&report)?)?;
    write("report.html", crate::report::to_html(&report))?;
    write("evidence.json", serde_json::to_string_pretty(&evidence)?)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}
