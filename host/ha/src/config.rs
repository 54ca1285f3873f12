//! The cluster configuration file (`cluster.toml`): who the nodes are, the
//! shared secret, and the timing of heartbeats and elections.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Holds the state, serves the API, may become primary.
    #[default]
    Data,
    /// Votes and makes quorum; never primary, runs no API or executions.
    Witness,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Data => "data",
            NodeRole::Witness => "witness",
        })
    }
}

/// One node of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique, never reused once removed (1, 2, ...).
    pub id: u64,
    /// `host:port` the node listens on for the API and the cluster protocol.
    pub addr: String,
    /// `data` (default) or `witness`.
    #[serde(default)]
    pub role: NodeRole,
    /// `ip:port` to bind when it differs from `addr` (behind a proxy or NAT).
    /// Outgoing connections to peers leave from this IP.
    #[serde(default)]
    pub listen: Option<String>,
}

/// Heartbeat and election timing, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// The primary sends a heartbeat this often.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing for a random time between these two
    /// bounds starts an election. The primary stops acting when no quorum
    /// acknowledged it for `election_min_ms` (its lease).
    pub election_min_ms: u64,
    /// Upper bound of the election timeout; also the followers' leader lease.
    pub election_max_ms: u64,
    /// How long a write may wait for a primary and a quorum before it fails
    /// as unavailable.
    pub write_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Failover ≈ detection (lease expiry, ≤ election_max) + one election
        // round: well under the 3 s target on a LAN.
        Self {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 600,
            write_ms: 5_000,
        }
    }
}

/// `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Shared secret that nodes (and the `haven ha` command) present to each
    /// other; at least 16 characters.
    pub secret: String,
    /// Timing.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Build a snapshot (and drop older log entries) every this many entries.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// The initial members.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
}

fn default_snapshot_every() -> u64 {
    10_000
}

/// A configuration that cannot be used; names the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The dotted field (`node[1].addr`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl NodeConfig {
    /// The address to bind: `listen`, else `addr`.
    pub fn bind_addr(&self) -> &str {
        self.listen.as_deref().unwrap_or(&self.addr)
    }
}

impl ClusterConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and checks the text of a configuration (`file` names it in errors).
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let err = |field: &str, message: String| ConfigError {
            file: file.to_owned(),
            field: field.to_owned(),
            message,
        };
        let config: ClusterConfig =
            toml::from_str(text).map_err(|e| err("(syntax)", e.message().to_owned()))?;
        if config.secret.len() < 16 {
            return Err(err(
                "secret",
                "must be at least 16 characters; generate one with `openssl rand -hex 32`".into(),
            ));
        }
        let t = &config.timeouts;
        if t.heartbeat_ms == 0 || t.election_min_ms < 3 * t.heartbeat_ms {
            return Err(err(
                "timeouts.election_min_ms",
                "must be at least 3 × heartbeat_ms (and heartbeat_ms > 0)".into(),
            ));
        }
        if t.election_max_ms <= t.election_min_ms {
            return Err(err(
                "timeouts.election_max_ms",
                "must be greater than election_min_ms".into(),
            ));
        }
        if config.snapshot_every == 0 {
            return Err(err("snapshot_every", "must be at least 1".into()));
        }
        if config.nodes.is_empty() {
            return Err(err("node", "list at least one [[node]]".into()));
        }
        let (mut ids, mut addrs) = (HashSet::new(), HashSet::new());
        for (i, node) in config.nodes.iter().enumerate() {
            if node.id == 0 {
                return Err(err(&format!("node[{i}].id"), "ids start at 1".into()));
            }
            if !ids.insert(node.id) {
                return Err(err(
                    &format!("node[{i}].id"),
                    format!("id {} is used twice", node.id),
                ));
            }
            if node.addr.parse::<SocketAddr>().is_err() {
                return Err(err(
                    &format!("node[{i}].addr"),
                    format!("{:?} is not an ip:port address", node.addr),
                ));
            }
            if node
                .listen
                .as_ref()
                .is_some_and(|l| l.parse::<SocketAddr>().is_err())
            {
                return Err(err(
                    &format!("node[{i}].listen"),
                    format!(
                        "{:?} is not an ip:port address",
                        node.listen.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if !addrs.insert(node.addr.clone()) {
                return Err(err(
                    &format!("node[{i}].addr"),
                    format!("{} is used twice", node.addr),
                ));
            }
        }
        let data = config
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Data)
            .count();
        if data == 0 {
            return Err(err(
                "node",
                "at least one node must have role = \"data\"".into(),
            ));
        }
        Ok(config)
    }

    /// The node with this id.
    pub fn node(&self, id: u64) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Whether automatic failover is possible: a majority survives the loss
    /// of any one data node only with three or more voters.
    pub fn automatic_failover(&self) -> bool {
        self.nodes.len() >= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
secret = "0123456789abcdef0123"
[[node]]
id = 1
addr = "127.0.0.1:7401"
[[node]]
id = 2
addr = "127.0.0.2:7401"
[[node]]
id = 3
addr = "127.0.0.3:7401"
role = "witness"
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = ClusterConfig::parse(GOOD, "c.toml").unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes[2].role, NodeRole::Witness);
        assert_eq!(c.timeouts, Timeouts::default());
        assert!(c.automatic_failover());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("0123456789abcdef0123", "short"), "secret"),
            (GOOD.replace("id = 2", "id = 1"), "node[1].id"),
            (GOOD.replace("127.0.0.2:7401", "nowhere"), "node[1].addr"),
            (
                GOOD.replace("127.0.0.2:7401", "127.0.0.1:7401"),
                "node[1].addr",
            ),
            (
                format!("{GOOD}\n[timeouts]\nelection_min_ms = 100\n"),
                "timeouts.election_min_ms",
            ),
        ];
        for (text, field) in cases {
            let e = ClusterConfig::parse(&text, "c.toml").unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let e = ClusterConfig::parse(
            &GOOD.replace("role = \"witness\"", "role = \"boss\""),
            "c.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("boss"), "{e}");
    }
}
