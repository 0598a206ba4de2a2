//! A recording downstream for the lane tests: an independent test peer (not the sim) that
//! serves `POST /events` on 127.0.0.1:0, keeps the first effect of every idempotency key in
//! arrival order per lane key, and replays the stored answer for a repeated key.
//!
//! Faults are deterministic from a seed and only ever hit a key's first request, so no key
//! fails forever: [`Faults::error_500`] of first requests answer 500, [`Faults::throttle_429`]
//! answer 429 with `Retry-After: 0`. A later request for the key is then handled normally.
//!
//! The body is the envelope the `http` handler forwards; the lane key is `payload.pair` and
//! the order within it `payload.seq`. `GET /operations/{key}` answers the worker's status
//! check (`{"status":200,"body":…}` once committed, 404 before).
//!
//! [`Recorder::hold`] keeps the answers to first effects back (the effect is recorded, the
//! caller waits) until [`Recorder::release`]: a worker killed meanwhile dies with effects done
//! and unacknowledged, whose redelivery must then be a replay.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// How often a key's first request fails, and how.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// The seed of the dice: the same seed fails the same keys.
    pub seed: u64,
    /// Share of first requests answered 500.
    pub error_500: f64,
    /// Share of first requests answered 429 with `Retry-After: 0`.
    pub throttle_429: f64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self {
            seed: 0,
            error_500: 0.0,
            throttle_429: 0.0,
        }
    }

    /// A uniform draw in [0, 1) for `key`, fixed by the seed.
    fn roll(&self, key: &str) -> f64 {
        let digest = Sha256::new()
            .chain_update(self.seed.to_be_bytes())
            .chain_update(key.as_bytes())
            .finalize();
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the recorder saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Every POST, faults and replays included.
    pub requests: u64,
    /// Keys effected (each once).
    pub effects: u64,
    /// Requests for a key already effected: answered with the stored 200, no second effect.
    pub replays: u64,
    /// First requests answered 500.
    pub faults_500: u64,
    /// First requests answered 429.
    pub faults_429: u64,
    /// First effects whose `payload.seq` was not above the last one of their pair.
    pub order_violations: u64,
    /// Bodies without a string `payload.pair` and a numeric `payload.seq`, or without a key.
    pub malformed: u64,
}

#[derive(Default)]
struct Book {
    tally: Tally,
    /// Keys whose first request has been seen (and maybe failed).
    seen: HashSet<String>,
    /// The stored answer of every effected key.
    stored: HashMap<String, Vec<u8>>,
    /// Per pair, `payload.seq` of the first effects in arrival order.
    effects: BTreeMap<String, Vec<u64>>,
    /// Per effected key, the eventId of its body.
    event_of: HashMap<String, String>,
    /// Violations, as `(pair, previous seq, seq)`, for the failure message.
    violations: Vec<(String, u64, u64)>,
}

#[derive(Clone)]
struct Shared {
    faults: Faults,
    book: Arc<Mutex<Book>>,
    /// True while first effects' answers are held back.
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// Answers held back now.
    held: Arc<AtomicU64>,
}

/// The running recorder; it stops when dropped.
pub struct Recorder {
    pub addr: SocketAddr,
    shared: Shared,
    shutdown: CancellationToken,
}

