//! Script-step benchmark: `cargo bench -p haven-tests --bench scripts`.
//!
//! Measures what a plan step pays to run a script, beside its target:
//! - a WebAssembly script (`WasmScriptHost::run`: grants read, fresh sandboxed
//!   instance from the cached `InstancePre`, typed context in, result out),
//!   first run (code cache → memory) and warm;
//! - a host command (`HostCommands::run`: permission read, spawn in its own
//!   process group with a cleared environment, context on stdin, output
//!   collected) of a `/bin/sh` program that echoes one line.

use std::time::{Duration, Instant};

use haven_engine::scripts::{Direction, HostCommands, ScriptContext, WasmScripts};
use haven_plan::Mode;
use haven_plugin_runtime::WasmScriptHost;
use haven_tests::TestHome;

const DEADLINE: Duration = Duration::from_secs(10);

fn report(what: &str, measured: Duration, target: Duration) {
    println!(
        "{what:<58} {measured:>12.2?}   target ≤ {target:>8.2?}   {}",
        if measured <= target { "ok" } else { "MISSED" }
    );
}

fn context(args: &[&str]) -> ScriptContext {
    ScriptContext {
        execution: "bench".into(),
        plan: "bench".into(),
        mode: Mode::Test,
        direction: Direction::ToRecovery,
        test: true,
        step: "bench/step".into(),
        group: None,
        vm: None,
        recovered_vm: None,
        recovery_point: None,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        attempt: 1,
        fence: 1,
    }
}

/// The median time per run of 5 batches of `n`.
async fn median<F: std::future::Future<Output = ()>>(
    n: u32,
    mut run: impl FnMut() -> F,
) -> Duration {
    let mut batches = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..n {
            run().await;
        }
        batches.push(started.elapsed() / n);
    }
    batches.sort();
    batches[2]
}

#[tokio::main]
async fn main() {
    let home = TestHome::new();
    home.install("tests/fixtures/hostile-script");
    let host = WasmScriptHost::new(home.engine().clone(), home.home(), None).unwrap();
    let echo = context(&["echo"]);

    let started = Instant::now();
    host.run("hostile-script", &echo, DEADLINE).await.unwrap();
    report(
        "wasm script: first run (load from code cache)",
        started.elapsed(),
        Duration::from_millis(20),
    );
    let warm = median(200, || async {
        host.run("hostile-script", &echo, DEADLINE).await.unwrap();
    })
    .await;
    report(
        "wasm script: warm run (fresh instance)",
        warm,
        Duration::from_millis(1),
    );

    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("hello");
    std::fs::write(&program, "#!/bin/sh\necho hello\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let program = program.display().to_string();
    std::fs::write(
        dir.path().join("host-commands.toml"),
        format!("enabled = true\nallow = [{program:?}]\n"),
    )
    .unwrap();
    let commands = HostCommands::in_home(dir.path());
    let ctx = context(&[]);
    let run = median(20, || async {
        assert_eq!(
            commands.run(&program, &[], &ctx, DEADLINE).await.unwrap(),
            "hello"
        );
    })
    .await;
    report(
        "host command: /bin/sh program, one line",
        run,
        Duration::from_millis(20),
    );
}
