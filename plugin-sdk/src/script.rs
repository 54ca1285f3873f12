//! Scripts: components a plan step runs (`kind = "run-script"`), built
//! against `haven:script@0.1.0` (`wit/script/since_v0.1.0`).
//!
//! ```ignore
//! use haven_plugin_sdk::script::{failed, Script, ScriptContext, ScriptError};
//!
//! struct Hello;
//! impl Script for Hello {
//!     fn run(context: ScriptContext) -> Result<String, ScriptError> {
//!         Ok(format!("hello from step {}", context.step))
//!     }
//! }
//! haven_plugin_sdk::export_script!(Hello);
//! ```
//!
//! A script uses the same host services ([`crate::host`]) and HTTP client
//! ([`crate::http`]) as connectors; `?` turns their errors into a
//! [`ScriptError`] (transient and timeout stay retryable).

pub use crate::bindings::worlds::script::haven::script::types::{
    Direction, Error as ScriptError, InvalidInput, Mode, RecoveryPoint, ScriptContext, VmRef,
};

/// A script. Implement it for a unit struct and export it with
/// [`export_script!`](crate::export_script).
pub trait Script {
    /// Runs one attempt of the step; returns a one-line result for the journal.
    fn run(context: ScriptContext) -> Result<String, ScriptError>;
}

/// A passing failure: the step's retries apply.
pub fn transient(message: impl Into<String>) -> ScriptError {
    ScriptError::Transient(message.into())
}

/// The argument `field` (`args.0`) is wrong: retrying cannot help.
pub fn invalid_input(field: impl Into<String>, message: impl Into<String>) -> ScriptError {
    ScriptError::InvalidInput(InvalidInput {
        field: field.into(),
        message: message.into(),
    })
}

/// The script's check failed: the step fails.
pub fn failed(message: impl Into<String>) -> ScriptError {
    ScriptError::Failed(message.into())
}

/// The argument at `index`, or an `invalid-input` error naming it.
pub fn arg(context: &ScriptContext, index: usize, what: &str) -> Result<String, ScriptError> {
    context
        .args
        .get(index)
        .cloned()
        .ok_or_else(|| invalid_input(format!("args.{index}"), format!("missing: {what}")))
}

/// Describes a script error in one line, as Haven shows it.
pub fn describe(error: &ScriptError) -> String {
    match error {
        ScriptError::Transient(m) => format!("transient failure: {m}"),
        ScriptError::InvalidInput(i) => format!("invalid input in `{}`: {}", i.field, i.message),
        ScriptError::Failed(m) => format!("failed: {m}"),
    }
}

impl From<crate::Error> for ScriptError {
    /// Keeps what matters to the engine: transient and timeout failures stay
    /// retryable, invalid input keeps its field, anything else fails the step.
    fn from(error: crate::Error) -> Self {
        match error {
            crate::Error::Transient(t) => transient(t.message),
            crate::Error::Timeout(m) => transient(format!("timed out: {m}")),
            crate::Error::InvalidInput(i) => invalid_input(i.field, i.message),
            other => failed(crate::error::describe(&other)),
        }
    }
}

/// Exports a type implementing [`Script`] as a `haven:script/script` component.
#[macro_export]
macro_rules! export_script {
    ($t:ty) => {
        const _: () = {
            #[allow(dead_code)]
            struct HavenScript;
            impl $crate::__private::worlds::script::exports::haven::script::handler::Guest
                for HavenScript
            {
                fn run(
                    context: $crate::script::ScriptContext,
                ) -> ::std::result::Result<::std::string::String, $crate::script::ScriptError> {
                    <$t as $crate::script::Script>::run(context)
                }
            }
            // Native builds (the test harness) export nothing, as for connectors.
            #[cfg(target_arch = "wasm32")]
            $crate::__private::worlds::script::__export_script_world!(HavenScript with_types_in $crate::__private::worlds::script);
        };
    };
}
