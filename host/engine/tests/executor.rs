//! The executor against the example three-tier plan, with simulated
//! connectors: determinism of dry runs, retries, critical failures and
//! cleanup, approvals, parallelism limits, and resume after kill -9.

use std::collections::BTreeMap;
use std::process::Command as Process;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use haven_engine::executor::Clock;
use haven_engine::simulate::{Faults, SimulatedRunner};
use haven_engine::{
    Event, ExecutionOutcome, Executor, StepContext, StepFailure, StepRunner, StepState,
};
use haven_plan::{ExecutionGraph, GroupId, Mode, Origin, Plan, StepInstance, VmRef};
use haven_store::{LocalLog, Store};

fn graph(mode: Mode) -> ExecutionGraph {
    let plan = Plan::from_toml(include_str!("../../plan/examples/three-tier.toml")).unwrap();
    let vm = |name: &str| VmRef {
        connector: "vcenter-prod".into(),
        name: name.into(),
    };
    let resolved = BTreeMap::from([(GroupId::from("app"), vec![vm("app-01"), vm("app-02")])]);
    plan.compile(mode, &resolved).unwrap()
}

/// A single-threaded runtime on a paused clock: simulated time, reproducible order.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn store(dir: &tempfile::TempDir) -> Arc<Store> {
    Arc::new(Store::open(&dir.path().join("state.redb")).unwrap())
}

/// Runs a dry run on a paused clock; returns the outcome and the raw journal.
fn dry_run(mode: Mode, seed: u64, faults: Faults) -> (ExecutionOutcome, Vec<serde_json::Value>) {
    let rt = paused_runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let executor = Executor::new(
            Arc::new(LocalLog::new(store.clone())),
            Arc::new(SimulatedRunner::new(seed, faults)),
            Clock::starting_at(0),
        );
        let outcome = executor.run("dry", &graph(mode)).await.unwrap();
        let journal = store
            .stream("journal/dry", 0)
            .unwrap()
            .into_iter()
            .map(|e| serde_json::json!([e.at_ms, e.entry, e.hash]))
            .collect();
        (outcome, journal)
    })
}

#[test]
fn dry_runs_are_reproducible_from_their_seed() {
    let faults = Faults {
        transient: 0.3,
        ..Faults::default()
    };
    let (a_outcome, a) = dry_run(Mode::Test, 42, faults.clone());
    let (_, b) = dry_run(Mode::Test, 42, faults.clone());
    let (_, c) = dry_run(Mode::Test, 43, faults);
    assert_eq!(a, b, "same seed, same journal, to the millisecond");
    assert_ne!(a, c, "another seed draws other faults");
    assert!(
        a.iter().any(|e| e[1]["event"] == "step-failed"),
        "transient faults were injected"
    );
    // Steps with retries absorb some transient faults; the rest fail the drill.
    assert!(matches!(
        a_outcome,
        ExecutionOutcome::Succeeded | ExecutionOutcome::Failed { .. }
    ));
}

#[test]
fn a_clean_drill_succeeds_and_cleans_up() {
    let (outcome, journal) = dry_run(Mode::Test, 1, Faults::default());
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    let g = graph(Mode::Test);
    let succeeded: Vec<usize> = journal
        .iter()
        .filter(|e| e[1]["event"] == "step-succeeded")
        .map(|e| e[1]["step"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(succeeded.len(), g.steps.len(), "every step ran once");
    assert!(g.steps.iter().any(|s| s.origin == Origin::Cleanup));
    assert_eq!(journal.last().unwrap()[1]["outcome"], "succeeded");
}

#[test]
fn a_lost_site_fails_the_plan_skips_dependents_and_still_cleans_up() {
    let faults = Faults {
        lost_connectors: ["vcenter-prod".to_owned()].into(),
        ..Faults::default()
    };
    let (outcome, journal) = dry_run(Mode::Test, 7, faults);
    let ExecutionOutcome::Failed { failed } = outcome else {
        panic!("{outcome:?}")
    };
    let g = graph(Mode::Test);
    assert!(failed.iter().all(|&i| g.steps[i].vm.is_some()));
    let skipped: Vec<&StepInstance> = journal
        .iter()
        .filter(|e| e[1]["event"] == "step-skipped")
        .map(|e| &g.steps[e[1]["step"].as_u64().unwrap() as usize])
        .collect();
    assert!(
        skipped
            .iter()
            .any(|s| s.group.as_ref().is_some_and(|g| g.as_str() == "web")),
        "dependents skipped"
    );
    let cleanup_attempted = journal.iter().any(|e| {
        e[1]["event"] == "step-started"
            && g.steps[e[1]["step"].as_u64().unwrap() as usize].origin == Origin::Cleanup
    });
    assert!(cleanup_attempted, "cleanup runs after a critical failure");
}

#[test]
fn failover_waits_for_approval_then_resumes() {
    let rt = paused_runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let runner = Arc::new(SimulatedRunner::new(5, Faults::default()));
        let executor = Executor::new(
            Arc::new(LocalLog::new(store)),
            runner.clone(),
            Clock::starting_at(0),
        );
        let g = graph(Mode::Failover);
        let outcome = executor.run("fo", &g).await.unwrap();
        let ExecutionOutcome::AwaitingApproval { steps } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(steps.len(), 1);
        let approval = steps[0];
        // Nothing that depends on the approval ran.
        assert!(runner.effects().len() < g.steps.len() - 1);
        assert!(
            executor
                .approve("fo", &g, approval + 1, "mallory")
                .await
                .is_err(),
            "only waiting steps can be approved"
        );
        executor.approve("fo", &g, approval, "alice").await.unwrap();
        assert_eq!(
            executor.run("fo", &g).await.unwrap(),
            ExecutionOutcome::Succeeded
        );
        let events = executor.events("fo").unwrap();
        assert!(events.contains(&Event::ApprovalGranted {
            step: approval,
            by: "alice".into()
        }));
        // Running a finished execution again changes nothing.
        let before = executor.events("fo").unwrap().len();
        assert_eq!(
            executor.run("fo", &g).await.unwrap(),
            ExecutionOutcome::Succeeded
        );
        assert_eq!(executor.events("fo").unwrap().len(), before);
        // And a different graph cannot hijack it.
        assert!(executor.run("fo", &graph(Mode::Test)).await.is_err());
    });
}

