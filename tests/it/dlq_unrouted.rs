//! An event type no queue binds is kept, not dropped: the events exchange's alternate exchange
//! puts it in `<events>.unrouted`, `warren dlq list` shows it as `unroutable`, and once a queue
//! binds its type, `warren dlq replay` sends it through the events exchange to that queue.

use crate::support::dlq::{DLQ_TOPOLOGY, ids, warren_json, warren_t};
use crate::support::{TestTopology, connect, drain, envelope, publish, queue_len};
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_events_are_kept_listed_and_replayed_once_bound() {
    let t = TestTopology::new("dlq-unrouted", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let unrouted = t.topology.unrouted_queue();
    let events = t.topology.events_exchange.clone();

    // Three events of a type nothing binds, two of a bound type.
    let stray: Vec<_> = (0..3)
        .map(|i| envelope("escrow.disputed", serde_json::json!({ "n": i })))
        .collect();
    let bound: Vec<_> = (0..2)
        .map(|i| envelope("test.ok", serde_json::json!({ "n": i })))
        .collect();
    // Mandatory publishes: with the alternate exchange nothing is returned (the helper asserts).
    publish(&conn, &events, "escrow.disputed", &stray).await;
    publish(&conn, &events, "test.ok", &bound).await;
    assert_eq!(queue_len(&conn, &unrouted).await, 3, "kept, not dropped");
    assert_eq!(queue_len(&conn, &t.queue("work")).await, 2);

    let listed = warren_json(&t, &["dlq", "list", "-q", &unrouted]);
    let want: Vec<String> = stray.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids(&listed), want);
    let items = listed["items"].as_array().unwrap();
    for item in items {
        assert_eq!(item["kind"], "unroutable", "{item}");
        assert!(
            item["error"].as_str().unwrap().contains("escrow.disputed"),
            "{item}"
        );
    }

    // An operator binds the type to a queue, then replays: each event reaches it exactly once.
    let ch = conn.create_channel().await.unwrap();
    let work = t.queue("work");
    ch.queue_bind(
        work.as_str().into(),
        events.as_str().into(),
        "escrow.disputed".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let before = drain(&conn, &work).await.len();
    assert_eq!(before, 2);
    let (code, out, err) = warren_t(&t, &["dlq", "replay", "-q", &unrouted, "-y"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let got: Vec<String> = drain(&conn, &work)
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(got, want, "replayed once each, in order");
    assert_eq!(queue_len(&conn, &unrouted).await, 0);
    t.cleanup(&conn).await;
}
