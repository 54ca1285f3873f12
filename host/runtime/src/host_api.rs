//! The host side of `haven:host`: log, progress, secrets and kv, each scoped
//! to the calling instance.

use wasmtime::component::{HasSelf, Linker};

use crate::sandbox::HostState;
use crate::PluginEvent;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.0",
        world: "haven:host/imports@0.1.0",
    });
}

use bindings::haven::host::{kv, log, progress, secrets};

/// Log records longer than this are cut.
const MAX_LOG_BYTES: usize = 64 * 1024;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    bindings::Imports::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [truncated]");
    }
    text
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let message = truncate(message, MAX_LOG_BYTES);
        let (instance, function) = (&self.instance.name, &self.function);
        match level {
            log::Level::Trace => tracing::trace!(%instance, %function, "{message}"),
            log::Level::Debug => tracing::debug!(%instance, %function, "{message}"),
            log::Level::Info => tracing::info!(%instance, %function, "{message}"),
            log::Level::Warn => tracing::warn!(%instance, %function, "{message}"),
            log::Level::Error => tracing::error!(%instance, %function, "{message}"),
        }
    }
}

impl progress::Host for HostState {
    fn report(&mut self, completed: u64, total: u64, message: String) {
        if let Some(events) = &self.events {
            events(PluginEvent::Progress {
                instance: self.instance.name.clone(),
                function: self.function.clone(),
                completed,
                total,
                message: truncate(message, 1024),
            });
        }
    }
}

impl secrets::Host for HostState {
    fn get(&mut self, name: String) -> Result<String, secrets::SecretError> {
        if !self.instance.declared_secrets.contains(&name) {
            tracing::warn!(instance = %self.instance.name, secret = %name, "plugin asked for a secret its manifest does not declare");
            return Err(secrets::SecretError::Undeclared(name));
        }
        self.instance
            .secrets
            .get(&name)
            .cloned()
            .ok_or(secrets::SecretError::Unbound(name))
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        self.kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(&key, value)
            .map_err(to_wit)
    }

    fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        self.kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delete(&key)
            .map_err(to_wit)
    }

    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        self.kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list_keys(&prefix)
    }
}

fn to_wit(e: crate::kv::KvError) -> kv::KvError {
    match e {
        crate::kv::KvError::TooLarge(m) => kv::KvError::TooLarge(m),
        crate::kv::KvError::QuotaExceeded(m) => kv::KvError::QuotaExceeded(m),
        crate::kv::KvError::Io(m) => kv::KvError::Io(m),
    }
}
