//! PostgreSQL restarted under a running worker (a throwaway server the test starts): the
//! worker parks its events without counting attempts and resumes; nothing lost, nothing twice.

use std::time::Duration;

use super::{
    BOOKS_TOPOLOGY, assert_no_password, catalog, expected_rows, publish_events, sink_worker,
};
use crate::support::pg::{PgNode, TestDb};
use crate::support::{TestTopology, connect, eventually, queue_len};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_postgres_restarted_mid_stream_loses_nothing_and_burns_no_attempts() {
    let node = PgNode::start();
    let conn = connect().await;
    let t = TestTopology::new("pg-restart", BOOKS_TOPOLOGY);
    t.apply(&conn).await;
    let db = TestDb::at(&node.url, "restart").await;
    let events = catalog(14, 4000);
    let w = sink_worker(&t, &db, &["--batch-size", "50", "--db-pool", "2"], "w.log");
    let (before, during) = events.split_at(1000);
    publish_events(&conn, &t, before).await;
    eventually(Duration::from_secs(60), "some written", || async {
        db.count("events").await >= 500
    })
    .await;

    // Down for 3 s: longer than the whole retry ladder (0.3 s + 0.6 s) with two attempts, so
    // an attempt counted per failure would dead-letter events. The rest of the stream arrives
    // while it is down.
    let node = std::sync::Arc::new(node);
    let restarting = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.restart(3))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_events(&conn, &t, during).await;
    restarting.await.expect("restarted");

    eventually(Duration::from_secs(120), "every event written", || async {
        db.count("events").await >= events.len() as i64
    })
    .await;
    let queue = t.queue("books");
    eventually(Duration::from_secs(30), "the queue drained", || async {
        queue_len(&conn, &queue).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        queue_len(&conn, &format!("{queue}.dlq")).await,
        0,
        "no event dead-lettered"
    );
    assert_eq!(db.counts().await, expected_rows(&events));
    let log = w.log_text();
    assert!(
        log.contains("Batch not committed"),
        "the outage was seen:\n{log}"
    );
    assert_no_password(&w);
    drop(w);
    t.cleanup(&conn).await;
}
