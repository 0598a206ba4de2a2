//! The PostgreSQL sink: exactly once into the database, against the real PostgreSQL and, for
//! the workers, the real broker. Each test writes into a schema of its own ([`TestDb`]).

mod cli;
mod fleet;
mod restart;
mod sink;

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::{BasicProperties, Connection};
use warren::amqp::{ConfirmWindow, Message, Publisher};
use warren_sim::catalog::{Catalog, SimEvent};

use crate::support::pg::{CANARY, TestDb};
use crate::support::{TestTopology, Warren, eventually};

/// One queue taking every event type, a short retry ladder, two attempts.
pub const BOOKS_TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 200
max_attempts = 2
retry_delays = ["300ms", "600ms"]
delivery_limit = 10
expires = "10m"

[[queues]]
name = "books"
bind = ["market.*", "wallet.*", "escrow.*", "job.*"]
"#;

/// `n` events of every catalog type, 1 ms apart (so candles' open times are distinct).
pub fn catalog(seed: u64, n: usize) -> Vec<SimEvent> {
    let mut c = Catalog::new(seed, 1_760_000_000_000, 1000, "pf_agent_books");
    (0..n).map(|_| c.next_event()).collect()
}

/// Domain rows each table should hold for `events` (distinct), by the sink's natural keys.
pub fn expected_rows(events: &[SimEvent]) -> BTreeMap<String, i64> {
    let n = |f: &dyn Fn(&str) -> bool| events.iter().filter(|e| f(e.event_type)).count() as i64;
    BTreeMap::from([
        ("events".to_string(), events.len() as i64),
        ("inbox".to_string(), events.len() as i64),
        ("candles".to_string(), n(&|t| t == "market.candle")),
        (
            "balance_changes".to_string(),
            n(&|t| t == "wallet.balance_changed"),
        ),
        (
            "escrow_events".to_string(),
            n(&|t| t.starts_with("escrow.")),
        ),
        ("job_results".to_string(), n(&|t| t.starts_with("job."))),
    ])
}

/// Publishes frames to the topology's events exchange (routing key = type), with confirms.
pub async fn publish_frames(
    conn: &Connection,
    t: &TestTopology,
    frames: &[(String, &str, Vec<u8>)],
) {
    let publisher = Publisher::open(conn).await.expect("publisher");
    let mut window: ConfirmWindow<usize> = ConfirmWindow::new(256);
    for (i, (id, event_type, body)) in frames.iter().enumerate() {
        let confirm = publisher
            .send(Message {
                exchange: &t.topology.events_exchange,
                routing_key: event_type,
                body,
                properties: BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
                mandatory: true,
            })
            .await
            .expect("publish");
        window.push(i, confirm);
        while window.is_full() {
            window.next().await.unwrap().1.expect("confirmed");
        }
    }
    while let Some((_, r)) = window.next().await {
        r.expect("confirmed");
    }
}

/// Publishes catalog events.
pub async fn publish_events(conn: &Connection, t: &TestTopology, events: &[SimEvent]) {
    let frames: Vec<_> = events
        .iter()
        .map(|e| (e.id.to_string(), e.event_type, e.frame.clone()))
        .collect();
    publish_frames(conn, t, &frames).await;
}

/// `warren worker --handler postgres` on the books queue of `t`, writing into `db`.
pub fn sink_worker(t: &TestTopology, db: &TestDb, extra: &[&str], log: &str) -> Warren {
    let mut args: Vec<String> = vec!["worker".into(), "--handler".into(), "postgres".into()];
    args.extend(t.args());
    args.extend(["-q".into(), "books".into()]);
    args.extend(db.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Warren::spawn(&args, &t.dir().join(log), &[])
}

/// Waits until `events` holds `n` rows.
pub async fn wait_events(db: &TestDb, n: i64, timeout: Duration) {
    eventually(timeout, &format!("{n} events in the database"), || async {
        db.count("events").await >= n
    })
    .await;
}

/// No log line of `w` shows the database password.
pub fn assert_no_password(w: &Warren) {
    let log = w.log_text();
    assert!(
        !log.contains(CANARY),
        "the password leaked into the log:\n{log}"
    );
}
