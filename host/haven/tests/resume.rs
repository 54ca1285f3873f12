//! A killed host resumes its executions: `haven serve` runs a real failover
//! against the lab (through the lab plugin, from replicas made by the block
//! transport) and is killed with SIGKILL at seeded random moments, then
//! restarted. The execution must finish with every step run to success
//! exactly once, and the recovery site must hold each VM exactly once.
//!
//! `HAVEN_TEST_SEED` picks other kill moments (the seed is printed).

mod lab_support;

use std::time::{Duration, Instant};

use haven_engine::Event;
use haven_store::Store;
use lab_support::{free_port, haven, ok, LabSite, Serve};

const PLAN: &str = r#"
id = "resume"
name = "Resume under kill -9"
rto = "10m"
rpo = "1h"
[[network_map]]
production = "prod-net"
recovery = "dr-net"
test = "dr-test"
[[groups]]
id = "db"
name = "Database"
connector = "lab-prod"
tags = ["group=g01"]
[[groups.gates]]
type = "heartbeat"
timeout = "2m"
[[groups]]
id = "app"
name = "Application"
depends_on = ["db"]
connector = "lab-prod"
tags = ["group=g02"]
[[groups.gates]]
type = "heartbeat"
timeout = "2m"
[[groups]]
id = "web"
name = "Web"
depends_on = ["app"]
connector = "lab-prod"
tags = ["group=g03"]
[[groups.gates]]
type = "heartbeat"
timeout = "2m"
"#;
const VMS: u32 = 6;
const KILLS: usize = 3;

/// xorshift64*: kill moments reproducible from the seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn a_killed_host_resumes_its_execution_without_running_a_step_twice() {
    let seed: u64 = std::env::var("HAVEN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    println!("HAVEN_TEST_SEED={seed}");
    let mut rng = seed | 1;

    let site = LabSite::start(VMS, 3, 40, 300);
    let (lab, home) = (&site.lab, site.home.clone());

    let mut protect = vec!["protect".to_owned()];
    for name in site.vm_names("prod") {
        protect.extend(["--vm".to_owned(), format!("lab-prod/{name}")]);
    }
    let repo = home.join("replicas");
    protect.extend(["--to", "lab-dr", "--repo", repo.to_str().unwrap()].map(String::from));
    ok(haven(
        &home,
        &protect.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let plan = home.join("resume.toml");
    std::fs::write(&plan, PLAN).unwrap();
    ok(haven(&home, &["plan", "push", plan.to_str().unwrap()]));

    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut host = Serve::start(&home, port);
    ok(haven(
        &home,
        &[
            "run", "start", "resume", "--mode", "failover", "--server", &server,
        ],
    ));
    let list = ok(haven(&home, &["run", "list", "--server", &server]));
    let execution = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("the execution is listed")
        .to_owned();

    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(150 + next(&mut rng) % 900));
        host.kill9();
        host = Serve::start(&home, port);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let shown = ok(haven(
            &home,
            &["run", "show", &execution, "--server", &server],
        ));
        if shown.contains("succeeded") && !shown.contains("running") {
            break;
        }
        assert!(!shown.contains("failed"), "{shown}");
        assert!(Instant::now() < deadline, "not finished: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(host);

    let store = Store::open(&home.join("state.redb")).unwrap();
    let events: Vec<Event> = store
        .stream(&format!("journal/{execution}"), 0)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_value(e.entry).unwrap())
        .collect();
    assert!(
        matches!(events.last(), Some(Event::ExecutionFinished { outcome }) if outcome == "succeeded"),
        "{events:#?}"
    );
    let resumed = events
        .iter()
        .filter(|e| matches!(e, Event::ExecutionResumed))
        .count();
    assert!(resumed >= 1, "the execution was resumed: {events:#?}");
    let Some(Event::ExecutionStarted { steps, .. }) = events.first() else {
        panic!("{events:#?}")
    };
    for step in 0..*steps {
        let succeeded: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Event::StepSucceeded { step: s, .. } if *s == step))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            succeeded.len(),
            1,
            "step {step} succeeded once: {events:#?}"
        );
        let restarted_after = events[succeeded[0]..]
            .iter()
            .any(|e| matches!(e, Event::StepStarted { step: s, .. } if *s == step));
        assert!(!restarted_after, "step {step} ran again after it succeeded");
    }

    let dr = lab.vms(Some("dr")).unwrap();
    let mut names: Vec<&str> = dr.iter().map(|v| v.vm.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(dr.len(), VMS as usize, "each VM recovered once: {names:?}");
    assert_eq!(names.len(), VMS as usize, "{names:?}");
    assert!(
        dr.iter().all(|v| v.vm.power == haven_lab::model::Power::On),
        "{dr:#?}"
    );
}
