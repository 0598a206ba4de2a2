//! Events no queue binds. The topology gives the events exchange an alternate exchange, so they
//! are kept in `<events>.unrouted` and the bridge's publishes are confirmed as routed: the
//! `returned` counter stays 0. If that alternate exchange routes nowhere (its queue deleted or
//! expired), the broker returns the `mandatory` publishes: the bridge counts them in
//! `warren_bridge_publishes_total{outcome="returned"}`, logs it, and still moves the cursor
//! (the broker has answered; nothing will change on a retry).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::bridge::{Sim, drain_ids, logged_addr, metric, spawn_bridge};
use crate::support::{TestTopology, connect, eventually, queue_len};
use lapin::options::QueueDeleteOptions;
use nix::sys::signal::Signal;

/// Only market events have a queue.
const MARKET_ONLY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "classic"
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "market"
bind = ["market.*"]
"#;

const EVENTS: usize = 80;
const RETURNED: &str = r#"warren_bridge_publishes_total{outcome="returned"}"#;
const CONFIRMED: &str = r#"warren_bridge_publishes_total{outcome="confirmed"}"#;

async fn scrape(addr: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap()
}

/// (market ids, other ids) of the sim's ledger.
fn split(sim: &Sim) -> (BTreeSet<String>, BTreeSet<String>) {
    let ledger = sim.ledger();
    let (market, other): (Vec<_>, Vec<_>) = ledger
        .ids
        .iter()
        .cloned()
        .partition(|id| ledger.types[id].starts_with("market."));
    (market.into_iter().collect(), other.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_event_types_land_in_the_unrouted_queue_and_are_not_returned() {
    let t = TestTopology::new("bridge-unrouted", MARKET_ONLY);
    let conn = connect().await;
    t.apply(&conn).await;
    let (queue, unrouted) = (t.queue("market"), t.topology.unrouted_queue());
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            &EVENTS.to_string(),
            "--rate",
            "400",
            "--seed",
            "8",
        ],
    );
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(&t, &sim.url(), &["--metrics-listen", "127.0.0.1:0"], &log);
    let addr = logged_addr(&bridge, "Serving /metrics").await;
    eventually(Duration::from_secs(30), "every event confirmed", || {
        let addr = addr.clone();
        async move { metric(&scrape(&addr).await, CONFIRMED) == Some(EVENTS as f64) }
    })
    .await;
    let body = scrape(&addr).await;
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    assert_eq!(metric(&body, RETURNED), Some(0.0), "{body}");
    let (market, other) = split(&sim);
    assert!(!market.is_empty() && !other.is_empty());
    assert_eq!(queue_len(&conn, &unrouted).await as usize, other.len());
    let kept: BTreeSet<String> = drain_ids(&conn, &unrouted).await.into_iter().collect();
    assert_eq!(kept, other, "the unbound types are kept, not dropped");
    let routed: BTreeSet<String> = drain_ids(&conn, &queue).await.into_iter().collect();
    assert_eq!(routed, market);
    assert!(!bridge.log_text().contains("matched no queue"));
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_nothing_routes_are_counted_as_returned_and_the_cursor_moves_on() {
    let t = TestTopology::new("bridge-returned", MARKET_ONLY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("market");
    // The alternate exchange stays, its queue goes: now nothing routes the other types.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(
        t.topology.unrouted_queue().as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            &EVENTS.to_string(),
            "--rate",
            "400",
            "--seed",
            "8",
        ],
    );
    let cursor = t.dir().join("cursor");
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--cursor-file",
            cursor.to_str().unwrap(),
        ],
        &log,
    );
    let addr = logged_addr(&bridge, "Serving /metrics").await;
    eventually(Duration::from_secs(30), "every publish answered", || {
        let addr = addr.clone();
        async move {
            let body = scrape(&addr).await;
            metric(&body, CONFIRMED).unwrap_or(0.0) + metric(&body, RETURNED).unwrap_or(0.0)
                >= EVENTS as f64
        }
    })
    .await;
    let body = scrape(&addr).await;
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    let (market, other) = split(&sim);
    assert_eq!(metric(&body, RETURNED), Some(other.len() as f64), "{body}");
    assert_eq!(
        metric(&body, CONFIRMED),
        Some(market.len() as f64),
        "{body}"
    );
    let text = bridge.log_text();
    assert!(text.contains("matched no queue"), "{text}");
    let routed: BTreeSet<String> = drain_ids(&conn, &queue).await.into_iter().collect();
    assert_eq!(routed, market);
    assert_eq!(
        std::fs::read_to_string(&cursor).unwrap().trim(),
        sim.ledger().ids.last().unwrap(),
        "a returned event is answered: the cursor passes it"
    );
    t.cleanup(&conn).await;
}
