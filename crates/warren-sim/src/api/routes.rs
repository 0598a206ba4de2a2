//! The simulated API's HTTP surface: the idempotent POST pipeline (auth, key, fault, validation,
//! idempotency, effect) and the read-only endpoints tests use to audit it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::ApiSettings;
use super::faults::{Fault, FaultPlan};
use super::ops::{Endpoint, Op};
use super::store::{Begin, Lookup, Stats, Store};

/// Shared server state.
pub(super) struct App {
    settings: ApiSettings,
    faults: FaultPlan,
    store: Mutex<Store>,
    shutdown: CancellationToken,
}

impl App {
    /// The ledger's totals so far.
    pub(super) fn stats(&self) -> Stats {
        self.store().stats()
    }

    pub(super) fn new(settings: ApiSettings, shutdown: CancellationToken) -> Self {
        let faults = FaultPlan::new(
            settings.seed,
            settings.rates.clone(),
            settings.max_faults_per_key,
            !settings.hang.is_zero(),
        );
        Self {
            store: Mutex::new(Store::new(settings.seed)),
            faults,
            settings,
            shutdown,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the maps half-written in a way that
        // matters to a simulator; keep serving.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.settings.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| token.matches(presented))
    }
}

/// The router.
pub(super) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/trade/open", post(open))
        .route("/trade/close", post(close))
        .route("/escrow/create", post(escrow))
        .route("/events", post(events))
        .route("/operations/{key}", get(operation))
        .route("/ledger", get(ledger))
        .route("/stats", get(stats))
        .route("/requests", get(requests))
        .route("/positions", get(positions))
        .route("/health", get(|| async { "ok" }))
        .with_state(app)
}

async fn open(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    mutate(app, Endpoint::Open, headers, body).await
}

async fn close(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    mutate(app, Endpoint::Close, headers, body).await
}

async fn escrow(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    mutate(app, Endpoint::Escrow, headers, body).await
}

async fn events(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    mutate(app, Endpoint::Events, headers, body).await
}

/// The idempotent POST pipeline. Faults that do nothing (500, 429) come first, then validation
/// and rejection, then the idempotency decision, then the effect, which runs in its own task so
/// a client that hangs up (or a hang we inject) never stops a commit.
async fn mutate(app: Arc<App>, endpoint: Endpoint, headers: HeaderMap, body: Bytes) -> Response {
    let path = endpoint.path();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let index = app.store().arrived("POST", path, &key, now_ms());
    let answer = |status: u16, body: Value| {
        app.store().answered(index, status);
        reply(status, body)
    };
    if !app.authorized(&headers) {
        return answer(401, json!({"error": "missing or wrong bearer token"}));
    }
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return answer(
            400,
            json!({"error": "header 'Idempotency-Key' is required: 1 to 255 visible ASCII characters"}),
        );
    }
    let body_sha256 = hex::encode(Sha256::digest(&body));
    let n = app.store().count_post(&key, endpoint, &body_sha256);
    let fault = app.faults.fault(&key, n);
    match fault {
        Fault::Fail => return answer(500, json!({"error": "simulated failure"})),
        Fault::Throttle => {
            let secs = app.settings.retry_after.as_secs_f64().ceil() as u64;
            let mut r = answer(
                429,
                json!({"error": "simulated throttle", "retry_after_s": secs}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        _ => {}
    }
    let op = match Op::parse(endpoint, &body) {
        Ok(op) => op,
        Err(error) => return answer(400, json!({"error": error})),
    };
    if app.faults.rejects(&key) {
        return answer(422, json!({"error": "rejected by the simulated API"}));
    }
    let event_id = headers
        .get("x-warren-event-id")
        .and_then(|v| v.to_str().ok())
        .or(op.event_id())
        .map(str::to_string);
    let begun = app
        .store()
        .begin(&key, endpoint, &body_sha256, event_id.as_deref());
    match begun {
        Begin::Proceed => {}
        Begin::Replay(stored) => {
            let mut r = answer(stored.status, stored.body);
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Begin::Mismatch => {
            return answer(
                422,
                json!({"error": "Idempotency-Key was already used for a different request"}),
            );
        }
        Begin::InFlight => {
            return answer(
                409,
                json!({"error": "a request with this Idempotency-Key is in flight"}),
            );
        }
    }
    let hold = match fault {
        // The "earlier duplicate" takes a little while, so a prompt status check sees it in flight.
        Fault::Conflict => app.settings.latency.max(Duration::from_millis(100)),
        _ => app.settings.latency,
    };
    let worker = app.clone();
    let task_key = key.clone();
    let effect = tokio::spawn(async move {
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        worker.store().commit(&task_key, &op, now_ms())
    });
    if fault == Fault::Conflict {
        return answer(
            409,
            json!({"error": "a request with this Idempotency-Key is in flight"}),
        );
    }
    let (status, body) = match effect.await {
        Ok(done) => done,
        Err(_) => (500, json!({"error": "the effect task failed"})),
    };
    if let Fault::Ambiguous { hang } = fault {
        if hang {
            tokio::select! {
                _ = tokio::time::sleep(app.settings.hang) => {}
                _ = app.shutdown.cancelled() => {}
            }
        }
        return answer(504, json!({"error": "simulated gateway timeout"}));
    }
    answer(status, body)
}

/// `GET /operations/{key}`: 200 with the stored outcome, 409 while in flight, 404 if unknown.
async fn operation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let index = app.store().arrived("GET", "/operations", &key, now_ms());
    let (status, body) = if !app.authorized(&headers) {
        (401, json!({"error": "missing or wrong bearer token"}))
    } else {
        match app.store().lookup(&key) {
            Lookup::Committed(stored, event_id) => (
                200,
                json!({
                    "key": key,
                    "state": "committed",
                    "status": stored.status,
                    "body": stored.body,
                    "seq": stored.seq,
                    "committed_at_ms": stored.committed_at_ms,
                    "event_id": event_id,
                }),
            ),
            Lookup::InFlight => (409, json!({"key": key, "state": "in_flight"})),
            Lookup::NotFound => (404, json!({"key": key, "state": "not_found"})),
        }
    };
    app.store().answered(index, status);
    reply(status, body)
}

async fn ledger(State(app): State<Arc<App>>) -> Response {
    let ledger = app.store().ledger();
    reply(200, serde_json::to_value(ledger).unwrap_or_default())
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    reply(200, serde_json::to_value(app.stats()).unwrap_or_default())
}

async fn requests(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let records = app.store().requests(q.get("key").map(String::as_str));
    reply(200, json!({ "requests": records }))
}

async fn positions(State(app): State<Arc<App>>) -> Response {
    let positions = app.store().positions();
    reply(200, json!({ "positions": positions }))
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
