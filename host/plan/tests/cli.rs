//! The `haven plan` command functions.

use std::path::PathBuf;

use haven_plan::cli::{self, DiffArgs, FmtArgs, GraphArgs, PlanCommand, ValidateArgs};
use haven_plan::Mode;

const EXAMPLE: &str = include_str!("../examples/three-tier.toml");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn validate() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.toml", EXAMPLE);
    cli::run_validate(ValidateArgs {
        file: good.clone(),
        deny_warnings: false,
        json: false,
    })
    .unwrap();
    // The example has a host-command warning.
    assert!(cli::run_validate(ValidateArgs {
        file: good,
        deny_warnings: true,
        json: true,
    })
    .is_err());
    let bad = write(
        &dir,
        "bad.toml",
        &EXAMPLE.replace("depends_on = [\"app\"]", "depends_on = [\"ap\"]"),
    );
    let e = cli::run_validate(ValidateArgs {
        file: bad,
        deny_warnings: false,
        json: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("1 error(s)"), "{e}");
    let broken = write(
        &dir,
        "broken.toml",
        &EXAMPLE.replace("timeout = \"2m\"", "timeout = \"2 min\""),
    );
    let e = cli::run(PlanCommand::Validate(ValidateArgs {
        file: broken.clone(),
        deny_warnings: false,
        json: false,
    }))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: groups.0.post_steps.0.timeout: bad duration \"2 min\": expected numbers with units d, h, m, s or ms, e.g. \"1h30m\" (line 61)",
            broken.display()
        )
    );
}

#[test]
fn fmt_check_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "plan.toml", EXAMPLE);
    let args = |check, write| FmtArgs {
        file: file.clone(),
        check,
        write,
    };
    assert!(cli::run_fmt(args(true, false)).is_err());
    cli::run_fmt(args(false, false)).unwrap();
    cli::run_fmt(args(false, true)).unwrap();
    cli::run_fmt(args(true, false)).unwrap();
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        written,
        haven_plan::Plan::from_toml(EXAMPLE).unwrap().to_toml()
    );
}

#[test]
fn diff_and_graph() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(&dir, "old.toml", EXAMPLE);
    let new = write(
        &dir,
        "new.toml",
        &EXAMPLE.replace("rto = \"45m\"", "rto = \"30m\""),
    );
    for json in [false, true] {
        cli::run_diff(DiffArgs {
            old: old.clone(),
            new: new.clone(),
            json,
        })
        .unwrap();
    }
    for mode in Mode::ALL {
        cli::run_graph(GraphArgs {
            file: old.clone(),
            mode,
            vms: vec!["app=vc/app-01".into()],
            json: mode == Mode::Test,
        })
        .unwrap();
    }
    // Unresolved tag groups get a placeholder VM.
    cli::run_graph(GraphArgs {
        file: old.clone(),
        mode: Mode::Failover,
        vms: Vec::new(),
        json: false,
    })
    .unwrap();
    let e = cli::run_graph(GraphArgs {
        file: old,
        mode: Mode::Failover,
        vms: vec!["nope=vc/x".into()],
        json: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("no group"), "{e}");
}

#[test]
fn clap_wiring() {
    use clap::{Parser, Subcommand};
    #[derive(Parser)]
    struct Haven {
        #[command(subcommand)]
        command: Top,
    }
    #[derive(Subcommand)]
    enum Top {
        Plan {
            #[command(subcommand)]
            command: PlanCommand,
        },
    }
    let Top::Plan { command } = Haven::try_parse_from([
        "haven", "plan", "graph", "p.toml", "--mode", "test", "--vm", "a=b/c",
    ])
    .unwrap()
    .command;
    assert!(matches!(
        command,
        PlanCommand::Graph(GraphArgs {
            mode: Mode::Test,
            ..
        })
    ));
    assert!(
        Haven::try_parse_from(["haven", "plan", "fmt", "p.toml", "--check", "--write"]).is_err()
    );
    assert!(Haven::try_parse_from(["haven", "plan", "diff", "a.toml", "b.toml"]).is_ok());
    assert!(Haven::try_parse_from(["haven", "plan", "validate", "a.toml"]).is_ok());
}
