//! A stalled upstream (socket open, nothing sent, pings unanswered) is detected by the idle
//! deadline and the bridge reconnects and resumes; nothing is lost.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::bridge::{BRIDGE_TOPOLOGY, Sim, counts, drain_ids, spawn_bridge, wait_depth};
use support::{TestTopology, connect};

#[tokio::test]
async fn a_stalled_upstream_is_detected_and_the_bridge_resumes() {
    let t = TestTopology::new("bridge-stall", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "300", "--rate", "500", "--stall-after", "100"],
    );
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &["--idle-timeout", "2s", "--ping-interval", "500ms"],
        &log,
    );

    assert_eq!(
        wait_depth(&conn, &queue, 300, Duration::from_secs(60)).await,
        300,
        "{}",
        bridge.log_text()
    );
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));
    let text = bridge.log_text();
    let stalls = text.matches("idle deadline").count();
    let subscribes = text.matches("Upstream subscribed.").count();
    assert!(
        stalls >= 2 && subscribes >= 3,
        "stalls={stalls} subscribes={subscribes}\n{text}"
    );

    let ids = drain_ids(&conn, &queue).await;
    let c = counts(&ids);
    assert_eq!(
        c.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        sim.ledger().set()
    );
    assert!(
        c.values().all(|&n| n == 1),
        "resume plus the eventId window leaves no duplicate"
    );
    t.cleanup(&conn).await;
}
