//! Plugin runtime benchmark: `cargo bench -p haven-tests --bench plugin_runtime`.
//!
//! Measures, on the hostile fixture (a small Rust component) and the Python
//! fixture (an 18 MB componentize-py component):
//! - loading a cached precompiled component, and compiling one uncached;
//! - instantiating (pooling allocator + `InstancePre`), alone and with a fresh
//!   sandboxed store;
//! - a simple typed call's round trip (`connector.check`) through the sandbox
//!   (epoch deadline armed, limiter installed), against the same call in a bare
//!   wasmtime store (the baseline: what the sandbox costs);
//! - Haven's full call path (`Runtime::call`: JSON in and out, locking,
//!   deadlines) and calls per second with 1 and N concurrent instances.
//!
//! Prints each figure beside its target and the ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_plugin_runtime::instances::{InstanceConfig, ResolvedInstance};
use haven_plugin_runtime::sandbox::{linker, HostState};
use haven_plugin_runtime::{kv::KvStore, Runtime};
use haven_tests::TestHome;
use serde_json::json;
use wasmtime::component::{Component, Linker, Val};
use wasmtime::Store;

const CONCURRENT: usize = 8;

fn per_op(total: Duration, n: u32) -> Duration {
    total / n
}

fn report(what: &str, measured: Duration, target: Option<Duration>) {
    match target {
        Some(t) => println!(
            "{what:<58} {:>12.2?}   target ≤ {:>8.2?}   {:>6.2}× of target  {}",
            measured,
            t,
            measured.as_secs_f64() / t.as_secs_f64(),
            if measured <= t { "ok" } else { "MISSED" }
        ),
        None => println!("{what:<58} {measured:>12.2?}"),
    }
}

/// Runs `$body` `$n` times after a warm-up, in 5 batches; evaluates to the
/// median time per run.
macro_rules! timed {
    ($n:expr, $body:block) => {{
        let n: u32 = $n;
        for _ in 0..n / 10 + 1 $body
        let mut batches = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            for _ in 0..n $body
            batches.push(per_op(started.elapsed(), n));
        }
        batches.sort();
        batches[2]
    }};
}

fn resolved(home: &TestHome, plugin: &str) -> Arc<ResolvedInstance> {
    let manifest = home.install_cached(plugin);
    let config = InstanceConfig {
        plugin: manifest.id.clone(),
        settings: Default::default(),
        secrets: Default::default(),
        allow_hosts: vec![],
        limits: Default::default(),
        tls_ca: None,
        dirs: Default::default(),
    };
    Arc::new(
        ResolvedInstance::resolve(std::path::Path::new("bench"), "bench", &config, &manifest)
            .unwrap(),
    )
}

trait InstallCached {
    fn install_cached(&self, relative: &str) -> haven_plugin_runtime::Manifest;
}

impl InstallCached for TestHome {
    fn install_cached(&self, relative: &str) -> haven_plugin_runtime::Manifest {
        let store = haven_plugin_runtime::PluginStore::open(&self.home().plugins_dir()).unwrap();
        let id = haven_plugin_runtime::Manifest::load(
            &haven_tests::plugin_source(relative).join("plugin.toml"),
        )
        .unwrap()
        .id;
        match store.get(&id) {
            Ok(p) => p.manifest,
            Err(_) => self.install(relative).manifest,
        }
    }
}

fn sandbox_store(home: &TestHome, instance: &Arc<ResolvedInstance>) -> Store<HostState> {
    let dir = tempfile::tempdir().unwrap().keep();
    let kv = Arc::new(std::sync::Mutex::new(KvStore::open(&dir.join("kv.json"))));
    let state = HostState::new(instance.clone(), &dir, kv, None).unwrap();
    let mut store = Store::new(home.engine().engine(), state);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(1_000_000);
    store
}

