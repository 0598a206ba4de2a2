//! The worker against the real broker, run as the real binary, one file per concern: consuming
//! (this file: prefetch, single active consumer, connection names, RSS, startup), retries and
//! dead-lettering, shutdown, and recovery from crashes, poison and lost connections.

mod half_open;
mod recovery;
mod retry;
mod shutdown;

use std::time::Duration;

use crate::support::worker::{ok_ids, records, wait_done, worker};
use crate::support::{self, TestTopology, connect, eventually};
use serde_json::json;

#[tokio::test]
async fn prefetch_bounds_unacked_messages_per_consumer() {
    let t = TestTopology::fast("prefetch");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.slow",
        json!({"chaos": {"sleep_ms": 500}}),
        60,
    )
    .await;

    let mut w = worker(
        &t,
        &["work"],
        &["--prefetch", "3", "--concurrency", "50"],
        "w.log",
    );
    // The worker starts careful (prefetch 1) and switches once its first message is handled.
    eventually(Duration::from_secs(10), "careful start over", || {
        let n = ok_ids(&t).len();
        async move { n >= 3 }
    })
    .await;
    let consumers = support::rabbitmqctl(&[
        "list_consumers",
        "-q",
        "--no-table-headers",
        "queue_name",
        "prefetch_count",
    ]);
    assert!(
        consumers.contains(&format!("{}\t3", t.queue("work"))),
        "{consumers}"
    );
    let conns = support::connections_of(w.pid());
    let mut max_seen = 0;
    for _ in 0..8 {
        max_seen = max_seen.max(support::unacked_on(&conns));
    }
    assert!(
        max_seen > 0,
        "the worker never held a message: {}",
        w.log_text()
    );
    assert!(max_seen <= 3, "saw {max_seen} unacked with prefetch 3");
    wait_done(&t, &ids, Duration::from_secs(30)).await;
    assert!(w.running());
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn idle_worker_rss_stays_under_20_mb() {
    let t = TestTopology::fast("rss");
    let conn = connect().await;
    t.apply(&conn).await;
    let w = worker(&t, &["work", "other"], &[], "w.log");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    eprintln!("idle worker RSS: {rss_kb} kB");
    assert!(rss_kb < 20 * 1024, "idle worker RSS {rss_kb} kB");
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn worker_connections_carry_a_name_that_says_what_they_are() {
    let t = TestTopology::fast("conn-name");
    let conn = connect().await;
    t.apply(&conn).await;
    let mut w = worker(&t, &["work"], &[], "w.log");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    let want =
        ["consume", "publish"].map(|role| format!("warren worker {host}:{} {role}", w.pid()));
    eventually(
        Duration::from_secs(10),
        "both named connections listed",
        || {
            let names: Vec<String> = support::connection_states()
                .into_iter()
                .map(|(_, name)| name)
                .collect();
            let found = want.iter().all(|n| names.contains(n));
            async move { found }
        },
    )
    .await;
    assert!(w.running(), "{}", w.log_text());
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_single_active_consumer_queue_runs_in_order_one_at_a_time() {
    let t = TestTopology::new(
        "sac",
        &support::FAST_TOPOLOGY.replace(
            "name = \"work\"\nbind = [\"test.*\", \"shared.event\"]",
            "name = \"work\"\nbind = [\"test.*\", \"shared.event\"]\nsingle_active_consumer = true",
        ),
    );
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.tick",
        json!({"chaos": {"sleep_ms": 40}}),
        20,
    )
    .await;
    let _w = worker(&t, &["work"], &["--concurrency", "16"], "w.log");
    wait_done(&t, &ids, Duration::from_secs(20)).await;
    let r = records(&t);
    let order: Vec<String> = r
        .iter()
        .filter(|c| c.outcome == "ok")
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(order, ids, "out of order");
    for pair in r.chunks(2) {
        assert!(
            pair[0].outcome == "start" && pair[1].outcome == "ok" && pair[0].id == pair[1].id,
            "{r:?}"
        );
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_missing_topology_fails_fast_with_the_fix() {
    let t = TestTopology::fast("missing");
    let mut w = worker(&t, &["work"], &[], "w.log");
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(1));
    let log = w.log_text();
    assert!(
        log.contains("not found on the broker: run `warren topology apply"),
        "{log}"
    );
}
