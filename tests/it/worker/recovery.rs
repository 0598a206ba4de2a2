//! Recovery: SIGKILL mid-handler, poison messages, broker-cancelled consumers, dropped
//! connections, and the two disruptive tests (close_all_connections, a memory alarm).

use std::time::Duration;

use crate::support::worker::{Call, ok_ids, records, started, wait_done, worker};
use crate::support::{self, TestTopology, Warren, connect, eventually, queue_len};
use nix::sys::signal::Signal;
use serde_json::json;
use warren::amqp::{self, hdr};

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
    let _node = crate::support::node::use_throwaway_node();
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
    let _node = crate::support::node::use_throwaway_node();
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
