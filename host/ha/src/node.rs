//! A cluster node: the raft instance over the state store, the role it
//! publishes to writers, and the write path ([`CommandLog`]) that commits
//! through a quorum — on the primary directly, elsewhere by forwarding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use haven_store::{check_commands_valid, Applied, Command, CommandLog, CommitError, Role, Store};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{
    ChangeMembers, CommittedLeaderId, EntryPayload, Membership, ServerState, SnapshotPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::{ClientError, ClusterClient};
use crate::config::{ClusterConfig, NodeRole};
use crate::error::HaError;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::types::{Batch, Entry, LogId, Member, NodeId, Raft, Vote};

/// Where the removed node ids are kept (a replicated document).
pub(crate) const REMOVED_COLLECTION: &str = "ha";
pub(crate) const REMOVED_KEY: &str = "removed-nodes";

/// Paths of the node-to-node and operator endpoints.
pub(crate) const COMMIT_PATH: &str = "/cluster/v1/commit";
pub(crate) const STATUS_PATH: &str = "/cluster/v1/status";
pub(crate) const ELECT_PATH: &str = "/cluster/v1/elect";

/// One node's view of the cluster, as `haven ha status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// Data node or witness.
    pub role: NodeRole,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    /// Whether this node is acting as primary now (leader confirmed by a
    /// quorum within its lease, caught up with its own term).
    pub primary: bool,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Whether the node has joined a cluster (false until bootstrap).
    pub initialized: bool,
    /// Index of the last raft log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied raft log entry.
    pub last_applied: Option<u64>,
    /// The store's own command index (its position in the replicated history).
    pub store_index: u64,
    /// Milliseconds since a quorum last acknowledged this node as leader.
    pub millis_since_quorum_ack: Option<u64>,
    /// Members as this node knows them (with replication progress when leader).
    pub members: Vec<MemberStatus>,
    /// Ids removed from the cluster, never to be reused.
    pub removed: Vec<NodeId>,
}

/// A member in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub id: NodeId,
    /// `host:port`.
    pub addr: String,
    /// Data node or witness.
    pub role: NodeRole,
    /// Voter (or learner while catching up).
    pub voter: bool,
    /// Last log index known replicated to it (reported by the leader only).
    pub matched: Option<u64>,
    /// Entries it is behind the leader's log (reported by the leader only).
    pub lag: Option<u64>,
}

/// What a forwarded commit returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Committed {
    /// The raft log index of the entry.
    pub log_index: u64,
    /// What each command did.
    pub applied: Vec<Applied>,
}

