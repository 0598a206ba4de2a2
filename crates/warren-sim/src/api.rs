//! `warren sim api`: a simulated downstream trading API with idempotency keys and deterministic
//! fault injection, so the fleet's "exactly once" can be proven against a ledger.
//!
//! # Endpoints
//! - `POST /trade/open {pair, direction, size_usdc, leverage}` → `{position_id, …}`
//! - `POST /trade/close {position_id}` → `{realised_pnl_usdc, …}` (422 if the position is not open)
//! - `POST /escrow/create {amount_usdc, …}` → `{escrow_id, …}`
//! - `POST /events` (any JSON object) → `{accepted: true}`: a sink for the `http` handler
//! - `GET /operations/{key}` → 200 `{state: "committed", status, body, …}`, 409 while in
//!   flight, 404 if the key was never committed
//! - `GET /ledger` → effects per key: counts, body hashes, event ids, stored responses
//! - `GET /stats` → `{effects, posts, keys, requests, replays}`, cheap to poll
//! - `GET /requests[?key=K]` → every request with its arrival time and answer (the last million)
//! - `GET /positions` → open positions; `GET /health`
//!
//! # Idempotency (IETF `Idempotency-Key` draft)
//! Every POST needs an `Idempotency-Key` (400 without). Same key and same body after a commit:
//! the stored response is replayed (`Idempotent-Replayed: true`). Same key, different body or
//! endpoint: 422. Same key while the first request is still being processed: 409. Requests
//! that fail (faults, validation, rejection, a close of a position that is not open) store
//! nothing, so the key can be retried.
//!
//! # Faults, deterministic from `--seed`
//! Each POST's fault is a function of (seed, key, n), n the request's number for its key:
//! `--fail-rate` (500), `--throttle-rate` (429 + `Retry-After`), `--ambiguous-rate` (commit,
//! then 504 or, with `--hang-ms`, a hang past the client's timeout), `--conflict-rate` (a
//! duplicate is processed in the background while this request gets 409). Only a key's first
//! `--max-faults-per-key` requests can be faulted, so no key fails forever. `--reject-rate`
//! picks keys whose every request is rejected (422): a verdict, not a fault. Status checks are
//! never faulted.

mod faults;
mod ops;
mod routes;
mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::{Fault, FaultPlan, FaultRates};
pub use ops::{Endpoint, Position};
pub use store::{Ledger, LedgerEntry, RequestRecord, Stats, Stored};

use crate::{SimError, Token};

/// How the simulated API behaves.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Seeds every fault decision, id and P&L.
    pub seed: u64,
    /// Fault rates.
    pub rates: FaultRates,
    /// `Retry-After` sent with a 429 (whole seconds, rounded up).
    pub retry_after: Duration,
    /// Processing time of every POST, while its key is in flight.
    pub latency: Duration,
    /// How long an ambiguous fault hangs before answering 504; zero: never hang.
    pub hang: Duration,
    /// Requests per key that can be faulted; later ones are served normally.
    pub max_faults_per_key: u32,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<Token>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            seed: 0,
            rates: FaultRates::default(),
            retry_after: Duration::from_secs(1),
            latency: Duration::ZERO,
            hang: Duration::ZERO,
            max_faults_per_key: 3,
            token: None,
        }
    }
}

/// Serves the simulated API on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    settings: ApiSettings,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    settings.rates.validate().map_err(SimError::Usage)?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let app = Arc::new(routes::App::new(settings, shutdown.clone()));
    tracing::info!(addr = %addr, "Simulated API serving.");
    let served = axum::serve(listener, routes::router(app.clone()))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| SimError::Serve(format!("simulated API on {addr}: {e}")));
    let stats = app.stats();
    tracing::info!(
        effects = stats.effects,
        posts = stats.posts,
        keys = stats.keys,
        "Simulated API stopped."
    );
    served
}
