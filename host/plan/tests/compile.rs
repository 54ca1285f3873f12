//! Compilation into execution graphs.

use std::collections::{BTreeMap, BTreeSet};

use haven_plan::{Action, ExecutionGraph, GroupId, Mode, Origin, Plan, PlanError, VmRef};

fn example() -> Plan {
    Plan::from_toml(include_str!("../examples/three-tier.toml")).unwrap()
}

fn resolved() -> BTreeMap<GroupId, Vec<VmRef>> {
    let vm = |name: &str| VmRef {
        connector: "vc".into(),
        name: name.into(),
    };
    BTreeMap::from([(
        GroupId::from("app"),
        vec![vm("app-01"), vm("app-02"), vm("app-01")],
    )])
}

fn graph(mode: Mode) -> ExecutionGraph {
    example().compile(mode, &resolved()).unwrap()
}

fn position(g: &ExecutionGraph, group: &str, action: &str, origin: Origin) -> Vec<usize> {
    g.steps
        .iter()
        .filter(|s| {
            s.group.as_ref().map(GroupId::as_str) == Some(group)
                && s.action.kind() == action
                && s.origin == origin
        })
        .map(|s| s.index)
        .collect()
}

#[test]
fn graphs_are_well_formed_and_deterministic() {
    for mode in Mode::ALL {
        let g = graph(mode);
        assert_eq!(g, graph(mode));
        let keys: BTreeSet<&str> = g.steps.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys.len(), g.steps.len(), "{mode}: keys are unique");
        for (i, s) in g.steps.iter().enumerate() {
            assert_eq!(s.index, i);
            assert!(
                s.depends_on.iter().all(|&d| d < i),
                "{mode}: edges point backwards"
            );
            assert!(
                s.key.starts_with(&format!("shop-three-tier:{mode}:")),
                "{}",
                s.key
            );
        }
        assert_eq!(g.parallelism, Some(8));
        assert_eq!(g.group_parallelism.get(&GroupId::from("web")), Some(&2));
    }
}

#[test]
fn keys_identify_plan_step_vm_and_mode() {
    let g = graph(Mode::Failover);
    assert!(g
        .steps
        .iter()
        .any(|s| s.key == "shop-three-tier:failover:db/power-on:vcenter-prod/db-01"));
    assert!(g
        .steps
        .iter()
        .any(|s| s.key == "shop-three-tier:failover:announce-start-798a67:-"));
    // Resolved VM lists are de-duplicated.
    assert_eq!(position(&g, "app", "power-on", Origin::Builtin).len(), 2);
}

#[test]
fn failover_respects_dependencies_and_gates() {
    let g = graph(Mode::Failover);
    let db_gates = position(&g, "db", "probe", Origin::Gate);
    let app_first = position(&g, "app", "choose-recovery-point", Origin::Builtin)[0];
    let flush = position(&g, "app", "run-host-command", Origin::GroupPre)[0];
    assert!(flush < app_first);
    // The app group starts after the db group's post-step, which waits for its gates.
    let db_post = position(&g, "db", "run-script", Origin::GroupPost)[0];
    assert!(g.steps[db_post]
        .depends_on
        .iter()
        .any(|d| db_gates.contains(d)));
    assert!(g.steps[flush].depends_on.contains(&db_post));
    // The approval pre-step runs in failover, not in drills.
    assert!(g
        .steps
        .iter()
        .any(|s| matches!(s.action, Action::Approval { .. })));
    assert!(!graph(Mode::Test)
        .steps
        .iter()
        .any(|s| matches!(s.action, Action::Approval { .. })));
    // Heartbeat gates are per VM.
    assert_eq!(position(&g, "db", "wait-heartbeat", Origin::Gate).len(), 2);
    assert_eq!(
        position(&g, "db", "stop-replication", Origin::Builtin).len(),
        2
    );
}

#[test]
fn drills_end_with_cleanup_dependents_first() {
    let g = graph(Mode::Test);
    let first_cleanup = g
        .steps
        .iter()
        .position(|s| s.origin == Origin::Cleanup)
        .unwrap();
    assert!(g.steps[first_cleanup..]
        .iter()
        .all(|s| s.origin == Origin::Cleanup));
    assert_eq!(
        g.steps
            .iter()
            .filter(|s| s.origin == Origin::Cleanup)
            .count(),
        2 * 7
    );
    let web_delete = position(&g, "web", "delete-vm", Origin::Cleanup);
    let db_off = position(&g, "db", "power-off", Origin::Cleanup);
    let app_off = position(&g, "app", "power-off", Origin::Cleanup);
    assert!(web_delete.iter().all(|w| app_off.iter().all(|a| a > w)));
    assert!(g.steps[db_off[0]].depends_on.iter().any(|d| g.steps[*d]
        .group
        .as_ref()
        .map(GroupId::as_str)
        == Some("app")));
    assert!(!g
        .steps
        .iter()
        .any(|s| matches!(s.action, Action::StopReplication)));
}

#[test]
fn undo_and_failback_reverse_the_order() {
    let g = graph(Mode::Undo);
    let web = position(&g, "web", "power-off", Origin::Builtin);
    let db = position(&g, "db", "power-off", Origin::Builtin);
    assert!(web.iter().all(|w| db.iter().all(|d| d > w)));
    assert!(!g.steps.iter().any(|s| s.origin == Origin::Gate));

    for mode in [Mode::Failback, Mode::Migration] {
        let g = graph(mode);
        let web_off = position(&g, "web", "power-off", Origin::Builtin);
        let db_off = position(&g, "db", "power-off", Origin::Builtin);
        let db_on = position(&g, "db", "power-on", Origin::Builtin);
        let web_on = position(&g, "web", "power-on", Origin::Builtin);
        assert!(
            web_off.iter().all(|w| db_off.iter().all(|d| d > w)),
            "{mode}"
        );
        assert!(db_on.iter().all(|d| web_on.iter().all(|w| w > d)), "{mode}");
        assert_eq!(
            position(&g, "db", "finalize-replication", Origin::Builtin).len(),
            2
        );
    }
}

#[test]
fn unresolved_tag_groups_and_missing_test_networks_are_errors() {
    let plan = example();
    let e = plan.compile(Mode::Failover, &BTreeMap::new()).unwrap_err();
    assert!(matches!(e, PlanError::Unresolved { .. }));
    assert_eq!(
        e.to_string(),
        "groups.1: group app selects VMs by tag but no resolved VM list was given"
    );
    let mut plan = example();
    plan.network_map[1].test = None;
    let e = plan.compile(Mode::Test, &resolved()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "network_map.1.test: drills need an isolated test network for every mapping"
    );
    assert!(plan.compile(Mode::Failover, &resolved()).is_ok());
    plan.groups[2].depends_on.push("ghost".into());
    let e = plan.compile(Mode::Failover, &resolved()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("error: groups.2.depends_on.1: unknown group"),
        "{e}"
    );
}

#[test]
fn empty_groups_keep_the_order() {
    let plan = Plan::from_toml(
        r#"
name = "E"
rto = "1h"
rpo = "1h"
[[groups]]
id = "a"
name = "A"
tags = ["x=1"]
[[groups]]
id = "b"
name = "B"
depends_on = ["a"]
connector = "vc"
vms = ["b1"]
"#,
    )
    .unwrap();
    let resolved = BTreeMap::from([(GroupId::from("a"), Vec::new())]);
    let g = plan.compile(Mode::Failover, &resolved).unwrap();
    assert_eq!(g.steps.len(), 5);
    assert!(g
        .steps
        .iter()
        .all(|s| s.group.as_ref().map(GroupId::as_str) == Some("b")));
}
