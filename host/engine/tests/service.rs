//! The orchestrator (execution lifecycle shared by the API and the embedded
//! CLI) and cancellation: start, approve, cancel (durable across restarts,
//! cleanup still runs), journal following, and driving executions only while
//! the node is primary.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use haven_engine::executor::Clock;
use haven_engine::resolve::{ResolveError, Resolver};
use haven_engine::service::{ExecutionStatus, Orchestrator, OrchestratorError, PlanRecord, PLANS};
use haven_engine::simulate::{Faults, SimulatedRunner};
use haven_engine::{Event, ExecutionOutcome, Executor, StepState};
use haven_plan::{GroupId, Mode, Origin, Plan, VmRef};
use haven_store::testing::SwitchableLog;
use haven_store::{Command, CommandLog, LocalLog, Role, Store};

const PLAN: &str = include_str!("../../plan/examples/three-tier.toml");
const PLAN_ID: &str = "shop-three-tier";

/// Resolves the example plan's tag-selected group to two VMs (what a
/// connector's inventory would answer).
struct ExampleInventory;

#[async_trait]
impl Resolver for ExampleInventory {
    async fn resolve(&self, _plan: &Plan) -> Result<BTreeMap<GroupId, Vec<VmRef>>, ResolveError> {
        let vm = |name: &str| VmRef {
            connector: "vcenter-prod".into(),
            name: name.into(),
        };
        Ok(BTreeMap::from([(
            GroupId::from("app"),
            vec![vm("app-01"), vm("app-02")],
        )]))
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: Arc<SwitchableLog>,
    orchestrator: Arc<Orchestrator>,
}

async fn fixture(faults: Faults) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
    let log = Arc::new(SwitchableLog::new(store, Role::Primary { term: 1 }));
    let plan = Plan::from_toml(PLAN).unwrap();
    log.commit(vec![Command::Put {
        collection: PLANS.into(),
        key: PLAN_ID.into(),
        value: serde_json::to_value(PlanRecord::new(&plan, "test", 0)).unwrap(),
        expected_version: Some(0),
    }])
    .await
    .unwrap();
    let orchestrator = Orchestrator::new(
        log.clone(),
        Arc::new(ExampleInventory),
        Arc::new(SimulatedRunner::new(7, faults)),
        Clock::starting_at(1_000_000),
    );
    orchestrator.supervise();
    Fixture {
        _dir: dir,
        log,
        orchestrator,
    }
}

fn events(f: &Fixture, id: &str) -> Vec<Event> {
    f.log
        .store()
        .stream(&format!("journal/{id}"), 0)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_value(e.entry).unwrap())
        .collect()
}

#[test]
fn a_drill_runs_to_the_end_and_is_listed() {
    paused_runtime().block_on(async {
        let f = fixture(Faults::default()).await;
        let record = f
            .orchestrator
            .start(PLAN_ID, Mode::Test, "alice")
            .await
            .unwrap();
        f.orchestrator.wait_idle(&record.id).await;
        let view = f.orchestrator.get(&record.id).unwrap();
        assert_eq!(view.status, ExecutionStatus::Succeeded);
        assert!(view.steps.iter().all(|s| s.state == StepState::Succeeded));
        assert_eq!(view.started_by, "alice");
        let listed = f.orchestrator.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, record.id);
    });
}

