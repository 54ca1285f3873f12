//! # haven-api
//!
//! The web API (work in progress).
