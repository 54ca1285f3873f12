//! `haven serve`: the long-running host. Alone (`--listen`), over the local
//! state store; or as a member of an HA cluster (`--cluster FILE --node ID`),
//! where writes go through a quorum and the API and the cluster protocol share
//! one listener. A witness serves only the cluster protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use haven_ha::{ClusterConfig, ClusterNode, NodeRole};
use haven_store::CommandLog;

/// Arguments of `haven serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on when running alone (default 127.0.0.1:7400).
    /// A cluster member listens on its `addr` from the cluster file.
    #[arg(long, conflicts_with = "cluster")]
    listen: Option<String>,
    /// Cluster configuration file (see host/ha/README.md); needs --node.
    #[arg(long, requires = "node")]
    cluster: Option<PathBuf>,
    /// This node's id in the cluster file.
    #[arg(long, requires = "cluster")]
    node: Option<u64>,
}

/// Runs the host until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs, home: PathBuf) -> anyhow::Result<()> {
    let (router, addr) = match (args.cluster, args.node) {
        (Some(file), Some(id)) => cluster_router(&file, id, &home).await?,
        _ => {
            let log = crate::app::open_embedded(&home)?;
            let addr = args.listen.unwrap_or_else(|| "127.0.0.1:7400".into());
            (crate::app::build(&home, log).await?, addr)
        }
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another process using it? (--listen / the node's addr)"))?;
    tracing::info!(%addr, home = %home.display(), "haven serve: listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server stopped")?;
    Ok(())
}

async fn cluster_router(
    file: &Path,
    id: u64,
    home: &Path,
) -> anyhow::Result<(axum::Router, String)> {
    let config = ClusterConfig::load(file)?;
    let me = config
        .node(id)
        .with_context(|| {
            format!(
                "--node {id}: no [[node]] with id = {id} in {} (ids: {:?})",
                file.display(),
                config.nodes.iter().map(|n| n.id).collect::<Vec<_>>()
            )
        })?
        .clone();
    if !config.automatic_failover() {
        tracing::warn!(
            "two-node cluster without a witness: failover is NOT automatic; \
             if the primary is lost, an operator must run `haven ha failover --force` on the survivor"
        );
    }
    let node = ClusterNode::start(config, id, home).await?;
    let mut router = haven_ha::router(node.clone());
    if me.role == NodeRole::Data {
        let log: Arc<dyn CommandLog> = node;
        router = router.merge(crate::app::build(home, log).await?);
    }
    Ok((router, me.bind_addr().to_owned()))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
