//! The seeds' momentum strategy as a pure state machine: events in, trade decisions out. No
//! I/O and no clock, so a test can compute the expected trades of a stream by running it.
//!
//! Per pair, a rolling window of the last 20 prices; when the window is full and the last price
//! is more than 0.3% above (below) the first, the signal is long (short). A signal opens a
//! position if none is open for the pair and fewer than 3 are open; a signal against the open
//! position closes it, then opens the other way (cap permitting). `wallet.low_balance` pauses
//! (ticks are ignored, not even windowed); `wallet.balance_changed` and `escrow.released` resume.
//!
//! Positions a worker finds open at the API when it starts are [`Strategy::inherit`]ed with the
//! event that opened them, and count only from the first tick after that event. A fresh worker
//! fed the whole stream therefore decides exactly what the first one did, with the same keys
//! (its state is a function of the events it has seen); a standby taking over mid-stream finds
//! them open and closes them on a flip with the key the worker it replaces would have used.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, EnvelopeError, idempotency_key};

/// The strategy's knobs; [`Params::default`] is the seeds'.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Ticks per window.
    pub window: usize,
    /// Relative move across the window that makes a signal.
    pub threshold: f64,
    /// Open positions at most, across pairs.
    pub max_open: usize,
    /// Stake per trade.
    pub size_usdc: f64,
    /// Leverage per trade.
    pub leverage: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            window: 20,
            threshold: 0.003,
            max_open: 3,
            size_usdc: 50.0,
            leverage: 3.0,
        }
    }
}

/// A position's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Price expected to rise.
    Long,
    /// Price expected to fall.
    Short,
}

impl Direction {
    /// `long` or `short`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Long => "long",
            Direction::Short => "short",
        }
    }
}

/// What an event means to the strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `market.tick`.
    Tick {
        /// The pair, e.g. `BTC-USD`.
        pair: String,
        /// The price.
        price: f64,
        /// When the price was observed (`payload.timestamp_ms`, else the event's `ts`).
        at_ms: u64,
    },
    /// `wallet.low_balance`.
    Pause,
    /// `wallet.balance_changed`, `escrow.released`.
    Resume,
    /// Anything else.
    Ignore,
}

#[derive(Deserialize)]
struct TickPayload {
    pair: String,
    price: f64,
    #[serde(default)]
    timestamp_ms: Option<u64>,
}

impl Input {
    /// Reads an event; a tick whose payload lacks `pair` or `price` is an error naming it.
    pub fn from_event(event: &Envelope) -> Result<Input, EnvelopeError> {
        Ok(match event.event_type.as_str() {
            "market.tick" => {
                let t: TickPayload = event.payload_as()?;
                if t.pair.is_empty() || !(t.price.is_finite() && t.price > 0.0) {
                    return Err(EnvelopeError::Invalid {
                        field: "payload",
                        reason: "a tick needs a non-empty 'pair' and a positive 'price'".into(),
                    });
                }
                Input::Tick {
                    pair: t.pair,
                    price: t.price,
                    at_ms: t.timestamp_ms.unwrap_or(event.ts),
                }
            }
            "wallet.low_balance" => Input::Pause,
            "wallet.balance_changed" | "escrow.released" => Input::Resume,
            _ => Input::Ignore,
        })
    }
}

/// A decided trade. Keys derive from the deciding event, so a replay decides the same keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Trade {
    /// Open a position.
    Open {
        /// The pair.
        pair: String,
        /// The side.
        direction: Direction,
        /// The deciding event.
        event_id: String,
    },
    /// Close the position opened by `opened_by`.
    Close {
        /// The pair.
        pair: String,
        /// The side of the position being closed.
        direction: Direction,
        /// The deciding event.
        event_id: String,
        /// The event that opened the position.
        opened_by: String,
    },
}

impl Trade {
    /// The idempotency key of this trade's call.
    pub fn key(&self) -> String {
        match self {
            Trade::Open { event_id, .. } => open_key(event_id),
            // The position is part of the key: replayed ticks seen by a worker that adopted a
            // different position must not reuse the key of a close of another one.
            Trade::Close {
                event_id,
                opened_by,
                ..
            } => idempotency_key(event_id, "trader", &format!("close:{opened_by}")),
        }
    }

    /// The pair.
    pub fn pair(&self) -> &str {
        match self {
            Trade::Open { pair, .. } | Trade::Close { pair, .. } => pair,
        }
    }
}

/// The key of the open decided by `event_id`.
pub fn open_key(event_id: &str) -> String {
    idempotency_key(event_id, "trader", "open")
}

#[derive(Debug, Clone)]
struct Held {
    direction: Direction,
    opened_by: String,
}

