//! The simulated API's operations: request bodies (validated, errors name the field) and the
//! effects they commit on the book of open positions. Ids and P&L derive from the seed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A mutating endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Endpoint {
    /// `POST /trade/open`
    #[serde(rename = "/trade/open")]
    Open,
    /// `POST /trade/close`
    #[serde(rename = "/trade/close")]
    Close,
    /// `POST /escrow/create`
    #[serde(rename = "/escrow/create")]
    Escrow,
    /// `POST /events`
    #[serde(rename = "/events")]
    Events,
}

impl Endpoint {
    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Open => "/trade/open",
            Endpoint::Close => "/trade/close",
            Endpoint::Escrow => "/escrow/create",
            Endpoint::Events => "/events",
        }
    }
}

/// `{pair, direction, size_usdc, leverage}`
#[derive(Debug, Clone, Deserialize)]
pub struct OpenRequest {
    pair: String,
    direction: String,
    size_usdc: f64,
    leverage: f64,
}

/// `{position_id}`
#[derive(Debug, Clone, Deserialize)]
pub struct CloseRequest {
    position_id: String,
}

/// `{amount_usdc, …}`
#[derive(Debug, Clone, Deserialize)]
pub struct EscrowRequest {
    amount_usdc: f64,
}

/// A validated request.
#[derive(Debug, Clone)]
pub enum Op {
    /// Open a position.
    Open(OpenRequest),
    /// Close a position.
    Close(CloseRequest),
    /// Create an escrow.
    Escrow(EscrowRequest),
    /// Accept an event (the `http` handler's sink); `eventId` if the body has one.
    Event(Option<String>),
}

impl Op {
    /// Validates `body` for `endpoint`; the error (a 400) names the field.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Op, String> {
        let json = |e: serde_json::Error| format!("body: {e}");
        match endpoint {
            Endpoint::Open => {
                let r: OpenRequest = serde_json::from_slice(body).map_err(json)?;
                if r.pair.is_empty() || r.pair.len() > 32 {
                    return Err("field 'pair': must be 1 to 32 characters".into());
                }
                if r.direction != "long" && r.direction != "short" {
                    return Err(format!(
                        "field 'direction': '{}' is not long or short",
                        r.direction
                    ));
                }
                if !(r.size_usdc.is_finite() && r.size_usdc > 0.0) {
                    return Err("field 'size_usdc': must be a positive number".into());
                }
                if !(1.0..=100.0).contains(&r.leverage) {
                    return Err("field 'leverage': must be between 1 and 100".into());
                }
                Ok(Op::Open(r))
            }
            Endpoint::Close => {
                let r: CloseRequest = serde_json::from_slice(body).map_err(json)?;
                if r.position_id.is_empty() {
                    return Err("field 'position_id': must not be empty".into());
                }
                Ok(Op::Close(r))
            }
            Endpoint::Escrow => {
                let r: EscrowRequest = serde_json::from_slice(body).map_err(json)?;
                if !(r.amount_usdc.is_finite() && r.amount_usdc > 0.0) {
                    return Err("field 'amount_usdc': must be a positive number".into());
                }
                Ok(Op::Escrow(r))
            }
            Endpoint::Events => {
                let v: Value = serde_json::from_slice(body).map_err(json)?;
                let Value::Object(map) = v else {
                    return Err("body: must be a JSON object".into());
                };
                Ok(Op::Event(
                    map.get("eventId")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                ))
            }
        }
    }

    /// The `eventId` the body itself names, if any.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Op::Event(id) => id.as_deref(),
            _ => None,
        }
    }
}

/// An open position.
#[derive(Debug, Clone, Serialize)]
pub struct Position {
    /// Its id.
    pub position_id: String,
    /// The `Idempotency-Key` of the open that created it (a client order id, as venues echo).
    pub idempotency_key: String,
    /// The `X-Warren-Event-Id` that open was sent with, if any: the event that decided it.
    pub event_id: Option<String>,
    /// The pair.
    pub pair: String,
    /// `long` or `short`.
    pub direction: String,
    /// Stake.
    pub size_usdc: f64,
    /// Leverage.
    pub leverage: f64,
}

/// The simulated venue's state: open positions, escrows created.
#[derive(Debug, Default)]
pub struct Book {
    seed: u64,
    positions: BTreeMap<String, Position>,
    escrows: u64,
}

