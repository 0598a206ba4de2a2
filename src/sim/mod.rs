//! Simulators for tests and demos, deterministic from a seed: the upstream event stream
//! (`warren sim upstream`) and its event catalog.

pub mod catalog;
pub mod upstream;
