//! The replica catalog: which production VMs are protected, where their
//! replicas are, and the VM-level recovery points taken so far.
//!
//! Store collection `replicas`, one document per protected VM, keyed
//! `<production connector>/<vm name>`. Written only through the
//! [`CommandLog`] (by `haven protect` and by the runner's replication steps),
//! with the version read, so two writers cannot lose each other's points.

use std::collections::BTreeMap;
use std::path::PathBuf;

use haven_connector::{NicInfo, Tag};
use haven_plan::{RecoveryPoint, VmRef};
use haven_store::{Command, CommandLog, CommitError, Outcome, Store, StoreError, Versioned};
use serde::{Deserialize, Serialize};

/// Store collection of the catalog.
pub const COLLECTION: &str = "replicas";

/// Why the catalog could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write was not committed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A stored document does not have the catalog's shape.
    #[error("catalog entry {key}: {message}")]
    Corrupt {
        /// Document key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Another writer changed the entry since it was read; read it again.
    #[error("catalog entry {0} changed concurrently; retry")]
    Conflict(String),
}

/// The shape of the protected VM, kept to create it at the other site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest OS.
    pub guest_os: String,
    /// Network adapters as production reports them (network, MAC, addresses).
    pub nics: Vec<NicInfo>,
    /// Tags at the last pass (tag-selected groups resolve from them when the
    /// production site cannot answer).
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// One replicated disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDisk {
    /// Disk id at the production connector (`disk-0`).
    pub id: String,
    /// Replica name in the transport repository.
    pub replica: String,
    /// Size in bytes at the last pass.
    pub capacity_bytes: u64,
}

/// A VM-level recovery point: one transport point per disk, taken from one
/// snapshot, so the disks are consistent with each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPoint {
    /// Point id (`rp-<seq>`), unique per VM.
    pub id: String,
    /// When the source was captured, Unix milliseconds.
    pub taken_at_ms: u64,
    /// Transport point id per disk id.
    pub disks: BTreeMap<String, u64>,
    /// Whether it is the final sync of a planned migration (production was
    /// off: no data loss).
    #[serde(default)]
    pub final_sync: bool,
}

/// The VM a failover or migration created at the recovery site (what undo
/// and failback act on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredVm {
    /// Connector instance it runs on.
    pub connector: String,
    /// Its id there.
    pub vm_id: String,
    /// Its name there.
    pub name: String,
    /// The execution that created it.
    pub execution: String,
}

/// The catalog entry of one protected VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// The production VM.
    pub vm: VmRef,
    /// Its id at the production connector.
    pub vm_id: String,
    /// Connector instance of the recovery site.
    pub recovery_connector: String,
    /// The transport repository holding the replicas (a directory on this host).
    pub repository: PathBuf,
    /// The VM's shape at the last pass.
    pub machine: MachineSpec,
    /// Replicated disks.
    pub disks: Vec<ReplicaDisk>,
    /// Recovery points, oldest first.
    pub points: Vec<VmPoint>,
    /// Replication stopped (failover, migration): scheduled passes skip the VM.
    #[serde(default)]
    pub stopped: bool,
    /// The VM running at the recovery site after a failover or migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<RecoveredVm>,
}

impl ReplicaRecord {
    /// The catalog key of a production VM.
    pub fn key(vm: &VmRef) -> String {
        vm.to_string()
    }

    /// The newest recovery point.
    pub fn last_point(&self) -> Option<&VmPoint> {
        self.points.iter().max_by_key(|p| p.taken_at_ms)
    }

    /// The id the next point gets.
    pub fn next_point_id(&self) -> String {
        let next = self
            .points
            .iter()
            .filter_map(|p| p.id.strip_prefix("rp-")?.parse::<u64>().ok())
            .max()
            .map_or(1, |n| n + 1);
        format!("rp-{next}")
    }

    /// The point `policy` selects.
    pub fn choose(&self, policy: &RecoveryPoint) -> Result<&VmPoint, String> {
        let vm = &self.vm;
        match policy {
            RecoveryPoint::Latest => self
                .last_point()
                .ok_or_else(|| format!("{vm} has no recovery point yet")),
            RecoveryPoint::LatestBefore(ts) => {
                let before = rfc3339_to_unix_ms(ts.as_str())
                    .ok_or_else(|| format!("recovery_point: bad time {ts}"))?;
                self.points
                    .iter()
                    .filter(|p| p.taken_at_ms < before)
                    .max_by_key(|p| p.taken_at_ms)
                    .ok_or_else(|| format!("{vm} has no recovery point taken before {ts}"))
            }
            RecoveryPoint::Point(id) => self.points.iter().find(|p| &p.id == id).ok_or_else(|| {
                format!(
                    "{vm} has no recovery point {id:?} (it has {:?})",
                    self.points.iter().map(|p| &p.id).collect::<Vec<_>>()
                )
            }),
        }
    }
}

/// The catalog entry of `vm`, with its version.
pub fn get(store: &Store, vm: &VmRef) -> Result<Option<Versioned<ReplicaRecord>>, CatalogError> {
    let key = ReplicaRecord::key(vm);
    store
        .get(COLLECTION, &key)?
        .map(|v| decode(&key, v))
        .transpose()
}

