//! Downstream test support: the simulated API served in-process on port 0, reads of its ledger
//! and request log, deterministic tick streams, dead letters, and worker command lines.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::Connection;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use warren::amqp::{self, hdr};
use warren_sim::api::{self, ApiSettings};

/// A simulated API on a free port, stopped when dropped.
pub struct Sim {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

/// One key in `GET /ledger`.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyView {
    pub key: String,
    pub path: String,
    pub event_id: Option<String>,
    pub effects: u32,
    pub posts: u32,
    pub status_checks: u32,
    pub body_sha256: String,
    pub stored: Option<StoredView>,
}

/// A stored response.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredView {
    pub status: u16,
    pub body: serde_json::Value,
    pub seq: u64,
    pub committed_at_ms: u64,
}

/// `GET /ledger`.
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerView {
    pub effects: u64,
    pub posts: u64,
    pub keys: Vec<KeyView>,
}

impl LedgerView {
    /// Effects per event id (from `X-Warren-Event-Id`).
    pub fn effects_by_event(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for k in &self.keys {
            if let Some(id) = &k.event_id {
                *out.entry(id.clone()).or_default() += k.effects;
            }
        }
        out
    }

    /// Effects per (event id, endpoint): more than one means the same decision ran twice under
    /// different keys, which the server's own per-key idempotency cannot catch.
    pub fn effects_by_event_and_path(&self) -> BTreeMap<(String, String), u32> {
        let mut out = BTreeMap::new();
        for k in &self.keys {
            if let Some(id) = &k.event_id {
                *out.entry((id.clone(), k.path.clone())).or_default() += k.effects;
            }
        }
        out
    }

    /// Committed keys in commit order.
    pub fn committed(&self) -> Vec<&KeyView> {
        let mut c: Vec<_> = self.keys.iter().filter(|k| k.effects > 0).collect();
        c.sort_by_key(|k| k.stored.as_ref().map(|s| s.seq));
        c
    }
}

/// One request in `GET /requests`.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestView {
    pub seq: u64,
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub key: String,
    pub status: u16,
}

