//! Property tests: export → import → export is byte-identical for arbitrary plans, and no
//! input, however broken, makes the crate panic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use haven_plan::{
    Action, Group, GroupId, HealthCheck, HumanDuration, Mode, NetworkMapping, OnTimeout, Plan,
    PlanId, ReIpRule, RecoveryPoint, Step, StepId, TagSelector,
};
use ipnet::IpNet;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.-]{0,12}",
        any::<String>(),
        Just("quote \" back\\slash 'single' \n newline \t tab".to_string()),
        Just("'''".to_string()),
        Just("\"\"\"".to_string()),
    ]
}

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_.-]{0,10}"
}

fn duration() -> impl Strategy<Value = HumanDuration> {
    prop_oneof![0u64..100_000, any::<u64>()].prop_map(HumanDuration::from_millis)
}

fn opt_duration() -> impl Strategy<Value = Option<HumanDuration>> {
    proptest::option::of(duration())
}

fn check() -> impl Strategy<Value = HealthCheck> {
    prop_oneof![
        opt_duration().prop_map(|timeout| HealthCheck::Heartbeat { timeout }),
        (text(), any::<u16>(), opt_duration()).prop_map(|(host, port, timeout)| HealthCheck::Tcp {
            host,
            port,
            timeout
        }),
        (text(), any::<u16>(), opt_duration()).prop_map(|(url, expect_status, timeout)| {
            HealthCheck::Http {
                url,
                expect_status,
                timeout,
            }
        }),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let args = || proptest::collection::vec(text(), 0..3);
    prop_oneof![
        Just(Action::ChooseRecoveryPoint),
        Just(Action::StopReplication),
        Just(Action::FinalizeReplication),
        Just(Action::CreateVm),
        Just(Action::ApplyNetwork),
        Just(Action::PowerOn),
        Just(Action::WaitHeartbeat),
        Just(Action::PowerOff),
        Just(Action::DeleteVm),
        check().prop_map(|check| Action::Probe { check }),
        (text(), args()).prop_map(|(component, args)| Action::RunScript { component, args }),
        (text(), args()).prop_map(|(command, args)| Action::RunHostCommand { command, args }),
        (text(), text()).prop_map(|(channel, message)| Action::Notify { channel, message }),
        (
            text(),
            proptest::collection::vec(text(), 0..3),
            prop_oneof![Just(OnTimeout::Fail), Just(OnTimeout::Continue)]
        )
            .prop_map(|(message, approvers, on_timeout)| Action::Approval {
                message,
                approvers,
                on_timeout
            }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        id(),
        text(),
        proptest::collection::vec(proptest::sample::select(Mode::ALL.to_vec()), 0..6),
        any::<bool>(),
        opt_duration(),
        0u32..5,
        opt_duration(),
        action(),
    )
        .prop_map(
            |(id, name, modes, critical, timeout, retries, retry_backoff, action)| Step {
                id: StepId(id),
                name,
                modes,
                critical,
                timeout,
                retries,
                retry_backoff,
                action,
            },
        )
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    (ip(), 0u8..=128).prop_map(|(addr, len)| {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        IpNet::new(addr, len % (max + 1)).unwrap()
    })
}

fn group() -> impl Strategy<Value = Group> {
    (
        (id(), text(), text(), proptest::collection::vec(id(), 0..3)),
        (
            proptest::option::of(0u32..10),
            proptest::option::of(text()),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::vec(("[a-z]{1,5}", "[a-z0-9=]{0,5}"), 0..3),
        ),
        proptest::collection::vec(check(), 0..3),
        proptest::collection::vec(step(), 0..3),
        proptest::collection::vec(step(), 0..3),
    )
        .prop_map(
            |(
                (id, name, description, deps),
                (parallelism, connector, vms, tags),
                gates,
                pre,
                post,
            )| {
                Group {
                    id: GroupId(id),
                    name,
                    description,
                    depends_on: deps.into_iter().map(GroupId).collect(),
                    parallelism,
                    connector,
                    vms,
                    tags: tags
                        .into_iter()
                        .map(|(key, value)| TagSelector { key, value })
                        .collect(),
                    gates,
                    pre_steps: pre,
                    post_steps: post,
                }
            },
        )
}

fn timestamp() -> impl Strategy<Value = String> {
    "20[0-9]{2}-0[1-9]-[0-2][1-8]T[01][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]0[0-9]:[0-5][0-9])"
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        (id(), text(), text(), id(), opt_duration(), opt_duration()),
        (
            proptest::option::of(0u32..100),
            prop_oneof![
                Just(RecoveryPoint::Latest),
                timestamp().prop_map(|t| RecoveryPoint::LatestBefore(t.parse().unwrap())),
                text().prop_map(RecoveryPoint::Point),
            ],
            proptest::collection::vec(
                (text(), text(), proptest::option::of(text())).prop_map(
                    |(production, recovery, test)| NetworkMapping {
                        production,
                        recovery,
                        test,
                    },
                ),
                0..3,
            ),
            proptest::collection::vec(
                (
                    net(),
                    net(),
                    proptest::option::of(ip()),
                    proptest::collection::vec(ip(), 0..3),
                )
                    .prop_map(|(source, target, gateway, dns)| ReIpRule {
                        source,
                        target,
                        gateway,
                        dns,
                    }),
                0..3,
            ),
        ),
        proptest::collection::vec(step(), 0..3),
        proptest::collection::vec(step(), 0..3),
        proptest::collection::vec(group(), 0..4),
    )
        .prop_map(
            |(
                (id, name, description, plan_set, rto, rpo),
                (parallelism, recovery_point, network_map, re_ip),
                pre_steps,
                post_steps,
                groups,
            )| Plan {
                id: PlanId(id),
                name,
                description,
                plan_set,
                rto,
                rpo,
                parallelism,
                recovery_point,
                network_map,
                re_ip,
                pre_steps,
                post_steps,
                groups,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn export_import_export_is_identical(plan in plan()) {
        let text = plan.to_toml();
        let back = Plan::from_toml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &plan);
        prop_assert_eq!(back.to_toml(), text);
        // Everything else copes with arbitrary (mostly invalid) plans.
        let _ = plan.verify();
        let _ = haven_plan::diff(&plan, &back);
        for mode in Mode::ALL {
            let _ = plan.compile(mode, &BTreeMap::new());
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(plan) = Plan::from_toml(&text) {
            let _ = plan.verify();
            let _ = plan.to_toml();
        }
    }

    #[test]
    fn mutated_example_never_panics(cuts in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, text()), 1..4)) {
        let mut text = include_str!("../examples/three-tier.toml").to_string();
        for (at, len, insert) in cuts {
            let mut start = at.index(text.len() + 1);
            while !text.is_char_boundary(start) { start -= 1; }
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(start..end, &insert);
        }
        if let Ok(plan) = Plan::from_toml(&text) {
            let _ = plan.verify();
            let again = plan.to_toml();
            let reparsed = Plan::from_toml(&again).map_err(|e| TestCaseError::fail(format!("{e}\n{again}")))?;
            prop_assert_eq!(reparsed.to_toml(), again);
            let resolved = BTreeMap::from([(GroupId::from("app"), Vec::new())]);
            for mode in Mode::ALL {
                let _ = plan.compile(mode, &resolved);
            }
        }
    }
}

#[test]
fn plan_without_ids_gets_deterministic_unique_ids() {
    let text = r#"
name = "X"
[[pre_steps]]
name = "Same"
action = { kind = "notify", channel = "c", message = "m" }
[[pre_steps]]
name = "Same"
action = { kind = "notify", channel = "c", message = "m" }
[[groups]]
name = "Web tier"
[[groups]]
id = "web-tier-taken"
name = "Other"
"#;
    let a = Plan::from_toml(text).unwrap();
    assert_eq!(a.id.as_str(), "x");
    assert_ne!(a.pre_steps[0].id, a.pre_steps[1].id);
    assert!(a.groups[0].id.as_str().starts_with("web-tier-"));
    let b = Plan::from_toml(&a.to_toml()).unwrap();
    assert_eq!(a, b);
    assert_eq!(Plan::from_toml(text).unwrap(), a);
}
