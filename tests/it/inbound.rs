//! `amqp::Inbound`: a delivery settled on the channel it came on, against the real broker.
//! Delivery tags are per channel, so two channels hold the same tags at once; settling on the
//! wrong one would settle another message (lost) or close a channel. Settling twice, or after
//! the channel closed, sends nothing, and the broker keeps what was not settled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use warren::amqp::{self, Inbound, Settler};

use crate::support::{self, TestTopology, connect};

/// A channel consuming `queue` one message at a time, and its first delivery.
async fn take_one(conn: &amqp::Connection, queue: &str) -> (Arc<amqp::Channel>, Inbound) {
    let channel = Arc::new(amqp::channel(conn).await.unwrap());
    let tag = format!("inbound-{}", ulid::Ulid::generate());
    let mut consumer = amqp::consume(&channel, queue, 1, &tag).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery")
        .expect("consumer open")
        .expect("delivery");
    amqp::cancel(&channel, &tag).await.unwrap();
    let settler = Settler::new((*channel).clone());
    (channel, Inbound::new(delivery, settler))
}

fn id_of(d: &lapin::message::Delivery) -> String {
    d.properties.message_id().as_ref().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_is_settled_on_its_own_channel() {
    let t = TestTopology::fast("inbound-own");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let msgs: Vec<_> = (0..2)
        .map(|i| (format!("m{i}"), format!("{{\"n\":{i}}}").into_bytes()))
        .collect();
    support::publish(&conn, "", &work, &msgs).await;

    // Both deliveries carry delivery tag 1, each on its own channel.
    let (a_channel, a) = take_one(&conn, &work).await;
    let (b_channel, b) = take_one(&conn, &work).await;
    assert_eq!((a.delivery_tag, b.delivery_tag), (1, 1));

    assert!(b.ack().await.unwrap());
    // A second settle of the same delivery sends nothing (a second ack of tag 1 would be a
    // channel error), and B's channel still works.
    assert!(!b.ack().await.unwrap());
    assert!(!b.requeue().await.unwrap());
    amqp::consume(&b_channel, &work, 1, "inbound-probe")
        .await
        .expect("channel B still open");
    amqp::cancel(&b_channel, "inbound-probe").await.unwrap();

    // A's delivery was not settled by B's ack: closing A gives it back, and only it.
    amqp::close_channel(&a_channel).await;
    assert!(
        !a.ack().await.unwrap(),
        "an ack on a closed channel is not sent"
    );
    let left: Vec<_> = support::drain(&conn, &work)
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(left, vec![id_of(&a)]);
    assert_ne!(id_of(&a), id_of(&b));
    amqp::close_channel(&b_channel).await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_delivery_comes_back_and_an_acked_one_does_not() {
    let t = TestTopology::fast("inbound-requeue");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let msgs = vec![("only".to_string(), b"{}".to_vec())];
    support::publish(&conn, "", &work, &msgs).await;

    let (channel, first) = take_one(&conn, &work).await;
    assert!(first.requeue().await.unwrap());
    assert!(!first.ack().await.unwrap(), "settled once already");
    let (again_channel, again) = take_one(&conn, &work).await;
    assert!(again.redelivered);
    assert_eq!(id_of(&again), "only");
    assert!(again.ack().await.unwrap());
    amqp::close_channel(&again_channel).await;
    amqp::close_channel(&channel).await;
    assert_eq!(support::queue_len(&conn, &work).await, 0);
    t.cleanup(&conn).await;
}

/// Acks asked for together go out as one multiple ack only over settled tags: a delivery in the
/// middle still being handled, and one requeued, are not covered by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_acks_never_settle_a_delivery_still_in_hand() {
    let t = TestTopology::fast("inbound-coalesce");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let msgs: Vec<_> = (0..20)
        .map(|i| (format!("m{i:02}"), b"{}".to_vec()))
        .collect();
    support::publish(&conn, "", &work, &msgs).await;

    let channel = amqp::channel(&conn).await.unwrap();
    let settler = Settler::new(channel.clone());
    let mut consumer = amqp::consume(&channel, &work, 20, "inbound-coalesce")
        .await
        .unwrap();
    let mut deliveries = vec![];
    while deliveries.len() < 20 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .expect("consumer open")
            .expect("delivery");
        deliveries.push(Arc::new(Inbound::new(d, settler.clone())));
    }
    amqp::cancel(&channel, "inbound-coalesce").await.unwrap();
    // Tag 5 stays in hand, tag 12 is requeued; every other delivery is acked at once.
    let held = deliveries[4].clone();
    let requeued = deliveries[11].clone();
    let mut settles = vec![];
    for (i, d) in deliveries.iter().enumerate() {
        let d = d.clone();
        match i {
            4 => {}
            11 => settles.push(tokio::spawn(async move { d.requeue().await })),
            _ => settles.push(tokio::spawn(async move { d.ack().await })),
        }
    }
    for s in settles {
        assert!(s.await.unwrap().unwrap(), "settled");
    }
    // The channel is still open (no unknown tag was acked), and only the requeued message is
    // back in the queue.
    assert!(channel.status().connected());
    let back: Vec<_> = support::drain(&conn, &work)
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(back, vec![id_of(&requeued)]);
    // The held delivery was never acked: closing the channel gives it back.
    amqp::close_channel(&channel).await;
    assert!(!held.ack().await.unwrap());
    let back: Vec<_> = support::drain(&conn, &work)
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(back, vec![id_of(&held)]);
    t.cleanup(&conn).await;
}
