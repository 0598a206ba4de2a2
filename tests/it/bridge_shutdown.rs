//! SIGTERM while confirms are outstanding and cannot arrive in time: a full queue
//! (`x-max-length` with `x-overflow = reject-publish`) nacks every publish past its limit, so
//! the bridge's outbox never empties. The real `warren bridge` waits `--shutdown-timeout` for
//! them, persists the cursor (the confirmed prefix, nothing past it) and exits 0.
//!
//! Only this test's own queue is full; the shared broker is not disturbed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::bridge::{Sim, drain_ids, spawn_bridge, wait_depth};
use crate::support::{TestTopology, connect, eventually};
use nix::sys::signal::Signal;

const FULL_AT_40: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "classic"
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "small"
bind = ["market.*", "wallet.*", "escrow.*", "job.*"]
max_length = 40
"#;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Persisting the cursor and closing the broker connection after the deadline.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn sigterm_with_confirms_outstanding_waits_the_deadline_persists_the_confirmed_prefix_and_exits_0()
 {
    let t = TestTopology::new("bridge-shutdown", FULL_AT_40);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("small");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "200", "--rate", "400", "--seed", "21"],
    );
    let cursor = t.dir().join("cursor");
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &[
            "--cursor-file",
            cursor.to_str().unwrap(),
            "--confirm-window",
            "16",
            "--shutdown-timeout",
            "3s",
        ],
        &log,
    );

    // The queue fills and publishes past it are nacked: from here on nothing new confirms.
    assert_eq!(
        wait_depth(&conn, &queue, 40, Duration::from_secs(30)).await,
        40,
        "{}",
        bridge.log_text()
    );
    eventually(Duration::from_secs(30), "a nacked publish", || {
        let nacked = bridge.log_text().contains("Publish nacked");
        async move { nacked }
    })
    .await;

    let asked = Instant::now();
    bridge.signal(Signal::SIGTERM);
    let code = bridge.wait_exit(SHUTDOWN_TIMEOUT + EXIT_MARGIN + Duration::from_secs(10));
    let took = asked.elapsed();
    let text = bridge.log_text();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        took <= SHUTDOWN_TIMEOUT + EXIT_MARGIN,
        "exit took {took:?}; --shutdown-timeout is {SHUTDOWN_TIMEOUT:?}\n{text}"
    );
    assert!(
        took + Duration::from_millis(200) >= SHUTDOWN_TIMEOUT,
        "exit after {took:?}: it cannot have waited for the outstanding confirms\n{text}"
    );
    assert!(
        text.contains("Shutdown deadline passed"),
        "the deadline path ran:\n{text}"
    );

    // What the queue holds is exactly what the broker confirmed (nothing consumed it).
    let confirmed: BTreeSet<String> = drain_ids(&conn, &queue).await.into_iter().collect();
    assert_eq!(confirmed.len(), 40);
    let ledger = sim.ledger();
    // The confirmed prefix: the stream up to its first unconfirmed event.
    let prefix_end = ledger
        .ids
        .iter()
        .take_while(|id| confirmed.contains(*id))
        .last()
        .cloned()
        .expect("the first events were confirmed");
    let persisted = std::fs::read_to_string(&cursor)
        .expect("the cursor was persisted")
        .trim()
        .to_string();
    let last_confirmed = confirmed.iter().max().unwrap();
    assert!(
        persisted <= *last_confirmed,
        "cursor {persisted} is past the last confirmed event {last_confirmed}"
    );
    for id in ledger.ids.iter().filter(|id| **id <= persisted) {
        assert!(
            confirmed.contains(id),
            "cursor {persisted} is past {id}, which was never confirmed"
        );
    }
    assert_eq!(
        persisted, prefix_end,
        "shutdown persists the whole confirmed prefix"
    );
    t.cleanup(&conn).await;
}
