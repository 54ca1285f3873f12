//! Command-line front ends, wired into the `haven` binary (`host/haven/src/main.rs`).
//!
//! Each handler is `async` and returns `anyhow::Result<()>`:
//!
//! ```text
//! haven target    ...   => cli::TargetArgs     -> cli::run_target(args)
//! haven replicate ...   => cli::ReplicateArgs  -> cli::run_replicate(args)
//! haven replica   ...   => cli::ReplicaArgs    -> cli::run_replica(args)
//!                          (subcommands: list | points | restore | export | verify)
//! ```
//!
//! The handlers need a multi-threaded tokio runtime.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::{replicate, ReplicateOptions};
use crate::events::EventSink;
use crate::repo::{Key, Repository, Retention};
use crate::source::{Extents, SourceSpec};
use crate::target::{Target, TargetOptions};
use crate::throttle::parse_rate;
use crate::tls::{self, Trust};

/// Parses a duration such as `90s`, `15m`, `12h`, `30d` (plain numbers are seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 90s, 15m, 12h, 30d)"))?;
    Ok(Duration::from_secs(n * mult))
}

/// `haven target`: the TLS target service.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7450")]
    pub listen: String,
    /// Repository directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// PEM certificate chain (with --key).
    #[arg(long, requires = "key", conflicts_with = "self_signed")]
    pub cert: Option<PathBuf>,
    /// PEM private key (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Generate (once) a self-signed certificate; it is written to REPO/target-cert.pem
    /// for clients to pin with `--pin`.
    #[arg(long)]
    pub self_signed: bool,
    /// Extra DNS names or IPs for the self-signed certificate.
    #[arg(long = "san")]
    pub san: Vec<String>,
    /// Keep at most this many recovery points per replica.
    #[arg(long)]
    pub keep_points: Option<usize>,
    /// Drop recovery points older than this (e.g. 30d); the newest is always kept.
    #[arg(long, value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// Raise an RPO event when a replica's last point is older than this (e.g. 15m).
    #[arg(long, value_parser = parse_duration)]
    pub rpo: Option<Duration>,
    /// At-rest encryption key file for recovery-point data (32 bytes or 64 hex digits).
    #[arg(long)]
    pub encryption_key: Option<PathBuf>,
    /// Create the key file when it does not exist.
    #[arg(long, requires = "encryption_key")]
    pub create_key: bool,
}

fn load_key(path: &Option<PathBuf>, create: bool) -> anyhow::Result<Option<Key>> {
    Ok(match path {
        Some(p) if create && !p.exists() => Some(Key::generate(p)?),
        Some(p) => Some(Key::load(p)?),
        None => None,
    })
}

/// Runs the target service until Ctrl-C.
pub async fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo, load_key(&args.encryption_key, args.create_key)?)
        .with_context(|| format!("opening repository {}", args.repo.display()))?;
    let tls_cfg = match (&args.cert, &args.key, args.self_signed) {
        (Some(c), Some(k), _) => tls::server_config(c, k)?,
        (_, _, true) => {
            let (c, k) = tls::self_signed(&args.repo, &args.san)?;
            tracing::info!(cert = %c.display(), "self-signed certificate; clients pin it with --pin");
            tls::server_config(&c, &k)?
        }
        _ => anyhow::bail!("give --cert and --key, or --self-signed"),
    };
    let mut opts = TargetOptions::new(repo, tls_cfg);
    opts.retention = Retention {
        keep: args.keep_points,
        max_age: args.max_age,
    };
    opts.rpo_threshold = args.rpo;
    opts.events = EventSink::default();
    let target = Target::bind(&args.listen, opts).await?;
    tracing::info!(addr = %target.local_addr()?, "target listening");
    target
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// `haven replicate SOURCE --to TARGET[,TARGET2..] --replica NAME`.
#[derive(Debug, Clone, Args)]
pub struct ReplicateArgs {
    /// Disk to replicate: a raw or qcow2 file, `nbd://host:port/export` or
    /// `nbd+unix:///export?socket=PATH`.
    pub source: String,
    /// Target gateways, `host:port`, comma-separated; the least loaded is used first
    /// and the pass continues on the next if a connection fails.
    #[arg(long = "to", required = true, value_delimiter = ',')]
    pub to: Vec<String>,
    /// Replica name on the target.
    #[arg(long)]
    pub replica: String,
    /// CA certificate(s) (PEM) that signed the target's certificate.
    #[arg(long, conflicts_with = "pin", required_unless_present = "pin")]
    pub ca: Option<PathBuf>,
    /// Pin exactly this certificate (PEM), e.g. the target's self-signed one.
    #[arg(long)]
    pub pin: Option<PathBuf>,
    /// TLS server name to verify (defaults to the gateway host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Changed-extents list (CBT): lines of `OFFSET LENGTH`; only these are read.
    #[arg(long)]
    pub cbt: Option<PathBuf>,
    /// zstd level.
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
    /// Bandwidth limit in bytes per second (e.g. 20M).
    #[arg(long, value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Accept a source whose size differs from the replica's (disk resized).
    #[arg(long)]
    pub allow_resize: bool,
    /// Connection attempts before giving up (across gateways).
    #[arg(long, default_value_t = 8)]
    pub attempts: u32,
}