/// A running cluster node.
pub struct ClusterNode {
    id: NodeId,
    kind: NodeRole,
    config: ClusterConfig,
    raft_config: Arc<openraft::Config>,
    raft: RwLock<Raft>,
    log_store: LogStore,
    store: Arc<Store>,
    home: PathBuf,
    client: ClusterClient,
    role: watch::Sender<Role>,
    transferring: AtomicBool,
    /// When a quorum last acknowledged this node as leader (kept by the role
    /// tracker from the raft metrics).
    last_quorum_ack: std::sync::Mutex<Option<Instant>>,
    /// Writes between the `transferring` check and their raft outcome.
    writes_in_flight: std::sync::atomic::AtomicUsize,
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl ClusterNode {
    /// Opens this node's state in `home` and starts it as node `id` of `config`.
    pub async fn start(
        config: ClusterConfig,
        id: NodeId,
        home: &Path,
    ) -> Result<Arc<Self>, HaError> {
        let me = config.node(id).ok_or_else(|| HaError::UnknownNode {
            id,
            known: config.nodes.iter().map(|n| n.id).collect(),
        })?;
        let kind = me.role;
        std::fs::create_dir_all(home)
            .map_err(|e| HaError::Storage(format!("{}: {e}", home.display())))?;
        let store = Arc::new(Store::open(&home.join("state.redb"))?);
        let log_store = LogStore::open(&home.join("raft.redb"))
            .map_err(|e| HaError::Storage(format!("{}: {e}", home.join("raft.redb").display())))?;
        let t = &config.timeouts;
        let raft_config = openraft::Config {
            cluster_name: "haven".into(),
            heartbeat_interval: t.heartbeat_ms,
            // The same timing on every voter: a voter refuses to elect anyone
            // for `election_timeout_max` after its last heartbeat (its leader
            // lease), so a longer one on the witness would slow every failover.
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| HaError::Config(e.to_string()))?;
        let raft_config = Arc::new(raft_config);
        let source = me
            .bind_addr()
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip());
        let client = ClusterClient::with_source(&config.secret, source);
        let raft = Raft::new(
            id,
            raft_config.clone(),
            Network::new(client.clone()),
            log_store.clone(),
            StateMachine::new(store.clone(), home),
        )
        .await
        .map_err(|e| HaError::Raft(e.to_string()))?;
        let node = Arc::new(Self {
            id,
            kind,
            config,
            raft_config,
            raft: RwLock::new(raft),
            log_store,
            store,
            home: home.to_owned(),
            client,
            role: watch::Sender::new(Role::Follower { primary: None }),
            transferring: AtomicBool::new(false),
            last_quorum_ack: std::sync::Mutex::new(None),
            writes_in_flight: std::sync::atomic::AtomicUsize::new(0),
        });
        tokio::spawn(track_role(Arc::downgrade(&node)));
        tokio::spawn(bootstrap(node.clone()));
        if kind == NodeRole::Witness {
            tokio::spawn(witness_hands_over(Arc::downgrade(&node)));
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Data node or witness.
    pub fn kind(&self) -> NodeRole {
        self.kind
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The client nodes use to reach each other.
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// The raft instance (replaced only by a forced failover).
    pub fn raft(&self) -> Raft {
        self.raft.read().expect("raft lock").clone()
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeouts.write_ms)
    }

    fn member(&self, id: NodeId) -> Option<Member> {
        let metrics = self.raft().metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Ids removed from the cluster (replicated).
    pub fn removed_ids(&self) -> Result<BTreeSet<NodeId>, HaError> {
        Ok(self
            .store
            .get_as::<BTreeSet<NodeId>>(REMOVED_COLLECTION, REMOVED_KEY)?
            .map(|d| d.value)
            .unwrap_or_default())
    }

    /// This node's status.
    pub fn status(&self) -> Result<NodeStatus, HaError> {
        let metrics = self.raft().metrics();
        let m = metrics.borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = m.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map_or(0, |l| l.index));
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    role: node.role,
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|x| last_log.unwrap_or(0).saturating_sub(x)),
                }
            })
            .collect();
        Ok(NodeStatus {
            id: self.id,
            role: self.kind,
            state: state_name(m.state).into(),
            // Computed now, not read from the published role: right after a
            // pause the tracker may not have run yet.
            primary: self.compute_role().is_primary(),
            term: m.current_term,
            leader: m.current_leader,
            initialized: m.last_log_index.is_some() || m.current_term > 0,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            store_index: self.store.applied_index()?,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            members,
            removed: self.removed_ids()?.into_iter().collect(),
        })
    }

    /// Commits on this node as leader; `NotPrimary` if it is not.
    pub(crate) async fn commit_as_leader(
        &self,
        commands: Vec<Command>,
    ) -> Result<Committed, CommitError> {
        if self.transferring.load(Ordering::SeqCst) || self.kind == NodeRole::Witness {
            return Err(CommitError::NotPrimary { primary: None });
        }
        self.writes_in_flight.fetch_add(1, Ordering::SeqCst);
        // Counted from before the second look at the flag, so that a
        // switchover waiting for zero in flight cannot miss this write.
        if self.transferring.load(Ordering::SeqCst) {
            self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(CommitError::NotPrimary { primary: None });
        }
        let raft = self.raft();
        let write = raft.client_write(Batch { commands });
        let outcome = tokio::time::timeout(self.write_timeout(), write).await;
        self.writes_in_flight.fetch_sub(1, Ordering::SeqCst);
        match outcome {
            Ok(Ok(response)) => Ok(Committed {
                log_index: response.log_id.index,
                applied: response.data.applied,
            }),
            // Not appended here (or truncated since): safe to send elsewhere.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(CommitError::NotPrimary {
                    primary: f
                        .leader_node
                        .filter(|n| n.role == NodeRole::Data)
                        .map(|n| n.url()),
                })
            }
            Ok(Err(e)) => Err(CommitError::Unavailable(e.to_string())),
            Err(_) => Err(CommitError::Unavailable(format!(
                "no quorum acknowledged the write within {} ms; it may still commit",
                self.config.timeouts.write_ms
            ))),
        }
    }

    /// Waits until this node has applied the raft log up to `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> bool {
        let mut metrics = self.raft().metrics();
        loop {
            if metrics
                .borrow()
                .last_applied
                .is_some_and(|l| l.index >= index)
            {
                return true;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// Makes node `to` (or the most caught-up other data node) the primary.
    /// New writes wait meanwhile; none fails.
    pub async fn switchover(&self, to: Option<NodeId>) -> Result<NodeId, HaError> {
        let raft = self.raft();
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(self.id) {
            return Err(HaError::NotLeader {
                leader: m.current_leader,
            });
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let target = match to {
            Some(t) => {
                let node = membership.get_node(&t).ok_or(HaError::UnknownNode {
                    id: t,
                    known: membership.nodes().map(|(id, _)| *id).collect(),
                })?;
                if t == self.id {
                    return Err(HaError::Refused(format!("node {t} is already the primary")));
                }
                if node.role != NodeRole::Data || !voters.contains(&t) {
                    return Err(HaError::Refused(format!(
                        "node {t} cannot be primary: it is a witness or not a voter"
                    )));
                }
                t
            }
            None => voters
                .iter()
                .copied()
                .filter(|id| {
                    *id != self.id
                        && membership
                            .get_node(id)
                            .is_some_and(|n| n.role == NodeRole::Data)
                })
                .max_by_key(|id| replication.get(id).copied().flatten().map(|l| l.index))
                .ok_or_else(|| HaError::Refused("no other data node to hand over to".into()))?,
        };
        let addr = membership
            .get_node(&target)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        tracing::info!(target, "switchover: handing the primary role over");
        self.transferring.store(true, Ordering::SeqCst);
        self.publish_role();
        let result = self.hand_over(&raft, target, &addr).await;
        self.transferring.store(false, Ordering::SeqCst);
        self.publish_role();
        result.map(|()| target)
    }

    /// Waits for `target` to hold the whole log, then has it stand for
    /// election; this node grants the vote and steps down.
    async fn hand_over(&self, raft: &Raft, target: NodeId, addr: &str) -> Result<(), HaError> {
        let lease = Duration::from_millis(self.config.timeouts.election_max_ms);
        let deadline = Instant::now() + lease * 4;
        // Writes already proposed finish first, so the log stops growing.
        while self.writes_in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return Err(HaError::Refused(
                    "writes in flight did not finish in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut metrics = raft.metrics();
        loop {
            let caught_up = {
                let m = metrics.borrow();
                let last = m.last_log_index;
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&target).copied().flatten())
                    .map(|l| l.index);
                last.is_some() && matched == last
            };
            if caught_up {
                break;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero()
                || !matches!(
                    tokio::time::timeout(remaining, metrics.changed()).await,
                    Ok(Ok(()))
                )
            {
                return Err(HaError::Refused(format!(
                    "node {target} did not catch up in time"
                )));
            }
        }
        // The first request usually meets this node's (and the others')
        // leader lease and fails, but it raises the target's term: this node
        // sees the higher vote, steps down and drops its lease, so a request
        // moments later wins. Waiting out the lease would cost a whole
        // election timeout.
        loop {
            match self
                .client
                .post_json::<_, serde_json::Value>(
                    addr,
                    ELECT_PATH,
                    &serde_json::json!({}),
                    Duration::from_secs(1),
                )
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target, "switchover: asking the target to stand failed: {e}")
                }
            }
            let wait_until =
                Instant::now() + Duration::from_millis(self.config.timeouts.heartbeat_ms);
            while Instant::now() < wait_until {
                if raft
                    .metrics()
                    .borrow()
                    .current_leader
                    .is_some_and(|l| l != self.id)
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if Instant::now() >= deadline {
                return Err(HaError::Refused(format!(
                    "node {target} did not win the election in time"
                )));
            }
        }
    }

    /// Starts an election on this node (the receiving end of a switchover).
    pub async fn stand_for_election(&self) -> Result<(), HaError> {
        if self.kind == NodeRole::Witness {
            return Err(HaError::Refused("a witness never becomes primary".into()));
        }
        self.raft()
            .trigger()
            .elect()
            .await
            .map_err(|e| HaError::Raft(e.to_string()))
    }

    /// Adds a node with a new id (learner first, voter once caught up).
    pub async fn add_node(&self, id: NodeId, member: Member) -> Result<(), HaError> {
        self.require_leader()?;
        if self.removed_ids()?.contains(&id) {
            return Err(HaError::Refused(format!(
                "node id {id} was removed from this cluster and cannot be reused; give the new node a new id"
            )));
        }
        let raft = self.raft();
        if raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
        {
            return Err(HaError::Refused(format!(
                "node id {id} is already a member"
            )));
        }
        raft.add_learner(id, member, true)
            .await
            .map_err(|e| HaError::Raft(e.to_string()))?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| HaError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Removes node `id`; its id is recorded so it is never reused.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), HaError> {
        self.require_leader()?;
        if id == self.id {
            return Err(HaError::Refused(
                "the primary cannot remove itself; switch over first (`haven ha switchover`)"
                    .into(),
            ));
        }
        let raft = self.raft();
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&id).is_none() {
            return Err(HaError::UnknownNode {
                id,
                known: membership.nodes().map(|(id, _)| *id).collect(),
            });
        }
        let mut removed = self.removed_ids()?;
        removed.insert(id);
        let record = Command::Put {
            collection: REMOVED_COLLECTION.into(),
            key: REMOVED_KEY.into(),
            value: serde_json::to_value(&removed).expect("ids serialize"),
            expected_version: None,
        };
        self.commit_as_leader(vec![record]).await?;
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(|e| HaError::Raft(e.to_string()))?;
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|e| HaError::Raft(e.to_string()))?;
        Ok(())
    }

    fn require_leader(&self) -> Result<(), HaError> {
        let leader = self.raft().metrics().borrow().current_leader;
        if leader == Some(self.id) {
            Ok(())
        } else {
            Err(HaError::NotLeader { leader })
        }
    }

    /// Two-node mode only: makes this node the only voter, so that it becomes
    /// primary without the other node. The operator asserts that the other
    /// node is down; if it is not, both may act until it is fenced.
    pub async fn force_failover(&self) -> Result<(), HaError> {
        let raft = self.raft();
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() != 2 {
            return Err(HaError::Refused(format!(
                "forced failover is for two-node clusters; this one has {} voters and fails over by itself",
                voters.len()
            )));
        }
        if self.kind == NodeRole::Witness {
            return Err(HaError::Refused("a witness never becomes primary".into()));
        }
        if m.current_leader == Some(self.id) {
            return Err(HaError::Refused("this node is already the primary".into()));
        }
        let other = voters
            .iter()
            .copied()
            .find(|v| *v != self.id)
            .expect("two voters");
        if let Some(node) = membership.get_node(&other) {
            let probe: Result<NodeStatus, _> = self
                .client
                .get_json(&node.addr, STATUS_PATH, Duration::from_millis(500))
                .await;
            if let Ok(status) = probe {
                if status.primary {
                    return Err(HaError::Refused(format!(
                        "node {other} answers and is primary; use `haven ha switchover` instead"
                    )));
                }
            }
        }
        tracing::warn!(other, "forced failover: making this node the only voter");
        raft.shutdown()
            .await
            .map_err(|e| HaError::Raft(e.to_string()))?;
        let last = self.log_store.last_entry().map_err(HaError::Storage)?;
        let (last_index, last_term) =
            last.map_or((0, 0), |e| (e.log_id.index, e.log_id.leader_id.term));
        let term = m.current_term.max(last_term) + 1;
        let nodes: BTreeMap<NodeId, Member> = membership
            .get_node(&self.id)
            .map(|n| (self.id, n.clone()))
            .into_iter()
            .collect();
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, self.id), last_index + 1),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([self.id])],
                nodes,
            )),
        };
        self.log_store
            .force_append(&[entry], &Vote::new(term, self.id))
            .map_err(HaError::Storage)?;
        let new = Raft::new(
            self.id,
            self.raft_config.clone(),
            Network::new(self.client.clone()),
            self.log_store.clone(),
            StateMachine::new(self.store.clone(), &self.home),
        )
        .await
        .map_err(|e| HaError::Raft(e.to_string()))?;
        *self.raft.write().expect("raft lock") = new;
        Ok(())
    }

    /// Recomputes and publishes the role.
    fn publish_role(&self) {
        let role = self.compute_role();
        self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }

    fn compute_role(&self) -> Role {
        let last_quorum_ack = *self.last_quorum_ack.lock().expect("ack lock");
        let metrics = self.raft().metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let single_voter = membership.voter_ids().count() == 1;
        let lease = Duration::from_millis(self.config.timeouts.election_min_ms);
        let leased = single_voter || last_quorum_ack.is_some_and(|t| t.elapsed() < lease);
        let acting = self.kind == NodeRole::Data
            && m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && !self.transferring.load(Ordering::SeqCst)
            && leased
            // Everything committed before this term is applied here.
            && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
        if acting {
            return Role::Primary {
                term: m.current_term,
            };
        }
        let primary = m
            .current_leader
            .filter(|l| *l != self.id)
            .and_then(|l| membership.get_node(&l))
            .filter(|n| n.role == NodeRole::Data)
            .map(Member::url);
        Role::Follower { primary }
    }
}

