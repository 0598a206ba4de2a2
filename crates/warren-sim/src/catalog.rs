//! The simulated event catalog: envelopes of every type in the seeds, deterministic from a seed.
//!
//! Same seed and start time, same sequence byte for byte: types, payloads, eventIds and `ts`.
//! EventIds are ULIDs built from `ts` and a counter, so they are strictly increasing. Prices
//! follow a random walk per pair with drifting regimes, so a momentum strategy sees trends.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use sha2::{Digest, Sha256};
use ulid::Ulid;

/// Every event type the catalog emits, with its share of the stream in percent.
pub const EVENT_TYPES: [(&str, u32); 8] = [
    ("market.tick", 60),
    ("market.candle", 8),
    ("wallet.balance_changed", 10),
    ("wallet.low_balance", 3),
    ("escrow.released", 6),
    ("escrow.disputed", 3),
    ("job.completed", 6),
    ("job.failed", 4),
];

/// The trading pairs ticks and candles are for.
pub const PAIRS: [&str; 3] = ["BTC-USD", "ETH-USD", "SOL-USD"];

const START_PRICES: [f64; 3] = [64_000.0, 3_200.0, 150.0];
const LOW_BALANCE_THRESHOLD: f64 = 25.0;

/// One generated event: its position in the stream, its id and type, and the envelope bytes.
#[derive(Debug, Clone)]
pub struct SimEvent {
    /// Position in the stream, from 0.
    pub seq: u64,
    /// The eventId.
    pub id: Ulid,
    /// The event type (routing key).
    pub event_type: &'static str,
    /// The envelope, serialized as the upstream sends it.
    pub frame: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    price: f64,
    drift: f64,
    candle_open: f64,
    candle_high: f64,
    candle_low: f64,
}

/// A deterministic generator of upstream events.
#[derive(Debug)]
pub struct Catalog {
    rng: StdRng,
    seq: u64,
    start_ms: u64,
    step_us: u64,
    id_salt: u128,
    agent_id: String,
    pairs: [Pair; 3],
    balance: f64,
    escrows: u64,
    jobs: u64,
}

