//! Errors of the plugin runtime.

use std::path::PathBuf;

/// Everything that can go wrong installing, loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A manifest or instance configuration is wrong; `field` names the setting.
    #[error("{file}: `{field}`: {message}")]
    Config {
        /// The file at fault.
        file: PathBuf,
        /// The setting at fault, as a dotted path.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The component's bytes do not match the manifest's sha256.
    #[error("{path}: sha256 is {actual} but the manifest says {expected}; the file was changed or corrupted")]
    Sha256Mismatch {
        /// The component file.
        path: PathBuf,
        /// What the manifest says.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// The plugin targets contract versions this host does not support.
    #[error("plugin `{plugin}` needs WIT {wanted}, this host supports {supported}")]
    UnsupportedWit {
        /// Plugin id.
        plugin: String,
        /// The manifest's (or component's) version.
        wanted: String,
        /// What the host supports.
        supported: String,
    },
    /// The component is not a usable Haven connector.
    #[error("plugin `{plugin}`: {message}")]
    InvalidComponent {
        /// Plugin id.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// No plugin with this id is installed.
    #[error("no plugin `{0}` is installed (see `haven plugin list`)")]
    UnknownPlugin(String),
    /// No instance with this name is configured.
    #[error("no plugin instance `{0}` is configured (see `haven plugin instances`)")]
    UnknownInstance(String),
    /// The component does not export this function.
    #[error("instance `{instance}` has no function `{function}`; exported: {available}")]
    UnknownFunction {
        /// Instance name.
        instance: String,
        /// What was asked for.
        function: String,
        /// What exists.
        available: String,
    },
    /// Arguments do not match the function's parameters.
    #[error("bad arguments for `{function}`: `{field}`: {message}")]
    BadArguments {
        /// Function called.
        function: String,
        /// The argument at fault, as a dotted path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The plugin was stopped by the sandbox; the instance was discarded and
    /// the next call gets a fresh one.
    #[error("instance `{instance}` {kind} in `{function}`; it was discarded and will be re-created on the next call{detail}")]
    Trapped {
        /// Instance name.
        instance: String,
        /// Function called.
        function: String,
        /// Why.
        kind: TrapKind,
        /// Extra context (panic message, trap text), starting with ": " when present.
        detail: String,
    },
    /// The plugin's answer is larger than its limit allows.
    #[error("instance `{instance}`: the result of `{function}` is larger than {limit} bytes; it was discarded")]
    ResultTooLarge {
        /// Instance name.
        instance: String,
        /// Function called.
        function: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The plugin's `configure` refused its settings.
    #[error("instance `{instance}` refused its configuration: {message}")]
    Configure {
        /// Instance name.
        instance: String,
        /// The plugin's error, as JSON text.
        message: String,
    },
    /// Compiling or linking with wasmtime failed.
    #[error("plugin `{plugin}`: {message}")]
    Wasm {
        /// Plugin id.
        plugin: String,
        /// wasmtime's message.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why the sandbox stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The per-call deadline passed.
    Timeout,
    /// The instance hit its memory cap.
    OutOfMemory,
    /// The guest panicked or aborted.
    Panic,
    /// Any other trap (bad memory access, stack overflow, ...).
    Crashed,
}

impl std::fmt::Display for TrapKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrapKind::Timeout => "ran past its deadline",
            TrapKind::OutOfMemory => "ran out of memory at its cap",
            TrapKind::Panic => "panicked",
            TrapKind::Crashed => "crashed",
        })
    }
}

impl RuntimeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        file: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `Result` of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
