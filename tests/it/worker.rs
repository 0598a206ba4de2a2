//! The worker against the real broker, run as the real binary: prefetch, retry tiers,
//! dead-lettering, retries that stay in their queue, SIGKILL, SIGTERM drain, panics, poison
//! messages, broker-cancelled consumers and dropped connections.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::proxy::{Method, Proxy};
use crate::support::{TestTopology, Warren, connect, eventually, queue_len};
use nix::sys::signal::Signal;
use serde_json::json;
use warren::amqp::{self, hdr};

/// One line of the chaos handler's record file.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    attempt: u32,
    outcome: String,
    at_ms: u64,
    /// The queue that dead-lettered the delivery back (its retry tier), `-` on a first delivery.
    returned_from: String,
}

/// Every finished handler call, in order.
fn calls(t: &TestTopology) -> Vec<Call> {
    records(t)
        .into_iter()
        .filter(|c| c.outcome != "start")
        .collect()
}

/// Handler calls started so far.
fn started(t: &TestTopology) -> usize {
    records(t).iter().filter(|c| c.outcome == "start").count()
}

fn records(t: &TestTopology) -> Vec<Call> {
    std::fs::read_to_string(t.dir().join("record"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Call {
                id: f[0].into(),
                attempt: f[1].parse().unwrap(),
                outcome: f[2].into(),
                at_ms: f[3].parse().unwrap(),
                returned_from: f[4].into(),
            }
        })
        .collect()
}

fn ok_ids(t: &TestTopology) -> Vec<String> {
    calls(t)
        .into_iter()
        .filter(|c| c.outcome == "ok")
        .map(|c| c.id)
        .collect()
}

fn worker(t: &TestTopology, queues: &[&str], extra: &[&str], log: &str) -> Warren {
    worker_with(t, queues, extra, log, &[])
}

