//! The bridge's broker connection is closed mid-stream: it reconnects, republishes everything
//! unconfirmed, and nothing is lost. `disruptive_` closes every connection on the broker, so
//! nextest runs it alone.

use crate::support;

use std::time::Duration;

use crate::support::bridge::{BRIDGE_TOPOLOGY, Sim, counts, drain_ids, spawn_bridge, wait_depth};
use crate::support::{TestTopology, close_connections_of, connect, queue_len, rabbitmqctl};
use nix::sys::signal::Signal;

const EVENTS: u32 = 3000;
const WINDOW: usize = 64;

async fn closed_mid_stream(test: &str, close: impl Fn(u32)) {
    let t = TestTopology::new(test, BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            &EVENTS.to_string(),
            "--rate",
            "1000",
            "--seed",
            "9",
        ],
    );
    let cursor = t.dir().join("cursor");
    let log = t.dir().join("bridge.log");
    let window = WINDOW.to_string();
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &[
            "--cursor-file",
            cursor.to_str().unwrap(),
            "--confirm-window",
            &window,
        ],
        &log,
    );

    let mut conn = conn;
    for at in [600, 1800] {
        wait_depth(&conn, &queue, at, Duration::from_secs(30)).await;
        close(bridge.pid());
        // close_all_connections closes ours too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        conn = connect().await;
    }
    let last = loop {
        let l = sim.ledger();
        if l.ids.len() as u32 == EVENTS {
            break l.ids.last().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    support::eventually(
        Duration::from_secs(60),
        "the cursor reaches the last event",
        || {
            let c = std::fs::read_to_string(&cursor).unwrap_or_default();
            let last = last.clone();
            async move { c.trim() == last }
        },
    )
    .await;
    bridge.signal(Signal::SIGTERM);
    assert_eq!(
        bridge.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        bridge.log_text()
    );
    let text = bridge.log_text();
    assert!(text.matches("Broker connected").count() >= 3, "{text}");

    let conn = connect().await;
    let ids = drain_ids(&conn, &queue).await;
    let c = counts(&ids);
    assert_eq!(
        c.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        sim.ledger().set()
    );
    let duplicates = ids.len() - c.len();
    eprintln!("duplicates={duplicates}");
    assert!(
        duplicates <= 2 * WINDOW,
        "{duplicates} duplicates for 2 closes"
    );
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn closing_the_bridges_connection_mid_stream_loses_nothing() {
    closed_mid_stream("bridge-close", |pid| {
        assert!(
            close_connections_of(pid) >= 1,
            "the bridge has a named connection"
        );
    })
    .await;
}

#[tokio::test]
async fn disruptive_close_all_connections_mid_stream_loses_nothing() {
    let _node = support::node::use_throwaway_node();
    closed_mid_stream("bridge-close-all", |_| {
        rabbitmqctl(&[
            "close_all_connections",
            "test: disruptive_close_all_connections",
        ]);
    })
    .await;
}

/// Restores the memory watermark even if the test panics.
struct Unblock;

impl Drop for Unblock {
    fn drop(&mut self) {
        rabbitmqctl(&["eval", support::RESTORE_WATERMARK]);
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn disruptive_a_blocked_broker_stops_reading_and_loses_nothing() {
    let _node = support::node::use_throwaway_node();
    let t = TestTopology::new("bridge-blocked", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "3000", "--rate", "1000", "--seed", "21"],
    );
    let log = t.dir().join("bridge.log");
    let window = WINDOW.to_string();
    let mut bridge = spawn_bridge(&t, &sim.url(), &["--confirm-window", &window], &log);
    wait_depth(&conn, &queue, 300, Duration::from_secs(30)).await;

    let guard = Unblock;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let blocked_at = queue_len(&conn, &queue).await;
    // The sim keeps emitting; the bridge must not buffer it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = queue_len(&conn, &queue).await;
    assert!(
        still <= blocked_at + WINDOW as u32,
        "published {} while blocked",
        still - blocked_at
    );
    let rss = rss_kib(bridge.pid());
    assert!(bridge.running());
    drop(guard);

    let depth = wait_depth(&conn, &queue, 3000, Duration::from_secs(60)).await;
    assert_eq!(depth, 3000, "{}", bridge.log_text());
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));
    eprintln!("rss while blocked: {rss} KiB");
    assert!(
        rss < 100 * 1024,
        "the bridge's memory stays bounded while blocked: {rss} KiB"
    );
    let ids = drain_ids(&conn, &queue).await;
    let c = counts(&ids);
    assert_eq!(
        c.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        sim.ledger().set()
    );
    t.cleanup(&conn).await;
}
