//! Execution reports and evidence packs from a real journal.

use std::collections::BTreeMap;
use std::sync::Arc;

use haven_engine::executor::Clock;
use haven_engine::report::{execution_report, to_html, EvidencePack};
use haven_engine::simulate::{Faults, SimulatedRunner};
use haven_engine::{ExecutionOutcome, Executor};
use haven_plan::{GroupId, Mode, Plan, VmRef};
use haven_store::{LocalLog, Store};

fn run(
    faults: Faults,
) -> (
    tempfile::TempDir,
    Arc<Store>,
    haven_plan::ExecutionGraph,
    ExecutionOutcome,
) {
    let plan = Plan::from_toml(include_str!("../../plan/examples/three-tier.toml")).unwrap();
    let vm = |name: &str| VmRef {
        connector: "vcenter-prod".into(),
        name: name.into(),
    };
    let resolved = BTreeMap::from([(GroupId::from("app"), vec![vm("app-01")])]);
    let graph = plan.compile(Mode::Test, &resolved).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        Executor::new(
            Arc::new(LocalLog::new(store.clone())),
            Arc::new(SimulatedRunner::new(3, faults)),
            Clock::starting_at(1_000),
        )
        .run("drill-1", &graph)
        .await
        .unwrap()
    });
    (dir, store, graph, outcome)
}

#[test]
fn report_has_a_timeline_per_step_and_the_measured_rto() {
    let (_dir, store, graph, outcome) = run(Faults::default());
    assert_eq!(outcome, ExecutionOutcome::Succeeded);
    let report = execution_report(&store, "drill-1", &graph, Some(45 * 60_000)).unwrap();
    assert_eq!(report.outcome, "succeeded");
    assert_eq!(report.started_at_ms, 1_000);
    assert_eq!(report.steps.len(), graph.steps.len());
    assert!(report
        .steps
        .iter()
        .all(|s| s.outcome == "succeeded" && s.attempts == 1));
    let last_end = report
        .steps
        .iter()
        .filter_map(|s| s.finished_ms)
        .max()
        .unwrap();
    assert_eq!(
        report.duration_ms, last_end,
        "the duration runs to the last step"
    );
    let last_gate = graph
        .steps
        .iter()
        .filter(|s| s.origin == haven_plan::Origin::Gate)
        .filter_map(|s| report.steps[s.index].finished_ms)
        .max()
        .unwrap();
    assert_eq!(
        report.measured_rto_ms,
        Some(last_gate),
        "the RTO ends when the last health gate passed"
    );
    assert!(
        last_gate < report.duration_ms,
        "cleanup is not part of the RTO"
    );
    for s in &report.steps {
        assert!(s.started_ms.unwrap() <= s.finished_ms.unwrap());
    }
    let html = to_html(&report);
    assert!(
        html.contains("shop-three-tier") && html.contains("— met"),
        "{html}"
    );
    assert!(html.contains(&report.steps[0].key));
}

#[test]
fn a_failed_execution_reports_failures_and_no_rto() {
    let faults = Faults {
        lost_connectors: ["vcenter-prod".to_owned()].into(),
        ..Faults::default()
    };
    let (_dir, store, graph, _) = run(faults);
    let report = execution_report(&store, "drill-1", &graph, Some(60_000)).unwrap();
    assert_eq!(report.outcome, "failed");
    assert!(report
        .steps
        .iter()
        .any(|s| s.outcome == "failed" && s.detail.contains("lost")));
    assert!(report.steps.iter().any(|s| s.outcome == "skipped"));
    assert_eq!(report.measured_rto_ms, None);
    assert!(to_html(&report).contains("not reached"));
}

#[test]
fn evidence_packs_verify_and_expose_tampering() {
    let (_dir, store, graph, _) = run(Faults::default());
    let pack = EvidencePack::collect(&store, "drill-1", &graph).unwrap();
    pack.verify().unwrap();
    let json = serde_json::to_string(&pack).unwrap();
    let reloaded: EvidencePack = serde_json::from_str(&json).unwrap();
    reloaded.verify().unwrap();

    // Claiming a step succeeded on a later attempt than it did.
    let mut forged = reloaded.clone();
    let i = forged
        .journal
        .iter()
        .position(|e| e.entry["event"] == "step-succeeded")
        .unwrap();
    forged.journal[i].entry["attempt"] = serde_json::json!(2);
    assert_eq!(forged.verify().unwrap_err().seq, forged.journal[i].seq);

    // Dropping the last entry (hiding how it ended).
    let mut truncated = reloaded.clone();
    truncated.journal.pop();
    assert!(truncated.verify().is_err());

    // Removing an entry in the middle.
    let mut gap = reloaded;
    gap.journal.remove(3);
    assert!(gap.verify().is_err());
}