/// Runs one pass and prints its report as JSON.
pub async fn run_replicate(args: ReplicateArgs) -> anyhow::Result<()> {
    let source = SourceSpec::parse(&args.source)?;
    let trust = match (&args.ca, &args.pin) {
        (Some(c), _) => Trust::Ca(c.clone()),
        (_, Some(p)) => Trust::Pinned(p.clone()),
        _ => anyhow::bail!("give --ca or --pin"),
    };
    let mut opts = ReplicateOptions::new(source, &args.replica, args.to.clone(), trust);
    opts.server_name = args.server_name.clone();
    opts.extents = match &args.cbt {
        Some(p) => Some(Extents::load(p)?),
        None => None,
    };
    opts.zstd_level = args.zstd_level;
    opts.bwlimit = args.bwlimit;
    opts.allow_resize = args.allow_resize;
    opts.max_attempts = args.attempts;
    let report = replicate(opts).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `haven replica ...`: operations on a repository.
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// Repository directory.
    #[arg(long, global = true, default_value = ".")]
    pub repo: PathBuf,
    /// Encryption key file of the repository, if it is encrypted.
    #[arg(long, global = true)]
    pub encryption_key: Option<PathBuf>,
    /// Operation.
    #[command(subcommand)]
    pub command: ReplicaCommand,
}

/// Subcommands of `haven replica`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReplicaCommand {
    /// List replicas with their last point and RPO.
    List,
    /// List the recovery points of a replica.
    Points {
        /// Replica name.
        name: String,
    },
    /// Restore a replica in place to a point (newer points are dropped).
    Restore {
        /// Replica name.
        name: String,
        /// Point id.
        point: u64,
    },
    /// Export a point as a new sparse raw image.
    Export {
        /// Replica name.
        name: String,
        /// Point id.
        point: u64,
        /// Output file.
        out: PathBuf,
    },
    /// Check the image against its digests and read every undo journal.
    Verify {
        /// Replica name.
        name: String,
    },
}

/// Runs a repository operation, printing JSON.
pub async fn run_replica(args: ReplicaArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo, load_key(&args.encryption_key, false)?)?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        match args.command {
            ReplicaCommand::List => {
                println!("{}", serde_json::to_string_pretty(&repo.replicas()?)?)
            }
            ReplicaCommand::Points { name } => {
                println!("{}", serde_json::to_string_pretty(&repo.points(&name)?)?)
            }
            ReplicaCommand::Restore { name, point } => {
                repo.restore(&name, point)?;
                println!("restored {name} to point {point}");
            }
            ReplicaCommand::Export { name, point, out } => {
                repo.export(&name, point, &out)?;
                println!("exported {name} point {point} to {}", out.display());
            }
            ReplicaCommand::Verify { name } => {
                let r = repo.verify(&name)?;
                println!("{}", serde_json::to_string_pretty(&r)?);
                if !r.ok() {
                    anyhow::bail!("replica {name} failed verification");
                }
            }
        }
        Ok(())
    })
    .await?
}
