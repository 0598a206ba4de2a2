//! A full queue nacks publishes (`x-overflow = reject-publish`): the bridge retries them in
//! order with backoff, the cursor never passes a nacked event, and nothing is lost.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::bridge::{Sim, drain_ids, spawn_bridge};
use support::{TestTopology, connect};

const SMALL_QUEUE: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "small"
bind = ["market.*", "wallet.*", "escrow.*", "job.*"]
max_length = 100
"#;

#[tokio::test]
async fn nacked_publishes_are_retried_in_order_until_confirmed() {
    let t = TestTopology::new("bridge-nack", SMALL_QUEUE);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("small");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "400", "--rate", "400", "--seed", "13"],
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
            "32",
        ],
        &log,
    );

    // Let the queue fill and the nacks start, then drain slowly until everything came through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = vec![];
    let start = Instant::now();
    while got.len() < 400 && start.elapsed() < Duration::from_secs(90) {
        got.extend(drain_ids(&conn, &queue).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));
    got.extend(drain_ids(&conn, &queue).await);

    let text = bridge.log_text();
    assert!(
        text.contains("Publish nacked"),
        "the queue limit was never hit:\n{text}"
    );
    let ledger = sim.ledger();
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), ledger.set());
    assert_eq!(
        got.len(),
        400,
        "a nack is not a loss, and a retry is not a duplicate here"
    );
    assert_eq!(
        std::fs::read_to_string(&cursor).unwrap().trim(),
        ledger.ids.last().unwrap()
    );
    t.cleanup(&conn).await;
}
