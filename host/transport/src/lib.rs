//! Haven block transport (issue 3): replicates VM disks to the DR site.
//!
//! The source side ([`client::replicate`]) reads a disk (raw file, qcow2 image or
//! NBD export, optionally limited to a changed-extents list), digests it at 4 KiB
//! granularity (two levels: 64 KiB groups, then 4 KiB blocks), asks the target which
//! blocks it lacks, and sends only those, zstd-compressed, over TLS.
//!
//! The target side ([`target::serve`]) stores each replica in a [`repo::Repository`]
//! as a raw sparse image that a hypervisor can start as is, with an undo journal per
//! pass so that every retained recovery point can be restored or exported.  A global
//! digest index (redb) lets the target fill blocks it already holds, from any replica,
//! without them crossing the wire.
//!
//! Module map: [`digest`] (block digests), [`source`] (raw, qcow2, NBD, extents),
//! [`wire`] (framed protocol), [`tls`] (rustls configs, self-signed certs, pinning),
//! [`repo`] (store, undo journal, points, index, crypto), [`target`] (TLS service),
//! [`client`] (source-side pass), [`gateway`] (gateway selection), [`throttle`]
//! (bandwidth limit), [`events`] (progress and RPO events), [`cli`] (clap commands).

#![deny(missing_docs)]

pub mod cli;
pub mod client;
pub mod digest;
pub mod error;
pub mod events;
pub mod gateway;
pub mod repo;
pub mod source;
pub mod target;
pub mod throttle;
pub mod tls;
pub mod wire;

pub use client::{replicate, ReplicateOptions, ReplicationReport};
pub use error::{ErrorKind, TransportError};
pub use events::{Event, EventSink};
pub use repo::Repository;
pub use target::{serve, TargetOptions};
