//! Holding a connector's configuration between calls, and reading settings.

use std::sync::{Arc, Mutex};

use crate::error::invalid_input;
use crate::types::Setting;
use crate::Result;

/// A slot for the state built by `configure` (endpoint, parsed settings, a
/// session), shared by every later call of the same instance.
///
/// ```ignore
/// static STATE: Configured<State> = Configured::new();
/// fn configure(settings: Vec<Setting>) -> Result<()> { STATE.set(State::from(settings)?); Ok(()) }
/// fn list_vms() -> Result<Vec<Vm>> { let state = STATE.get()?; ... }
/// ```
pub struct Configured<T> {
    slot: Mutex<Option<Arc<T>>>,
}

impl<T> Configured<T> {
    /// An empty slot, for a `static`.
    pub const fn new() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }

    /// Replaces the configuration.
    pub fn set(&self, value: T) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(value));
    }

    /// The configuration, or an error if `configure` has not succeeded yet.
    pub fn get(&self) -> Result<Arc<T>> {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| crate::error::other("the connector is not configured"))
    }
}

impl<T> Default for Configured<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The administrator's settings for an instance, with typed accessors whose
/// errors name the setting.
#[derive(Debug, Clone, Default)]
pub struct Settings(Vec<Setting>);

impl From<Vec<Setting>> for Settings {
    fn from(settings: Vec<Setting>) -> Self {
        Self(settings)
    }
}

impl Settings {
    /// The value of `key`, if set.
    pub fn optional(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|s| s.key == key)
            .map(|s| s.value.as_str())
    }

    /// The value of `key`, or an `invalid-input` error naming it.
    pub fn required(&self, key: &str) -> Result<&str> {
        match self.optional(key) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(invalid_input(key, "this setting is required")),
        }
    }

    /// The value of `key` parsed as `T`, or `default` when unset.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|e| invalid_input(key, format!("cannot parse {v:?}: {e}"))),
        }
    }
}
