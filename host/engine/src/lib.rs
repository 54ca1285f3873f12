//! # haven-engine
//!
//! Runs a compiled plan ([`haven_plan::ExecutionGraph`]) durably:
//!
//! - every step transition is appended to the execution's journal in the
//!   state store *before* the side effect starts and *after* it ends
//!   ([`journal`]); the journal is a hash chain, so it doubles as evidence;
//! - a restarted host replays the journal and resumes: completed steps are
//!   never run again; a step that was in flight is attempted again under the
//!   same idempotency key (the step's `key`), which runners use to make the
//!   side effect safe to repeat;
//! - steps run as soon as their dependencies allow, within the plan's and
//!   each group's parallelism limits; each attempt has a deadline; failures
//!   are retried with exponential backoff; a critical failure stops new work
//!   (cleanup steps still run); approval steps pause the execution until an
//!   operator approves ([`Executor::approve`]).
//!
//! [`report`] turns a journal into an execution report (JSON, printable HTML)
//! and a tamper-evident evidence pack.
//!
//! What a step *does* is a [`StepRunner`]'s job: the connector-backed runner
//! drives real systems; [`simulate::SimulatedRunner`] injects seeded faults
//! for dry runs and tests.

pub mod catalog;
pub mod cli;
pub mod connector_runner;
pub mod executor;
pub mod jobs;
pub mod journal;
pub mod network;
pub mod notify;
pub mod probe;
pub mod protection;
pub mod readiness;
pub mod replication;
pub mod report;
pub mod resolve;
pub mod runner;
pub mod scripts;
pub mod service;
pub mod simulate;

pub use executor::{ExecutionOutcome, Executor, ExecutorError};
pub use journal::{Event, StepState};
pub use runner::{StepContext, StepFailure, StepRunner};
