//! `haven`: the command-line edge of Haven.
//!
//! Every failure ends with one line on stderr saying what is wrong and how to
//! fix it, and a non-zero exit code (2 for usage errors, 1 otherwise).

mod api_cmd;
mod app;
mod ha_cmd;
mod plugin_cmd;
mod recovery_cmd;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Haven: disaster recovery for virtual machines.
#[derive(Parser)]
#[command(name = "haven", version, about)]
struct Cli {
    /// Haven's home directory: installed plugins, instances, caches.
    /// Default: $HAVEN_HOME, else $XDG_DATA_HOME/haven, else ~/.local/share/haven.
    #[arg(long, global = true, env = "HAVEN_HOME")]
    home: Option<PathBuf>,

    /// Log more (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Package, install, inspect and call connector plugins.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
    /// Check, format, diff, compile and simulate recovery plans (plans as code).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Run the lab site simulator: simulated sites whose VMs have real disk
    /// images, driven by the lab connector (the embedded default vendor).
    Lab(haven_lab::cli::LabArgs),
    /// Run the replication target service (the DR site's end of the block transport).
    Target(haven_transport::cli::TargetArgs),
    /// Replicate a disk image or NBD export to a target, as a new recovery point.
    Replicate(haven_transport::cli::ReplicateArgs),
    /// Inspect, verify, restore and export replicas in a target repository.
    Replica(haven_transport::cli::ReplicaArgs),
    /// Protect VMs: replicate their disks through their connector into a
    /// repository as a new recovery point, recorded in the replica catalog.
    Protect(recovery_cmd::ProtectArgs),
    /// Check that a plan could run now (connectors, replicas within RPO,
    /// networks, scripts); writes JSON and printable HTML reports.
    Readiness(recovery_cmd::ReadinessArgs),
    /// Run the host: the web API alone, or as a node of an HA cluster.
    Serve(serve::ServeArgs),
    /// Operate an HA cluster: status, switchover, forced failover, membership.
    Ha(ha_cmd::HaArgs),
    /// Start, follow, approve, cancel and report executions of stored plans
    /// (through the API; without --server, on the embedded store).
    Run(api_cmd::RunArgs),
    /// Create, list and revoke API tokens.
    Token(api_cmd::TokenArgs),
    /// Print the audit log of changes made through the API.
    Audit(api_cmd::AuditArgs),
}

/// `haven plan ...`: the plan model's commands and the engine's dry run.
#[derive(Subcommand)]
enum PlanCommand {
    #[command(flatten)]
    Model(haven_plan::cli::PlanCommand),
    #[command(flatten)]
    Stored(api_cmd::PlanRemote),
    /// Dry-run a plan against simulated connectors with seeded faults; prints
    /// the timeline and the predicted RTO.
    Simulate(haven_engine::cli::SimulateArgs),
}

fn default_home() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(data).join("haven");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/haven")
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,haven=info,haven_transport=info,haven_plugin_runtime=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let home = cli.home.unwrap_or_else(default_home);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Plugin(cmd) => plugin_cmd::run(cmd, home).await,
            Command::Plan(PlanCommand::Model(cmd)) => haven_plan::cli::run(cmd),
            Command::Plan(PlanCommand::Simulate(args)) => {
                tokio::task::spawn_blocking(move || haven_engine::cli::run_simulate(args))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
            }
            Command::Lab(args) => haven_lab::cli::run_lab(args).await,
            Command::Target(args) => haven_transport::cli::run_target(args).await,
            Command::Replicate(args) => haven_transport::cli::run_replicate(args).await,
            Command::Replica(args) => haven_transport::cli::run_replica(args).await,
            Command::Protect(args) => recovery_cmd::run_protect(args, home).await,
            Command::Readiness(args) => recovery_cmd::run_readiness(args, home).await,
            Command::Serve(args) => serve::run(args, home).await,
            Command::Ha(args) => ha_cmd::run(args).await,
            Command::Plan(PlanCommand::Stored(cmd)) => api_cmd::run_plan(cmd, home).await,
            Command::Run(args) => api_cmd::run_run(args, home).await,
            Command::Token(args) => api_cmd::run_token(args, home).await,
            Command::Audit(args) => api_cmd::run_audit(args, home).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
