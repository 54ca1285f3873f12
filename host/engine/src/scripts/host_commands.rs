//! Host-command steps (`action = { kind = "run-host-command", ... }`): a
//! program on the Haven host, run only where the administrator enabled it.
//!
//! `<home>/host-commands.toml` (read at every run, so revoking takes effect
//! at once; absent means disabled):
//!
//! ```toml
//! enabled = true
//! allow = ["/usr/local/bin/flush-cache", "/opt/dr/bin/dns-switch"]  # absolute paths, exact match
//! pass_env = ["HTTPS_PROXY"]       # variables passed from Haven's environment (default none)
//! max_output_bytes = 1048576       # output kept per stream (its tail; default 1 MiB)
//! ```
//!
//! A run: no shell; the working directory is `/`; the environment is cleared
//! but for `PATH` (fixed), `LANG=C.UTF-8`, the `pass_env` variables and the
//! context as `HAVEN_*` variables ([`context_env`]); the context as JSON on
//! stdin; the step's arguments as arguments. The last non-empty line of
//! stdout is the step's result. The program runs in its own process group,
//! killed as a whole at the step's deadline. A non-zero exit fails the step
//! with the tail of stderr; exit code 75 (`EX_TEMPFAIL`) means "try again".

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::ScriptContext;
use crate::runner::StepFailure;

/// The file name of the administrator's permission, in Haven's home.
pub const HOST_COMMANDS_FILE: &str = "host-commands.toml";

/// `PATH` of every host command: system directories only.
pub const HOST_COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The exit code by which a command asks to be retried (`EX_TEMPFAIL`).
pub const EXIT_RETRY: i32 = 75;

/// How much of stderr a failure message quotes.
const STDERR_QUOTE_BYTES: usize = 2048;

/// The longest result line kept.
const MAX_RESULT_BYTES: usize = 4096;

/// How long to wait for output pipes after the process group was killed (a
/// descendant that left the group may hold them open).
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The administrator's settings, `host-commands.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCommandsConfig {
    /// Host commands run only when `true`.
    #[serde(default)]
    pub enabled: bool,
    /// The programs steps may run: absolute paths, compared exactly.
    #[serde(default)]
    pub allow: Vec<PathBuf>,
    /// Names of variables passed through from Haven's own environment.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Bytes of each output stream kept (the tail), 1 KiB to 64 MiB.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
}

fn default_max_output() -> usize {
    1 << 20
}

impl Default for HostCommandsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            pass_env: Vec::new(),
            max_output_bytes: default_max_output(),
        }
    }
}

/// Why a host command may not run.
#[derive(Debug, thiserror::Error)]
pub enum HostCommandError {
    /// The configuration file is wrong; `field` names the setting.
    #[error("{file}: `{field}`: {message}")]
    Config {
        /// The file.
        file: PathBuf,
        /// The setting at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The administrator has not enabled host commands.
    #[error("host commands are disabled on this Haven host; an administrator enables them with `enabled = true` and `allow = [\"/absolute/path\"]` in {file}")]
    Disabled {
        /// Where they would be enabled.
        file: PathBuf,
    },
    /// Commands are named by absolute path.
    #[error("host command {0:?} is not an absolute path; name the program by its absolute path")]
    NotAbsolute(String),
    /// The command is not in the allow list.
    #[error(
        "host command {command:?} is not allowed; an administrator adds it to `allow` in {file}"
    )]
    NotAllowed {
        /// The command.
        command: String,
        /// The file with the list.
        file: PathBuf,
    },
}

/// Runs host commands for plan steps, within the administrator's permission.
#[derive(Debug, Clone)]
pub struct HostCommands {
    file: PathBuf,
}

