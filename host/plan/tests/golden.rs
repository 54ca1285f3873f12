//! Golden files: the example plan's canonical form, verification and execution graphs.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p haven-plan --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use haven_plan::{GroupId, Mode, Plan, VmRef};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example() -> String {
    std::fs::read_to_string(dir().join("examples/three-tier.toml")).unwrap()
}

fn check_golden(name: &str, actual: &str) {
    let path = dir().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "golden file {name} differs");
}

fn resolved() -> BTreeMap<GroupId, Vec<VmRef>> {
    let vm = |name: &str| VmRef {
        connector: "vcenter-prod".into(),
        name: name.into(),
    };
    BTreeMap::from([(GroupId::from("app"), vec![vm("app-01"), vm("app-02")])])
}

#[test]
fn example_canonical_form_is_golden_and_a_fixed_point() {
    let plan = Plan::from_toml(&example()).unwrap();
    let canonical = plan.to_toml();
    check_golden("three-tier.canonical.toml", &canonical);
    let again = Plan::from_toml(&canonical).unwrap();
    assert_eq!(again, plan);
    assert_eq!(again.to_toml(), canonical);
}

#[test]
fn example_ids_are_stable() {
    let a = Plan::from_toml(&example()).unwrap();
    let b = Plan::from_toml(&example()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.pre_steps[0].id.as_str(), "announce-start-798a67");
    // Ids do not depend on position: moving a step keeps its derived id.
    let moved = example().replace(
        "[[pre_steps]]\nname = \"Announce start\"",
        "[[pre_steps]]\nname = \"Announce start (moved)\"",
    );
    let c = Plan::from_toml(&moved).unwrap();
    assert_eq!(c.pre_steps[1].id, a.pre_steps[1].id);
}

#[test]
fn example_verifies_with_the_expected_warnings() {
    let plan = Plan::from_toml(&example()).unwrap();
    let text: Vec<String> = plan.verify().iter().map(ToString::to_string).collect();
    check_golden("three-tier.issues.txt", &(text.join("\n") + "\n"));
    assert!(plan.verify().iter().all(|i| !i.is_error()));
}

#[test]
fn example_graphs_are_golden() {
    let plan = Plan::from_toml(&example()).unwrap();
    for mode in Mode::ALL {
        let graph = plan.compile(mode, &resolved()).unwrap();
        check_golden(&format!("three-tier.graph.{mode}.txt"), &graph.render());
    }
}

#[test]
fn example_diff_is_golden() {
    let old = Plan::from_toml(&example()).unwrap();
    let mut new = old.clone();
    new.rto = Some("30m".parse().unwrap());
    new.groups.swap(1, 2);
    new.groups[0].vms.push("db-03".into());
    new.groups[2].pre_steps.clear();
    let step = new.groups[0].post_steps.remove(0);
    new.post_steps.insert(0, step);
    new.pre_steps[0].timeout = Some("1m".parse().unwrap());
    let mut extra = Plan::from_toml(&example()).unwrap().pre_steps.remove(0);
    extra.id = "announce-again".into();
    extra.name = "Announce again".into();
    new.post_steps.push(extra);
    let d = haven_plan::diff(&old, &new);
    check_golden("three-tier.diff.txt", &d.to_string());
    assert!(haven_plan::diff(&old, &old).is_empty());
}

#[test]
fn json_form_for_the_api_round_trips() {
    let plan = Plan::from_toml(&example()).unwrap();
    let json = serde_json::to_string(&plan).unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
    assert_eq!(back.digest(), plan.digest());
    let graph = plan.compile(Mode::Test, &resolved()).unwrap();
    let json = serde_json::to_string(&graph).unwrap();
    assert_eq!(
        serde_json::from_str::<haven_plan::ExecutionGraph>(&json).unwrap(),
        graph
    );
}

#[test]
fn readme_example_parses() {
    let readme = std::fs::read_to_string(dir().join("README.md")).unwrap();
    let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let plan = Plan::from_toml(&readme[start..end]).unwrap();
    let errors: Vec<String> = plan
        .verify()
        .iter()
        .filter(|i| i.is_error())
        .map(ToString::to_string)
        .collect();
    // The snippet shows one group; its dependency on "db" is the only error.
    assert_eq!(
        errors,
        ["error: groups.0.depends_on.0: unknown group \"db\""]
    );
}
