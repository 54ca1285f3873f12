//! The `haven plan …` commands of the plan model, wired into the `haven` binary
//! (`haven plan simulate` comes from `haven_engine::cli`):
//!
//! | command | args type | function |
//! |---|---|---|
//! | `haven plan validate FILE [--deny-warnings] [--json]` | [`ValidateArgs`] | [`run_validate`] |
//! | `haven plan fmt FILE [--check \| --write]` | [`FmtArgs`] | [`run_fmt`] |
//! | `haven plan diff OLD NEW [--json]` | [`DiffArgs`] | [`run_diff`] |
//! | `haven plan graph FILE --mode MODE [--vm GROUP=CONNECTOR/VM]… [--json]` | [`GraphArgs`] | [`run_graph`] |
//!
//! Results go to stdout; failures are returned as one-line errors naming the file and
//! field (`plan.toml: groups.1.pre_steps.0.timeout: …`), so `main` exits non-zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::model::{GroupId, Mode, Plan, VmRef};

/// `haven plan <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum PlanCommand {
    /// Check a plan file: print its errors and warnings; fails on errors.
    Validate(ValidateArgs),
    /// Print a plan file in canonical form (or check / rewrite it in place).
    Fmt(FmtArgs),
    /// Show the differences between two plan files, matched by ids.
    Diff(DiffArgs),
    /// Print the execution graph of a plan for one mode.
    Graph(GraphArgs),
}

/// Runs one `haven plan` command.
pub fn run(command: PlanCommand) -> anyhow::Result<()> {
    match command {
        PlanCommand::Validate(a) => run_validate(a),
        PlanCommand::Fmt(a) => run_fmt(a),
        PlanCommand::Diff(a) => run_diff(a),
        PlanCommand::Graph(a) => run_graph(a),
    }
}

/// Arguments of `haven plan validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// The plan file (TOML).
    pub file: PathBuf,
    /// Fail on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
    /// Print the issues as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `haven plan fmt`.
#[derive(Debug, Clone, clap::Args)]
pub struct FmtArgs {
    /// The plan file (TOML).
    pub file: PathBuf,
    /// Do not print; fail if the file is not in canonical form.
    #[arg(long, conflicts_with = "write")]
    pub check: bool,
    /// Rewrite the file in canonical form (assigning missing ids).
    #[arg(long)]
    pub write: bool,
}

/// Arguments of `haven plan diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The old plan file.
    pub old: PathBuf,
    /// The new plan file.
    pub new: PathBuf,
    /// Print the diff as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `haven plan graph`.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphArgs {
    /// The plan file (TOML).
    pub file: PathBuf,
    /// The mode to compile for.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Resolve a group's VMs: `GROUP=CONNECTOR/VM`, repeatable. Groups selecting by tag
    /// that are not resolved are shown with one placeholder VM.
    #[arg(long = "vm", value_name = "GROUP=CONNECTOR/VM")]
    pub vms: Vec<String>,
    /// Print the graph as JSON.
    #[arg(long)]
    pub json: bool,
}

fn load(path: &Path) -> anyhow::Result<(String, Plan)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let plan = Plan::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((text, plan))
}

/// `haven plan validate FILE`: prints every issue (`error: groups.2.depends_on.0: …`)
/// and a summary; fails when there are errors (or warnings with `--deny-warnings`).
pub fn run_validate(args: ValidateArgs) -> anyhow::Result<()> {
    let (_, plan) = load(&args.file)?;
    let issues = plan.verify();
    let errors = issues.iter().filter(|i| i.is_error()).count();
    let warnings = issues.len() - errors;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&issues)?);
    } else {
        for issue in &issues {
            println!("{}: {issue}", args.file.display());
        }
        println!(
            "{}: {errors} error(s), {warnings} warning(s)",
            args.file.display()
        );
    }
    if errors > 0 || (args.deny_warnings && warnings > 0) {
        bail!(
            "{}: plan is not valid ({errors} error(s), {warnings} warning(s))",
            args.file.display()
        );
    }
    Ok(())
}

/// `haven plan fmt FILE [--check | --write]`: canonical form to stdout, or checked /
/// rewritten in place.
pub fn run_fmt(args: FmtArgs) -> anyhow::Result<()> {
    let (text, plan) = load(&args.file)?;
    let canonical = plan.to_toml();
    if args.check {
        if text != canonical {
            bail!(
                "{}: not in canonical form (run `haven plan fmt --write {}`)",
                args.file.display(),
                args.file.display()
            );
        }
    } else if args.write {
        if text != canonical {
            std::fs::write(&args.file, &canonical)
                .with_context(|| format!("cannot write {}", args.file.display()))?;
        }
    } else {
        print!("{canonical}");
    }
    Ok(())
}

/// `haven plan diff OLD NEW`: the stat line and details (or JSON).
pub fn run_diff(args: DiffArgs) -> anyhow::Result<()> {
    let (_, old) = load(&args.old)?;
    let (_, new) = load(&args.new)?;
    let d = crate::diff(&old, &new);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{d}");
    }
    Ok(())
}

/// Parses `GROUP=CONNECTOR/VM`.
fn parse_vm(spec: &str) -> anyhow::Result<(GroupId, VmRef)> {
    let parsed = spec.split_once('=').and_then(|(group, vm)| {
        let (connector, name) = vm.split_once('/')?;
        (!group.is_empty() && !connector.is_empty() && !name.is_empty()).then(|| {
            (
                GroupId(group.to_string()),
                VmRef {
                    connector: connector.to_string(),
                    name: name.to_string(),
                },
            )
        })
    });
    parsed.with_context(|| format!("--vm {spec:?}: expected GROUP=CONNECTOR/VM"))
}

/// `haven plan graph FILE --mode MODE`: the compiled execution graph.
pub fn run_graph(args: GraphArgs) -> anyhow::Result<()> {
    let (_, plan) = load(&args.file)?;
    let mut resolved: BTreeMap<GroupId, Vec<VmRef>> = BTreeMap::new();
    for spec in &args.vms {
        let (group, vm) = parse_vm(spec)?;
        if plan.group(&group).is_none() {
            bail!("--vm {spec:?}: the plan has no group {group:?}");
        }
        resolved.entry(group).or_default().push(vm);
    }
    for g in &plan.groups {
        if !g.tags.is_empty() && !resolved.contains_key(&g.id) {
            let tags: Vec<String> = g.tags.iter().map(ToString::to_string).collect();
            let mut vms: Vec<VmRef> = g
                .vms
                .iter()
                .map(|name| VmRef {
                    connector: g.connector.clone().unwrap_or_default(),
                    name: name.clone(),
                })
                .collect();
            vms.push(VmRef {
                connector: g.connector.clone().unwrap_or_else(|| "*".to_string()),
                name: format!("<{}>", tags.join(",")),
            });
            resolved.insert(g.id.clone(), vms);
        }
    }
    let graph = plan
        .compile(args.mode, &resolved)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&graph)?);
    } else {
        print!("{}", graph.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_spec() {
        let (g, vm) = parse_vm("app=vc/app-01").unwrap();
        assert_eq!(g.as_str(), "app");
        assert_eq!(vm.to_string(), "vc/app-01");
        for bad in ["app", "app=vc", "=vc/x", "app=/x", "app=vc/"] {
            assert!(parse_vm(bad).is_err(), "{bad}");
        }
    }
}