impl Catalog {
    /// A generator for `agent_id` whose first event is at `start_ms`, spacing `ts` by
    /// `1/rate` seconds (`rate` 0: 1 µs apart).
    pub fn new(seed: u64, start_ms: u64, rate: u32, agent_id: &str) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let id_salt = u128::from(rng.random::<u16>()) << 64;
        let pairs = START_PRICES.map(|p| Pair {
            price: p,
            drift: 0.0,
            candle_open: p,
            candle_high: p,
            candle_low: p,
        });
        Self {
            rng,
            seq: 0,
            start_ms,
            step_us: if rate == 0 {
                1
            } else {
                1_000_000 / u64::from(rate).max(1)
            },
            id_salt,
            agent_id: agent_id.to_string(),
            pairs,
            balance: 1_000.0,
            escrows: 0,
            jobs: 0,
        }
    }

    /// Events generated so far.
    pub fn generated(&self) -> u64 {
        self.seq
    }

    /// The next event of the stream.
    pub fn next_event(&mut self) -> SimEvent {
        let seq = self.seq;
        self.seq += 1;
        let ts = self.start_ms + seq * self.step_us / 1000;
        let id = Ulid::from_parts(ts, self.id_salt | u128::from(seq));
        let event_type = self.pick_type();
        let payload = self.payload(event_type, ts);
        let frame = serde_json::to_vec(&json!({
            "eventId": id.to_string(),
            "type": event_type,
            "agentId": self.agent_id,
            "payload": payload,
            "ts": ts,
        }))
        .unwrap_or_default();
        SimEvent {
            seq,
            id,
            event_type,
            frame,
        }
    }

    fn pick_type(&mut self) -> &'static str {
        let total: u32 = EVENT_TYPES.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.random_range(0..total);
        for (t, w) in EVENT_TYPES {
            if roll < w {
                return t;
            }
            roll -= w;
        }
        EVENT_TYPES[0].0
    }

    fn payload(&mut self, event_type: &str, ts: u64) -> serde_json::Value {
        match event_type {
            "market.tick" => {
                let i = self.rng.random_range(0..PAIRS.len());
                let price = self.walk(i);
                json!({"pair": PAIRS[i], "price": round(price, 4), "timestamp_ms": ts})
            }
            "market.candle" => {
                let i = self.rng.random_range(0..PAIRS.len());
                let close = self.walk(i);
                let p = &mut self.pairs[i];
                let candle = json!({
                    "pair": PAIRS[i],
                    "open": round(p.candle_open, 4),
                    "high": round(p.candle_high.max(close), 4),
                    "low": round(p.candle_low.min(close), 4),
                    "close": round(close, 4),
                    "volume": round(self.rng.random_range(10.0..1_000.0), 2),
                    "interval": "1m",
                });
                let p = &mut self.pairs[i];
                (p.candle_open, p.candle_high, p.candle_low) = (close, close, close);
                candle
            }
            "wallet.balance_changed" => {
                const REASONS: [&str; 6] = [
                    "trade_open",
                    "trade_close",
                    "deposit",
                    "withdrawal",
                    "faucet_claim",
                    "escrow_release",
                ];
                let reason = REASONS[self.rng.random_range(0..REASONS.len())];
                let mut delta = round(self.rng.random_range(-60.0..60.0), 2);
                if self.balance + delta < 0.0 {
                    delta = round(-self.balance, 2);
                }
                self.balance = round(self.balance + delta, 2);
                json!({"new_balance_usdc": self.balance, "delta_usdc": delta, "reason": reason})
            }
            "wallet.low_balance" => json!({
                "balance_usdc": round(self.rng.random_range(0.0..LOW_BALANCE_THRESHOLD), 2),
                "threshold_usdc": LOW_BALANCE_THRESHOLD,
            }),
            "escrow.released" => {
                self.escrows += 1;
                json!({
                    "escrow_id": format!("esc_{:06}", self.escrows),
                    "amount_usdc": round(self.rng.random_range(1.0..250.0), 2),
                    "counterparty": format!("pf_agent_{:04x}", self.rng.random::<u16>()),
                })
            }
            "escrow.disputed" => {
                const REASONS: [&str; 3] = [
                    "work_not_delivered",
                    "quality_below_spec",
                    "deadline_missed",
                ];
                self.escrows += 1;
                json!({
                    "escrow_id": format!("esc_{:06}", self.escrows),
                    "reason": REASONS[self.rng.random_range(0..REASONS.len())],
                })
            }
            "job.completed" => {
                self.jobs += 1;
                let job_id = format!("job_{:06}", self.jobs);
                let hash = hex::encode(Sha256::digest(format!(
                    "{job_id}:{}",
                    self.rng.random::<u64>()
                )));
                json!({
                    "job_id": job_id,
                    "result_hash": hash,
                    "delivery_uri": format!("https://sim.invalid/jobs/{job_id}/result"),
                })
            }
            _ => {
                const ERRORS: [&str; 3] = ["timeout", "agent_unavailable", "invalid_input"];
                self.jobs += 1;
                json!({
                    "job_id": format!("job_{:06}", self.jobs),
                    "error": ERRORS[self.rng.random_range(0..ERRORS.len())],
                })
            }
        }
    }

    /// One step of pair `i`'s random walk; the drift switches regime now and then.
    fn walk(&mut self, i: usize) -> f64 {
        if self.rng.random_bool(0.02) {
            self.pairs[i].drift = [-0.0008, 0.0, 0.0008][self.rng.random_range(0..3)];
        }
        let noise = gaussian(&mut self.rng) * 0.001;
        let p = &mut self.pairs[i];
        p.price *= (p.drift + noise).exp();
        p.candle_high = p.candle_high.max(p.price);
        p.candle_low = p.candle_low.min(p.price);
        p.price
    }
}

/// A standard normal sample (Box-Muller).
fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_ids_strictly_increase() {
        let mut a = Catalog::new(7, 1_741_344_000_000, 1000, "pf_agent_sim");
        let mut b = Catalog::new(7, 1_741_344_000_000, 1000, "pf_agent_sim");
        let mut c = Catalog::new(8, 1_741_344_000_000, 1000, "pf_agent_sim");
        let mut last = None;
        let mut differs = false;
        for _ in 0..2000 {
            let (x, y, z) = (a.next_event(), b.next_event(), c.next_event());
            assert_eq!(x.frame, y.frame);
            differs |= x.frame != z.frame;
            assert!(last.is_none_or(|l| x.id > l), "ids must increase");
            last = Some(x.id);
        }
        assert!(differs, "another seed gives another stream");
    }

    #[test]
    fn prices_wander_but_stay_positive() {
        let mut cat = Catalog::new(3, 0, 0, "a");
        for _ in 0..20_000 {
            cat.next_event();
        }
        for (p, start) in cat.pairs.iter().zip(START_PRICES) {
            assert!(p.price > 0.0 && p.price != start);
        }
    }
}
