//! Generates the Rust bindings of the WIT contracts: connectors
//! (`wit/since_v0.1.0`) and scripts (`wit/script/since_v0.1.0`).
//!
//! wit-bindgen's `generate!` cannot be used once per world here: every world
//! exports `haven:connector/connector`, and the per-interface export macros it
//! emits are crate-global names that would collide. So the bindings are
//! generated with wit-bindgen as a library and each world's macros get the
//! world's name as a prefix.

use std::path::{Path, PathBuf};

use wit_bindgen_core::wit_parser::Resolve;
use wit_bindgen_core::{Files, WorldGenerator};
use wit_bindgen_rust::{Opts, WithOption};

const BASE_WORLD: &str = "
package haven:sdk;
world base {
    include haven:host/imports@0.1.0;
    import haven:connector/types@0.1.0;
    import haven:connector/vm-types@0.1.0;
    import haven:connector/disk-types@0.1.0;
    import haven:connector/storage-types@0.1.0;
}
";

/// The interfaces generated once in `base` and shared by every world.
const SHARED: &[(&str, &str)] = &[
    ("haven:host/log@0.1.0", "haven::host::log"),
    ("haven:host/progress@0.1.0", "haven::host::progress"),
    ("haven:host/secrets@0.1.0", "haven::host::secrets"),
    ("haven:host/kv@0.1.0", "haven::host::kv"),
    ("haven:connector/types@0.1.0", "haven::connector::types"),
    (
        "haven:connector/vm-types@0.1.0",
        "haven::connector::vm_types",
    ),
    (
        "haven:connector/disk-types@0.1.0",
        "haven::connector::disk_types",
    ),
    (
        "haven:connector/storage-types@0.1.0",
        "haven::connector::storage_types",
    ),
];

/// (module, world, WIT directory) of every world a plugin or script builds against.
const WORLDS: &[(&str, &str, &str)] = &[
    ("inventory", "inventory-connector", CONNECTOR_WIT),
    ("compute", "compute-connector", CONNECTOR_WIT),
    ("storage", "storage-connector", CONNECTOR_WIT),
    ("script", "script", SCRIPT_WIT),
];

const CONNECTOR_WIT: &str = "../wit/since_v0.1.0";
const SCRIPT_WIT: &str = "../wit/script/since_v0.1.0";

const RUNTIME: &str = "::haven_plugin_sdk::__private::wit_bindgen::rt";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    for dir in [CONNECTOR_WIT, SCRIPT_WIT] {
        println!("cargo:rerun-if-changed={}", manifest.join(dir).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    let base = generate(
        &manifest.join(CONNECTOR_WIT),
        Some(BASE_WORLD),
        "base",
        base_opts(),
    );
    std::fs::write(out.join("base.rs"), base).unwrap();

    for (module, world, dir) in WORLDS {
        let wit = manifest.join(dir);
        let src = generate(&wit, None, world, world_opts(&wit, world, module));
        // Give this world's export macros names of their own.
        let src = src
            .replace("__export_haven_", &format!("__export_{module}_haven_"))
            .replace("__export_world_", &format!("__export_{module}_world_"));
        std::fs::write(out.join(format!("{module}.rs")), src).unwrap();
    }
}

fn base_opts() -> Opts {
    Opts {
        generate_all: true,
        runtime_path: Some(RUNTIME.into()),
        ..Opts::default()
    }
}

fn world_opts(wit: &Path, world: &str, module: &str) -> Opts {
    // `with` may only name interfaces the world uses.
    let (resolve, id) = load(wit, None, world);
    let used: Vec<String> = resolve.worlds[id]
        .imports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    Opts {
        with: SHARED
            .iter()
            .filter(|(name, _)| used.iter().any(|u| u == name))
            .map(|(name, path)| {
                (
                    (*name).to_owned(),
                    WithOption::Path(format!("crate::bindings::base::{path}")),
                )
            })
            .collect(),
        pub_export_macro: true,
        export_macro_name: Some(format!("__export_{module}_world")),
        default_bindings_module: Some(format!("::haven_plugin_sdk::__private::worlds::{module}")),
        runtime_path: Some(RUNTIME.into()),
        ..Opts::default()
    }
}

fn load(
    wit: &Path,
    inline: Option<&str>,
    world: &str,
) -> (Resolve, wit_bindgen_core::wit_parser::WorldId) {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_path(wit).expect("the WIT contract parses");
    let main = match inline {
        Some(text) => resolve
            .push_str("sdk.wit", text)
            .expect("the SDK world parses"),
        None => pkg,
    };
    let id = resolve
        .select_world(&[main], Some(world))
        .expect("the world exists");
    (resolve, id)
}

fn generate(wit: &Path, inline: Option<&str>, world: &str, opts: Opts) -> String {
    let (mut resolve, id) = load(wit, inline, world);
    let mut files = Files::default();
    opts.build()
        .generate(&mut resolve, id, &mut files)
        .expect("bindings generate");
    let (_, src) = files.iter().next().expect("one file");
    String::from_utf8(src.to_vec()).unwrap()
}
