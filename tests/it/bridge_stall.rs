//! A stalled upstream (socket open, nothing sent, pings unanswered) is detected by the idle
//! deadline, each stall within the deadline plus a small margin, and the bridge reconnects and
//! resumes; nothing is lost. A quiet upstream that answers pings is not a stall: the pongs keep
//! its one connection open.

use std::time::{Duration, SystemTime};

use crate::support::bridge::{
    BRIDGE_TOPOLOGY, Sim, counts, drain_ids, log_times, spawn_bridge, wait_depth,
};
use crate::support::{TestTopology, connect, eventually};
use nix::sys::signal::Signal;

/// The deadline the bridge runs with here.
const IDLE: Duration = Duration::from_secs(2);
/// What a reconnect may add to the deadline: the 100 ms idle check, the reconnect backoff
/// (full jitter; its ceiling is 100 ms, doubling per failure, and stalls come 3 or 4 in a row
/// here), the WebSocket handshake and the subscribe. A correctness bound, not a speed target:
/// a bridge that noticed a stall at twice the deadline fails it.
const MARGIN: Duration = Duration::from_secs(2);

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[tokio::test]
async fn a_stalled_upstream_is_detected_within_the_idle_deadline_and_the_bridge_resumes() {
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
    // The last connection stalls too; wait until every stall has been followed by a subscribe.
    let stalls_answered = || {
        let log = sim.log_text();
        let stalls = log_times(&log, "Stalling: no more frames");
        let subscribes = log_times(&log, "Client subscribed.");
        let done = !stalls.is_empty() && stalls.iter().all(|s| subscribes.iter().any(|t| t > s));
        async move { done }
    };
    eventually(
        Duration::from_secs(30),
        "a subscribe after every stall",
        stalls_answered,
    )
    .await;
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    // Time each stall (the sim logs it once its last frame is flushed) to the next subscribe.
    let sim_log = sim.log_text();
    let stalls = log_times(&sim_log, "Stalling: no more frames");
    let subscribes = log_times(&sim_log, "Client subscribed.");
    let text = bridge.log_text();
    assert!(
        stalls.len() >= 2,
        "the sim stalled {} times:\n{sim_log}",
        stalls.len()
    );
    for (i, stall) in stalls.iter().enumerate() {
        let next: SystemTime = *subscribes
            .iter()
            .find(|t| *t > stall)
            .expect("waited for it above");
        let gap = next.duration_since(*stall).unwrap();
        eprintln!(
            "stall {i}: reconnected after {} (deadline {})",
            secs(gap),
            secs(IDLE)
        );
        assert!(
            gap <= IDLE + MARGIN,
            "stall {i} took {} to reconnect; the deadline is {} (+{} margin)\n{text}",
            secs(gap),
            secs(IDLE),
            secs(MARGIN)
        );
        // Not sooner than the deadline either: the stalled socket stays open, so only the
        // deadline can have noticed it.
        assert!(
            gap + Duration::from_millis(300) >= IDLE,
            "stall {i} reconnected after {}, before the {} deadline",
            secs(gap),
            secs(IDLE)
        );
    }
    assert_eq!(
        text.matches("idle deadline").count(),
        stalls.len(),
        "each stall was noticed by the idle deadline:\n{text}"
    );
    assert_eq!(
        text.matches("Upstream subscribed.").count(),
        stalls.len() + 1
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

/// The sim answers pings while it has nothing to send (tungstenite replies to a ping on the
/// next read, and an idle sim connection is always reading). With an idle deadline a few
/// ping intervals long, only those pongs keep the connection open for several deadlines.
#[tokio::test]
async fn pongs_keep_a_quiet_upstream_connection_open() {
    let t = TestTopology::new("bridge-quiet", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let sim = Sim::spawn(t.dir(), "sim", &["--events", "5", "--rate", "50"]);
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &["--idle-timeout", "1500ms", "--ping-interval", "300ms"],
        &log,
    );
    assert_eq!(
        wait_depth(&conn, &queue, 5, Duration::from_secs(30)).await,
        5,
        "{}",
        bridge.log_text()
    );
    // Four idle deadlines with no event at all.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(bridge.running());
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    let text = bridge.log_text();
    assert_eq!(
        text.matches("Upstream subscribed.").count(),
        1,
        "one connection for the whole run:\n{text}"
    );
    assert!(!text.contains("idle deadline"), "{text}");
    assert!(!text.contains("Upstream connection lost"), "{text}");
    assert_eq!(sim.log_text().matches("Client subscribed.").count(), 1);
    assert_eq!(drain_ids(&conn, &queue).await.len(), 5);
    t.cleanup(&conn).await;
}
