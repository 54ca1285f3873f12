//! Host-command steps against real programs: refused unless the
//! administrator allowed them, run with a cleared environment and the
//! context, killed with their whole process group at the deadline, failures
//! reported with stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haven_engine::scripts::{Direction, HostCommandError, HostCommands, PointInfo, ScriptContext};
use haven_plan::{Mode, VmRef};

const DEADLINE: Duration = Duration::from_secs(10);

fn context(args: &[&str]) -> ScriptContext {
    ScriptContext {
        execution: "exec-9".into(),
        plan: "shop".into(),
        mode: Mode::Failback,
        direction: Direction::ToProduction,
        test: false,
        step: "exec-9/flush".into(),
        group: Some("web".into()),
        vm: Some(VmRef {
            connector: "vc-dr".into(),
            name: "web-01".into(),
        }),
        recovered_vm: Some("vm-77".into()),
        recovery_point: Some(PointInfo {
            id: "rp-3".into(),
            taken_at_ms: 1_700_000_000_000,
        }),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        attempt: 2,
        fence: 41,
    }
}

/// A temporary Haven home with executable shell scripts in `bin/`.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an executable `#!/bin/sh` program and returns its path.
    fn program(&self, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path().join("bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    fn permit(&self, toml: &str) -> HostCommands {
        std::fs::write(self.path().join("host-commands.toml"), toml).unwrap();
        HostCommands::in_home(self.path())
    }

    fn allow(&self, programs: &[&str]) -> HostCommands {
        let list: Vec<String> = programs.iter().map(|p| format!("{p:?}")).collect();
        self.permit(&format!("enabled = true\nallow = [{}]\n", list.join(", ")))
    }
}

#[tokio::test]
async fn refused_unless_enabled_and_allowed() {
    let home = Home::new();
    let marker = home.path().join("ran");
    let program = home.program("touch-marker", &format!("touch {}", marker.display()));
    let other = home.program("other", "echo other");

    let commands = HostCommands::in_home(home.path());
    assert!(matches!(
        commands.check(&program),
        Err(HostCommandError::Disabled { .. })
    ));
    let commands = home.permit(&format!("enabled = false\nallow = [{program:?}]\n"));
    assert!(matches!(
        commands.check(&program),
        Err(HostCommandError::Disabled { .. })
    ));
    let failure = commands
        .run(&program, &[], &context(&[]), DEADLINE)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("enabled = true"),
        "{}",
        failure.message
    );

    let commands = home.allow(&[&other]);
    assert!(matches!(
        commands.check(&program),
        Err(HostCommandError::NotAllowed { .. })
    ));
    assert!(matches!(
        commands.check("other"),
        Err(HostCommandError::NotAbsolute(_))
    ));
    let failure = commands
        .run(&program, &[], &context(&[]), DEADLINE)
        .await
        .unwrap_err();
    assert!(
        failure.message.contains("not allowed"),
        "{}",
        failure.message
    );
    // A path that only resolves to an allowed program is not that program.
    let sneaky = format!("{}/../bin/other", home.path().join("bin").display());
    assert!(!commands.is_allowed(&sneaky));
    assert!(!marker.exists(), "nothing ran");

    assert!(home.allow(&[&program]).is_allowed(&program));
    home.allow(&[&program])
        .run(&program, &[], &context(&[]), DEADLINE)
        .await
        .unwrap();
    assert!(marker.exists());
}

#[test]
fn configuration_is_strict_and_errors_name_the_field() {
    let home = Home::new();
    let field = |toml: &str| match home.permit(toml).config() {
        Err(HostCommandError::Config { field, .. }) => field,
        other => panic!("{toml}: expected a configuration error, got {other:?}"),
    };
    assert_eq!(field("enabeld = true\n"), "enabeld");
    assert_eq!(field("enabled = \"yes\"\n"), "enabled");
    assert_eq!(
        field("enabled = true\nallow = [\"/bin/true\", \"bin/x\"]\n"),
        "allow.1"
    );
    assert_eq!(field("pass_env = [\"HAVEN_MODE\"]\n"), "pass_env.0");
    assert_eq!(field("pass_env = [\"A B\"]\n"), "pass_env.0");
    assert_eq!(field("max_output_bytes = 10\n"), "max_output_bytes");
    let config = home
        .permit("enabled = true\nallow = [\"/bin/true\"]\npass_env = [\"HTTPS_PROXY\"]\n")
        .config()
        .unwrap();
    assert!(config.enabled);
    assert_eq!(config.max_output_bytes, 1 << 20);
}

