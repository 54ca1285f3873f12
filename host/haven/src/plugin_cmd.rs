//! `haven plugin ...`: package, install, list, inspect, instances, call.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use haven_plugin_runtime::{
    capabilities, package, HavenHome, InstanceState, PluginEngine, PluginEvent, PluginKind,
    PluginStore, Runtime,
};

/// Plugin commands.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Make an installable package (plugin.toml with the component's sha256,
    /// plugin.wasm) from an author's manifest.
    Package {
        /// The author's plugin.toml, or its directory.
        source: PathBuf,
        /// Directory to write the package to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify (sha256, contract version, exports, imports), precompile and install a package.
    Install {
        /// The package directory, or its plugin.toml.
        package: PathBuf,
    },
    /// List installed plugins.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's capabilities, requested hosts, secrets, limits and contract version.
    Inspect {
        /// Plugin id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List configured instances (from instances.toml) and their functions.
    Instances {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call a function of an instance with JSON arguments, for debugging.
    ///
    /// Example: haven plugin call cmdb inventory.get-vm '["vm-1"]'
    Call {
        /// Instance name.
        instance: String,
        /// Function, as `interface.function` (inventory.list-vms).
        function: String,
        /// Arguments: a JSON array (by position) or object (by name).
        #[arg(default_value = "[]")]
        args: String,
    },
}

/// Runs a plugin command against the home directory.
pub async fn run(cmd: PluginCommand, home: PathBuf) -> Result<()> {
    let home = HavenHome::new(home);
    match cmd {
        PluginCommand::Package { source, out } => {
            let manifest = package::package(&source, &out)?;
            println!(
                "packaged {} {} into {} (sha256 {})",
                manifest.id,
                manifest.version,
                out.display(),
                manifest.sha256.unwrap_or_default()
            );
        }
        PluginCommand::Install { package } => {
            let engine = PluginEngine::new(&home.cache_dir())?;
            let store = PluginStore::open(&home.plugins_dir())?;
            let (installed, info) = store.install(&engine, &package)?;
            let caps: Vec<_> = info.capabilities.iter().map(|c| c.interface()).collect();
            match info.kind {
                PluginKind::Script => println!(
                    "installed script {} {} (WIT haven:script@{}; plan steps run it with `run-script`, component = \"{}\")",
                    installed.manifest.id,
                    installed.manifest.version,
                    info.wit_version,
                    installed.manifest.id
                ),
                PluginKind::Connector => println!(
                    "installed {} {} (WIT {}; capabilities: {})",
                    installed.manifest.id,
                    installed.manifest.version,
                    info.wit_version,
                    caps.join(", ")
                ),
            }
        }
        PluginCommand::List { json } => {
            let plugins = PluginStore::open(&home.plugins_dir())?.list()?;
            if json {
                let list: Vec<_> = plugins.iter().map(|p| &p.manifest).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if plugins.is_empty() {
                println!("no plugins installed (install one with `haven plugin install PACKAGE`)");
            } else {
                for p in plugins {
                    println!(
                        "{:<20} {:<10} {}",
                        p.manifest.id, p.manifest.version, p.manifest.name
                    );
                }
            }
        }
        PluginCommand::Inspect { id, json } => inspect(&home, &id, json)?,
        PluginCommand::Instances { json } => {
            let runtime = Runtime::open(home, None)?;
            let instances = runtime.instances();
            if json {
                println!("{}", serde_json::to_string_pretty(&instances)?);
            } else if instances.is_empty() {
                println!("no instances configured (add them to instances.toml in the Haven home)");
            }
            for i in instances.iter().filter(|_| !json) {
                match &i.state {
                    InstanceState::Ready { functions, .. } => {
                        println!("{} ({}): {}", i.name, i.plugin, functions.join(", "))
                    }
                    InstanceState::Unavailable { reason } => {
                        println!("{} ({}): UNAVAILABLE: {reason}", i.name, i.plugin)
                    }
                }
            }
        }
        PluginCommand::Call {
            instance,
            function,
            args,
        } => {
            let args: serde_json::Value = serde_json::from_str(&args)
                .with_context(|| format!("ARGS is not JSON: {args:?} (example: '[\"vm-1\"]')"))?;
            let events = std::sync::Arc::new(|event: PluginEvent| match event {
                PluginEvent::Progress {
                    completed,
                    total,
                    message,
                    ..
                } => eprintln!("progress: {completed}/{total} {message}"),
            });
            let runtime = Runtime::open(home, Some(events))?;
            let result = runtime.call(&instance, &function, &args).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            if let Some(err) = result.get("err") {
                bail!("{function} returned an error: {err}");
            }
        }
    }
    Ok(())
}

fn inspect(home: &HavenHome, id: &str, json: bool) -> Result<()> {
    let store = PluginStore::open(&home.plugins_dir())?;
    let plugin = store.get(id)?;
    let engine = PluginEngine::new(&home.cache_dir())?;
    let component = engine.load(id, &plugin.wasm_path(), plugin.sha256())?;
    let info = capabilities::inspect(id, engine.engine(), &component)?;
    let m = &plugin.manifest;
    if json {
        let value = serde_json::json!({
            "manifest": m,
            "kind": info.kind,
            "wit_version": info.wit_version.to_string(),
            "capabilities": info.capabilities,
            "other_exports": info.other_exports,
            "directory": plugin.dir,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let caps: Vec<_> = info.capabilities.iter().map(|c| c.interface()).collect();
    println!("{} {} — {}", m.id, m.version, m.name);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!(
        "  WIT:             haven:{}@{} (manifest accepts {})",
        info.kind, info.wit_version, m.wit
    );
    match info.kind {
        PluginKind::Script => {
            println!("  capabilities:    (a script: plan steps run it with `run-script`)")
        }
        PluginKind::Connector => println!("  capabilities:    {}", caps.join(", ")),
    }
    println!("  requested hosts: {}", list_or_none(&m.hosts));
    println!("  secrets:         {}", list_or_none(&m.secrets));
    println!(
        "  limits:          {} MiB memory, {} ms per call, {} bytes per result",
        m.limits.memory_mib, m.limits.call_timeout_ms, m.limits.max_result_bytes
    );
    println!("  sha256:          {}", plugin.sha256());
    println!("  installed in:    {}", plugin.dir.display());
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}