fn worker_with(
    t: &TestTopology,
    queues: &[&str],
    extra: &[&str],
    log: &str,
    envs: &[(&str, &str)],
) -> Warren {
    let mut args: Vec<String> = vec!["worker".into(), "--handler".into(), "chaos".into()];
    args.extend(t.args());
    for q in queues {
        args.extend(["-q".into(), q.to_string()]);
    }
    args.extend([
        "--record".into(),
        t.dir().join("record").display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Warren::spawn(&args, &t.dir().join(log), envs)
}

async fn wait_done(t: &TestTopology, ids: &[String], timeout: Duration) {
    let want: BTreeSet<_> = ids.iter().cloned().collect();
    eventually(timeout, "every event handled ok", || {
        let got: BTreeSet<_> = ok_ids(t).into_iter().collect();
        let done = want.is_subset(&got);
        async move { done }
    })
    .await;
}

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
async fn transient_failures_walk_the_tiers_then_dead_letter_as_exhausted() {
    let t = TestTopology::fast("tiers");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.fail",
        json!({"chaos": {"action": "transient"}}),
        1,
    )
    .await;
    let _w = worker(&t, &["work"], &[], "w.log");

    let dlq = format!("{}.dlq", t.queue("work"));
    eventually(Duration::from_secs(20), "dead letter", || {
        let conn = &conn;
        let dlq = &dlq;
        async move { queue_len(conn, dlq).await == 1 }
    })
    .await;

    // max_attempts = 3: three calls, attempts 0, 1, 2, separated by the 300 ms and 600 ms tiers.
    // The broker times a TTL on the Erlang VM's clock, which may run a few ms apart from ours
    // (CI once saw 598 ms for the 600 ms tier), so allow 30 ms; an immediate requeue takes ~1 ms.
    let c = calls(&t);
    assert_eq!(
        c.iter().map(|c| c.attempt).collect::<Vec<_>>(),
        [0, 1, 2],
        "{c:?}"
    );
    const CLOCK_SLACK_MS: u64 = 30;
    assert!(c[1].at_ms - c[0].at_ms >= 300 - CLOCK_SLACK_MS, "{c:?}");
    assert!(c[2].at_ms - c[1].at_ms >= 600 - CLOCK_SLACK_MS, "{c:?}");
    // Each redelivery came back through the next tier: the broker's x-death on the delivery
    // names the tier queue that expired it back into the work queue.
    let work = t.queue("work");
    assert_eq!(
        c.iter()
            .map(|c| c.returned_from.clone())
            .collect::<Vec<_>>(),
        [
            "-".to_string(),
            format!("{work}.retry.300ms"),
            format!("{work}.retry.600ms")
        ],
        "{c:?}"
    );

    let dead = support::drain(&conn, &dlq).await;
    let p = &dead[0].properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), ids[0]);
    assert_eq!(amqp::header_str(p, hdr::ERROR_KIND), Some("exhausted"));
    assert_eq!(amqp::header_u32(p, hdr::ATTEMPT), 3);
    assert_eq!(
        amqp::header_str(p, hdr::ORIGIN_QUEUE),
        Some(t.queue("work").as_str())
    );
    assert!(
        amqp::header_str(p, hdr::ERROR)
            .unwrap()
            .contains("chaos: transient failure")
    );
    for h in [hdr::FIRST_FAILED_AT, hdr::LAST_FAILED_AT, hdr::WORKER] {
        assert!(amqp::header_str(p, h).is_some(), "missing {h}");
    }
    assert!(
        amqp::x_death(p).is_empty(),
        "broker x-death copied onto a worker dead letter"
    );
    assert_eq!(queue_len(&conn, &t.queue("work")).await, 0);
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_after_exactly_one_call() {
    let t = TestTopology::fast("permanent");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.bad",
        json!({"chaos": {"action": "permanent"}}),
        3,
    )
    .await;
    let _w = worker(&t, &["work"], &[], "w.log");
    let dlq = format!("{}.dlq", t.queue("work"));
    eventually(Duration::from_secs(15), "three dead letters", || {
        let (conn, dlq) = (&conn, &dlq);
        async move { queue_len(conn, dlq).await == 3 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = calls(&t);
    assert_eq!(c.len(), 3, "{c:?}");
    assert_eq!(
        c.iter().map(|c| c.id.clone()).collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect()
    );
    for m in support::drain(&conn, &dlq).await {
        assert_eq!(
            amqp::header_str(&m.properties, hdr::ERROR_KIND),
            Some("permanent")
        );
        assert_eq!(amqp::header_u32(&m.properties, hdr::ATTEMPT), 1);
    }
    t.cleanup(&conn).await;
}

/// With a retry tier gone, each republish to it comes back unroutable: that message is
/// requeued, never acked away, while the dead letters sent beside it in the same batches land.
/// Once the tier is back, every message ends in the DLQ exactly once.
#[tokio::test]
async fn an_unroutable_retry_is_requeued_while_dead_letters_beside_it_land() {
    let t = TestTopology::fast("tier-gone");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = format!("{work}.dlq");
    let mut w = worker(&t, &["work"], &[], "w.log");
    let first = support::publish_events(&conn, &t, "test.fine", json!({}), 1).await;
    wait_done(&t, &first, Duration::from_secs(10)).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(
        format!("{work}.retry.300ms").as_str().into(),
        Default::default(),
    )
    .await
    .unwrap();
    let failing = support::publish_events(
        &conn,
        &t,
        "test.fail",
        json!({"chaos": {"action": "transient"}}),
        5,
    )
    .await;
    let bad = support::publish_events(
        &conn,
        &t,
        "test.bad",
        json!({"chaos": {"action": "permanent"}}),
        5,
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the permanent failures dead-lettered, a retry returned",
        || {
            let (conn, dlq) = (&conn, &dlq);
            let returned = w.log_text().contains("Republish failed");
            async move { returned && queue_len(conn, dlq).await >= 5 }
        },
    )
    .await;

    t.apply(&conn).await;
    eventually(Duration::from_secs(60), "all ten dead-lettered", || {
        let (conn, dlq) = (&conn, &dlq);
        async move { queue_len(conn, dlq).await >= 10 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut dead: Vec<String> = support::drain(&conn, &dlq)
        .await
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    dead.sort();
    let mut all = [failing, bad].concat();
    assert_eq!(all.len(), 10);
    all.sort();
    assert_eq!(dead, all, "each message dead-lettered exactly once");
    assert!(w.running());
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_retry_returns_only_to_the_queue_that_failed() {
    let t = TestTopology::fast("retry-route");
    let conn = connect().await;
    t.apply(&conn).await;
    // `shared.event` is bound to both queues; it fails once in `work`.
    let ids = support::publish_events(
        &conn,
        &t,
        "shared.event",
        json!({"chaos": {"action": "transient", "until_attempt": 1}}),
        5,
    )
    .await;
    let _w = worker(&t, &["work"], &[], "w.log");
    wait_done(&t, &ids, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let other = support::drain(&conn, &t.queue("other")).await;
    let got: Vec<String> = other
        .iter()
        .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        got.len(),
        5,
        "the other queue got duplicates or lost some: {got:?}"
    );
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect()
    );
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_worker_killed_mid_handler_loses_nothing() {
    let t = TestTopology::fast("sigkill");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.slow",
        json!({"chaos": {"sleep_ms": 2500}}),
        6,
    )
    .await;
    let mut first = worker(&t, &["work"], &["--concurrency", "6"], "w1.log");
    eventually(Duration::from_secs(10), "every handler started", || {
        let n = started(&t);
        async move { n == 6 }
    })
    .await;
    first.kill9();
    assert!(
        ok_ids(&t).is_empty(),
        "handlers finished before the kill; the test proves nothing"
    );

    // Redelivered messages run one at a time (careful mode): 6 x 2.5 s.
    let before = records(&t).len();
    let _second = worker(&t, &["work"], &["--concurrency", "6"], "w2.log");
    wait_done(&t, &ids, Duration::from_secs(45)).await;
    let after: Vec<Call> = records(&t).into_iter().skip(before).collect();
    for pair in after.chunks(2) {
        assert!(
            pair.len() == 2
                && pair[0].outcome == "start"
                && pair[1].outcome == "ok"
                && pair[0].id == pair[1].id,
            "redelivered messages ran side by side: {after:?}"
        );
    }
    assert_eq!(
        queue_len(&conn, &format!("{}.dlq", t.queue("work"))).await,
        0
    );
    t.cleanup(&conn).await;
}

/// A proxy that records the AMQP methods both ways, and its URL for a worker.
async fn recording_proxy() -> (Proxy, String) {
    let proxy = Proxy::start_recording(
        support::url()
            .host_port()
            .parse()
            .expect("broker host:port is an address"),
    )
    .await;
    let url = proxy.amqp_url(10);
    (proxy, url)
}

/// The methods on the worker's consuming connection (the one that sent `basic.consume`).
fn consuming(proxy: &Proxy) -> Vec<Method> {
    proxy
        .methods()
        .into_iter()
        .find(|methods| methods.iter().any(Method::is_consume))
        .expect("the consuming connection went through the proxy")
}

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

#[tokio::test]
async fn a_panicking_handler_leaves_the_worker_running() {
    let t = TestTopology::fast("panic");
    let conn = connect().await;
    t.apply(&conn).await;
    let panics = support::publish_events(
        &conn,
        &t,
        "test.panic",
        json!({"chaos": {"action": "panic", "until_attempt": 1}}),
        2,
    )
    .await;
    let fine = support::publish_events(&conn, &t, "test.fine", json!({}), 5).await;
    let mut w = worker(&t, &["work"], &[], "w.log");
    wait_done(
        &t,
        &[panics.clone(), fine].concat(),
        Duration::from_secs(15),
    )
    .await;
    assert!(w.running(), "{}", w.log_text());
    assert!(w.log_text().contains("Handler panicked"));
    // The panicking events were retried once each (attempt 1) and then succeeded.
    let c = calls(&t);
    for id in &panics {
        let attempts: Vec<u32> = c
            .iter()
            .filter(|c| &c.id == id)
            .map(|c| c.attempt)
            .collect();
        assert_eq!(attempts, [0, 1], "{id}: {c:?}");
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn malformed_bodies_are_dead_lettered_as_invalid_and_the_worker_keeps_going() {
    let t = TestTopology::fast("malformed");
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("work");
    let bad = vec![
        ("bad-1".to_string(), b"not json".to_vec()),
        (
            "bad-2".to_string(),
            br#"{"eventId":"x","type":"test.a"}"#.to_vec(),
        ),
        ("bad-3".to_string(), vec![0xff, 0x00, 0xfe]),
    ];
    support::publish(&conn, "", &queue, &bad).await;
    let good = support::publish_events(&conn, &t, "test.fine", json!({}), 3).await;
    let _w = worker(&t, &["work"], &[], "w.log");
    wait_done(&t, &good, Duration::from_secs(15)).await;
    let dlq = format!("{queue}.dlq");
    eventually(
        Duration::from_secs(10),
        "three invalid dead letters",
        || {
            let (conn, dlq) = (&conn, &dlq);
            async move { queue_len(conn, dlq).await == 3 }
        },
    )
    .await;
    for m in support::drain(&conn, &dlq).await {
        assert_eq!(
            amqp::header_str(&m.properties, hdr::ERROR_KIND),
            Some("invalid")
        );
        let id = m.properties.message_id().as_ref().unwrap().to_string();
        let original = &bad.iter().find(|(i, _)| *i == id).unwrap().1;
        assert_eq!(&m.data, original, "the raw bytes must be kept");
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_by_the_delivery_limit_and_innocents_are_not() {
    let t = TestTopology::fast("poison");
    let conn = connect().await;
    t.apply(&conn).await;
    let innocents = support::publish_events(
        &conn,
        &t,
        "test.fine",
        json!({"chaos": {"sleep_ms": 300}}),
        6,
    )
    .await;
    let poison = support::publish_events(
        &conn,
        &t,
        "test.poison",
        json!({"chaos": {"action": "abort"}}),
        1,
    )
    .await;
    let more = support::publish_events(
        &conn,
        &t,
        "test.fine",
        json!({"chaos": {"sleep_ms": 300}}),
        6,
    )
    .await;
    let dlq = format!("{}.dlq", t.queue("work"));

    // The worker aborts every time it handles the poison; restart it like a supervisor would.
    let mut restarts = 0;
    while queue_len(&conn, &dlq).await == 0 {
        assert!(restarts < 15, "the poison was never dead-lettered");
        let mut w = worker(
            &t,
            &["work"],
            &["--prefetch", "20", "--concurrency", "20"],
            &format!("w{restarts}.log"),
        );
        let start = std::time::Instant::now();
        while w.running()
            && start.elapsed() < Duration::from_secs(8)
            && queue_len(&conn, &dlq).await == 0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w.kill9();
        restarts += 1;
    }
    let _w = worker(&t, &["work"], &[], "final.log");
    wait_done(&t, &[innocents, more].concat(), Duration::from_secs(20)).await;

    let dead = support::drain(&conn, &dlq).await;
    assert_eq!(dead.len(), 1, "innocent messages were dead-lettered");
    let p = &dead[0].properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), poison[0]);
    let death = amqp::x_death(p);
    assert_eq!(death[0].reason, "delivery_limit", "{death:?}");
    assert_eq!(death[0].queue, t.queue("work"));
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_consumer_cancelled_by_the_broker_is_resubscribed() {
    let t = TestTopology::fast("cancelled");
    let conn = connect().await;
    t.apply(&conn).await;
    let mut w = worker(&t, &["work"], &[], "w.log");
    let first = support::publish_events(&conn, &t, "test.fine", json!({}), 2).await;
    wait_done(&t, &first, Duration::from_secs(10)).await;

    // Deleting the queue cancels the consumer; the worker keeps trying until it is back.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(t.queue("work").as_str().into(), Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.apply(&conn).await;
    let second = support::publish_events(&conn, &t, "test.fine", json!({}), 3).await;
    wait_done(&t, &second, Duration::from_secs(20)).await;
    assert!(w.running());
    assert!(
        w.log_text().contains("Consumer cancelled by the broker"),
        "{}",
        w.log_text()
    );
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn dropped_connections_are_reestablished_and_nothing_is_lost() {
    let t = TestTopology::fast("dropped");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.slow",
        json!({"chaos": {"sleep_ms": 30}}),
        150,
    )
    .await;
    let w = worker(&t, &["work"], &["--concurrency", "4"], "w.log");
    eventually(Duration::from_secs(10), "some progress", || {
        let n = ok_ids(&t).len();
        async move { n >= 20 }
    })
    .await;
    assert!(
        support::close_connections_of(w.pid()) >= 2,
        "the worker's connections were not found"
    );
    wait_done(&t, &ids, Duration::from_secs(60)).await;
    assert_eq!(
        queue_len(&conn, &format!("{}.dlq", t.queue("work"))).await,
        0
    );
    assert!(w.log_text().contains("reconnecting"), "{}", w.log_text());
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn disruptive_close_all_connections_mid_run_loses_nothing() {
    let t = TestTopology::fast("close-all");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.slow",
        json!({"chaos": {"sleep_ms": 30}}),
        150,
    )
    .await;
    drop(conn);
    let w = worker(&t, &["work"], &["--concurrency", "4"], "w.log");
    eventually(Duration::from_secs(10), "some progress", || {
        let n = ok_ids(&t).len();
        async move { n >= 20 }
    })
    .await;
    support::rabbitmqctl(&["close_all_connections", "test: close_all_connections"]);
    wait_done(&t, &ids, Duration::from_secs(60)).await;
    let conn = connect().await;
    assert_eq!(
        queue_len(&conn, &format!("{}.dlq", t.queue("work"))).await,
        0
    );
    assert!(w.log_text().contains("reconnecting"), "{}", w.log_text());
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

/// Raises a broker memory alarm (a tiny watermark); when dropped, on success and on panic alike,
/// puts back the broker's configured watermark.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> Self {
        support::rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]);
        Self
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if let Err(error) = support::fleet::ctl(&["eval", support::RESTORE_WATERMARK]) {
            eprintln!("could not restore the memory watermark: {error}");
        }
    }
}

/// A memory alarm blocks publishing connections. The worker publishes on its own connection,
/// so while a republish (here: a malformed body's dead letter) is stuck behind the alarm, the
/// consuming connection keeps acking. Disturbs the broker for everyone: run alone.
#[tokio::test]
async fn disruptive_a_worker_under_a_memory_alarm_keeps_acking() {
    let t = TestTopology::fast("memory-alarm");
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("work");
    // First a body the worker must dead-letter (a publish), then plenty of good events.
    support::publish(
        &conn,
        "",
        &queue,
        &[("bad-1".to_string(), b"not json".to_vec())],
    )
    .await;
    let ids = support::publish_events(&conn, &t, "test.fine", json!({}), 100).await;

    let alarm = MemoryAlarm::raise();
    eventually(Duration::from_secs(15), "the memory alarm is on", || {
        let alarms = support::rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."]);
        async move { alarms.contains("memory") }
    })
    .await;
    let mut args: Vec<String> = vec!["worker".into(), "--handler".into(), "log".into()];
    args.extend(t.args());
    args.extend(["-q".into(), "work".into()]);
    let mut w = Warren::spawn(&args, &t.dir().join("w.log"), &[]);
    let pid = w.pid();

    // The dead letter's publish is blocked by the broker...
    let publisher = format!(":{pid} publish");
    eventually(
        Duration::from_secs(30),
        "the worker's publishing connection blocked",
        || {
            let blocked = support::connection_states()
                .iter()
                .any(|(state, name)| state == "blocked" && name.ends_with(&publisher));
            async move { blocked }
        },
    )
    .await;
    // ...and every good event is still handled and acked (at most the bad one is held).
    eventually(
        Duration::from_secs(60),
        "the good events acked under the alarm",
        || {
            let (conn, queue) = (&conn, &queue);
            let held = support::unacked_of(pid);
            async move { queue_len(conn, queue).await + held as u32 <= 1 }
        },
    )
    .await;
    let log = w.log_text();
    for id in &ids {
        assert!(log.contains(id.as_str()), "{id} not handled:\n{log}");
    }
    assert!(w.running(), "{log}");

    // Once the alarm clears, the held-up dead letter goes through too: nothing is lost. (A
    // republish that timed out behind the alarm may still land: at least once, never zero.)
    drop(alarm);
    let dlq = format!("{queue}.dlq");
    eventually(
        Duration::from_secs(60),
        "the malformed body dead-lettered",
        || {
            let (conn, dlq, queue) = (&conn, &dlq, &queue);
            async move { queue_len(conn, dlq).await >= 1 && queue_len(conn, queue).await == 0 }
        },
    )
    .await;
    w.signal(Signal::SIGTERM);
    assert_eq!(
        w.wait_exit(Duration::from_secs(45)),
        Some(0),
        "{}",
        w.log_text()
    );
    assert_eq!(queue_len(&conn, &queue).await, 0);
    for m in support::drain(&conn, &dlq).await {
        assert_eq!(
            m.properties.message_id().as_ref().unwrap().as_str(),
            "bad-1"
        );
        assert_eq!(
            amqp::header_str(&m.properties, hdr::ERROR_KIND),
            Some("invalid")
        );
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn an_unavailable_downstream_parks_messages_instead_of_spinning() {
    let t = TestTopology::fast("unavailable");
    let conn = connect().await;
    t.apply(&conn).await;
    let ids = support::publish_events(
        &conn,
        &t,
        "test.down",
        json!({"chaos": {"action": "unavailable"}}),
        2,
    )
    .await;
    let _w = worker(&t, &["work"], &[], "w.log");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Parked in the 300 ms tier each time: about ten calls in 3 s, not thousands.
    let c = calls(&t);
    assert!(c.len() >= 4 && c.len() <= 24, "{} calls in 3 s", c.len());
    assert!(
        c.iter().all(|c| c.attempt == 0),
        "unavailable must not count attempts"
    );
    assert_eq!(
        queue_len(&conn, &format!("{}.dlq", t.queue("work"))).await,
        0
    );
    assert!(ids.iter().all(|id| c.iter().any(|c| &c.id == id)));
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
