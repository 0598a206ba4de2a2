//! `amqp::BatchPublisher` against the real broker: hundreds of callers at once, routed and
//! unroutable publishes mixed in the same batches, identical messages side by side, and a
//! connection that goes away. Each caller must learn the fate of its own message.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use warren::amqp::{self, AmqpError, BasicProperties, BatchPublisher, Message};

use crate::support::proxy::{Mode, Proxy};
use crate::support::{self, TestTopology, connect, eventually};

fn properties(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(2)
}

/// A publishing connection through a proxy the test can black-hole.
async fn through_proxy() -> (Proxy, amqp::Connection) {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let via = connect_via(&proxy).await;
    (proxy, via)
}

async fn connect_via(proxy: &Proxy) -> amqp::Connection {
    let url: amqp::AmqpUrl = proxy.amqp_url(60).parse().unwrap();
    amqp::connect(&url, "test", "publish").await.unwrap()
}

/// Publishes every job at once, the routed ones to `work`, the others to `nowhere`.
async fn publish_jobs(
    publisher: &BatchPublisher,
    jobs: &[(String, Vec<u8>, bool)],
    work: &str,
    nowhere: &str,
) -> Vec<Result<(), AmqpError>> {
    join_all(jobs.iter().map(|(id, body, routed)| {
        publisher.publish(Message {
            exchange: "",
            routing_key: if *routed { work } else { nowhere },
            body,
            properties: properties(id),
            mandatory: true,
        })
    }))
    .await
}

/// Publishes `{}` with message id `id` straight to `queue`.
async fn publish_one(publisher: &BatchPublisher, queue: &str, id: &str) -> Result<(), AmqpError> {
    publisher
        .publish(Message {
            exchange: "",
            routing_key: queue,
            body: b"{}",
            properties: properties(id),
            mandatory: true,
        })
        .await
}

/// `(message id, body, routed)`: three in five go to a queue that does not exist, and every
/// tenth message is an exact copy of the one before it (id, body and target), which a return
/// cannot tell apart.
fn mixed_jobs(n: usize) -> Vec<(String, Vec<u8>, bool)> {
    (0..n)
        .scan(None::<(String, Vec<u8>, bool)>, |prev, i| {
            let job = match prev.as_ref() {
                Some(p) if i % 10 == 9 => p.clone(),
                _ => {
                    let id = format!("m{i}");
                    let body = format!("{{\"n\":{i}}}").into_bytes();
                    (id, body, i % 5 >= 3)
                }
            };
            *prev = Some(job.clone());
            Some(job)
        })
        .collect()
}

/// How many groups of writes the publisher sent, and how many publishes they held.
fn groups_and_messages(publisher: &BatchPublisher) -> (u64, u64) {
    let stats = publisher.stats();
    (
        stats.batches.load(Ordering::Relaxed),
        stats.messages.load(Ordering::Relaxed),
    )
}

