//! Gateway selection (as Veeam Cloud Connect): probe each target gateway for its
//! active sessions and try them least loaded first.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::error::{Result, TransportError};
use crate::tls::{self, Counters};
use crate::wire::{read_msg, write_msg, Hello, Msg, Purpose, PROTOCOL_VERSION};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks one gateway for its number of active replication sessions.
pub async fn probe(addr: &str, config: Arc<ClientConfig>, name: Option<&str>) -> Result<u32> {
    let fut = async {
        let mut s = tls::connect(addr, config, name, Arc::new(Counters::default())).await?;
        write_msg(
            &mut s,
            &Msg::Hello(Hello {
                version: PROTOCOL_VERSION,
                purpose: Purpose::Load,
            }),
        )
        .await?;
        match read_msg(&mut s).await?.0 {
            Msg::Welcome(w) => Ok(w.active_sessions),
            Msg::Error(e) => Err(crate::wire::remote_error(e)),
            m => Err(TransportError::Protocol(format!(
                "expected Welcome, got {}",
                m.name()
            ))),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .map_err(|_| {
            TransportError::Truncated(format!("gateway {addr} did not answer the load probe"))
        })?
}

/// Gateways ordered least loaded first; those that failed the probe come last
/// (in their given order) with no load.
pub async fn rank(
    gateways: &[String],
    config: Arc<ClientConfig>,
    name: Option<&str>,
) -> Vec<(String, Option<u32>)> {
    let probes = gateways.iter().map(|g| {
        let c = config.clone();
        async move { (g.clone(), probe(g, c, name).await) }
    });
    let mut results = Vec::new();
    for p in probes {
        results.push(p.await);
    }
    let mut ranked: Vec<(String, Option<u32>)> = results
        .into_iter()
        .map(|(g, r)| {
            if let Err(e) = &r {
                tracing::warn!(gateway = g, error = %e, "gateway load probe failed");
            }
            (g, r.ok())
        })
        .collect();
    ranked.sort_by_key(|(_, l)| l.map_or(u64::MAX, u64::from));
    ranked
}