impl HostCommands {
    /// Host commands as permitted by `file`.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self { file: file.into() }
    }

    /// Host commands as permitted by `<home>/host-commands.toml`.
    pub fn in_home(home: &Path) -> Self {
        Self::new(home.join(HOST_COMMANDS_FILE))
    }

    /// The permission file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Reads and checks the permission file (absent: disabled).
    pub fn config(&self) -> Result<HostCommandsConfig, HostCommandError> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(HostCommandsConfig::default())
            }
            Err(source) => {
                return Err(HostCommandError::Io {
                    file: self.file.clone(),
                    source,
                })
            }
        };
        let bad = |field: String, message: String| HostCommandError::Config {
            file: self.file.clone(),
            field,
            message,
        };
        let config: HostCommandsConfig = toml::from_str(&text).map_err(|e| {
            let field = e
                .span()
                .and_then(|span| key_at(&text, span.start))
                .unwrap_or_else(|| "host-commands".into());
            bad(field, e.message().trim().to_owned())
        })?;
        for (i, path) in config.allow.iter().enumerate() {
            if !path.is_absolute() {
                return Err(bad(
                    format!("allow.{i}"),
                    format!("{} is not an absolute path", path.display()),
                ));
            }
        }
        for (i, name) in config.pass_env.iter().enumerate() {
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid || name.starts_with("HAVEN_") || name == "PATH" {
                return Err(bad(
                    format!("pass_env.{i}"),
                    format!("{name:?} must be a variable name (letters, digits, `_`), not PATH or HAVEN_*"),
                ));
            }
        }
        if !(1024..=64 << 20).contains(&config.max_output_bytes) {
            return Err(bad(
                "max_output_bytes".into(),
                "must be between 1024 and 67108864".into(),
            ));
        }
        Ok(config)
    }

    /// Whether a step may run `command`; the error says why not and who can
    /// change it. Readiness checks call this for every host-command step.
    pub fn check(&self, command: &str) -> Result<HostCommandsConfig, HostCommandError> {
        let config = self.config()?;
        if !config.enabled {
            return Err(HostCommandError::Disabled {
                file: self.file.clone(),
            });
        }
        if !Path::new(command).is_absolute() {
            return Err(HostCommandError::NotAbsolute(command.into()));
        }
        if !config.allow.iter().any(|a| a == Path::new(command)) {
            return Err(HostCommandError::NotAllowed {
                command: command.into(),
                file: self.file.clone(),
            });
        }
        Ok(config)
    }

    /// Whether a step may run `command`.
    pub fn is_allowed(&self, command: &str) -> bool {
        self.check(command).is_ok()
    }

    /// Runs `command args...` for a step with `context`, killing its process
    /// group at `deadline`. Returns the last line of its stdout.
    pub async fn run(
        &self,
        command: &str,
        args: &[String],
        context: &ScriptContext,
        deadline: Duration,
    ) -> Result<String, StepFailure> {
        let config = self
            .check(command)
            .map_err(|e| StepFailure::permanent(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(args)
            .env_clear()
            .env("PATH", HOST_COMMAND_PATH)
            .env("LANG", "C.UTF-8")
            .envs(
                config
                    .pass_env
                    .iter()
                    .filter_map(|n| std::env::var_os(n).map(|v| (n.clone(), v))),
            )
            .envs(context_env(context))
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        die_with_the_host(&mut cmd);
        let mut child = spawn(&mut cmd).await.map_err(|e| {
            StepFailure::permanent(format!("host command {command:?} could not start: {e}"))
        })?;
        // The child leads its own group (`process_group(0)`): its pid is the group's id.
        let mut group = ProcessGroup(child.id().and_then(|id| i32::try_from(id).ok()));
        tracing::info!(%command, step = %context.step, pid = ?group.0, "host command started");

        let input = serde_json::to_vec(context).expect("a context always serializes");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A program that ignores stdin must not block the run: write aside.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.write_all(b"\n").await;
        });
        let cap = config.max_output_bytes;
        let stdout = tokio::spawn(tail(child.stdout.take().expect("stdout is piped"), cap));
        let stderr = tokio::spawn(tail(child.stderr.take().expect("stderr is piped"), cap));

        let status = match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => status.map_err(|e| {
                StepFailure::permanent(format!("host command {command:?}: waiting failed: {e}"))
            })?,
            Err(_) => {
                group.kill();
                let _ = child.wait().await;
                stdout.abort();
                stderr.abort();
                tracing::warn!(%command, step = %context.step, "host command killed at its deadline");
                return Err(StepFailure::retryable(format!(
                    "host command {command:?} ran past the step's deadline ({} ms); its process group was killed",
                    deadline.as_millis()
                )));
            }
        };
        // Descendants still holding the pipes go with the group.
        group.kill();
        let output = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
            match tokio::time::timeout(DRAIN_GRACE, task).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => String::new(),
            }
        };
        let (out, err) = (output(stdout).await, output(stderr).await);
        if status.success() {
            let line = out
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("");
            return Ok(if line.is_empty() {
                format!("{command} exited 0")
            } else {
                truncate(line, MAX_RESULT_BYTES)
            });
        }
        let err = err.trim();
        let quoted = if err.is_empty() {
            String::new()
        } else {
            let start = err.len().saturating_sub(STDERR_QUOTE_BYTES);
            let start = (start..err.len())
                .find(|i| err.is_char_boundary(*i))
                .unwrap_or(err.len());
            format!(": {}", err[start..].replace('\n', " | "))
        };
        let failure = match status.code() {
            Some(EXIT_RETRY) => StepFailure::retryable(format!(
                "host command {command:?} asked to be retried (exit {EXIT_RETRY}){quoted}"
            )),
            Some(code) => {
                StepFailure::permanent(format!("host command {command:?} exited {code}{quoted}"))
            }
            None => StepFailure::permanent(format!(
                "host command {command:?} was killed by a signal{quoted}"
            )),
        };
        Err(failure)
    }
}

