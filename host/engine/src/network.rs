//! Network mapping and re-IP of recovered VMs: which network each adapter
//! joins at the target site, and which address it gets.

use std::net::IpAddr;

use haven_connector::{IpSettings, Network, NicInfo, NicSpec};
use haven_plan::{NetworkMapping, ReIpRule};
use ipnet::IpNet;

/// Which network of a mapping a run attaches VMs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `recovery` (failover, migration).
    Recovery,
    /// `test`, the isolated network (drills).
    Test,
    /// `production` (failback: the mapping read backwards).
    Production,
}

/// Why a VM's adapters cannot be mapped. `path` names the plan field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MappingError {
    /// Plan field at fault (`network_map`, `network_map.1.test`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The address `ip` moves to under `rules`: the first rule whose `source`
/// contains it keeps the host part and moves it into `target`, with the rule's
/// gateway and DNS servers. `None` when no rule applies (the address is kept).
pub fn re_ip(ip: IpAddr, rules: &[ReIpRule]) -> Option<IpSettings> {
    let rule = rules.iter().find(|r| r.source.contains(&ip))?;
    let host = host_part(ip, &rule.source)?;
    let address = with_host_part(&rule.target, host)?;
    Some(IpSettings {
        address: format!("{address}/{}", rule.target.prefix_len()),
        gateway: rule.gateway.map(|g| g.to_string()),
        dns_servers: rule.dns.iter().map(ToString::to_string).collect(),
    })
}

fn host_part(ip: IpAddr, net: &IpNet) -> Option<u128> {
    match (ip, net.hostmask()) {
        (IpAddr::V4(a), IpAddr::V4(m)) => Some(u128::from(u32::from(a) & u32::from(m))),
        (IpAddr::V6(a), IpAddr::V6(m)) => Some(u128::from(a) & u128::from(m)),
        _ => None,
    }
}

fn with_host_part(net: &IpNet, host: u128) -> Option<IpAddr> {
    match (net.network(), net.hostmask()) {
        (IpAddr::V4(n), IpAddr::V4(m)) => {
            let host = u32::try_from(host).ok()? & u32::from(m);
            Some(IpAddr::V4((u32::from(n) | host).into()))
        }
        (IpAddr::V6(n), IpAddr::V6(m)) => {
            Some(IpAddr::V6((u128::from(n) | (host & u128::from(m))).into()))
        }
        _ => None,
    }
}

/// Checks re-IP rules: same address family and prefix length on both sides,
/// gateway inside the target. Returns `(path, message)` per problem.
pub fn check_re_ip(rules: &[ReIpRule]) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let same_family = matches!(
            (r.source, r.target),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        );
        if !same_family {
            issues.push((
                format!("re_ip.{i}.target"),
                format!(
                    "{} and {} are different address families",
                    r.source, r.target
                ),
            ));
        } else if r.source.prefix_len() != r.target.prefix_len() {
            issues.push((
                format!("re_ip.{i}.target"),
                format!(
                    "prefix /{} differs from the source's /{}",
                    r.target.prefix_len(),
                    r.source.prefix_len()
                ),
            ));
        }
        if let Some(g) = r.gateway {
            if !r.target.contains(&g) {
                issues.push((
                    format!("re_ip.{i}.gateway"),
                    format!("{g} is not in the target subnet {}", r.target),
                ));
            }
        }
    }
    issues
}

/// The network of `mapping` for `side`, named as the plan writes it.
fn mapped_name(mapping: &NetworkMapping, side: Side) -> Option<&str> {
    match side {
        Side::Recovery => Some(&mapping.recovery),
        Side::Test => mapping.test.as_deref(),
        Side::Production => Some(&mapping.production),
    }
}

/// The mapping entry for a source-site network, looked up by the side the VM
/// comes from (`production` normally, `recovery` for failback).
fn mapping_for<'m>(
    map: &'m [NetworkMapping],
    source_network: &str,
    side: Side,
) -> Option<(usize, &'m NetworkMapping)> {
    map.iter().enumerate().find(|(_, m)| match side {
        Side::Production => m.recovery == source_network,
        Side::Recovery | Side::Test => m.production == source_network,
    })
}