impl Recorder {
    /// Starts on 127.0.0.1:0.
    pub async fn start(faults: Faults) -> Self {
        let shared = Shared {
            faults,
            book: Arc::new(Mutex::new(Book::default())),
            gate: Arc::new(tokio::sync::watch::channel(false).0),
            held: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route("/events", post(events))
            .route("/operations/{key}", get(operation))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recorder");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .expect("recorder serves");
        });
        Self {
            addr,
            shared,
            shutdown,
        }
    }

    /// From now on, first effects are recorded but not answered until [`Recorder::release`].
    pub fn hold(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Answers everything held back, and stops holding.
    pub fn release(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Requests waiting for their answer now.
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.shared.book.lock().unwrap()
    }

    /// `http://ADDR/events`.
    pub fn events_url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// The counters so far.
    pub fn tally(&self) -> Tally {
        self.book().tally.clone()
    }

    /// Keys effected so far.
    pub fn effects(&self) -> u64 {
        self.book().tally.effects
    }

    /// Per pair, the `payload.seq` of its first effects in the order they arrived.
    pub fn effects_by_pair(&self) -> BTreeMap<String, Vec<u64>> {
        self.book().effects.clone()
    }

    /// The effected keys, each with the eventId of its body.
    pub fn effected_keys(&self) -> HashMap<String, String> {
        self.book().event_of.clone()
    }

    /// The first few order violations, `(pair, previous seq, seq)`.
    pub fn violations(&self, n: usize) -> Vec<(String, u64, u64)> {
        self.book().violations.iter().take(n).cloned().collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn events(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (response, effected) = record(&s, &headers, &body);
    if effected {
        let mut gate = s.gate.subscribe();
        if *gate.borrow_and_update() {
            s.held.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|held| !held).await;
            s.held.fetch_sub(1, Ordering::SeqCst);
        }
    }
    response
}

/// Handles one POST under the book's lock; true when it was the key's first effect.
fn record(s: &Shared, headers: &HeaderMap, body: &[u8]) -> (Response, bool) {
    let mut book = s.book.lock().unwrap();
    book.tally.requests += 1;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed: Option<(String, u64, String)> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            Some((
                v["payload"]["pair"].as_str()?.to_string(),
                v["payload"]["seq"].as_u64()?,
                v["eventId"].as_str()?.to_string(),
            ))
        });
    let (Some(key), Some((pair, seq, event_id))) = (key, parsed) else {
        book.tally.malformed += 1;
        let answer =
            br#"{"error":"needs an Idempotency-Key and payload.pair, payload.seq"}"#.to_vec();
        return (
            json_response(StatusCode::UNPROCESSABLE_ENTITY, answer),
            false,
        );
    };
    if let Some(stored) = book.stored.get(&key).cloned() {
        book.tally.replays += 1;
        return (json_response(StatusCode::OK, stored), false);
    }
    if book.seen.insert(key.clone()) {
        let roll = s.faults.roll(&key);
        if roll < s.faults.error_500 {
            book.tally.faults_500 += 1;
            let answer = br#"{"error":"injected 500"}"#.to_vec();
            return (
                json_response(StatusCode::INTERNAL_SERVER_ERROR, answer),
                false,
            );
        }
        if roll < s.faults.error_500 + s.faults.throttle_429 {
            book.tally.faults_429 += 1;
            let answer = br#"{"error":"injected 429"}"#.to_vec();
            let headers = [
                (header::CONTENT_TYPE, "application/json"),
                (header::RETRY_AFTER, "0"),
            ];
            return (
                (StatusCode::TOO_MANY_REQUESTS, headers, answer).into_response(),
                false,
            );
        }
    }
    // The first effect of this key.
    let seqs = book.effects.entry(pair.clone()).or_default();
    let previous = seqs.last().copied();
    seqs.push(seq);
    if let Some(prev) = previous.filter(|p| *p >= seq) {
        book.tally.order_violations += 1;
        book.violations.push((pair, prev, seq));
    }
    book.tally.effects += 1;
    let answer =
        serde_json::to_vec(&serde_json::json!({"ok": true, "key": key, "seq": seq})).expect("json");
    book.stored.insert(key.clone(), answer.clone());
    book.event_of.insert(key, event_id);
    (json_response(StatusCode::OK, answer), true)
}

async fn operation(State(s): State<Shared>, Path(key): Path<String>) -> Response {
    let book = s.book.lock().unwrap();
    match book.stored.get(&key) {
        Some(stored) => {
            let body: serde_json::Value = serde_json::from_slice(stored).expect("stored json");
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({"status": 200, "body": body}))
                    .expect("json"),
            )
        }
        None => json_response(
            StatusCode::NOT_FOUND,
            br#"{"error":"unknown key"}"#.to_vec(),
        ),
    }
}
