//! The DLQ walk over more than one consumer chunk: acking as it goes (replay, purge) must not
//! skip, reorder or double-hand any message of the snapshot, and must leave alone what arrived
//! after the walk began; a read-only walk puts everything back in its place.

use crate::support;

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use warren::amqp::{Connection, Snapshot};

async fn queue(conn: &Connection, test: &str) -> String {
    let name = format!("{}dlq", support::unique_prefix(test));
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongUInt(120_000));
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    name
}

async fn fill(conn: &Connection, queue: &str, from: usize, n: usize) -> Vec<String> {
    let msgs: Vec<(String, Vec<u8>)> = (from..from + n)
        .map(|i| (format!("m{i:03}"), format!("{{\"n\":{i}}}").into_bytes()))
        .collect();
    support::publish(conn, "", queue, &msgs).await;
    msgs.into_iter().map(|(id, _)| id).collect()
}

fn id(d: &lapin::message::Delivery) -> String {
    d.properties.message_id().as_ref().unwrap().to_string()
}

async fn delete(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test]
async fn acking_walk_takes_every_chunk_in_order_and_nothing_newer() {
    let conn = support::connect().await;
    let q = queue(&conn, "browse-ack").await;
    let before = fill(&conn, &q, 0, 25).await;
    let mut walk = Snapshot::open_chunked(&conn, &q, Duration::from_secs(5), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(walk.total(), 25);
    let mut seen = vec![];
    let mut late = vec![];
    while let Some(d) = walk.next().await.unwrap() {
        if seen.is_empty() {
            // Dead letters keep arriving while a replay runs: not part of this walk.
            late = fill(&conn, &q, 100, 7).await;
        }
        seen.push(id(&d));
        assert!(walk.ack_processed(&d).await.unwrap(), "ack sent");
    }
    assert!(!walk.incomplete(), "the walk took the whole snapshot");
    assert_eq!(
        seen, before,
        "every message once, in order, across three chunks"
    );
    walk.release().await.unwrap();
    let rest: Vec<String> = support::drain(&conn, &q).await.iter().map(id).collect();
    assert_eq!(rest, late, "what came later stays, in order");
    delete(&conn, &q).await;
}

#[tokio::test]
async fn read_only_walk_over_chunks_puts_everything_back_in_place() {
    let conn = support::connect().await;
    let q = queue(&conn, "browse-read").await;
    let before = fill(&conn, &q, 0, 25).await;
    let mut walk = Snapshot::open_chunked(&conn, &q, Duration::from_secs(5), 10)
        .await
        .unwrap()
        .unwrap();
    let mut seen = vec![];
    while let Some(d) = walk.next().await.unwrap() {
        seen.push(id(&d));
    }
    assert_eq!(seen, before);
    walk.release().await.unwrap();
    let after: Vec<String> = support::drain(&conn, &q).await.iter().map(id).collect();
    assert_eq!(after, before, "nothing lost, nothing moved");
    delete(&conn, &q).await;
}

#[tokio::test]
async fn acking_half_then_releasing_keeps_the_other_half_in_order() {
    let conn = support::connect().await;
    let q = queue(&conn, "browse-half").await;
    let before = fill(&conn, &q, 0, 25).await;
    let mut walk = Snapshot::open_chunked(&conn, &q, Duration::from_secs(5), 10)
        .await
        .unwrap()
        .unwrap();
    // Ack the even ones (a filtered purge), keep the odd ones.
    let mut i = 0;
    while let Some(d) = walk.next().await.unwrap() {
        if i % 2 == 0 {
            assert!(walk.ack_processed(&d).await.unwrap());
        }
        i += 1;
    }
    assert_eq!(i, 25);
    walk.release().await.unwrap();
    let after: Vec<String> = support::drain(&conn, &q).await.iter().map(id).collect();
    let odd: Vec<String> = before.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(after, odd);
    delete(&conn, &q).await;
}
