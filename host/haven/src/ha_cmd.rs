//! `haven ha ...`: operate an HA cluster from anywhere that has its
//! `cluster.toml`: status, switchover, forced failover (two-node mode),
//! membership. Each command finds the primary itself from the node list.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use haven_ha::{ClientError, ClusterClient, ClusterConfig, NodeRole, NodeStatus};

/// Arguments of `haven ha`.
#[derive(clap::Args)]
pub struct HaArgs {
    /// The cluster configuration file (the node list and the secret).
    #[arg(long, env = "HAVEN_CLUSTER")]
    cluster: PathBuf,
    #[command(subcommand)]
    command: HaCommand,
}

/// `haven ha` subcommands.
#[derive(Subcommand)]
pub enum HaCommand {
    /// Show every node's role, term, applied index and replication lag.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hand the primary role to another data node (planned, no failed write).
    Switchover {
        /// The node to make primary (default: the most caught-up data node).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Two-node clusters only: make NODE primary without the other node.
    /// DANGER: if the other node is in fact alive, both may act.
    Failover {
        /// Confirms that the other node is down for good.
        #[arg(long)]
        force: bool,
        /// The surviving node to make primary.
        #[arg(long)]
        node: u64,
    },
    /// Add a node with a NEW id (a removed id is refused).
    AddNode {
        /// Its id, never used before in this cluster.
        #[arg(long)]
        id: u64,
        /// Its `ip:port`.
        #[arg(long)]
        addr: String,
        /// `data` or `witness`.
        #[arg(long, default_value = "data", value_parser = parse_role)]
        role: NodeRole,
    },
    /// Remove a node; its id can never be reused.
    RemoveNode {
        /// The node to remove.
        #[arg(long)]
        id: u64,
    },
}

fn parse_role(text: &str) -> Result<NodeRole, String> {
    match text {
        "data" => Ok(NodeRole::Data),
        "witness" => Ok(NodeRole::Witness),
        other => Err(format!("{other:?}: use data or witness")),
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every configured node (and every member they report) for its status.
async fn survey(
    config: &ClusterConfig,
    client: &ClusterClient,
) -> BTreeMap<u64, (String, Result<NodeStatus, ClientError>)> {
    let mut addrs: BTreeMap<u64, String> = config
        .nodes
        .iter()
        .map(|n| (n.id, n.addr.clone()))
        .collect();
    let mut out = BTreeMap::new();
    let mut pending: Vec<u64> = addrs.keys().copied().collect();
    while let Some(id) = pending.pop() {
        let addr = addrs[&id].clone();
        let status = client
            .get_json::<NodeStatus>(&addr, "/cluster/v1/status", TIMEOUT)
            .await;
        if let Ok(s) = &status {
            for m in &s.members {
                if let std::collections::btree_map::Entry::Vacant(slot) = addrs.entry(m.id) {
                    slot.insert(m.addr.clone());
                    pending.push(m.id);
                }
            }
        }
        out.insert(id, (addr, status));
    }
    out
}

/// The address of the leader, from the survey.
fn leader_addr(
    survey: &BTreeMap<u64, (String, Result<NodeStatus, ClientError>)>,
) -> anyhow::Result<String> {
    let leader = survey
        .values()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.state == "leader")
        .max_by_key(|s| s.term)
        .map(|s| s.id)
        .context("no node is primary right now; check `haven ha status` and retry")?;
    survey
        .get(&leader)
        .map(|(a, _)| a.clone())
        .context("the primary is not in the node list")
}

/// Runs `haven ha ...`.
pub async fn run(args: HaArgs) -> anyhow::Result<()> {
    let config = ClusterConfig::load(&args.cluster)?;
    let client = ClusterClient::new(&config.secret);
    match args.command {
        HaCommand::Status { json } => {
            let survey = survey(&config, &client).await;
            if survey.values().all(|(_, s)| s.is_err()) {
                bail!(
                    "no node of {} answers; start them with `haven serve --cluster {} --node ID`",
                    args.cluster.display(),
                    args.cluster.display()
                );
            }
            if json {
                let all: Vec<_> = survey
                    .iter()
                    .map(|(id, (addr, s))| match s {
                        Ok(s) => serde_json::to_value(s).expect("status serializes"),
                        Err(e) => {
                            serde_json::json!({"id": id, "addr": addr, "error": e.to_string()})
                        }
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let leader_view: Option<&NodeStatus> = survey
                .values()
                .filter_map(|(_, s)| s.as_ref().ok())
                .filter(|s| s.state == "leader")
                .max_by_key(|s| s.term);
            println!(
                "{:<5} {:<22} {:<8} {:<10} {:<8} {:>5} {:>9} {:>6}",
                "NODE", "ADDR", "ROLE", "STATE", "PRIMARY", "TERM", "APPLIED", "LAG"
            );
            for (id, (addr, status)) in &survey {
                match status {
                    Ok(s) => {
                        let lag = leader_view
                            .and_then(|l| l.members.iter().find(|m| m.id == *id))
                            .and_then(|m| m.lag)
                            .map_or("-".into(), |l| l.to_string());
                        println!(
                            "{:<5} {:<22} {:<8} {:<10} {:<8} {:>5} {:>9} {:>6}",
                            id,
                            addr,
                            s.role.to_string(),
                            s.state,
                            if s.primary { "yes" } else { "no" },
                            s.term,
                            s.last_applied.map_or("-".into(), |a| a.to_string()),
                            lag
                        );
                    }
                    Err(e) => println!("{id:<5} {addr:<22} unreachable: {e}"),
                }
            }
            if !config.automatic_failover() {
                println!("note: two-node cluster without a witness: failover is manual (`haven ha failover --force`)");
            }
            Ok(())
        }
        HaCommand::Switchover { to } => {
            let leader = leader_addr(&survey(&config, &client).await)?;
            let answer: serde_json::Value = client
                .post_json(
                    &leader,
                    "/cluster/v1/switchover",
                    &serde_json::json!({"to": to}),
                    Duration::from_secs(10),
                )
                .await
                .map_err(explain)?;
            println!(
                "node {} is now primary ({} ms)",
                answer["primary"], answer["millis"]
            );
            Ok(())
        }
        HaCommand::Failover { force, node } => {
            if !force {
                bail!("refusing a forced failover without --force: it is only safe when the other node is down for good");
            }
            let addr = config
                .node(node)
                .map(|n| n.addr.clone())
                .with_context(|| format!("--node {node}: not in {}", args.cluster.display()))?;
            eprintln!(
                "WARNING: forcing node {node} to become primary without a quorum. If the other node is still \
                 running, both may act until it is stopped. Bring the old node back only as a NEW node id \
                 (`haven ha add-node`), with an empty home."
            );
            let _: serde_json::Value = client
                .post_json(
                    &addr,
                    "/cluster/v1/failover",
                    &serde_json::json!({"force": true}),
                    Duration::from_secs(10),
                )
                .await
                .map_err(explain)?;
            println!("node {node} is the only voter now and becomes primary");
            Ok(())
        }
        HaCommand::AddNode { id, addr, role } => {
            let leader = leader_addr(&survey(&config, &client).await)?;
            let _: serde_json::Value = client
                .post_json(
                    &leader,
                    "/cluster/v1/members",
                    &serde_json::json!({"id": id, "addr": addr, "role": role}),
                    Duration::from_secs(30),
                )
                .await
                .map_err(explain)?;
            println!("node {id} ({addr}, {role}) joined");
            Ok(())
        }
        HaCommand::RemoveNode { id } => {
            let leader = leader_addr(&survey(&config, &client).await)?;
            client
                .call(
                    haven_ha::Method::DELETE,
                    &leader,
                    &format!("/cluster/v1/members/{id}"),
                    Vec::new(),
                    Duration::from_secs(10),
                )
                .await
                .map_err(explain)
                .and_then(|(status, body)| {
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!("{}", message_of(&body)))
                    }
                })?;
            println!("node {id} removed; its id can never be reused");
            Ok(())
        }
    }
}

fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// Turns a node's JSON error into its message.
fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Status { body, .. } => anyhow::anyhow!("{}", message_of(body.as_bytes())),
        other => anyhow::anyhow!("{other}"),
    }
}
