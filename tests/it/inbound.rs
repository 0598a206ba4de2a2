//! `amqp::Inbound`: a delivery settled on the channel it came on, against the real broker.
//! Delivery tags are per channel, so two channels hold the same tags at once; settling on the
//! wrong one would settle another message (lost) or close a channel. Settling twice, or after
//! the channel closed, sends nothing, and the broker keeps what was not settled.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use warren::amqp::{self, Inbound};

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
    (channel.clone(), Inbound::new(delivery, channel))
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