/// The strategy's state: windows, open positions, pause flag, last tick seen per pair.
#[derive(Debug, Default)]
pub struct Strategy {
    params: Params,
    windows: HashMap<String, VecDeque<f64>>,
    last_seen: HashMap<String, String>,
    open: BTreeMap<String, Held>,
    /// Positions held at the API that the stream has not reached yet (see [`Strategy::inherit`]).
    inherited: BTreeMap<String, Held>,
    paused: bool,
}

impl Strategy {
    /// A fresh strategy: empty windows, nothing open, not paused.
    pub fn new(params: Params) -> Self {
        Self {
            params,
            ..Default::default()
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Feeds one event; returns the trades it decides, in the order to execute them. A tick
    /// whose eventId is not after the last one seen for its pair (a redelivery) is ignored.
    pub fn on_event(&mut self, event_id: &str, input: &Input) -> Vec<Trade> {
        match input {
            Input::Pause => {
                self.paused = true;
                vec![]
            }
            Input::Resume => {
                self.paused = false;
                vec![]
            }
            Input::Ignore => vec![],
            Input::Tick { pair, price, .. } => self.on_tick(event_id, pair, *price),
        }
    }

    fn on_tick(&mut self, event_id: &str, pair: &str, price: f64) -> Vec<Trade> {
        if self.paused {
            return vec![];
        }
        if self
            .last_seen
            .get(pair)
            .is_some_and(|last| event_id <= last.as_str())
        {
            return vec![];
        }
        self.last_seen
            .insert(pair.to_string(), event_id.to_string());
        self.reach_inherited(event_id);
        let window = self.windows.entry(pair.to_string()).or_default();
        window.push_back(price);
        if window.len() > self.params.window {
            window.pop_front();
        }
        let Some(signal) = signal(window, &self.params) else {
            return vec![];
        };
        let mut trades = vec![];
        if let Some(held) = self.open.get(pair) {
            if held.direction == signal {
                return trades;
            }
            trades.push(Trade::Close {
                pair: pair.to_string(),
                direction: held.direction,
                event_id: event_id.to_string(),
                opened_by: held.opened_by.clone(),
            });
            self.open.remove(pair);
        }
        if self.open.len() < self.params.max_open {
            trades.push(Trade::Open {
                pair: pair.to_string(),
                direction: signal,
                event_id: event_id.to_string(),
            });
            self.open.insert(
                pair.to_string(),
                Held {
                    direction: signal,
                    opened_by: event_id.to_string(),
                },
            );
        }
        trades
    }

    /// Records a position the API holds open, opened by the trade that the event `opened_by`
    /// decided. It counts from the first tick after `opened_by` in eventId order (ticks reach
    /// the worker in order): ticks up to it are history the strategy is replaying, during which
    /// it decides what the first worker decided (so every trade repeats its key, and the open
    /// at `opened_by` itself takes this position over); ticks after it find it open.
    pub fn inherit(&mut self, pair: &str, direction: Direction, opened_by: &str) {
        self.inherited.insert(
            pair.to_string(),
            Held {
                direction,
                opened_by: opened_by.to_string(),
            },
        );
    }

    /// Inherited positions opened before `event_id` become open, unless the strategy already
    /// holds the same position (it replayed the open itself). If it holds another one on the
    /// pair, the API's account wins: that one is closed there.
    fn reach_inherited(&mut self, event_id: &str) {
        let reached: Vec<String> = self
            .inherited
            .iter()
            .filter(|(_, h)| h.opened_by.as_str() < event_id)
            .map(|(pair, _)| pair.clone())
            .collect();
        for pair in reached {
            let Some(held) = self.inherited.remove(&pair) else {
                continue;
            };
            if self
                .open
                .get(&pair)
                .is_none_or(|h| h.opened_by != held.opened_by)
            {
                self.open.insert(pair, held);
            }
        }
    }

    /// Records a position that is already open, with no known opening event (a position the
    /// trader did not open, loaded from the API at start): it counts from now on.
    pub fn adopt(&mut self, pair: &str, direction: Direction, opened_by: &str) {
        self.open.insert(
            pair.to_string(),
            Held {
                direction,
                opened_by: opened_by.to_string(),
            },
        );
    }

    /// Drops what the strategy believes is open on `pair`, inherited or its own (after a trade
    /// failed for good, or before reloading the pair's positions from the API).
    pub fn forget(&mut self, pair: &str) {
        self.open.remove(pair);
        self.inherited.remove(pair);
    }

    /// True after `wallet.low_balance` until a resume event.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Positions the strategy believes open, by pair.
    pub fn open_positions(&self) -> Vec<(String, Direction)> {
        self.open
            .iter()
            .map(|(p, h)| (p.clone(), h.direction))
            .collect()
    }
}

/// `long` if the window is full and rose more than the threshold, `short` if it fell more.
fn signal(window: &VecDeque<f64>, params: &Params) -> Option<Direction> {
    if window.len() < params.window {
        return None;
    }
    let (first, last) = (*window.front()?, *window.back()?);
    let change = (last - first) / first;
    if change > params.threshold {
        Some(Direction::Long)
    } else if change < -params.threshold {
        Some(Direction::Short)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(pair: &str, price: f64) -> Input {
        Input::Tick {
            pair: pair.into(),
            price,
            at_ms: 1,
        }
    }

    /// Feeds prices for `pair` with ids `<prefix><nnn>`; returns every trade decided.
    fn feed(s: &mut Strategy, pair: &str, prefix: &str, prices: &[f64]) -> Vec<Trade> {
        prices
            .iter()
            .enumerate()
            .flat_map(|(i, p)| s.on_event(&format!("{prefix}{i:03}"), &tick(pair, *p)))
            .collect()
    }

    fn ramp(from: f64, step: f64, n: usize) -> Vec<f64> {
        (0..n).map(|i| from + step * i as f64).collect()
    }

    #[test]
    fn no_signal_until_the_window_is_full() {
        let mut s = Strategy::new(Params::default());
        // 19 ticks rising 1% in all: not a full window yet.
        assert!(feed(&mut s, "BTC", "a", &ramp(100.0, 1.0 / 18.0, 19)).is_empty());
        // The 20th tick completes it: 100 -> 101.05 is above 0.3%.
        let t = s.on_event("a019", &tick("BTC", 101.05));
        assert_eq!(
            t,
            vec![Trade::Open {
                pair: "BTC".into(),
                direction: Direction::Long,
                event_id: "a019".into()
            }]
        );
    }

    #[test]
    fn a_move_within_the_threshold_is_no_signal() {
        let mut s = Strategy::new(Params::default());
        // 100 -> 100.29 is 0.29%: no signal.
        assert!(feed(&mut s, "BTC", "a", &ramp(100.0, 0.29 / 19.0, 20)).is_empty());
    }

    #[test]
    fn same_direction_holds_a_flip_closes_then_opens() {
        let mut s = Strategy::new(Params::default());
        let up = feed(&mut s, "BTC", "a", &ramp(100.0, 0.1, 25));
        assert_eq!(up.len(), 1, "one open, then holding: {up:?}");
        // Fall hard: the window turns short, closing the long and opening a short.
        let down = feed(&mut s, "BTC", "b", &ramp(102.4, -0.2, 20));
        let kinds: Vec<_> = down
            .iter()
            .map(|t| match t {
                Trade::Open { direction, .. } => format!("open {}", direction.as_str()),
                Trade::Close {
                    direction,
                    opened_by,
                    ..
                } => {
                    assert_eq!(opened_by, "a019");
                    format!("close {}", direction.as_str())
                }
            })
            .collect();
        assert_eq!(kinds, ["close long", "open short"]);
        // Both trades come from one deciding event and have distinct keys.
        let Trade::Close { event_id, .. } = &down[0] else {
            unreachable!()
        };
        assert_eq!(
            down[0].key(),
            idempotency_key(event_id, "trader", "close:a019")
        );
        assert_eq!(down[1].key(), open_key(event_id));
    }

    #[test]
    fn at_most_three_positions() {
        let mut s = Strategy::new(Params::default());
        let mut opened = 0;
        for pair in ["A", "B", "C", "D"] {
            opened += feed(&mut s, pair, &format!("{pair}-"), &ramp(100.0, 0.1, 20)).len();
        }
        assert_eq!(opened, 3);
        assert_eq!(s.open_positions().len(), 3);
    }

    #[test]
    fn paused_ticks_are_ignored_until_resume() {
        let mut s = Strategy::new(Params::default());
        s.on_event("p", &Input::Pause);
        assert!(s.paused());
        assert!(feed(&mut s, "BTC", "a", &ramp(100.0, 0.1, 30)).is_empty());
        s.on_event("r", &Input::Resume);
        // The paused ticks never entered the window: it takes 20 fresh ones to signal again.
        assert!(feed(&mut s, "BTC", "b", &ramp(100.0, 0.1, 19)).is_empty());
        assert_eq!(s.on_event("b019", &tick("BTC", 102.0)).len(), 1);
    }

    #[test]
    fn a_redelivered_tick_is_not_windowed_twice() {
        let mut a = Strategy::new(Params::default());
        let mut b = Strategy::new(Params::default());
        let prices = ramp(100.0, 0.02, 20);
        let mut with_dups = vec![];
        for (i, p) in prices.iter().enumerate() {
            let id = format!("a{i:03}");
            with_dups.extend(a.on_event(&id, &tick("BTC", *p)));
            // Every tick arrives twice, and an old one again.
            with_dups.extend(a.on_event(&id, &tick("BTC", *p)));
            with_dups.extend(a.on_event("a000", &tick("BTC", 1.0)));
        }
        let once = feed(&mut b, "BTC", "a", &prices);
        assert_eq!(with_dups, once);
    }

    #[test]
    fn a_fresh_strategy_inheriting_the_final_positions_replays_the_same_trades() {
        // The first worker's whole history: opens, holds, flips, on two pairs.
        let mut first = Strategy::new(Params::default());
        let mut history: Vec<(String, &str, f64)> = vec![];
        let mut n = 0;
        let mut push = |pair: &'static str, prices: Vec<f64>| {
            for p in prices {
                history.push((format!("e{n:04}"), pair, p));
                n += 1;
            }
        };
        push("A", ramp(100.0, 0.1, 25));
        push("B", ramp(50.0, -0.05, 22));
        push("A", ramp(102.4, -0.2, 20));
        push("B", ramp(48.9, 0.1, 20));
        let run = |s: &mut Strategy| -> Vec<Trade> {
            history
                .iter()
                .flat_map(|(id, pair, p)| s.on_event(id, &tick(pair, *p)))
                .collect()
        };
        let decided = run(&mut first);
        assert!(decided.len() >= 6, "{decided:?}");
        // A fresh worker loads what the API still holds, then gets the whole stream again.
        let mut fresh = Strategy::new(Params::default());
        for (pair, held) in &first.open {
            fresh.inherit(pair, held.direction, &held.opened_by);
        }
        assert!(fresh.open_positions().is_empty(), "not reached yet");
        assert_eq!(run(&mut fresh), decided, "same trades, so the same keys");
        assert_eq!(fresh.open_positions(), first.open_positions());
        assert!(fresh.inherited.is_empty());
    }

    #[test]
    fn a_standby_closes_an_inherited_position_with_the_key_the_first_would_have_used() {
        let mut first = Strategy::new(Params::default());
        feed(&mut first, "A", "a", &ramp(100.0, 0.1, 25));
        let mut standby = Strategy::new(Params::default());
        for (pair, held) in &first.open {
            standby.inherit(pair, held.direction, &held.opened_by);
        }
        // Only the ticks after the takeover: once its window is full, they flip the long, and the
        // close names the position by the event that opened it, as the first worker's would.
        let b = feed(&mut standby, "A", "b", &ramp(102.4, -0.2, 20));
        assert_eq!(
            b,
            vec![
                Trade::Close {
                    pair: "A".into(),
                    direction: Direction::Long,
                    event_id: "b019".into(),
                    opened_by: "a019".into(),
                },
                Trade::Open {
                    pair: "A".into(),
                    direction: Direction::Short,
                    event_id: "b019".into(),
                },
            ]
        );
        assert_eq!(b[0].key(), idempotency_key("b019", "trader", "close:a019"));
        // And it counts towards the cap meanwhile.
        let mut capped = Strategy::new(Params::default());
        capped.inherit("A", Direction::Long, "a019");
        capped.inherit("B", Direction::Long, "a019");
        capped.inherit("C", Direction::Short, "a018");
        assert!(feed(&mut capped, "D", "b", &ramp(100.0, 0.1, 25)).is_empty());
        assert_eq!(capped.open_positions().len(), 3);
    }

    #[test]
    fn events_map_to_inputs_and_bad_ticks_name_the_field() {
        let ev = |t: &str, payload: &str| {
            Envelope::parse(
                format!(
                    r#"{{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"{t}","agentId":"a","payload":{payload},"ts":5}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(
            Input::from_event(&ev("market.tick", r#"{"pair":"X","price":2.5}"#)).unwrap(),
            Input::Tick {
                pair: "X".into(),
                price: 2.5,
                at_ms: 5
            }
        );
        assert!(matches!(
            Input::from_event(&ev(
                "market.tick",
                r#"{"pair":"X","price":2.5,"timestamp_ms":9}"#
            ))
            .unwrap(),
            Input::Tick { at_ms: 9, .. }
        ));
        assert_eq!(
            Input::from_event(&ev("wallet.low_balance", "{}")).unwrap(),
            Input::Pause
        );
        assert_eq!(
            Input::from_event(&ev("escrow.released", "{}")).unwrap(),
            Input::Resume
        );
        assert_eq!(
            Input::from_event(&ev("wallet.balance_changed", "{}")).unwrap(),
            Input::Resume
        );
        assert_eq!(
            Input::from_event(&ev("job.completed", "{}")).unwrap(),
            Input::Ignore
        );
        let err = Input::from_event(&ev("market.tick", r#"{"pair":"X"}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("price"), "{err}");
    }
}
