//! Workers writing into PostgreSQL through the real broker: duplicates, two workers, a
//! `kill -9` mid-batch, a DLQ replay of written events, and bad data.

use std::time::Duration;

use super::{
    BOOKS_TOPOLOGY, assert_no_password, catalog, expected_rows, publish_events, publish_frames,
    sink_worker, wait_events,
};
use crate::support::dlq::{Dead, publish_dead, warren_t};
use crate::support::pg::TestDb;
use crate::support::{TestTopology, connect, eventually, queue_len};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_duplicates_and_a_kill9_mid_batch_write_each_event_once() {
    let conn = connect().await;
    let t = TestTopology::new("pg-fleet", BOOKS_TOPOLOGY);
    t.apply(&conn).await;
    let db = TestDb::new("fleet").await;
    let events = catalog(11, 3000);

    let mut a = sink_worker(&t, &db, &["--batch-size", "50"], "a.log");
    let b = sink_worker(&t, &db, &["--batch-size", "50"], "b.log");
    // Every event, and again a tenth of them: duplicate deliveries of the same eventId.
    publish_events(&conn, &t, &events).await;
    let dups: Vec<_> = events.iter().step_by(10).cloned().collect();
    publish_events(&conn, &t, &dups).await;

    // Kill one worker while batches are in flight, then bring it back.
    eventually(Duration::from_secs(60), "a third written", || async {
        db.count("events").await >= 1000
    })
    .await;
    a.kill9();
    let a2 = sink_worker(&t, &db, &["--batch-size", "50"], "a2.log");

    wait_events(&db, events.len() as i64, Duration::from_secs(90)).await;
    let queue = t.queue("books");
    eventually(Duration::from_secs(30), "the queue drained", || async {
        queue_len(&conn, &queue).await == 0 && queue_len(&conn, &format!("{queue}.dlq")).await == 0
    })
    .await;
    // Let any last redelivery land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.counts().await,
        expected_rows(&events),
        "each event's rows exactly once"
    );
    let want: std::collections::BTreeSet<String> =
        events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(db.event_ids().await, want);
    for w in [&b, &a2] {
        assert_no_password(w);
    }
    drop((b, a2));
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_replay_of_written_events_commits_nothing_twice() {
    let conn = connect().await;
    let t = TestTopology::new("pg-replay", BOOKS_TOPOLOGY);
    t.apply(&conn).await;
    let db = TestDb::new("replay").await;
    let events = catalog(12, 200);
    let w = sink_worker(&t, &db, &[], "w.log");
    publish_events(&conn, &t, &events).await;
    wait_events(&db, 200, Duration::from_secs(60)).await;

    // The same events dead-lettered (as when an ack was lost and a redelivery failed), replayed.
    let queue = t.queue("books");
    let dead: Vec<Dead> = events
        .iter()
        .take(50)
        .map(|e| {
            let mut d = Dead::new(e.event_type, "transient", "connection reset", &queue);
            d.id = e.id.to_string();
            d.body = e.frame.clone();
            d
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let (code, _, err) = warren_t(&t, &["dlq", "replay", "-q", "books", "-y"]);
    assert_eq!(code, 0, "{err}");
    eventually(Duration::from_secs(30), "replayed and acked", || async {
        queue_len(&conn, &queue).await == 0 && queue_len(&conn, &format!("{queue}.dlq")).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(db.counts().await, expected_rows(&events));
    drop(w);
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_the_columns_reject_is_dead_lettered_with_the_sql_error_and_its_batch_commits() {
    let conn = connect().await;
    let t = TestTopology::new("pg-bad", BOOKS_TOPOLOGY);
    t.apply(&conn).await;
    let db = TestDb::new("bad").await;
    let events = catalog(13, 99);
    let (bad_id, bad) = crate::support::envelope(
        "market.candle",
        serde_json::json!({"pair": "BTC-USD", "interval": "1m", "open": "lots", "high": 1, "low": 1, "close": 1}),
    );
    // The bad event in the middle of its neighbours, all queued before the worker starts so
    // they share batches.
    let mut frames: Vec<_> = events
        .iter()
        .map(|e| (e.id.to_string(), e.event_type, e.frame.clone()))
        .collect();
    frames.insert(50, (bad_id.clone(), "market.candle", bad));
    publish_frames(&conn, &t, &frames).await;
    let w = sink_worker(&t, &db, &["--batch-size", "100"], "w.log");

    wait_events(&db, 99, Duration::from_secs(60)).await;
    let dlq = format!("{}.dlq", t.queue("books"));
    eventually(
        Duration::from_secs(30),
        "the bad event dead-lettered",
        || async { queue_len(&conn, &dlq).await == 1 },
    )
    .await;
    assert_eq!(
        db.counts().await,
        expected_rows(&events),
        "every neighbour committed"
    );
    let (code, out, err) = warren_t(&t, &["dlq", "show", &bad_id, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    let text = shown.to_string();
    assert!(text.contains("permanent"), "{text}");
    assert!(
        text.contains("SQLSTATE 22P02") && text.contains("lots"),
        "{text}"
    );
    assert_no_password(&w);
    drop(w);
    t.cleanup(&conn).await;
}
