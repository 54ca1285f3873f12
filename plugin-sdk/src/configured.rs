//! Holding a connector's configuration between calls, and reading settings.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use crate::error::invalid_input;
use crate::types::Setting;
use crate::Result;

/// A slot for the state built by `configure` (endpoint, parsed settings, a
/// session), shared by every later call of the same instance.
///
/// The slot is per thread: a component instance has one thread, and in the
/// native test harness each test runs on its own thread, so tests that
/// configure different servers do not see each other's configuration.
///
/// ```ignore
/// static STATE: Configured<State> = Configured::new();
/// fn configure(settings: Vec<Setting>) -> Result<()> { STATE.set(State::from(settings)?); Ok(()) }
/// fn list_vms() -> Result<Vec<Vm>> { let state = STATE.get()?; ... }
/// ```
pub struct Configured<T> {
    slots: Mutex<Vec<(ThreadId, Arc<T>)>>,
}

impl<T> Configured<T> {
    /// An empty slot, for a `static`.
    pub const fn new() -> Self {
        Self {
            slots: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the configuration.
    pub fn set(&self, value: T) {
        let me = std::thread::current().id();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|(id, _)| *id != me);
        slots.push((me, Arc::new(value)));
    }

    /// The configuration, or an error if `configure` has not succeeded yet.
    pub fn get(&self) -> Result<Arc<T>> {
        let me = std::thread::current().id();
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| *id == me)
            .map(|(_, value)| value.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_per_thread() {
        static SLOT: Configured<u32> = Configured::new();
        assert!(SLOT.get().is_err());
        SLOT.set(1);
        std::thread::spawn(|| {
            assert!(SLOT.get().is_err(), "another thread has no configuration");
            SLOT.set(2);
            assert_eq!(*SLOT.get().unwrap(), 2);
        })
        .join()
        .unwrap();
        assert_eq!(*SLOT.get().unwrap(), 1);
        SLOT.set(3);
        assert_eq!(*SLOT.get().unwrap(), 3);
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let settings = Settings::from(vec![Setting {
            key: "port".into(),
            value: "http".into(),
        }]);
        assert!(
            matches!(settings.required("endpoint"), Err(crate::Error::InvalidInput(i)) if i.field == "endpoint")
        );
        assert!(
            matches!(settings.parse_or("port", 443u16), Err(crate::Error::InvalidInput(i)) if i.field == "port")
        );
        assert_eq!(settings.parse_or("timeout", 30u32).unwrap(), 30);
    }
}
