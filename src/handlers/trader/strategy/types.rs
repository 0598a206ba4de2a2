//! The strategy's vocabulary: its knobs, the inputs events map to, and the trades it decides,
//! each with the idempotency key that makes a repeat a replay.

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
        self.key_in(LIVE_KEYS)
    }

    /// The key of this trade's call in a key namespace: [`LIVE_KEYS`], or a backtest's own.
    pub fn key_in(&self, namespace: &str) -> String {
        match self {
            Trade::Open { event_id, .. } => open_key_in(namespace, event_id),
            // The position is part of the key: replayed ticks seen by a worker that adopted a
            // different position must not reuse the key of a close of another one.
            Trade::Close {
                event_id,
                opened_by,
                ..
            } => idempotency_key(event_id, namespace, &format!("close:{opened_by}")),
        }
    }

    /// The pair.
    pub fn pair(&self) -> &str {
        match self {
            Trade::Open { pair, .. } | Trade::Close { pair, .. } => pair,
        }
    }
}

/// The key namespace of live trading (the handler's name): a replayed event repeats its keys.
pub const LIVE_KEYS: &str = "trader";

/// The key namespace of backtests: never a live key, the same for every run of a window.
pub const BACKTEST_KEYS: &str = "trader.backtest";

/// The key of the open decided by `event_id`.
pub fn open_key(event_id: &str) -> String {
    open_key_in(LIVE_KEYS, event_id)
}

/// The key of the open decided by `event_id`, in `namespace`.
pub fn open_key_in(namespace: &str, event_id: &str) -> String {
    idempotency_key(event_id, namespace, "open")
}

#[cfg(test)]
mod tests {
    use super::*;

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
