//! Verification and parse errors name the field path.

use haven_plan::{Issue, Plan, PlanError, Severity};

const BASE: &str = r#"
id = "p"
name = "P"
rto = "30m"
rpo = "5m"
"#;

fn plan(body: &str) -> Plan {
    Plan::from_toml(&format!("{BASE}{body}")).unwrap()
}

fn issues(body: &str) -> Vec<Issue> {
    plan(body).verify()
}

fn has(issues: &[Issue], severity: Severity, path: &str, needle: &str) -> bool {
    issues
        .iter()
        .any(|i| i.severity == severity && i.path == path && i.message.contains(needle))
}

fn parse_err(text: &str) -> String {
    Plan::from_toml(text).unwrap_err().to_string()
}

#[test]
fn clean_plan_has_no_issues() {
    let found = issues(
        r#"
[[network_map]]
production = "prod"
recovery = "dr"
test = "bubble"
[[groups]]
id = "db"
name = "DB"
connector = "vc"
vms = ["db-01"]
"#,
    );
    assert!(found.is_empty(), "{found:?}");
    let p = plan("[[groups]]\nid = \"db\"\nname = \"DB\"\ntags = [\"a=b\"]\n");
    assert!(has(
        &p.verify(),
        Severity::Warning,
        "network_map",
        "no network mapping"
    ));
    // Any edit changes the digest.
    let mut edited = p.clone();
    assert_eq!(edited.digest(), p.digest());
    assert_eq!(p.digest().len(), 64);
    edited.groups[0].parallelism = Some(2);
    assert_ne!(edited.digest(), p.digest());
}

#[test]
fn unknown_group_reference() {
    let found = issues(
        r#"
[[groups]]
id = "a"
name = "A"
tags = ["x=y"]
depends_on = ["nope"]
"#,
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.0.depends_on.0",
            "unknown group \"nope\""
        ),
        "{found:?}"
    );
}

#[test]
fn dependency_cycle_reports_its_path() {
    let found = issues(
        r#"
[[groups]]
id = "a"
name = "A"
tags = ["x=y"]
depends_on = ["c"]
[[groups]]
id = "b"
name = "B"
tags = ["x=y"]
depends_on = ["a"]
[[groups]]
id = "c"
name = "C"
tags = ["x=y"]
depends_on = ["b"]
[[groups]]
id = "d"
name = "D"
tags = ["x=y"]
depends_on = ["d"]
"#,
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.0.depends_on",
            "dependency cycle: a → b → c → a"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "groups.3.depends_on.0", "itself"),
        "{found:?}"
    );
    let p = plan("[[groups]]\nid = \"a\"\nname = \"A\"\ntags = [\"x=y\"]\ndepends_on = [\"a\"]\n");
    assert!(matches!(
        p.compile(haven_plan::Mode::Failover, &Default::default()),
        Err(PlanError::Invalid { .. })
    ));
}

#[test]
fn duplicates() {
    let found = issues(
        r#"
[[groups]]
id = "a"
name = "Same"
tags = ["x=y"]
[[groups.pre_steps]]
id = "s"
name = "S"
action = { kind = "notify", channel = "c", message = "m" }
[[groups]]
id = "a"
name = "Same"
tags = ["x=y", "x=y"]
[[groups.post_steps]]
id = "s"
name = "S"
action = { kind = "notify", channel = "c", message = "m" }
"#,
    );
    assert!(
        has(&found, Severity::Error, "groups.1.id", "duplicate group id"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.1.name",
            "duplicate group name"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.1.post_steps.0.id",
            "also groups.0.pre_steps.0"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Warning, "groups.1.tags.1", "twice"),
        "{found:?}"
    );
}

#[test]
fn step_checks() {
    let found = issues(
        r#"
[[pre_steps]]
id = "none"
name = "No modes"
modes = []
action = { kind = "notify", channel = "c", message = "m" }
[[pre_steps]]
id = "host"
name = "Host"
action = { kind = "run-host-command", command = "/bin/true" }
[[pre_steps]]
id = "approve"
name = "Approve"
action = { kind = "approval" }
[[pre_steps]]
id = "approve-test"
name = "Approve in drills"
modes = ["test"]
action = { kind = "approval" }
[[pre_steps]]
id = "vm"
name = "Power on at plan level"
action = { kind = "power-on" }
[[pre_steps]]
id = "Bad Id"
name = "Bad"
timeout = "0s"
action = { kind = "probe", check = { type = "tcp", host = "db", port = 0 } }
[[groups]]
id = "g"
name = "G"
parallelism = 0
vms = ["x"]
[[groups.gates]]
type = "http"
url = "ftp://example.com/"
[[groups.gates]]
type = "http"
url = "not a url"
expect_status = 999
"#,
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "pre_steps.0.modes",
            "runs in no mode"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Warning,
            "pre_steps.1.action.command",
            "administrator"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Warning, "pre_steps.2.timeout", "failover"),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|i| i.path == "pre_steps.3.timeout"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "pre_steps.4.action.kind",
            "acts on a VM"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "pre_steps.5.id", "bad step id"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "pre_steps.5.timeout",
            "greater than zero"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "pre_steps.5.action.check.port",
            "1 and 65535"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.0.parallelism",
            "at least 1"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "groups.0.connector", "connector"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.0.gates.0.url",
            "not an http"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "groups.0.gates.1.url", "bad URL"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "groups.0.gates.1.expect_status",
            "999"
        ),
        "{found:?}"
    );
}

