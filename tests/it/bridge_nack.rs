//! A full queue nacks publishes (`x-overflow = reject-publish`): the bridge retries them in
//! order with backoff, the cursor never passes a nacked event, and nothing is lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::bridge::{Sim, drain_ids, spawn_bridge};
use crate::support::{TestTopology, connect};
use nix::sys::signal::Signal;

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

const TWO_QUEUES: &str = r#"
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
max_length = 50

[[queues]]
name = "big"
bind = ["market.*", "wallet.*", "escrow.*", "job.*"]
"#;

/// One full queue nacks an event the other queue took: the retry republishes it to both, so
/// the other queue may see a copy again (absorbed downstream by idempotency keys), but neither
/// queue misses an event and the growing retry delay bounds the extra copies.
#[tokio::test]
async fn a_nack_from_one_of_two_queues_loses_nothing_in_either() {
    let t = TestTopology::new("bridge-nack2", TWO_QUEUES);
    let conn = connect().await;
    t.apply(&conn).await;
    let (small, big) = (t.queue("small"), t.queue("big"));
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "300", "--rate", "300", "--seed", "17"],
    );
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(&t, &sim.url(), &["--confirm-window", "16"], &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got_small = vec![];
    let start = Instant::now();
    let ledger_len = 300;
    while got_small.iter().collect::<BTreeSet<_>>().len() < ledger_len
        && start.elapsed() < Duration::from_secs(90)
    {
        got_small.extend(drain_ids(&conn, &small).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));
    got_small.extend(drain_ids(&conn, &small).await);
    let got_big = drain_ids(&conn, &big).await;

    let ledger = sim.ledger().set();
    assert_eq!(ledger.len(), ledger_len);
    assert!(
        bridge.log_text().contains("Publish nacked"),
        "the small queue never filled"
    );
    assert_eq!(got_small.iter().cloned().collect::<BTreeSet<_>>(), ledger);
    assert_eq!(got_big.iter().cloned().collect::<BTreeSet<_>>(), ledger);
    let extra = got_big.len() - ledger_len;
    eprintln!(
        "big queue: {} deliveries for {ledger_len} events ({extra} extra copies)",
        got_big.len()
    );
    // Each nacked event is retried at most a handful of times while the small queue drains.
    assert!(extra <= 3 * ledger_len, "{extra} extra copies");
    t.cleanup(&conn).await;
}