/// Makes the program die (SIGKILL) when the host process dies. A host that
/// is killed or loses its primary role must not leave a side effect running
/// behind its successor's back: the new primary runs the step again.
fn die_with_the_host(cmd: &mut tokio::process::Command) {
    let host = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before `exec` and calls
    // only async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The host may have died between the fork and the prctl.
            if libc::getppid() != host {
                return Err(std::io::Error::other("the Haven host exited"));
            }
            Ok(())
        });
    }
}

/// Spawns `cmd`, retrying briefly while the program is "text file busy":
/// a process forked (by another step, say) while the program file was open
/// for writing holds it until its own `exec`, a few milliseconds.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    const ATTEMPTS: u64 = 8;
    let mut attempt = 1;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The key of the `key = value` line that holds byte `offset` of `text`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| key.to_owned())
}

/// The context as environment variables: `HAVEN_EXECUTION`, `HAVEN_PLAN`,
/// `HAVEN_MODE` (`test`, `failover`, ...), `HAVEN_DIRECTION` (`to-recovery`,
/// `to-production`), `HAVEN_TEST` (`true`/`false`), `HAVEN_STEP`,
/// `HAVEN_ATTEMPT`, `HAVEN_FENCE`, and when known `HAVEN_GROUP`,
/// `HAVEN_VM_CONNECTOR`, `HAVEN_VM_NAME`, `HAVEN_RECOVERED_VM`,
/// `HAVEN_RECOVERY_POINT`, `HAVEN_RECOVERY_POINT_TAKEN_AT_MS`.
pub fn context_env(c: &ScriptContext) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HAVEN_EXECUTION", c.execution.clone()),
        ("HAVEN_PLAN", c.plan.clone()),
        ("HAVEN_MODE", word(&c.mode)),
        ("HAVEN_DIRECTION", word(&c.direction)),
        ("HAVEN_TEST", c.test.to_string()),
        ("HAVEN_STEP", c.step.clone()),
        ("HAVEN_ATTEMPT", c.attempt.to_string()),
        ("HAVEN_FENCE", c.fence.to_string()),
    ];
    let optional = [
        ("HAVEN_GROUP", c.group.clone()),
        (
            "HAVEN_VM_CONNECTOR",
            c.vm.as_ref().map(|v| v.connector.clone()),
        ),
        ("HAVEN_VM_NAME", c.vm.as_ref().map(|v| v.name.clone())),
        ("HAVEN_RECOVERED_VM", c.recovered_vm.clone()),
        (
            "HAVEN_RECOVERY_POINT",
            c.recovery_point.as_ref().map(|p| p.id.clone()),
        ),
        (
            "HAVEN_RECOVERY_POINT_TAKEN_AT_MS",
            c.recovery_point.as_ref().map(|p| p.taken_at_ms.to_string()),
        ),
    ];
    env.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v))),
    );
    env
}

/// Serde's name of a unit enum value (`"to-recovery"`), as plans write it.
fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// A process group to kill, once.
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    /// Kills every process of the group. Called right after the leader was
    /// reaped too: its id could only be reused after Linux cycles through
    /// `pid_max` ids, far longer than that instant.
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals that process group;
            // it touches no memory of ours. The group is the child's own.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    /// A run abandoned midway (its future dropped) leaves no process behind.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end, keeping its last `cap` bytes.
async fn tail(mut stream: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut kept = VecDeque::with_capacity(cap.min(64 * 1024));
    let mut buf = vec![0; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend(&buf[..n]);
                let excess = kept.len().saturating_sub(cap);
                kept.drain(..excess);
            }
        }
    }
    kept.into()
}

fn truncate(line: &str, limit: usize) -> String {
    if line.len() <= limit {
        return line.to_owned();
    }
    let mut cut = limit;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} [truncated]", &line[..cut])
}