#[test]
fn starting_an_unknown_plan_or_on_a_follower_is_refused() {
    paused_runtime().block_on(async {
        let f = fixture(Faults::default()).await;
        assert!(matches!(
            f.orchestrator.start("nope", Mode::Test, "a").await,
            Err(OrchestratorError::PlanNotFound(_))
        ));
        f.log.role.send_replace(Role::Follower {
            primary: Some("http://127.0.0.2:7400".into()),
        });
        match f.orchestrator.start(PLAN_ID, Mode::Test, "a").await {
            Err(OrchestratorError::NotPrimary { primary }) => {
                assert_eq!(primary.as_deref(), Some("http://127.0.0.2:7400"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            f.orchestrator.list().unwrap().is_empty(),
            "nothing was written"
        );
    });
}

#[test]
fn a_failover_waits_for_approval_then_finishes() {
    paused_runtime().block_on(async {
        let f = fixture(Faults::default()).await;
        let record = f
            .orchestrator
            .start(PLAN_ID, Mode::Failover, "alice")
            .await
            .unwrap();
        f.orchestrator.wait_idle(&record.id).await;
        let view = f.orchestrator.get(&record.id).unwrap();
        assert_eq!(view.status, ExecutionStatus::AwaitingApproval);
        let step = view
            .steps
            .iter()
            .find(|s| s.state == StepState::AwaitingApproval)
            .unwrap();
        assert!(step.approval);
        // Approving another step is refused and changes nothing.
        let other = view.steps.iter().find(|s| !s.approval).unwrap().index;
        assert!(matches!(
            f.orchestrator.approve(&record.id, other, "bob").await,
            Err(OrchestratorError::NotAwaitingApproval { .. })
        ));
        f.orchestrator
            .approve(&record.id, step.index, "bob")
            .await
            .unwrap();
        f.orchestrator.wait_idle(&record.id).await;
        assert_eq!(
            f.orchestrator.get(&record.id).unwrap().status,
            ExecutionStatus::Succeeded
        );
        assert!(events(&f, &record.id).contains(&Event::ApprovalGranted {
            step: step.index,
            by: "bob".into()
        }));
    });
}

#[test]
fn cancelling_a_running_drill_skips_the_rest_but_still_cleans_up() {
    paused_runtime().block_on(async {
        let f = fixture(Faults::default()).await;
        let record = f.orchestrator.start(PLAN_ID, Mode::Test, "alice").await.unwrap();
        // Cancel as soon as the first step has succeeded.
        let mut follower = f.orchestrator.subscribe(&record.id, 0).unwrap();
        'wait: while let Some(batch) = follower.next().await.unwrap() {
            for e in batch {
                if matches!(e.event, Event::StepSucceeded { .. }) {
                    break 'wait;
                }
            }
        }
        f.orchestrator.cancel(&record.id, "carol").await.unwrap();
        f.orchestrator.wait_idle(&record.id).await;
        let view = f.orchestrator.get(&record.id).unwrap();
        assert_eq!(view.status, ExecutionStatus::Cancelled);

        let journal = events(&f, &record.id);
        let cancel_at = journal
            .iter()
            .position(|e| matches!(e, Event::CancelRequested { by } if by == "carol"))
            .expect("the cancel is journaled");
        let graph = &record.graph;
        let started_after: Vec<usize> = journal[cancel_at..]
            .iter()
            .filter_map(|e| match e {
                Event::StepStarted { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        assert!(
            started_after.iter().all(|&s| graph.steps[s].origin == Origin::Cleanup),
            "only cleanup steps start after a cancel"
        );
        assert!(
            graph
                .steps
                .iter()
                .filter(|s| s.origin == Origin::Cleanup)
                .all(|s| view.steps[s.index].state == StepState::Succeeded),
            "cleanup ran: {:?}",
            view.steps
        );
        assert!(view.steps.iter().any(|s| s.state == StepState::Skipped));
        assert!(matches!(journal.last(), Some(Event::ExecutionFinished { outcome }) if outcome == "cancelled"));
        // A finished execution cannot be cancelled again.
        assert!(matches!(
            f.orchestrator.cancel(&record.id, "carol").await,
            Err(OrchestratorError::Finished(_))
        ));
    });
}

#[test]
fn a_cancel_request_is_durable_across_a_restart() {
    paused_runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state.redb")).unwrap());
        let plan = Plan::from_toml(PLAN).unwrap();
        let resolved = ExampleInventory.resolve(&plan).await.unwrap();
        let graph = plan.compile(Mode::Failover, &resolved).unwrap();
        let runner = Arc::new(SimulatedRunner::new(1, Faults::default()));
        let first = Executor::new(
            Arc::new(LocalLog::new(store.clone())),
            runner.clone(),
            Clock::starting_at(0),
        );
        let outcome = first.run("x", &graph).await.unwrap();
        assert!(matches!(outcome, ExecutionOutcome::AwaitingApproval { .. }));
        first.cancel("x", "dave").await.unwrap();
        let effects_before = runner.effects().len();
        drop(first);

        // A new host process replays the journal: the cancel holds.
        let second = Executor::new(
            Arc::new(LocalLog::new(store.clone())),
            runner.clone(),
            Clock::starting_at(0),
        );
        assert_eq!(
            second.run("x", &graph).await.unwrap(),
            ExecutionOutcome::Cancelled
        );
        let ran_after: Vec<String> = runner.effects()[effects_before..]
            .iter()
            .map(|(key, _)| key.clone())
            .collect();
        assert!(
            ran_after.iter().all(|k| graph
                .steps
                .iter()
                .any(|s| &s.key == k && s.origin == Origin::Cleanup)),
            "only cleanup ran after the cancel: {ran_after:?}"
        );
        // Running it again changes nothing.
        assert_eq!(
            second.run("x", &graph).await.unwrap(),
            ExecutionOutcome::Cancelled
        );
    });
}

#[test]
fn executions_run_only_while_primary_and_resume_on_becoming_primary_again() {
    paused_runtime().block_on(async {
        let f = fixture(Faults::default()).await;
        let record = f
            .orchestrator
            .start(PLAN_ID, Mode::Test, "alice")
            .await
            .unwrap();
        let mut follower = f.orchestrator.subscribe(&record.id, 0).unwrap();
        'wait: while let Some(batch) = follower.next().await.unwrap() {
            for e in batch {
                if matches!(e.event, Event::StepSucceeded { .. }) {
                    break 'wait;
                }
            }
        }
        // Deposed: the orchestrator stops driving; nothing more is journaled.
        f.log.role.send_replace(Role::Follower { primary: None });
        f.orchestrator.wait_idle(&record.id).await;
        let frozen = events(&f, &record.id).len();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(events(&f, &record.id).len(), frozen);
        assert_eq!(
            f.orchestrator.get(&record.id).unwrap().status,
            ExecutionStatus::Running
        );

        // Elected again: it resumes where the journal stands and finishes.
        f.log.role.send_replace(Role::Primary { term: 2 });
        tokio::task::yield_now().await;
        f.orchestrator.wait_idle(&record.id).await;
        assert_eq!(
            f.orchestrator.get(&record.id).unwrap().status,
            ExecutionStatus::Succeeded
        );
        assert!(events(&f, &record.id).contains(&Event::ExecutionResumed));
    });
}

#[test]
fn a_journal_follower_sees_every_event_then_ends() {
    paused_runtime().block_on(async {
        let f = fixture(Faults::default()).await;
        let record = f
            .orchestrator
            .start(PLAN_ID, Mode::Test, "alice")
            .await
            .unwrap();
        let mut follower = f.orchestrator.subscribe(&record.id, 0).unwrap();
        let mut seen = Vec::new();
        while let Some(batch) = follower.next().await.unwrap() {
            seen.extend(batch);
        }
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "in order, none missed"
        );
        assert_eq!(seen.len(), events(&f, &record.id).len());
        assert!(matches!(
            seen.last().unwrap().event,
            Event::ExecutionFinished { .. }
        ));
        // Resuming after an entry returns only what follows.
        let mut tail = f
            .orchestrator
            .subscribe(&record.id, seqs.len() as u64 - 1)
            .unwrap();
        assert_eq!(tail.next().await.unwrap().unwrap().len(), 1);
    });
}
