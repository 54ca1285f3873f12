//! `haven lab`: serve the lab site simulator, optionally seeding VMs and
//! injecting faults at start.
//!
//! Wiring (clap derive), as the other subcommands:
//! ```ignore
//! /// Run the lab site simulator (simulated prod and DR sites on this machine).
//! Lab(haven_lab::cli::LabArgs),
//! ...
//! Command::Lab(args) => haven_lab::cli::run_lab(args).await,
//! ```

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::lab::{Lab, LabConfig};
use crate::model::OpKind;
use crate::requests::*;

/// Arguments of `haven lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Lab directory: state.json, token, disks/, snapshots/, images/.
    #[arg(long, env = "HAVEN_LAB_DIR", default_value = "haven-lab")]
    pub dir: PathBuf,
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// Bearer token clients must send. Default: $HAVEN_LAB_TOKEN, else the
    /// content of DIR/token, created with a random token on first start.
    #[arg(long, env = "HAVEN_LAB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Sites (comma-separated); each gets hosts, a production network
    /// `<site>-net` and an isolated test network `<site>-test`.
    #[arg(long, value_delimiter = ',', default_value = "prod,dr")]
    pub sites: Vec<String>,
    /// Hosts per site.
    #[arg(long, default_value_t = 2)]
    pub hosts_per_site: u32,
    /// Duration of an operation in ms (graceful power-off takes twice that).
    #[arg(long, default_value_t = 50)]
    pub op_delay_ms: u64,
    /// Default boot delay of new VMs in ms (power-on to first heartbeat).
    #[arg(long, default_value_t = 2000)]
    pub boot_delay_ms: u64,
    /// Seed of random faults (same seed, same order of operations: same failures).
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,
    /// Flush the state file to the device on every write (survives power
    /// loss, not only a killed lab; slower).
    #[arg(long)]
    pub fsync: bool,
    /// Create this many VMs at start, if the seed site has no VMs yet.
    #[arg(long)]
    pub seed_vms: Option<u32>,
    /// Site to seed.
    #[arg(long, default_value = "prod")]
    pub seed_site: String,
    /// Groups to split seeded VMs into (tag `group=gNN`).
    #[arg(long, default_value_t = 1)]
    pub seed_groups: u32,
    /// Size of each seeded VM's sparse disk, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub seed_disk_bytes: u64,
    /// Leave seeded VMs powered on.
    #[arg(long)]
    pub seed_power_on: bool,
    /// Fault: fail operations at random with this probability (0..1), from --fault-seed.
    #[arg(long)]
    pub fail_rate: Option<f64>,
    /// Fault: add this latency (ms) to every operation.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// Fault: fail the next operations, as `COUNT[:OP[:VM]]` (OP such as
    /// power-on, create-vm); repeatable.
    #[arg(long)]
    pub fail_next: Vec<String>,
    /// Fault: this VM never produces a heartbeat; repeatable.
    #[arg(long)]
    pub no_heartbeat: Vec<String>,
    /// Fault: this site's hosts are down; repeatable.
    #[arg(long)]
    pub host_loss: Vec<String>,
}

fn parse_fail_next(spec: &str) -> anyhow::Result<FailFault> {
    let mut parts = spec.splitn(3, ':');
    let count = parts
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("--fail-next {spec:?}: COUNT must be a number"))?;
    let op = parts
        .next()
        .map(|op| {
            serde_json::from_value::<OpKind>(serde_json::Value::String(op.to_owned()))
                .with_context(|| format!("--fail-next {spec:?}: unknown operation {op:?}"))
        })
        .transpose()?;
    Ok(FailFault {
        vm: parts.next().map(str::to_owned),
        op,
        count,
        code: None,
    })
}

/// The token: given, or read from (else created in) `dir/token`.
fn token(given: Option<String>, dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = given.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_owned());
    }
    let path = dir.join("token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a token")?;
    let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut f = options
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{t}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(t)
}

/// Resolves on Ctrl-C or SIGTERM (or at once if signals cannot be watched).
async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Opens the lab, applies the start-up seeding and faults, and serves the API
/// until Ctrl-C or SIGTERM, then saves the state.
pub async fn run_lab(args: LabArgs) -> anyhow::Result<()> {
    let token = token(args.token.clone(), &args.dir)?;
    let config = LabConfig {
        dir: args.dir.clone(),
        token,
        sites: args.sites.clone(),
        hosts_per_site: args.hosts_per_site,
        op_delay_ms: args.op_delay_ms,
        boot_delay_ms: args.boot_delay_ms,
        seed: args.fault_seed,
        fsync: args.fsync,
    };
    let lab = Lab::open(config)
        .await
        .with_context(|| format!("opening the lab in {}", args.dir.display()))?;
    if let Some(count) = args.seed_vms {
        let empty = lab.vms(Some(&args.seed_site))?.is_empty();
        if empty {
            let result = lab
                .seed(SeedRequest {
                    site: args.seed_site.clone(),
                    count,
                    groups: args.seed_groups,
                    name_prefix: None,
                    disk_size_bytes: Some(args.seed_disk_bytes),
                    tags: Vec::new(),
                    power_on: args.seed_power_on,
                    boot_delay_ms: None,
                })
                .await?;
            eprintln!(
                "seeded {} VMs at site {} in {} ms",
                result.vms.len(),
                args.seed_site,
                result.elapsed_ms
            );
        }
    }
    if let Some(rate) = args.fail_rate {
        lab.set_random(RandomFault {
            rate,
            seed: None,
            op: None,
        })
        .await?;
    }
    if let Some(ms) = args.latency_ms {
        lab.add_latency(LatencyFault {
            vm: None,
            op: None,
            ms,
        })
        .await;
    }
    for spec in &args.fail_next {
        lab.fail_next(parse_fail_next(spec)?).await?;
    }
    for vm in &args.no_heartbeat {
        lab.set_no_heartbeat(NoHeartbeatFault {
            vm: vm.clone(),
            enabled: true,
        })
        .await?;
    }
    for site in &args.host_loss {
        lab.set_host_loss(HostLossFault {
            site: site.clone(),
            down: true,
        })
        .await?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "lab serving http://{addr} (sites {}; directory {}; token in {} unless given)",
        args.sites.join(","),
        args.dir.display(),
        args.dir.join("token").display()
    );
    crate::api::serve(lab.clone(), listener, stop_signal())
        .await
        .context("serving the lab API")?;
    lab.commit().await;
    eprintln!("lab stopped; state saved in {}", args.dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fail_next() {
        let f = parse_fail_next("2:power-on:vm-3").unwrap();
        assert_eq!(
            (f.count, f.op, f.vm.as_deref()),
            (2, Some(OpKind::PowerOn), Some("vm-3"))
        );
        assert!(parse_fail_next("x").is_err());
        assert!(parse_fail_next("1:fly").is_err());
    }

    #[test]
    fn token_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = token(None, dir.path()).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(token(None, dir.path()).unwrap(), a);
        assert_eq!(token(Some("given".into()), dir.path()).unwrap(), "given");
    }
}