/// Every catalog entry, by key (one read for a readiness check).
pub fn all(store: &Store) -> Result<BTreeMap<String, Versioned<ReplicaRecord>>, CatalogError> {
    store
        .list(COLLECTION)?
        .into_iter()
        .map(|(key, v)| Ok((key.clone(), decode(&key, v)?)))
        .collect()
}

fn decode(
    key: &str,
    v: Versioned<serde_json::Value>,
) -> Result<Versioned<ReplicaRecord>, CatalogError> {
    let value = serde_json::from_value(v.value).map_err(|e| CatalogError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })?;
    Ok(Versioned {
        version: v.version,
        value,
    })
}

/// Writes `record` if the entry is still at `expected_version` (0: new).
pub async fn put(
    log: &dyn CommandLog,
    record: &ReplicaRecord,
    expected_version: u64,
) -> Result<u64, CatalogError> {
    let key = ReplicaRecord::key(&record.vm);
    let value = serde_json::to_value(record).expect("records serialize");
    let applied = log
        .commit(vec![Command::Put {
            collection: COLLECTION.into(),
            key: key.clone(),
            value,
            expected_version: Some(expected_version),
        }])
        .await?;
    match applied.first().map(|a| &a.outcome) {
        Some(Outcome::Version(v)) => Ok(*v),
        _ => Err(CatalogError::Conflict(key)),
    }
}

/// Reads the entry of `vm`, applies `change`, and writes it back, retrying on
/// concurrent changes. `change` returns `false` to write nothing.
pub async fn update(
    log: &dyn CommandLog,
    vm: &VmRef,
    mut change: impl FnMut(&mut ReplicaRecord) -> bool,
) -> Result<Option<ReplicaRecord>, CatalogError> {
    for _ in 0..8 {
        let Some(current) = get(log.store(), vm)? else {
            return Ok(None);
        };
        let mut record = current.value;
        if !change(&mut record) {
            return Ok(Some(record));
        }
        match put(log, &record, current.version).await {
            Ok(_) => return Ok(Some(record)),
            Err(CatalogError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CatalogError::Conflict(ReplicaRecord::key(vm)))
}

/// Unix milliseconds of an RFC 3339 time (as validated by the plan model).
pub fn rfc3339_to_unix_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        let padded: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = padded.parse().ok()?;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(points: &[(&str, u64)]) -> ReplicaRecord {
        ReplicaRecord {
            vm: VmRef {
                connector: "prod".into(),
                name: "web".into(),
            },
            vm_id: "vm-1".into(),
            recovery_connector: "dr".into(),
            repository: "/repo".into(),
            machine: MachineSpec {
                cpus: 1,
                memory_mib: 512,
                guest_os: "linux".into(),
                nics: vec![],
                tags: vec![],
            },
            disks: vec![],
            points: points
                .iter()
                .map(|(id, at)| VmPoint {
                    id: (*id).into(),
                    taken_at_ms: *at,
                    disks: BTreeMap::new(),
                    final_sync: false,
                })
                .collect(),
            stopped: false,
            recovered: None,
        }
    }

    #[test]
    fn rfc3339_times_convert_to_unix_ms() {
        assert_eq!(rfc3339_to_unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_to_unix_ms("2026-11-20T03:00:00Z"),
            Some(1_795_143_600_000)
        );
        assert_eq!(
            rfc3339_to_unix_ms("2026-11-20T04:00:00.5+01:00"),
            Some(1_795_143_600_500)
        );
        assert_eq!(
            rfc3339_to_unix_ms("2024-02-29T00:00:00-00:30"),
            Some(1_709_166_600_000)
        );
    }

    #[test]
    fn the_policy_picks_the_point() {
        // 2026-11-20T03:00:00Z = 1_795_143_600_000.
        let r = record(&[
            ("rp-1", 1_795_140_000_000),
            ("rp-2", 1_795_143_600_000),
            ("rp-3", 1_795_150_000_000),
        ]);
        assert_eq!(r.choose(&RecoveryPoint::Latest).unwrap().id, "rp-3");
        let before = RecoveryPoint::LatestBefore("2026-11-20T03:00:00Z".parse().unwrap());
        // Strictly before: rp-2 is at that instant.
        assert_eq!(r.choose(&before).unwrap().id, "rp-1");
        assert_eq!(
            r.choose(&RecoveryPoint::Point("rp-2".into())).unwrap().id,
            "rp-2"
        );
        let err = r.choose(&RecoveryPoint::Point("rp-9".into())).unwrap_err();
        assert!(err.contains("rp-9") && err.contains("rp-3"), "{err}");
        let early = RecoveryPoint::LatestBefore("2020-01-01T00:00:00Z".parse().unwrap());
        assert!(r.choose(&early).unwrap_err().contains("before"));
        assert!(record(&[]).choose(&RecoveryPoint::Latest).is_err());
        assert_eq!(r.next_point_id(), "rp-4");
    }
}