/// Records the highest number of steps of a group running at once.
struct Concurrency {
    group: &'static str,
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait]
impl StepRunner for Concurrency {
    async fn run(
        &self,
        _g: &ExecutionGraph,
        step: &StepInstance,
        _c: &StepContext,
    ) -> Result<String, StepFailure> {
        let mine = step
            .group
            .as_ref()
            .is_some_and(|g| g.as_str() == self.group);
        if mine {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if mine {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(String::new())
    }
}

#[test]
fn group_parallelism_is_respected() {
    let rt = paused_runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let runner = Arc::new(Concurrency {
            group: "web",
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
        });
        let executor = Executor::new(
            Arc::new(LocalLog::new(store(&dir))),
            runner.clone(),
            Clock::starting_at(0),
        );
        let g = graph(Mode::Test);
        assert_eq!(g.group_parallelism.get(&GroupId::from("web")), Some(&2));
        assert_eq!(
            executor.run("par", &g).await.unwrap(),
            ExecutionOutcome::Succeeded
        );
        assert_eq!(
            runner.max.load(Ordering::SeqCst),
            2,
            "web runs two at a time, no more, no less"
        );
    });
}

const CHILD: &str = "HAVEN_ENGINE_TEST_CHILD_STORE";

/// In the child process: run the execution with real time until killed.
fn child_main(store_path: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(Store::open(std::path::Path::new(store_path)).unwrap());
        let mut runner = SimulatedRunner::new(9, Faults::default());
        runner.step_time = Duration::from_millis(40);
        let executor = Executor::new(
            Arc::new(LocalLog::new(store)),
            Arc::new(runner),
            Clock::system(),
        );
        let _ = executor.run("crash", &graph(Mode::Test)).await;
    });
}

#[test]
fn resumes_after_kill_9_without_rerunning_completed_steps() {
    if let Ok(path) = std::env::var(CHILD) {
        return child_main(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    // Kill the host at seeded moments, several times, then let it finish.
    let kills_ms = [170u64, 95, 230, 60];
    for ms in kills_ms {
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "resumes_after_kill_9_without_rerunning_completed_steps",
                "--nocapture",
            ])
            .env(CHILD, &path)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (outcome, events) = rt.block_on(async {
        let store = Arc::new(Store::open(&path).unwrap());
        let mut runner = SimulatedRunner::new(9, Faults::default());
        runner.step_time = Duration::from_millis(5);
        let executor = Executor::new(
            Arc::new(LocalLog::new(store)),
            Arc::new(runner),
            Clock::system(),
        );
        let outcome = executor.run("crash", &graph(Mode::Test)).await.unwrap();
        (outcome, executor.events("crash").unwrap())
    });
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    let resumes = events
        .iter()
        .filter(|e| **e == Event::ExecutionResumed)
        .count();
    assert!(
        resumes >= 2,
        "the kills must interrupt the run ({resumes} resumes)"
    );
    let g = graph(Mode::Test);
    for step in 0..g.steps.len() {
        let succeeded_at: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Event::StepSucceeded { step: s, .. } if *s == step))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(succeeded_at.len(), 1, "step {step} completed exactly once");
        let restarted = events[succeeded_at[0]..]
            .iter()
            .any(|e| matches!(e, Event::StepStarted { step: s, .. } if *s == step));
        assert!(
            !restarted,
            "step {step} was started again after it completed"
        );
    }
    let store = Store::open(&path).unwrap();
    assert!(matches!(
        store.verify_stream("journal/crash").unwrap(),
        haven_store::ChainCheck::Intact { .. }
    ));
    let states = haven_engine::journal::replay(g.steps.len(), &events);
    assert!(states.iter().all(|s| *s == StepState::Succeeded));
}

/// Panics on the web group's steps.
struct Panicking;

#[async_trait]
impl StepRunner for Panicking {
    async fn run(
        &self,
        _g: &ExecutionGraph,
        step: &StepInstance,
        _c: &StepContext,
    ) -> Result<String, StepFailure> {
        if step.group.as_ref().is_some_and(|g| g.as_str() == "web") && step.vm.is_some() {
            panic!("runner bug");
        }
        Ok(String::new())
    }
}

#[test]
fn a_panicking_runner_fails_its_step_not_the_executor() {
    let rt = paused_runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let executor = Executor::new(
            Arc::new(LocalLog::new(store(&dir))),
            Arc::new(Panicking),
            Clock::starting_at(0),
        );
        let outcome = executor.run("panic", &graph(Mode::Failover)).await.unwrap();
        let outcome = match outcome {
            ExecutionOutcome::AwaitingApproval { steps } => {
                executor
                    .approve("panic", &graph(Mode::Failover), steps[0], "alice")
                    .await
                    .unwrap();
                executor.run("panic", &graph(Mode::Failover)).await.unwrap()
            }
            other => other,
        };
        assert!(
            matches!(outcome, ExecutionOutcome::Failed { .. }),
            "{outcome:?}"
        );
        let crashed = executor.events("panic").unwrap().into_iter().any(
            |e| matches!(e, Event::StepFailed { error, .. } if error.contains("runner crashed")),
        );
        assert!(crashed);
    });
}