impl Book {
    /// An empty book; ids and P&L derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ..Default::default()
        }
    }

    /// Commits `op` for `key`, sent for `event_id`. `Err` (a 422) means nothing changed.
    pub fn apply(&mut self, key: &str, event_id: Option<&str>, op: &Op) -> Result<Value, String> {
        match op {
            Op::Open(r) => {
                let position_id = format!("pos_{}", &self.hash(key)[..16]);
                self.positions.insert(
                    position_id.clone(),
                    Position {
                        position_id: position_id.clone(),
                        idempotency_key: key.to_string(),
                        event_id: event_id.map(str::to_string),
                        pair: r.pair.clone(),
                        direction: r.direction.clone(),
                        size_usdc: r.size_usdc,
                        leverage: r.leverage,
                    },
                );
                Ok(json!({"position_id": position_id, "pair": r.pair, "direction": r.direction}))
            }
            Op::Close(r) => {
                let Some(p) = self.positions.remove(&r.position_id) else {
                    return Err(format!("position '{}' is not open", r.position_id));
                };
                // P&L in cents, from -5.00 to +5.00 USDC, fixed by the seed and the position.
                let cents =
                    u64::from_str_radix(&self.hash(&p.position_id)[..8], 16).unwrap_or(0) % 1001;
                let pnl = (cents as f64 - 500.0) / 100.0;
                Ok(json!({"position_id": p.position_id, "pair": p.pair, "realised_pnl_usdc": pnl}))
            }
            Op::Escrow(r) => {
                self.escrows += 1;
                Ok(
                    json!({"escrow_id": format!("esc_{}", &self.hash(key)[..16]), "amount_usdc": r.amount_usdc}),
                )
            }
            Op::Event(id) => Ok(json!({"accepted": true, "event_id": id})),
        }
    }

    /// Open positions, by id.
    pub fn positions(&self) -> Vec<Position> {
        self.positions.values().cloned().collect()
    }

    fn hash(&self, s: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.seed.to_be_bytes());
        h.update(s.as_bytes());
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_name_the_field() {
        let cases: &[(Endpoint, &str, &str)] = &[
            (
                Endpoint::Open,
                r#"{"direction":"long","size_usdc":50,"leverage":3}"#,
                "pair",
            ),
            (
                Endpoint::Open,
                r#"{"pair":"BTC-USD","direction":"up","size_usdc":50,"leverage":3}"#,
                "direction",
            ),
            (
                Endpoint::Open,
                r#"{"pair":"BTC-USD","direction":"long","size_usdc":-1,"leverage":3}"#,
                "size_usdc",
            ),
            (
                Endpoint::Open,
                r#"{"pair":"BTC-USD","direction":"long","size_usdc":5,"leverage":0}"#,
                "leverage",
            ),
            (Endpoint::Close, r#"{}"#, "position_id"),
            (Endpoint::Escrow, r#"{"amount_usdc":0}"#, "amount_usdc"),
            (Endpoint::Events, r#"[1]"#, "object"),
            (Endpoint::Events, r#"nope"#, "body"),
        ];
        for (endpoint, body, field) in cases {
            let err = Op::parse(*endpoint, body.as_bytes()).unwrap_err();
            assert!(err.contains(field), "{body}: {err}");
        }
    }

    #[test]
    fn open_then_close_once() {
        let mut book = Book::new(1);
        let open = Op::parse(
            Endpoint::Open,
            br#"{"pair":"BTC-USD","direction":"long","size_usdc":50,"leverage":3}"#,
        )
        .unwrap();
        let opened = book.apply("k1", Some("e1"), &open).unwrap();
        let id = opened["position_id"].as_str().unwrap().to_string();
        let held = book.positions();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].idempotency_key, "k1");
        assert_eq!(held[0].event_id.as_deref(), Some("e1"));
        let close = Op::Close(CloseRequest {
            position_id: id.clone(),
        });
        let closed = book.apply("k2", None, &close).unwrap();
        assert!(closed["realised_pnl_usdc"].as_f64().unwrap().abs() <= 5.0);
        assert!(
            book.apply("k3", None, &close)
                .unwrap_err()
                .contains("not open")
        );
        // Ids are a function of the seed and the key.
        assert_eq!(
            Book::new(1).apply("k1", None, &open).unwrap()["position_id"],
            id.as_str()
        );
        assert_ne!(
            Book::new(2).apply("k1", None, &open).unwrap()["position_id"],
            id.as_str()
        );
    }
}
