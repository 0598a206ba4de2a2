//! `warren dlq list` against the real broker: non-destructive, ordered, and explaining dead
//! letters made by warren's worker and by the broker itself (delivery limit, TTL expiry).

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use crate::support::dlq::{
    DLQ_TOPOLOGY, Dead, delivery_ids, exceed_delivery_limit, ids, publish_dead, publish_to_queue,
    warren_json,
};
use crate::support::{TestTopology, Warren, connect, drain, eventually, queue_len, unacked};
use warren::amqp::{self, Snapshot};

/// The error `list` must show for a dead letter.
enum Reason {
    /// Exactly the published `x-warren-error`.
    Exact(String),
    /// A broker dead letter: the explanation of its `x-death` reason.
    Starts(&'static str),
}

/// The claim the whole design rests on: a classic queue puts requeued messages back in their
/// original positions, so a walk that acks some and releases the rest keeps the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_keep_their_positions_in_a_classic_dlq() {
    let t = TestTopology::new("dlq-order", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..60)
        .map(|_| Dead::new("test.order", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let original: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();

    // Walk everything, ack every third message, release the rest.
    let mut snap = Snapshot::open(&conn, &dlq, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the DLQ exists");
    assert_eq!(snap.total(), 60);
    let mut i = 0;
    while let Some(d) = snap.next().await.unwrap() {
        if i % 3 == 0 {
            assert!(amqp::ack(&d).await.unwrap());
        }
        i += 1;
    }
    snap.release().await.unwrap();

    // Walk only the first 10 and release: the unread tail must stay behind the read head.
    let mut snap = Snapshot::open(&conn, &dlq, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the DLQ exists");
    for _ in 0..10 {
        snap.next().await.unwrap().unwrap();
    }
    snap.release().await.unwrap();

    let kept: Vec<String> = original
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(delivery_ids(&drain(&conn, &dlq).await), kept);
    t.cleanup(&conn).await;
}

/// Test 1: 1,000 dead letters of mixed origins; `list` twice returns all of them in queue
/// order with the right reasons, and the DLQs are unchanged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_twice_returns_every_dead_letter_in_order_with_its_reason() {
    let t = TestTopology::new("dlq-list", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let live = t.queue("live");
    let work_dlq = t.topology.queue("work").unwrap().dlq();
    let live_dlq = t.topology.queue("live").unwrap().dlq();
    let mut expected: HashMap<String, (&str, String, Reason)> = HashMap::new();

    // 400 written as the worker writes them: permanent, exhausted, invalid.
    let kinds = [
        ("permanent", "HTTP 422: order rejected"),
        ("exhausted", "timeout (after 3 attempts)"),
        ("invalid", "field 'type': missing"),
    ];
    let dead: Vec<Dead> = (0..400)
        .map(|i| {
            let (kind, error) = kinds[i % 3];
            Dead::new(
                if i % 2 == 0 { "test.a" } else { "test.b" },
                kind,
                error,
                &work,
            )
        })
        .collect();
    for d in &dead {
        expected.insert(
            d.id.clone(),
            (d.kind, work.clone(), Reason::Exact(d.error.clone())),
        );
    }
    publish_dead(&conn, &t, &dead).await;

    // 100 dead-lettered by a real worker: the chaos handler fails them permanently.
    let chaos = serde_json::json!({"chaos": {"action": "permanent"}});
    let chaos_ids = support::publish_events(&conn, &t, "test.chaos", chaos, 100).await;
    for id in &chaos_ids {
        let why = Reason::Exact("chaos: permanent failure".into());
        expected.insert(id.clone(), ("permanent", work.clone(), why));
    }
    let mut args = vec![
        "worker".to_string(),
        "-q".into(),
        "work".into(),
        "--handler".into(),
        "chaos".into(),
    ];
    args.extend(t.args());
    let mut worker = Warren::spawn(&args, &t.dir().join("worker.log"), &[]);
    eventually(
        Duration::from_secs(60),
        "the worker dead-letters 100 messages",
        || async { queue_len(&conn, &work_dlq).await >= 500 },
    )
    .await;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    worker.wait_exit(Duration::from_secs(30));

    // 300 dead-lettered by the broker for their delivery limit (consumers that "crash").
    for id in publish_to_queue(&conn, &work, "test.crash", 300).await {
        let why = Reason::Starts("broker: delivery limit reached");
        expected.insert(id, ("delivery_limit", work.clone(), why));
    }
    exceed_delivery_limit(&work).await;

    // 200 dead-lettered by the broker because their TTL ran out with nobody consuming.
    for id in publish_to_queue(&conn, &live, "live.tick", 200).await {
        let why = Reason::Starts("broker: message TTL expired");
        expected.insert(id, ("expired", live.clone(), why));
    }
    eventually(
        Duration::from_secs(60),
        "every dead letter reaches its DLQ",
        || async {
            queue_len(&conn, &work_dlq).await == 800 && queue_len(&conn, &live_dlq).await == 200
        },
    )
    .await;

    let first = warren_json(&t, &["dlq", "list", "--all"]);
    let second = warren_json(&t, &["dlq", "list", "--all"]);
    assert_eq!(ids(&first).len(), 1000);
    assert_eq!(
        ids(&first),
        ids(&second),
        "two listings return the same messages in the same order"
    );
    for item in first["items"].as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        let (kind, origin, why) = &expected[id];
        assert_eq!(item["kind"], *kind, "kind of {id}: {item}");
        assert_eq!(item["origin"], origin.as_str(), "origin of {id}: {item}");
        let error = item["error"].as_str().unwrap();
        match why {
            Reason::Exact(e) => assert_eq!(error, e, "error of {id}: {item}"),
            Reason::Starts(p) => assert!(error.starts_with(p), "error of {id}: {item}"),
        }
        assert!(item["last_failed"].is_string(), "{item}");
    }
    let scans = first["scans"].as_array().unwrap();
    assert!(
        scans
            .iter()
            .all(|s| s["incomplete"] == false && s["total"] == s["read"]),
        "{scans:?}"
    );

    // Nothing moved: same depths, nothing left unacked, and the broker's order is the listing's.
    assert_eq!(queue_len(&conn, &work_dlq).await, 800);
    assert_eq!(queue_len(&conn, &live_dlq).await, 200);
    assert_eq!(unacked(&work_dlq), 0);
    assert_eq!(unacked(&live_dlq), 0);
    let listed: Vec<String> = ids(&first);
    let mut drained = delivery_ids(&drain(&conn, &work_dlq).await);
    drained.extend(delivery_ids(&drain(&conn, &live_dlq).await));
    assert_eq!(
        drained, listed,
        "the DLQs keep the order the listing showed"
    );
    t.cleanup(&conn).await;
}

/// A DLQ longer than one consumer chunk (10,000) is read whole, in order, and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_longer_than_one_chunk_is_listed_whole_and_in_order() {
    let t = TestTopology::new("dlq-chunks", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..21_000)
        .map(|_| Dead::new("test.c", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();

    let listing = warren_json(&t, &["dlq", "list", "-q", "work"]);
    assert_eq!(ids(&listing), all);
    let limited = warren_json(&t, &["dlq", "list", "-q", "work", "--limit", "10005"]);
    assert_eq!(ids(&limited), all[..10_005]);
    // A listing that stopped at its limit leaves what it had fetched beyond it to its
    // connection's close; the broker puts those back a moment after the process exits.
    eventually(
        Duration::from_secs(10),
        "every dead letter is back in the DLQ",
        || async { queue_len(&conn, &dlq).await == 21_000 },
    )
    .await;
    assert_eq!(delivery_ids(&drain(&conn, &dlq).await), all);
    t.cleanup(&conn).await;
}
