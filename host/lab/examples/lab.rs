//! Runs the lab on its own, before `haven lab` is wired:
//! `cargo run -p haven-lab --example lab -- --dir /tmp/lab --seed-vms 10`.

use clap::Parser;

/// The lab site simulator.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    lab: haven_lab::cli::LabArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    haven_lab::cli::run_lab(Cli::parse().lab).await
}