/// Keeps the published role current: on every metrics change, and on a
/// timer so that a leader that lost its quorum steps down when its lease
/// runs out even if nothing else happens.
async fn track_role(node: std::sync::Weak<ClusterNode>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let mut metrics = n.raft().metrics();
        let tick = Duration::from_millis(n.config.timeouts.heartbeat_ms / 2 + 1);
        drop(n);
        loop {
            let changed = tokio::time::timeout(tick, metrics.changed()).await;
            let Some(n) = node.upgrade() else { return };
            if matches!(changed, Ok(Err(_))) {
                break; // raft replaced (forced failover): follow the new one
            }
            if let Ok(Ok(())) = changed {
                let m = metrics.borrow();
                *n.last_quorum_ack.lock().expect("ack lock") =
                    match (m.state, m.millis_since_quorum_ack) {
                        (ServerState::Leader, Some(ms)) => {
                            Instant::now().checked_sub(Duration::from_millis(ms))
                        }
                        _ => None,
                    };
            }
            let role = n.compute_role();
            n.role.send_if_modified(|r| {
                let changed = *r != role;
                if changed {
                    tracing::info!(node = n.id, ?role, "role changed");
                    *r = role;
                }
                changed
            });
        }
    }
}

/// The lowest-id data node initializes the cluster, once, and only when it
/// and every configured node are pristine: a node that lost its disk must
/// never found a second cluster.
async fn bootstrap(node: Arc<ClusterNode>) {
    let founder = node
        .config
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Data)
        .map(|n| n.id)
        .min();
    if founder != Some(node.id) {
        return;
    }
    loop {
        match node.raft().is_initialized().await {
            Ok(false) => {}
            _ => return,
        }
        match node.log_store.is_pristine() {
            Ok(true) => {}
            _ => return,
        }
        let mut all_pristine = true;
        for peer in node.config.nodes.iter().filter(|n| n.id != node.id) {
            let status: Result<NodeStatus, ClientError> = node
                .client
                .get_json(&peer.addr, STATUS_PATH, Duration::from_millis(500))
                .await;
            match status {
                Ok(s) if !s.initialized => {}
                Ok(_) => {
                    tracing::warn!(
                        peer = peer.id,
                        "a configured node already belongs to a cluster; not bootstrapping"
                    );
                    return;
                }
                Err(_) => all_pristine = false,
            }
        }
        if all_pristine {
            let members: BTreeMap<NodeId, Member> = node
                .config
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.id,
                        Member {
                            addr: n.addr.clone(),
                            role: n.role,
                        },
                    )
                })
                .collect();
            match node.raft().initialize(members).await {
                Ok(()) => tracing::info!("cluster initialized"),
                Err(e) => tracing::warn!("cluster initialization: {e}"),
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A witness that became leader (it held entries the surviving data node
/// lacked) replicates them and hands the primary role to a data node.
async fn witness_hands_over(node: std::sync::Weak<ClusterNode>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let leading = n.raft().metrics().borrow().current_leader == Some(n.id);
        if leading {
            if let Err(e) = n.switchover(None).await {
                tracing::debug!("witness hand-over: {e}");
            }
        }
        let tick = Duration::from_millis(n.config.timeouts.heartbeat_ms);
        drop(n);
        tokio::time::sleep(tick).await;
    }
}

#[async_trait]
impl CommandLog for ClusterNode {
    async fn commit(&self, commands: Vec<Command>) -> Result<Vec<Applied>, CommitError> {
        check_commands_valid(&commands)?;
        let deadline = Instant::now() + self.write_timeout();
        let mut last_primary = None;
        loop {
            let leader = self.raft().metrics().borrow().current_leader;
            if leader == Some(self.id) && self.role.borrow().is_primary() {
                match self.commit_as_leader(commands.clone()).await {
                    Ok(c) => return Ok(c.applied),
                    Err(CommitError::NotPrimary { primary }) => last_primary = primary,
                    Err(e) => return Err(e),
                }
            } else if let Some(member) = leader
                .filter(|l| *l != self.id)
                .and_then(|l| self.member(l))
            {
                let answer: Result<Committed, ClientError> = self
                    .client
                    .post_json(&member.addr, COMMIT_PATH, &commands, self.write_timeout())
                    .await;
                match answer {
                    Ok(committed) => {
                        if self.wait_applied(committed.log_index, deadline).await {
                            return Ok(committed.applied);
                        }
                        return Err(CommitError::Unavailable(format!(
                            "committed at log index {} but not yet applied on this node",
                            committed.log_index
                        )));
                    }
                    // Refused before anything was proposed: try again.
                    Err(ClientError::Connect { .. }) => {}
                    Err(ClientError::Status { status: 409, .. }) => {}
                    Err(ClientError::Status {
                        status: 400, body, ..
                    }) => {
                        return Err(CommitError::Unavailable(format!(
                            "the primary refused the write: {body}"
                        )))
                    }
                    Err(e) => return Err(CommitError::Unavailable(e.to_string())),
                }
                last_primary = Some(member.url());
            }
            if Instant::now() >= deadline {
                return Err(CommitError::NotPrimary {
                    primary: last_primary,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }
}
