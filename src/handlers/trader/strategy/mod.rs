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

mod types;

use std::collections::{BTreeMap, HashMap, VecDeque};

pub use types::{BACKTEST_KEYS, Direction, Input, LIVE_KEYS, Params, Trade, open_key, open_key_in};

/// A position open on a pair, and the event that opened it.
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
mod tests;
