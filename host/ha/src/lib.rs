//! # haven-ha
//!
//! The HA service (work in progress).
