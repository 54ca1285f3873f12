//! # haven-lab — Haven's lab site simulator
//!
//! A simulated pair (or more) of sites whose VMs are state plus real raw
//! sparse disk image files, behind an HTTP JSON API on loopback. It is Haven's
//! embedded default "vendor": a newcomer runs a real recovery plan end to end
//! on one machine, and tests and benchmarks get a realistic target. The lab
//! connector (`plugins/lab`) drives it through the plugin runtime.
//!
//! - [`Lab`]: the state (sites, hosts, networks, VMs, tasks, faults), persisted
//!   atomically to `state.json` in the lab directory with group commit;
//!   operations are asynchronous tasks like vCenter's.
//! - [`api::router`]: the HTTP API (routes listed in `README.md`).
//! - [`cli`]: `haven lab` (serve, optionally seed and inject faults).

pub mod api;
pub mod cli;
pub mod disk;
pub mod error;
pub mod faults;
mod lab;
pub mod model;
pub mod requests;

pub use error::{LabError, Result};
pub use lab::{now_ms, Lab, LabConfig, STATE_FILE};