/// The adapters of a VM at the target site: each source adapter joins the
/// mapped network (`networks` are the target site's, matched by name or id)
/// and keeps its MAC; addresses move per `rules`.
pub fn map_nics(
    nics: &[NicInfo],
    map: &[NetworkMapping],
    rules: &[ReIpRule],
    side: Side,
    networks: &[Network],
) -> Result<Vec<NicSpec>, MappingError> {
    nics.iter()
        .map(|nic| {
            let (i, mapping) =
                mapping_for(map, &nic.network, side).ok_or_else(|| MappingError {
                    path: "network_map".into(),
                    message: format!(
                        "no mapping for network {:?} of adapter {}",
                        nic.network, nic.id
                    ),
                })?;
            let field = match side {
                Side::Recovery => "recovery",
                Side::Test => "test",
                Side::Production => "production",
            };
            let name = mapped_name(mapping, side).ok_or_else(|| MappingError {
                path: format!("network_map.{i}.test"),
                message: "no isolated test network: drills need one".into(),
            })?;
            let network = networks
                .iter()
                .find(|n| n.name == name || n.id == name)
                .ok_or_else(|| MappingError {
                    path: format!("network_map.{i}.{field}"),
                    message: format!(
                        "the target site has no network {name:?} (it has {:?})",
                        networks.iter().map(|n| &n.name).collect::<Vec<_>>()
                    ),
                })?;
            if side == Side::Test && !network.isolated {
                return Err(MappingError {
                    path: format!("network_map.{i}.test"),
                    message: format!(
                        "network {name:?} is not isolated: a drill could reach production"
                    ),
                });
            }
            let ip = nic
                .ips
                .iter()
                .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
                .find_map(|a| re_ip(a, rules));
            Ok(NicSpec {
                network: network.id.clone(),
                mac: nic.mac.clone(),
                ip,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(source: &str, target: &str) -> ReIpRule {
        ReIpRule {
            source: source.parse().unwrap(),
            target: target.parse().unwrap(),
            gateway: Some("172.16.10.1".parse().unwrap()),
            dns: vec!["172.16.0.53".parse().unwrap()],
        }
    }

    #[test]
    fn re_ip_keeps_the_host_part() {
        let rules = [rule("10.0.10.0/24", "172.16.10.0/24")];
        let s = re_ip("10.0.10.15".parse().unwrap(), &rules).unwrap();
        assert_eq!(s.address, "172.16.10.15/24");
        assert_eq!(s.gateway.as_deref(), Some("172.16.10.1"));
        assert_eq!(s.dns_servers, ["172.16.0.53"]);
        assert_eq!(re_ip("10.0.11.15".parse().unwrap(), &rules), None);
        let wide = [rule("10.0.0.0/16", "192.168.0.0/16")];
        assert_eq!(
            re_ip("10.0.3.7".parse().unwrap(), &wide).unwrap().address,
            "192.168.3.7/16"
        );
        let v6 = [ReIpRule {
            source: "fd00:1::/64".parse().unwrap(),
            target: "fd00:2::/64".parse().unwrap(),
            gateway: None,
            dns: vec![],
        }];
        assert_eq!(
            re_ip("fd00:1::a".parse().unwrap(), &v6).unwrap().address,
            "fd00:2::a/64"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let mut r = rule("10.0.10.0/24", "172.16.0.0/16");
        let issues = check_re_ip(std::slice::from_ref(&r));
        assert_eq!(issues[0].0, "re_ip.0.target");
        r.target = "fd00::/24".parse().unwrap();
        assert!(check_re_ip(&[r])[0].1.contains("families"));
        let mut g = rule("10.0.10.0/24", "172.16.10.0/24");
        g.gateway = Some("10.0.10.1".parse().unwrap());
        assert_eq!(check_re_ip(&[g])[0].0, "re_ip.0.gateway");
    }

    #[test]
    fn adapters_join_the_mapped_network() {
        let map = [NetworkMapping {
            production: "prod-net".into(),
            recovery: "dr-net".into(),
            test: Some("dr-test".into()),
        }];
        let networks = [
            Network {
                id: "dr-net".into(),
                name: "dr-net".into(),
                isolated: false,
            },
            Network {
                id: "dr-test".into(),
                name: "dr-test".into(),
                isolated: true,
            },
        ];
        let nics = [NicInfo {
            id: "nic-0".into(),
            network: "prod-net".into(),
            mac: Some("02:00:00:00:00:01".into()),
            ips: vec!["10.0.10.15".into()],
        }];
        let rules = [rule("10.0.10.0/24", "172.16.10.0/24")];
        let test = map_nics(&nics, &map, &rules, Side::Test, &networks).unwrap();
        assert_eq!(test[0].network, "dr-test");
        assert_eq!(test[0].mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(test[0].ip.as_ref().unwrap().address, "172.16.10.15/24");
        let rec = map_nics(&nics, &map, &rules, Side::Recovery, &networks).unwrap();
        assert_eq!(rec[0].network, "dr-net");
        // A drill never lands on a routed network.
        let mut leaky = map.clone();
        leaky[0].test = Some("dr-net".into());
        let err = map_nics(&nics, &leaky, &rules, Side::Test, &networks).unwrap_err();
        assert_eq!(err.path, "network_map.0.test");
        let mut other = nics.clone();
        other[0].network = "elsewhere".into();
        let err = map_nics(&other, &map, &rules, Side::Recovery, &networks).unwrap_err();
        assert_eq!(err.path, "network_map");
        // Failback reads the mapping backwards.
        let back = [NicInfo {
            network: "dr-net".into(),
            ..nics[0].clone()
        }];
        let prod = [Network {
            id: "prod-net".into(),
            name: "prod-net".into(),
            isolated: false,
        }];
        assert_eq!(
            map_nics(&back, &map, &[], Side::Production, &prod).unwrap()[0].network,
            "prod-net"
        );
    }
}
