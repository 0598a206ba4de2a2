//! The event archive against the real broker: a stream under a unique prefix, events published
//! with chosen times, and `warren archive` (library and binary) reading, replaying and
//! backtesting windows of it.

mod backtest;
mod bridge;
mod cli;
mod downstream;
mod info;
mod read;
mod replay;
mod resume;
mod retention;

use lapin::Connection;
use serde_json::json;

use crate::support::{self, TestTopology};

/// Work queues, a queue nothing routes to (replay target), and an archive of every event.
pub const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "work"
bind = ["test.*", "market.*"]

[[queues]]
name = "replayed"
bind = ["never.routed"]

[archive]
name = "archive"
max_age = "1h"
max_bytes = 100_000_000
segment_bytes = 1_000_000
"#;

/// The archive topology applied under a unique prefix.
pub async fn archived(test: &str) -> (TestTopology, Connection) {
    let t = TestTopology::new(test, TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    (t, conn)
}

/// An envelope with a chosen type, agent, time and payload; returns (eventId, body).
pub fn event_at(
    event_type: &str,
    agent: &str,
    ts: u64,
    payload: serde_json::Value,
) -> (String, Vec<u8>) {
    // Ids in time order, as the upstream's ULIDs are (the trader ignores a tick not after the last).
    let id = ulid::Ulid::from_parts(ts, ulid::Ulid::generate().random()).to_string();
    let body =
        json!({"eventId": id, "type": event_type, "agentId": agent, "payload": payload, "ts": ts});
    (id, serde_json::to_vec(&body).expect("json"))
}

/// Publishes each event to the events exchange with its type as the routing key, in order.
pub async fn publish_all(
    conn: &Connection,
    t: &TestTopology,
    events: &[(String, String, Vec<u8>)],
) {
    for (ty, id, body) in events {
        support::publish(
            conn,
            &t.topology.events_exchange,
            ty,
            &[(id.clone(), body.clone())],
        )
        .await;
    }
}

/// `n` events of `test.a` one second apart from `start_ms`, agent `a1` (odd ones `a2`).
pub fn series(start_ms: u64, n: usize) -> Vec<(String, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let agent = if i % 2 == 0 { "a1" } else { "a2" };
            let (id, body) = event_at("test.a", agent, start_ms + i as u64 * 1000, json!({"i": i}));
            ("test.a".to_string(), id, body)
        })
        .collect()
}

/// `warren archive <args> -f … --prefix …`.
pub fn warren_archive(t: &TestTopology, args: &[&str]) -> std::process::Output {
    let mut cmd = assert_cmd::Command::cargo_bin("warren").expect("binary");
    cmd.arg("archive")
        .args(args)
        .args(t.args())
        .env("AMQP_URL", support::amqp_url());
    cmd.output().expect("run warren")
}

/// An epoch-ms time as RFC 3339.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