/// Each routed message was confirmed and is in `work` exactly as often as it was published;
/// each unroutable one came back to its own caller.
async fn assert_each_fate(
    conn: &amqp::Connection,
    work: &str,
    jobs: &[(String, Vec<u8>, bool)],
    results: &[Result<(), AmqpError>],
) {
    for ((id, _, routed), result) in jobs.iter().zip(results) {
        match (routed, result) {
            (true, Ok(())) => {}
            (false, Err(AmqpError::Returned { message_id, .. })) => {
                assert_eq!(message_id.as_deref(), Some(id.as_str()));
            }
            _ => panic!("{id} (routed: {routed}): {result:?}"),
        }
    }
    let mut want = BTreeMap::<String, usize>::new();
    for (id, _, routed) in jobs {
        if *routed {
            *want.entry(id.clone()).or_default() += 1;
        }
    }
    let mut got = BTreeMap::<String, usize>::new();
    for d in support::drain(conn, work).await {
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        *got.entry(id).or_default() += 1;
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_learns_the_fate_of_its_own_message() {
    let t = TestTopology::fast("batch-returns");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let nowhere = format!("{}nowhere", t.prefix);
    let publisher = BatchPublisher::open(&conn, 2).await.unwrap();

    let jobs = mixed_jobs(600);
    let results = publish_jobs(&publisher, &jobs, &work, &nowhere).await;

    let (batches, messages) = groups_and_messages(&publisher);
    assert_eq!(messages, 600);
    assert!(
        batches * 4 <= messages,
        "{batches} groups for {messages} publishes: too few were in flight together to test anything"
    );
    assert_each_fate(&conn, &work, &jobs, &results).await;
    t.cleanup(&conn).await;
}

/// Callers that arrive one after another, as a worker's failing deliveries do: each is answered
/// while later ones are still being written and earlier ones confirmed, so returns land on
/// confirms of publishes sent in other groups. Each caller must still learn its own fate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_arriving_one_after_another_learn_their_own_fate() {
    let t = TestTopology::fast("batch-stream");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let nowhere = format!("{}nowhere", t.prefix);
    let publisher = BatchPublisher::open(&conn, 2).await.unwrap();

    let jobs = mixed_jobs(1500);
    let tasks: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(i, (id, body, routed))| {
            let publisher = publisher.clone();
            let (id, body) = (id.clone(), body.clone());
            let target = if *routed {
                work.clone()
            } else {
                nowhere.clone()
            };
            tokio::spawn(async move {
                // Callers in small bunches, a millisecond apart (the timer's resolution),
                // for about 150 ms.
                tokio::time::sleep(Duration::from_micros(100 * i as u64)).await;
                publisher
                    .publish(Message {
                        exchange: "",
                        routing_key: &target,
                        body: &body,
                        properties: properties(&id),
                        mandatory: true,
                    })
                    .await
            })
        })
        .collect();
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();

    let (groups, messages) = groups_and_messages(&publisher);
    assert_eq!(messages, 1500);
    assert!(
        groups >= 20,
        "{groups} groups for {messages} publishes: the callers did not arrive one after another"
    );
    assert_each_fate(&conn, &work, &jobs, &results).await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails_publishes_at_once_instead_of_hanging() {
    let t = TestTopology::fast("batch-closed");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let publisher = BatchPublisher::open(&conn, 2)
        .await
        .unwrap()
        .with_confirm_timeout(Duration::from_secs(20));
    let ok = publish_one(&publisher, &work, "before").await;
    assert!(ok.is_ok(), "{ok:?}");

    amqp::close(&conn).await;
    let started = std::time::Instant::now();
    let results = join_all((0..50).map(|i| {
        let id = format!("after-{i}");
        let publisher = publisher.clone();
        let work = work.clone();
        async move { publish_one(&publisher, &work, &id).await }
    }))
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "publishes waited for the confirm deadline"
    );
    assert!(!publisher.is_open());
    for r in results {
        assert!(
            matches!(r, Err(AmqpError::Broker { .. } | AmqpError::Closed { .. })),
            "{r:?}"
        );
    }

    let conn = connect().await;
    let left = support::drain(&conn, &work).await;
    assert_eq!(left.len(), 1, "only the confirmed message is in the queue");
    t.cleanup(&conn).await;
}

/// A topology with a `work` queue, and a one-lane publisher with `timeout` on a connection
/// through a proxy the test can black-hole (returned, to keep it open), which has confirmed
/// one publish ("before").
async fn one_lane_through_proxy(
    name: &str,
    timeout: Duration,
) -> (
    TestTopology,
    amqp::Connection,
    String,
    Proxy,
    amqp::Connection,
    BatchPublisher,
) {
    let t = TestTopology::fast(name);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let (proxy, via) = through_proxy().await;
    let publisher = BatchPublisher::open(&via, 1)
        .await
        .unwrap()
        .with_confirm_timeout(timeout);
    let ok = publish_one(&publisher, &work, "before").await;
    assert!(ok.is_ok(), "{ok:?}");
    (t, conn, work, proxy, via, publisher)
}

/// Confirms that never come (the connection black-holed) must not hold a channel forever: the
/// caller gets a timeout, and the channel is closed so that its owner replaces the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_confirms_time_out_and_close_the_channel() {
    let (t, conn, work, proxy, _via, publisher) =
        one_lane_through_proxy("batch-overdue", Duration::from_secs(2)).await;
    let publish = |id: &'static str| {
        let (publisher, work) = (publisher.clone(), work.clone());
        async move { publish_one(&publisher, &work, id).await }
    };

    proxy.set(Mode::BlackHole);
    let started = std::time::Instant::now();
    let lost = publish("into-the-hole").await;
    assert!(matches!(lost, Err(AmqpError::Timeout { .. })), "{lost:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually(Duration::from_secs(5), "the channel closed", || {
        let open = publisher.is_open();
        async move { !open }
    })
    .await;
    // Refused at once, not after the lane's (black-holed) channel.close gives up 5 s later:
    // callers keep no timers, so the lane answers what is queued before it closes.
    let started = std::time::Instant::now();
    let after = publish("after").await;
    assert!(after.is_err(), "a closed channel took a publish: {after:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a publish to a closing lane waited {:?}",
        started.elapsed()
    );
    proxy.set(Mode::Pass);
    t.cleanup(&conn).await;
}

