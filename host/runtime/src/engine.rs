//! The wasmtime engine every plugin runs on, and its on-disk code cache.
//!
//! One engine per process: pooling allocator (instances are carved from
//! pre-reserved slots, so instantiation costs microseconds), epoch
//! interruption (a ticker thread advances the epoch; a call past its deadline
//! traps even in a tight loop), async calls (a call blocked in the host, in an
//! HTTP read or a sleep, is cut by a timer too).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::{Result, RuntimeError};

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bounds of the instance pool (virtual address space is reserved up front).
const POOL_INSTANCES: u32 = 256;

/// The engine, its epoch ticker and the code cache.
pub struct PluginEngine {
    engine: Engine,
    cache_dir: PathBuf,
    ticker_stop: Arc<AtomicBool>,
}

impl PluginEngine {
    /// Creates the engine; compiled code is cached under `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 16)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .table_elements(100_000)
            .max_memory_size((crate::manifest::MAX_MEMORY_MIB as usize) << 20);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Wasm {
            plugin: "(engine)".into(),
            message: format!("{e:#}"),
        })?;
        std::fs::create_dir_all(cache_dir).map_err(|e| RuntimeError::io(cache_dir, e))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("haven-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RuntimeError::io("(epoch thread)", e))?;
        Ok(Self {
            engine,
            cache_dir: cache_dir.to_owned(),
            ticker_stop,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where the precompiled code of a component with this sha256 is cached:
    /// keyed by the bytes' hash and by everything that makes compiled code
    /// compatible with this engine (wasmtime version, settings, CPU features).
    pub fn cache_path(&self, sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.cache_dir
            .join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads the component whose bytes hash to `sha256` from the cache, or
    /// compiles `wasm_path` and caches it. Only code this host compiled itself
    /// is ever deserialized.
    pub fn load(&self, plugin: &str, wasm_path: &Path, sha256: &str) -> Result<Component> {
        let cached = self.cache_path(sha256);
        if cached.exists() {
            // SAFETY: files in the cache directory are written only by
            // `compile_to_cache` below, from a component this engine compiled.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %cached.display(), "discarding unusable cached code: {e:#}")
                }
            }
        }
        self.compile_to_cache(plugin, wasm_path, &cached)
    }

    fn compile_to_cache(&self, plugin: &str, wasm_path: &Path, cached: &Path) -> Result<Component> {
        let bytes = std::fs::read(wasm_path).map_err(|e| RuntimeError::io(wasm_path, e))?;
        let started = std::time::Instant::now();
        let component =
            Component::new(&self.engine, &bytes).map_err(|e| RuntimeError::InvalidComponent {
                plugin: plugin.into(),
                message: format!("not a valid WebAssembly component: {e:#}"),
            })?;
        tracing::info!(plugin, elapsed = ?started.elapsed(), "compiled component");
        let code = component.serialize().map_err(|e| RuntimeError::Wasm {
            plugin: plugin.into(),
            message: format!("{e:#}"),
        })?;
        let tmp = cached.with_extension("tmp");
        std::fs::write(&tmp, code).map_err(|e| RuntimeError::io(&tmp, e))?;
        std::fs::rename(&tmp, cached).map_err(|e| RuntimeError::io(cached, e))?;
        Ok(component)
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