#[test]
fn plan_level_checks() {
    let p = Plan::from_toml(
        r#"
name = "No targets"
parallelism = 0
recovery_point = { point = "" }
[[network_map]]
production = "prod"
recovery = "dr"
[[network_map]]
production = "prod"
recovery = "dr"
test = "dr"
[[re_ip]]
source = "10.0.0.5/24"
target = "172.16.0.0/16"
gateway = "192.168.1.1"
[[re_ip]]
source = "10.0.0.0/16"
target = "fd00::/64"
"#,
    )
    .unwrap();
    let found = p.verify();
    assert!(
        has(&found, Severity::Error, "rto", "missing target RTO"),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "rpo", "missing target RPO"),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "parallelism", "at least 1"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "recovery_point.point",
            "bad recovery point"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Warning,
            "network_map.0.test",
            "drills will be refused"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "network_map.1.production",
            "already mapped"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "network_map.1.test",
            "not isolated"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Warning, "re_ip.0.source", "host bits"),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "re_ip.0.target", "prefix length"),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "re_ip.0.gateway", "outside"),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Error, "re_ip.1.target", "IP family"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "re_ip.1.source",
            "overlaps re_ip.0"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, Severity::Warning, "groups", "no VM group"),
        "{found:?}"
    );
}

#[test]
fn parse_errors_name_the_field() {
    let e = parse_err(
        r#"
name = "P"
[[groups]]
name = "A"
[[groups]]
name = "B"
[[groups.pre_steps]]
name = "S"
timeout = "ten minutes"
action = { kind = "power-on" }
"#,
    );
    assert!(
        e.starts_with("groups.1.pre_steps.0.timeout: bad duration"),
        "{e}"
    );
    assert!(e.contains("(line 9)"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let e =
        parse_err("name = \"P\"\n[[re_ip]]\nsource = \"10.0.0.0/33\"\ntarget = \"10.1.0.0/24\"\n");
    assert!(e.starts_with("re_ip.0.source:"), "{e}");
    let e = parse_err("name = \"P\"\nrecovery_point = { latest_before = \"yesterday\" }\n");
    assert!(
        e.starts_with("recovery_point.latest_before: bad timestamp"),
        "{e}"
    );
    let e = parse_err("name = \"P\"\n[[groups]]\nname = \"G\"\ntags = [\"novalue\"]\n");
    assert!(e.starts_with("groups.0.tags.0: bad tag selector"), "{e}");
    let e = parse_err("name = \"P\"\n[[groups]]\nname = \"G\"\n[[groups.gates]]\ntype = \"tcp\"\nhost = \"h\"\nport = 70000\n");
    assert!(e.starts_with("groups.0.gates.0"), "{e}");
    let e = parse_err("name = \"P\"\nrto_typo = \"5m\"\n");
    assert!(e.contains("rto_typo"), "{e}");
    let e = parse_err(
        "name = \"P\"\n[[pre_steps]]\nname = \"S\"\naction = { kind = \"power-on\", vm = \"x\" }\n",
    );
    assert!(
        e.starts_with(
            "pre_steps.0.action: unknown field `vm`: action `power-on` takes no parameters"
        ),
        "{e}"
    );
    let e = parse_err(
        "name = \"P\"\n[[pre_steps]]\nname = \"S\"\naction = { kind = \"probe\", check = { type = \"heartbeat\", timeout = \"5 m\" } }\n",
    );
    assert!(e.starts_with("pre_steps.0.action: bad duration"), "{e}");
    let e =
        parse_err("name = \"P\"\n[[pre_steps]]\nname = \"S\"\naction = { kind = \"reboot\" }\n");
    assert!(e.starts_with("pre_steps.0.action"), "{e}");
    let e = parse_err("name = \"P\"\n[[pre_steps]]\nname = \"S\"\nmodes = [\"drill\"]\naction = { kind = \"power-on\" }\n");
    assert!(e.starts_with("pre_steps.0.modes.0"), "{e}");
    let e = parse_err("name = = \"P\"");
    assert!(e.starts_with("line 1:"), "{e}");
    let e = parse_err("description = \"no name\"");
    assert!(e.contains("name"), "{e}");
}

#[test]
fn scripts_are_named_by_installed_id_not_by_file() {
    let found = issues(
        r#"
[[pre_steps]]
name = "By file"
action = { kind = "run-script", component = "scripts/pg-check.wasm" }
[[pre_steps]]
name = "By id"
action = { kind = "run-script", component = "pg-check" }
"#,
    );
    assert!(
        has(
            &found,
            Severity::Error,
            "pre_steps.0.action.component",
            "installed script by its id"
        ),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|i| i.path.starts_with("pre_steps.1")),
        "{found:?}"
    );
}
