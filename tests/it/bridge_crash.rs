//! The bridge killed with SIGKILL and restarted every K events over many rounds, while the sim
//! drops the WebSocket every N events: no eventId is missing, and duplicates stay bounded by
//! the confirm window.

use crate::support;

use std::time::Duration;

use crate::support::bridge::{BRIDGE_TOPOLOGY, Sim, counts, drain_ids, spawn_bridge, wait_depth};
use crate::support::{TestTopology, connect, queue_len};
use nix::sys::signal::Signal;

const EVENTS: u32 = 3000;
const WINDOW: usize = 32;
const K: u32 = 250;

#[tokio::test]
async fn kill_9_every_k_events_loses_nothing_and_duplicates_stay_bounded() {
    let t = TestTopology::new("bridge-kill", BRIDGE_TOPOLOGY);
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
            "5",
            "--drop-every",
            "97",
            "--duplicate-rate",
            "0.02",
        ],
    );
    let cursor = t.dir().join("cursor");
    let window = WINDOW.to_string();
    let args = [
        "--cursor-file",
        cursor.to_str().unwrap(),
        "--confirm-window",
        &window,
        "--cursor-flush-interval",
        "200ms",
    ];

    let mut kills = 0usize;
    let mut depth = 0;
    while kills < 40 {
        let log = t.dir().join(format!("bridge-{kills}.log"));
        let mut bridge = spawn_bridge(&t, &sim.url(), &args, &log);
        let reached = wait_depth(&conn, &queue, depth + K, Duration::from_secs(30)).await;
        assert!(
            reached > depth,
            "round {kills} made no progress; log:\n{}",
            bridge.log_text()
        );
        if sim.ledger().ids.len() as u32 == EVENTS && reached >= EVENTS {
            bridge.signal(Signal::SIGTERM);
            assert_eq!(
                bridge.wait_exit(Duration::from_secs(30)),
                Some(0),
                "{}",
                bridge.log_text()
            );
            break;
        }
        bridge.kill9();
        kills += 1;
        depth = reached;
    }
    assert!(kills >= 5, "only {kills} rounds");

    // A last bridge runs until the cursor reaches the ledger's last event.
    let ledger = sim.ledger();
    assert_eq!(ledger.ids.len() as u32, EVENTS);
    let last = ledger.ids.last().unwrap().clone();
    let log = t.dir().join("bridge-final.log");
    let mut bridge = spawn_bridge(&t, &sim.url(), &args, &log);
    support::eventually(
        Duration::from_secs(20),
        "the final bridge subscribes",
        || {
            let text = bridge.log_text();
            async move { text.contains("Upstream subscribed.") }
        },
    )
    .await;
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

    let total = queue_len(&conn, &queue).await as usize;
    let ids = drain_ids(&conn, &queue).await;
    assert_eq!(ids.len(), total);
    let c = counts(&ids);
    let missing: Vec<_> = ledger
        .set()
        .difference(&c.keys().cloned().collect())
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(c.len(), ledger.ids.len(), "nothing but ledger events");
    let duplicates = ids.len() - c.len();
    let bound = kills * (2 * WINDOW + 8);
    eprintln!(
        "kills={kills} events={} duplicates={duplicates} bound={bound}",
        c.len()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {kills} kills exceeds {bound}"
    );
    t.cleanup(&conn).await;
}
