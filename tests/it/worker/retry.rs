//! Retries and dead-lettering: retry tiers, permanent failures, unroutable retries, retries
//! that stay in their queue, panics, malformed bodies and an unavailable downstream.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::worker::{calls, wait_done, worker};
use crate::support::{self, TestTopology, connect, eventually, queue_len};
use serde_json::json;
use warren::amqp::{self, hdr};

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