impl Sim {
    /// Serves the simulated API with `settings` on 127.0.0.1:0.
    pub async fn start(settings: ApiSettings) -> Sim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            api::run(listener, settings, token)
                .await
                .expect("sim api runs");
        });
        Sim {
            base,
            shutdown,
            http: http_client(Duration::from_secs(10)),
        }
    }

    /// The test's own client (one per sim: building a client per request is slow).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `<base><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /positions`: the open positions, as the API lists them.
    pub async fn positions(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self.get_json("/positions").await;
        v["positions"].as_array().cloned().unwrap_or_default()
    }

    /// The ids of the open positions, sorted.
    pub async fn position_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .positions()
            .await
            .iter()
            .filter_map(|p| p["position_id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// Open positions per pair (`GET /positions`).
    pub async fn open_per_pair(&self) -> BTreeMap<String, usize> {
        let v: serde_json::Value = self.get_json("/positions").await;
        let mut out = BTreeMap::new();
        for p in v["positions"].as_array().cloned().unwrap_or_default() {
            *out.entry(p["pair"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
        out
    }

    /// `GET /ledger`.
    pub async fn ledger(&self) -> LedgerView {
        self.get_json("/ledger").await
    }

    /// `GET /stats`: effects so far, cheap enough to poll.
    pub async fn effects(&self) -> u64 {
        self.get_json::<serde_json::Value>("/stats").await["effects"]
            .as_u64()
            .expect("effects")
    }

    /// `GET /requests[?key=]`.
    pub async fn requests(&self, key: Option<&str>) -> Vec<RequestView> {
        #[derive(Deserialize)]
        struct R {
            requests: Vec<RequestView>,
        }
        let path = match key {
            Some(k) => format!("/requests?key={k}"),
            None => "/requests".into(),
        };
        self.get_json::<R>(&path).await.requests
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("sim reachable")
            .json()
            .await
            .expect("sim json")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A plain reqwest client for the test itself (installs the TLS provider reqwest needs).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("reqwest client")
}

/// A dead letter, as a test needs it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub event_id: String,
    pub kind: String,
    pub reason: String,
    pub attempt: u32,
    /// The broker's reason (`delivery_limit`, `expired`, …) when it dead-lettered the message
    /// itself (kind `x-death`).
    pub death: Option<String>,
}

/// Takes every message out of `dlq`.
pub async fn dead_letters(conn: &Connection, dlq: &str) -> Vec<DeadLetter> {
    super::drain(conn, dlq)
        .await
        .into_iter()
        .map(|d| {
            let p = &d.properties;
            let event_id = serde_json::from_slice::<serde_json::Value>(&d.data)
                .ok()
                .and_then(|v| v["eventId"].as_str().map(str::to_string))
                .unwrap_or_default();
            // The broker's own dead-lettering (delivery limit) leaves x-death instead.
            let kind = amqp::header_str(p, hdr::ERROR_KIND)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    if p.headers()
                        .as_ref()
                        .is_some_and(|h| h.inner().contains_key(hdr::X_DEATH))
                    {
                        "x-death".into()
                    } else {
                        String::new()
                    }
                });
            let death = (kind == "x-death")
                .then(|| amqp::x_death(p).first().map(|d| d.reason.clone()))
                .flatten();
            DeadLetter {
                event_id,
                death,
                kind,
                reason: amqp::header_str(p, hdr::ERROR)
                    .unwrap_or_default()
                    .to_string(),
                attempt: amqp::header_u32(p, hdr::ATTEMPT),
            }
        })
        .collect()
}

/// `worker -q <queue> --handler http --url <url> …` for a test topology.
pub fn http_worker_args(
    t: &super::TestTopology,
    queue: &str,
    url: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec!["worker".to_string()];
    args.extend(t.args());
    args.extend(["-q", queue, "--handler", "http", "--url", url].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Messages still to be handled in `queue`: ready in it or its tiers, or unacked.
pub async fn outstanding(conn: &Connection, t: &super::TestTopology, queue: &str) -> u64 {
    let spec = t.topology.queue(queue).expect("queue");
    let mut n = super::queue_len(conn, &spec.name).await as u64;
    for d in &spec.retry_delays {
        n += super::queue_len(conn, &spec.retry_queue(*d)).await as u64;
    }
    n + super::unacked(&spec.name)
}

/// A seeded 64-bit generator (splitmix64), so streams are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One step of a scripted stream: an event type and its payload.
pub type Step = (&'static str, serde_json::Value);

/// `rounds` ticks per pair, round-robin, from seeded random walks whose drift switches regime
/// every 15–40 ticks, so momentum signals (and flips) happen. Prices have 4 decimals.
pub struct TickWalk {
    rng: Rng,
    pairs: Vec<(&'static str, f64, f64, u32)>,
}

impl TickWalk {
    pub fn new(seed: u64, pairs: &[(&'static str, f64)]) -> Self {
        Self {
            rng: Rng::new(seed),
            pairs: pairs
                .iter()
                .map(|(p, price)| (*p, *price, 0.0, 0))
                .collect(),
        }
    }

    /// The next `rounds` rounds of ticks.
    pub fn ticks(&mut self, rounds: usize) -> Vec<Step> {
        let mut out = vec![];
        for _ in 0..rounds {
            for i in 0..self.pairs.len() {
                let (pair, mut price, mut drift, mut left) = self.pairs[i];
                if left == 0 {
                    drift = match self.rng.next_u64() % 3 {
                        0 => 0.0006,
                        1 => -0.0006,
                        _ => 0.0,
                    };
                    left = 15 + (self.rng.next_u64() % 26) as u32;
                }
                let noise = (self.rng.unit() - 0.5) * 0.002;
                price = ((price * (1.0 + drift + noise)) * 1e4).round() / 1e4;
                self.pairs[i] = (pair, price, drift, left - 1);
                out.push((
                    "market.tick",
                    serde_json::json!({"pair": pair, "price": price, "timestamp_ms": super::now_ms()}),
                ));
            }
        }
        out
    }
}

/// Envelopes for `steps` with strictly increasing eventIds; returns (eventId, body) in order.
pub fn envelopes(steps: &[Step]) -> Vec<(String, Vec<u8>)> {
    let mut ids = ulid::Generator::new();
    steps
        .iter()
        .map(|(event_type, payload)| {
            let id = ids.generate().expect("ulid").to_string();
            let body = serde_json::json!({
                "eventId": id,
                "type": event_type,
                "agentId": "pf_agent_test",
                "payload": payload,
                "ts": super::now_ms(),
            });
            (id, serde_json::to_vec(&body).expect("json"))
        })
        .collect()
}

/// Publishes each envelope with its own type as the routing key, in order.
pub async fn publish_typed(
    conn: &Connection,
    t: &super::TestTopology,
    messages: &[(String, Vec<u8>)],
) {
    let kind = |m: &(String, Vec<u8>)| {
        let v: serde_json::Value = serde_json::from_slice(&m.1).expect("json");
        v["type"].as_str().expect("type").to_string()
    };
    // Runs of one type go out on one channel; the order across runs is kept by awaiting each.
    let mut start = 0;
    while start < messages.len() {
        let rk = kind(&messages[start]);
        let mut end = start + 1;
        while end < messages.len() && kind(&messages[end]) == rk {
            end += 1;
        }
        super::publish(
            conn,
            &t.topology.events_exchange,
            &rk,
            &messages[start..end],
        )
        .await;
        start = end;
    }
}

/// Waits (polling) until `outstanding` is zero twice in a row 300 ms apart.
pub async fn settled(conn: &Connection, t: &super::TestTopology, queue: &str, timeout: Duration) {
    let start = std::time::Instant::now();
    let mut zeros = 0;
    while start.elapsed() < timeout {
        if outstanding(conn, t, queue).await == 0 {
            zeros += 1;
            if zeros >= 2 {
                return;
            }
        } else {
            zeros = 0;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("queue '{queue}' still has work after {timeout:?}");
}
