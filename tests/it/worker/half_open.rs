//! A half-open broker connection (the proxy's black hole: sockets up, bytes gone) ends the
//! worker's session within two heartbeat intervals and a second of its last byte, never later
//! for waiting on the session's other connection; the worker then reconnects and loses nothing.

use std::time::{Duration, UNIX_EPOCH};

use crate::support::bridge::log_times;
use crate::support::proxy::Proxy;
use crate::support::worker::{wait_done, worker_with};
use crate::support::{self, TestTopology, connect, eventually, queue_len};
use serde_json::json;

/// The heartbeat the worker negotiates through the proxy, in seconds.
const HB: u64 = 2;
/// The target is two heartbeats and a second; lapin checks its deadline only every half
/// heartbeat, so its own notice may come that much later.
const BOUND: Duration = Duration::from_millis(2 * HB * 1000 + 1000 + HB * 500);
/// When a path goes dark, lapin notices each connection's silence at its own heartbeat phase:
/// up to half a heartbeat apart (5 s with the default 10 s heartbeat). The test recreates that
/// gap with its short heartbeat by cutting the session's other connection this much later. A
/// session that waits for the other connection's polite close, as warren did, ends about this
/// much late and fails the bound.
const STAGGER: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_broker_connection_ends_the_session_within_two_heartbeats() {
    let t = TestTopology::fast("half-open");
    let conn = connect().await;
    t.apply(&conn).await;
    let proxy = Proxy::start(
        support::url()
            .host_port()
            .parse()
            .expect("broker host:port is an address"),
    )
    .await;
    let url = proxy.amqp_url(HB as u16);
    let w = worker_with(&t, &["work"], &[], "w.log", &[("AMQP_URL", &url)]);
    let count = |needle: &'static str| {
        let n = w.log_text().matches(needle).count();
        async move { n }
    };
    // Rounds alternate which connection goes dark first: consuming, publishing, consuming.
    for round in 0..3 {
        eventually(Duration::from_secs(40), "the worker consuming", || async {
            count("Worker consuming.").await > round
        })
        .await;
        let ids = support::publish_events(&conn, &t, "test.ok", json!({}), 5).await;
        wait_done(&t, &ids, Duration::from_secs(30)).await;
        // A session opens its consuming connection, then its publishing one.
        let n = proxy.accepted();
        let (consume, publish) = (n - 2, n - 1);
        let (first, second) = if round % 2 == 0 {
            (consume, publish)
        } else {
            (publish, consume)
        };

        let ended_before = count("Broker session ended").await;
        proxy.black_hole_one(first);
        tokio::time::sleep(STAGGER).await;
        proxy.black_hole_one(second);
        eventually(Duration::from_secs(30), "the session ended", || async {
            count("Broker session ended").await > ended_before
        })
        .await;
        let ended = log_times(&w.log_text(), "Broker session ended")[ended_before];
        let last = UNIX_EPOCH + Duration::from_millis(proxy.last_byte_ms(first));
        let took = ended.duration_since(last).unwrap_or_default();
        let which = if first == consume {
            "consuming"
        } else {
            "publishing"
        };
        eprintln!(
            "round {round}: the {which} connection went dark; the session ended {took:.2?} after its last byte (heartbeat {HB}s)"
        );
        assert!(
            took <= BOUND,
            "round {round}: the session ended {took:?} after the {which} connection's last byte; the bound is {BOUND:?}\n{}",
            w.log_text()
        );
    }
    eventually(Duration::from_secs(40), "the worker back", || async {
        count("Worker consuming.").await > 3
    })
    .await;
    let ids = support::publish_events(&conn, &t, "test.ok", json!({}), 5).await;
    wait_done(&t, &ids, Duration::from_secs(30)).await;
    let dlq = format!("{}.dlq", t.queue("work"));
    assert_eq!(queue_len(&conn, &dlq).await, 0);
    assert_eq!(queue_len(&conn, &t.queue("work")).await, 0);
    t.cleanup(&conn).await;
}