/// Callers keep no timers of their own: the lane answers each by its deadline. A request held
/// back behind a look-alike whose confirm never comes (the connection black-holed) has a
/// deadline of its own, earlier here than the look-alike's, and gets its timeout then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_behind_a_look_alike_times_out_by_its_own_deadline() {
    let (t, conn, work, proxy, _via, patient) =
        one_lane_through_proxy("batch-held", Duration::from_secs(30)).await;
    let hasty = patient.clone().with_confirm_timeout(Duration::from_secs(1));

    proxy.set(Mode::BlackHole);
    // In flight, and never confirmed while the hole lasts.
    let first = tokio::spawn({
        let (patient, work) = (patient.clone(), work.clone());
        async move { publish_one(&patient, &work, "same").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    // An exact copy: held back until the first is answered.
    let copy = publish_one(&hasty, &work, "same").await;
    let took = started.elapsed();
    assert!(matches!(copy, Err(AmqpError::Timeout { .. })), "{copy:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the held copy was answered after {took:?}"
    );
    assert!(!first.is_finished(), "the first publish was answered early");
    first.abort();
    proxy.set(Mode::Pass);
    t.cleanup(&conn).await;
}

/// `ConfirmWindow` (the bridge's and `dlq replay`'s pipelined confirms) yields confirms in
/// publish order, survives being cancelled mid-wait without losing one, and turns a confirm
/// that never comes (the connection black-holed) into a timeout for each message in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_window_yields_in_order_is_cancel_safe_and_times_out_overdue_confirms() {
    let t = TestTopology::fast("window");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let (proxy, via) = through_proxy().await;
    let publisher = amqp::Publisher::open(&via)
        .await
        .unwrap()
        .with_confirm_timeout(Duration::from_secs(2));
    let send = |id: &'static str| {
        let (publisher, work) = (publisher.clone(), work.clone());
        async move {
            publisher
                .send(Message {
                    exchange: "",
                    routing_key: &work,
                    body: b"{}",
                    properties: properties(id),
                    mandatory: true,
                })
                .await
                .unwrap()
        }
    };
    let mut window = amqp::ConfirmWindow::new(16);
    for id in ["a", "b", "c"] {
        window.push(id, send(id).await);
    }
    let mut got = Vec::new();
    while let Some((id, r)) = window.next().await {
        assert!(r.is_ok(), "{id}: {r:?}");
        got.push(id);
    }
    assert_eq!(got, ["a", "b", "c"]);

    proxy.set(Mode::BlackHole);
    let started = std::time::Instant::now();
    for id in ["x", "y"] {
        window.push(id, send(id).await);
    }
    // Cancelled waits give nothing back and take nothing away.
    for _ in 0..3 {
        let cancelled = tokio::time::timeout(Duration::from_millis(100), window.next()).await;
        assert!(cancelled.is_err(), "{cancelled:?}");
        assert_eq!(window.len(), 2);
    }
    let mut overdue = Vec::new();
    while let Some((id, r)) = window.next().await {
        assert!(matches!(r, Err(AmqpError::Timeout { .. })), "{id}: {r:?}");
        overdue.push(id);
    }
    assert_eq!(overdue, ["x", "y"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    proxy.set(Mode::Pass);
    t.cleanup(&conn).await;
}

/// A broker may return several unroutable messages and then confirm them with one
/// multiple-ack. lapin completes those confirms one after another, in no set order, each
/// carrying the oldest return it holds, so a publish's confirm can complete without its own
/// return, which rides on another confirm still to complete. A lane that answered every
/// confirm as it came in, instead of only the oldest ones up to the first still out, would
/// tell some of these callers that their unroutable message was delivered: a lost message.
/// RabbitMQ confirms each unroutable publish right after its return, so a proxy coalesces the
/// confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_confirmed_by_one_multiple_ack_each_reach_their_own_caller() {
    let t = TestTopology::fast("batch-multi");
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let nowhere = format!("{}nowhere", t.prefix);
    let proxy = Proxy::start_coalescing_confirms("127.0.0.1:5672".parse().unwrap()).await;
    let via = connect_via(&proxy).await;
    let publisher = BatchPublisher::open(&via, 1).await.unwrap();

    let mut jobs = Vec::new();
    let mut results = Vec::new();
    for round in 0..20 {
        // Mostly unroutable, so one multiple-ack completes many returned publishes.
        let batch: Vec<_> = (0..200)
            .map(|i| {
                let id = format!("r{round}-{i}");
                let body = format!("{{\"n\":{i}}}").into_bytes();
                (id, body, i % 10 == 9)
            })
            .collect();
        results.extend(publish_jobs(&publisher, &batch, &work, &nowhere).await);
        jobs.extend(batch);
    }
    assert!(
        proxy.merged_confirms() >= 20,
        "only {} multiple-acks confirmed more than one publish: nothing was coalesced",
        proxy.merged_confirms()
    );
    assert_each_fate(&conn, &work, &jobs, &results).await;
    via.close(200, "done".into()).await.ok();
    t.cleanup(&conn).await;
}
