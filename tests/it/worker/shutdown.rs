//! Shutdown: SIGTERM drains in-flight work and requeues the rest; the drain deadline requeues
//! handlers that run too long.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::proxy::Method;
use crate::support::worker::{
    consuming, ok_ids, recording_proxy, started, wait_done, worker, worker_with,
};
use crate::support::{self, TestTopology, connect, eventually, queue_len};
use nix::sys::signal::Signal;
use serde_json::json;

// Multi-thread: the proxy forwards while the test blocks in `wait_exit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_requeues_the_rest_and_exits_zero() {
    let t = TestTopology::fast("sigterm");
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("work");
    let ids = support::publish_events(
        &conn,
        &t,
        "test.slow",
        json!({"chaos": {"sleep_ms": 5000}}),
        12,
    )
    .await;
    let (proxy, url) = recording_proxy().await;
    let mut w = worker_with(
        &t,
        &["work"],
        &["--prefetch", "6", "--concurrency", "3"],
        "w.log",
        &[("AMQP_URL", &url)],
    );
    let pid = w.pid();
    eventually(Duration::from_secs(10), "three handlers running", || {
        let n = started(&t);
        async move { n == 3 }
    })
    .await;
    assert!(ok_ids(&t).is_empty());
    w.signal(Signal::SIGTERM);

    // While the three handlers still run, the worker hands back everything it had not started
    // and takes nothing more, on a connection that is still open: the worker requeued them,
    // not the broker. A consumer still subscribed would be handed them again (prefetch 6).
    eventually(
        Duration::from_secs(5),
        "prefetched messages requeued",
        || {
            let (conn, queue) = (&conn, &queue);
            async move { queue_len(conn, queue).await == 9 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = support::proxy::unsettled(&consuming(&proxy)).len();
    let ready = queue_len(&conn, &queue).await;
    assert!(
        ok_ids(&t).is_empty(),
        "the handlers finished before the drain was observed; the test proves nothing"
    );
    assert_eq!(
        (ready, held),
        (9, 3),
        "while draining, the worker holds only its in-flight messages and takes no more"
    );
    assert!(
        consuming(&proxy).iter().any(|m| m.nack_requeue().is_some()),
        "the prefetched messages were not nacked by the worker"
    );

    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
    let done_first = ok_ids(&t);
    assert_eq!(
        done_first.len(),
        3,
        "in-flight handlers should finish: {done_first:?}"
    );
    assert!(
        support::proxy::unsettled(&consuming(&proxy)).is_empty(),
        "the worker left deliveries unsettled"
    );
    assert!(
        support::connections_of(pid).is_empty(),
        "connections left open"
    );
    assert_eq!(queue_len(&conn, &queue).await as usize, ids.len() - 3);

    // The rest is still there for the next worker, and nothing runs twice.
    let _w2 = worker(&t, &["work"], &["--concurrency", "12"], "w2.log");
    wait_done(&t, &ids, Duration::from_secs(30)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in ok_ids(&t) {
        *counts.entry(id).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_requeues_handlers_that_run_too_long() {
    let t = TestTopology::fast("drain-deadline");
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("work");
    support::publish_events(
        &conn,
        &t,
        "test.slow",
        json!({"chaos": {"sleep_ms": 60000}}),
        2,
    )
    .await;
    // Through a recording proxy, to tell the worker's own nacks from the broker's requeue when
    // the connection closes.
    let (proxy, url) = recording_proxy().await;
    let mut w = worker_with(
        &t,
        &["work"],
        &["--drain-timeout", "3s"],
        "w.log",
        &[("AMQP_URL", &url)],
    );
    eventually(Duration::from_secs(10), "handlers running", || {
        let n = started(&t);
        async move { n == 2 }
    })
    .await;
    w.signal(Signal::SIGTERM);
    // Within the deadline the worker keeps both.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (
            queue_len(&conn, &queue).await,
            support::proxy::unsettled(&consuming(&proxy)).len()
        ),
        (0, 2),
        "before the drain deadline"
    );
    assert_eq!(
        w.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        w.log_text()
    );
    assert_eq!(queue_len(&conn, &queue).await, 2);

    // The worker itself nacked both with requeue, before closing its consuming connection.
    let consume = consuming(&proxy);
    let delivered: BTreeSet<(u16, u64)> = consume.iter().filter_map(Method::delivery).collect();
    let nacked: BTreeSet<(u16, u64)> = consume.iter().filter_map(Method::nack_requeue).collect();
    assert_eq!(delivered.len(), 2, "{consume:?}");
    assert_eq!(
        nacked, delivered,
        "the worker should nack (requeue) both in-flight deliveries: {consume:?}"
    );
    assert!(
        consume.iter().all(|m| m.ack().is_none()),
        "nothing was handled, nothing may be acked"
    );
    let last_nack = consume
        .iter()
        .rposition(|m| m.nack_requeue().is_some())
        .unwrap();
    let first_close = consume
        .iter()
        .position(Method::is_close)
        .expect("the worker closed its connection");
    assert!(
        last_nack < first_close,
        "the nacks must come before the close: {consume:?}"
    );
    t.cleanup(&conn).await;
}
