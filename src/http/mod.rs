//! Downstream HTTP calls done safely: idempotency keys, the error taxonomy, in-process retries
//! with full jitter, and status checks by key.
//!
//! [`mod@classify`] is the taxonomy as pure tables; [`client`] is the pooled client that applies it.

pub mod classify;
pub mod client;

pub use classify::{Class, Lookup, Transport, classify, classify_lookup, parse_retry_after};
pub use client::{ClientSettings, HttpClient, IDEMPOTENCY_KEY, Response, StatusUrl, Token, shown};