/// `targets`: whether the targets apply (a small Rust component); the
/// 18 MB Python component is measured for reference.
async fn bench_component(home: &TestHome, relative: &str, calls: u32, targets: bool) {
    let target = |t: Duration| targets.then_some(t);
    let instance = resolved(home, relative);
    let installed = haven_plugin_runtime::PluginStore::open(&home.home().plugins_dir())
        .unwrap()
        .get(&instance_plugin(relative))
        .unwrap();
    let engine = home.engine();
    println!(
        "\n## {relative} ({} KiB component)",
        std::fs::metadata(installed.wasm_path()).unwrap().len() / 1024
    );

    // Uncached compile, once (what `haven plugin install` pays).
    let bytes = std::fs::read(installed.wasm_path()).unwrap();
    let started = Instant::now();
    let _ = Component::new(engine.engine(), &bytes).unwrap();
    report(
        "compile, uncached (once, at install)",
        started.elapsed(),
        None,
    );

    let load = timed!(20, {
        engine
            .load("bench", &installed.wasm_path(), installed.sha256())
            .unwrap();
    });
    report(
        "load a cached precompiled component",
        load,
        target(Duration::from_millis(1)),
    );

    let component = engine
        .load("bench", &installed.wasm_path(), installed.sha256())
        .unwrap();
    let linker: Linker<HostState> = linker(engine).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();

    // Stores are made outside the timed region; each batch is dropped before
    // the next so the pool never fills.
    let mut batches = Vec::new();
    for _ in 0..6 {
        let mut stores: Vec<Store<HostState>> =
            (0..100).map(|_| sandbox_store(home, &instance)).collect();
        let started = Instant::now();
        for store in &mut stores {
            pre.instantiate_async(store).await.unwrap();
        }
        batches.push(per_op(started.elapsed(), 100));
    }
    batches.remove(0); // warm-up
    batches.sort();
    let instantiate = batches[2];
    report(
        "instantiate (pooling + InstancePre)",
        instantiate,
        target(Duration::from_micros(20)),
    );

    let with_store = timed!(100, {
        let mut store = sandbox_store(home, &instance);
        pre.instantiate_async(&mut store).await.unwrap();
    });
    report(
        "instantiate with a fresh sandboxed store (WASI, limits)",
        with_store,
        None,
    );

    // A simple call, typed, through the sandbox and in a bare store.
    let mut store = sandbox_store(home, &instance);
    store.limiter(|s| s.limiter());
    let inst = pre.instantiate_async(&mut store).await.unwrap();
    let iface = component
        .get_export_index(None, "haven:connector/connector@0.1.0")
        .unwrap();
    let check_index = component.get_export_index(Some(&iface), "check").unwrap();
    let func = inst.get_func(&mut store, check_index).unwrap();
    let mut results = [Val::Bool(false)];
    let sandboxed = timed!(calls, {
        store.set_epoch_deadline(1_000_000);
        func.call_async(&mut store, &[], &mut results)
            .await
            .unwrap();
    });
    report(
        "simple call round trip (connector.check), sandboxed",
        sandboxed,
        target(Duration::from_micros(2)),
    );

    let mut bare_store = Store::new(engine.engine(), sandbox_store(home, &instance).into_data());
    bare_store.set_epoch_deadline(1 << 40);
    let bare_inst = pre.instantiate_async(&mut bare_store).await.unwrap();
    let bare_func = bare_inst.get_func(&mut bare_store, check_index).unwrap();
    let bare = timed!(calls, {
        bare_func
            .call_async(&mut bare_store, &[], &mut results)
            .await
            .unwrap();
    });
    report("same call, bare wasmtime store (baseline)", bare, None);
    println!(
        "{:<58} {:>11.2}×",
        "sandbox cost: sandboxed / bare",
        sandboxed.as_secs_f64() / bare.as_secs_f64()
    );
}

fn instance_plugin(relative: &str) -> String {
    haven_plugin_runtime::Manifest::load(&haven_tests::plugin_source(relative).join("plugin.toml"))
        .unwrap()
        .id
}

async fn bench_runtime_calls(home: &TestHome) {
    println!("\n## Haven's full call path (Runtime::call, JSON in and out)");
    let mut toml = String::new();
    for i in 0..CONCURRENT {
        toml.push_str(&format!("[instances.h{i}]\nplugin = \"hostile\"\n"));
    }
    home.configure(&toml);
    let runtime = Arc::new(Runtime::with_engine(home.engine().clone(), home.home(), None).unwrap());
    let args = json!([]);
    let one = timed!(2000, {
        runtime.call("h0", "connector.check", &args).await.unwrap();
    });
    report("Runtime::call round trip (connector.check)", one, None);
    let get_vm_args = json!(["ok"]);
    let get_vm = timed!(2000, {
        runtime
            .call("h0", "inventory.get-vm", &get_vm_args)
            .await
            .unwrap();
    });
    report(
        "Runtime::call round trip (inventory.get-vm -> record)",
        get_vm,
        None,
    );
    println!(
        "{:<58} {:>12.0}",
        "calls/s, 1 instance",
        1.0 / one.as_secs_f64()
    );

    let per_task = 20_000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let args = json!([]);
                for _ in 0..per_task {
                    runtime
                        .call(&format!("h{i}"), "connector.check", &args)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (CONCURRENT * per_task) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<58} {:>12.0}",
        format!("calls/s, {CONCURRENT} instances concurrently (2 cores)"),
        rate
    );
    println!(
        "{:<58} {:>11.2}×",
        "scaling: N instances / 1 instance",
        rate * one.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "# Haven plugin runtime benchmark (wasmtime 48, pooling allocator, epoch deadlines)"
        );
        let home = TestHome::new();
        bench_component(&home, "tests/fixtures/hostile", 20_000, true).await;
        bench_component(&home, "tests/fixtures/python-plugin", 2_000, false).await;
        bench_runtime_calls(&home).await;
    });
}
