//! Simulated peers for warren's tests, demos and benchmarks, deterministic from a seed: the
//! upstream event stream with its event catalog, and the downstream trading API.
//!
//! They play services that are not warren, so this crate depends on nothing of warren's: a bug
//! that warren and its simulator shared could not show itself.
//!
//! # Layout
//! - [`api`]: the downstream trading API, with idempotency keys and fault injection.
//! - [`catalog`]: the event catalog (ticks, candles, wallet, escrow, jobs) from a seed.
//! - [`upstream`]: the upstream WebSocket stream, with resume, replay and fault injection.

pub mod api;
pub mod catalog;
pub mod upstream;

use std::path::PathBuf;

/// Why a simulator could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A setting cannot work; the message names the flag.
    #[error("{0}")]
    Usage(String),
    /// A file (the ledger) could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server failed; the message names its address.
    #[error("{0}")]
    Serve(String),
}

/// A bearer token the simulated API requires; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Compares a presented token in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}
