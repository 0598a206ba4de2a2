//! Simulators for tests and demos, deterministic from a seed: the upstream event stream
//! (`warren sim upstream`) with its event catalog, and the downstream trading API
//! (`warren sim api`).

pub mod api;
pub mod catalog;
pub mod upstream;