#[tokio::test]
async fn runs_with_the_context_and_a_cleared_environment() {
    let home = Home::new();
    let out = home.path();
    let program = home.program(
        "report",
        &format!(
            "cat > {0}/stdin.json\n/usr/bin/env > {0}/env.txt\nprintf '%s\\n' \"$@\" > {0}/args.txt\npwd > {0}/pwd.txt\necho 'progress: half way'\necho \"flushed for $HAVEN_VM_NAME\"\necho",
            out.display()
        ),
    );
    let commands = home.allow(&[&program]);
    let ctx = context(&["two words", "--fast"]);
    let line = commands
        .run(&program, &ctx.args, &ctx, DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        line, "flushed for web-01",
        "the last non-empty line of stdout"
    );

    let stdin: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stdin.json")).unwrap()).unwrap();
    assert_eq!(stdin, serde_json::to_value(&ctx).unwrap());
    assert_eq!(
        std::fs::read_to_string(out.join("args.txt")).unwrap(),
        "two words\n--fast\n",
        "arguments reach the program as they are, no shell"
    );
    assert_eq!(std::fs::read_to_string(out.join("pwd.txt")).unwrap(), "/\n");

    let env = std::fs::read_to_string(out.join("env.txt")).unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        env.lines().filter_map(|l| l.split_once('=')).collect();
    for (name, value) in [
        ("HAVEN_EXECUTION", "exec-9"),
        ("HAVEN_PLAN", "shop"),
        ("HAVEN_MODE", "failback"),
        ("HAVEN_DIRECTION", "to-production"),
        ("HAVEN_TEST", "false"),
        ("HAVEN_STEP", "exec-9/flush"),
        ("HAVEN_GROUP", "web"),
        ("HAVEN_VM_CONNECTOR", "vc-dr"),
        ("HAVEN_VM_NAME", "web-01"),
        ("HAVEN_RECOVERED_VM", "vm-77"),
        ("HAVEN_RECOVERY_POINT", "rp-3"),
        ("HAVEN_RECOVERY_POINT_TAKEN_AT_MS", "1700000000000"),
        ("HAVEN_ATTEMPT", "2"),
        ("HAVEN_FENCE", "41"),
        ("LANG", "C.UTF-8"),
        ("PATH", haven_engine::scripts::HOST_COMMAND_PATH),
    ] {
        assert_eq!(vars.get(name).copied(), Some(value), "{name} in\n{env}");
    }
    // Only what the shell itself adds besides: nothing of Haven's environment.
    for name in vars.keys() {
        assert!(
            name.starts_with("HAVEN_")
                || ["LANG", "PATH", "PWD", "SHLVL", "OLDPWD", "_"].contains(name),
            "{name} leaked into the environment:\n{env}"
        );
    }
}

fn alive(pid: u32) -> bool {
    // A zombie waiting for its reaper is dead for our purpose.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn killed_with_its_process_group_at_the_deadline() {
    let home = Home::new();
    let pids: PathBuf = home.path().join("pids");
    let program = home.program(
        "hang",
        &format!("sleep 30 &\necho $! > {}\nsleep 30", pids.display()),
    );
    let commands = home.allow(&[&program]);
    let started = Instant::now();
    let failure = commands
        .run(&program, &[], &context(&[]), Duration::from_millis(300))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(failure.retryable, "{failure:?}");
    assert!(failure.message.contains("deadline"), "{}", failure.message);
    assert!(
        elapsed < Duration::from_secs(3),
        "stopped after {elapsed:?}"
    );
    let background: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The kill is asynchronous to us only by the kernel's delivery.
    let until = Instant::now() + Duration::from_secs(2);
    while alive(background) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(background),
        "the background child {background} survived"
    );
}

#[tokio::test]
async fn failures_report_the_exit_and_stderr() {
    let home = Home::new();
    let broken = home.program("broken", "echo working\necho 'disk full' >&2\nexit 3");
    let busy = home.program("busy", "echo 'lock held' >&2\nexit 75");
    let missing = home.path().join("bin/missing").display().to_string();
    let commands = home.allow(&[&broken, &busy, &missing]);

    let failure = commands
        .run(&broken, &[], &context(&[]), DEADLINE)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("exited 3: disk full"),
        "{}",
        failure.message
    );
    let failure = commands
        .run(&busy, &[], &context(&[]), DEADLINE)
        .await
        .unwrap_err();
    assert!(failure.retryable, "exit 75 asks for a retry");
    assert!(failure.message.contains("lock held"), "{}", failure.message);
    let failure = commands
        .run(&missing, &[], &context(&[]), DEADLINE)
        .await
        .unwrap_err();
    assert!(!failure.retryable);
    assert!(
        failure.message.contains("could not start"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn output_is_capped_to_its_tail() {
    let home = Home::new();
    // 4 MiB of noise on both streams, then the result line.
    let chatty = home.program(
        "chatty",
        "head -c 4194304 /dev/zero | tr '\\0' 'x'\nhead -c 4194304 /dev/zero >&2\necho\necho done",
    );
    let commands = home.permit(&format!(
        "enabled = true\nallow = [{chatty:?}]\nmax_output_bytes = 4096\n"
    ));
    assert_eq!(
        commands
            .run(&chatty, &[], &context(&[]), DEADLINE)
            .await
            .unwrap(),
        "done"
    );
}
