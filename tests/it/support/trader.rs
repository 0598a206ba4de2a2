//! Trader-test fixtures: the trading topology (single active consumer, a 5 min TTL), the
//! pairs of a seeded tick walk, the worker's arguments and the API path of a trade.

use warren::handlers::trader::strategy::Trade;

use super::TestTopology;

/// One trading queue with single-active-consumer and a 5 min message TTL.
pub const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[events]
live_only = ["market.tick"]
live_ttl = "5m"

[defaults]
queue_type = "quorum"
prefetch = 50
max_attempts = 5
retry_delays = ["200ms", "500ms"]
delivery_limit = 20
expires = "10m"

[[queues]]
name = "trading"
bind = ["market.tick", "wallet.*", "escrow.released"]
single_active_consumer = true
"#;

/// The pairs of a seeded tick walk, with their starting prices.
pub const PAIRS: &[(&str, f64)] = &[
    ("BTC-USD", 60000.0),
    ("ETH-USD", 3000.0),
    ("SOL-USD", 150.0),
    ("DOGE-USD", 0.12),
];

/// `warren worker --handler trader` on the trading queue against the API at `api`.
pub fn trader_args(t: &TestTopology, api: &str) -> Vec<String> {
    let mut args = vec!["worker".to_string()];
    args.extend(t.args());
    args.extend(
        [
            "-q",
            "trading",
            "--handler",
            "trader",
            "--api",
            api,
            "--request-timeout",
            "1s",
        ]
        .map(String::from),
    );
    args
}

/// The API path a trade is posted to.
pub fn path(t: &Trade) -> &'static str {
    match t {
        Trade::Open { .. } => "/trade/open",
        Trade::Close { .. } => "/trade/close",
    }
}
