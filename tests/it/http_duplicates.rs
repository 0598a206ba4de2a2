//! An event whose effect is already done or under way downstream, met again by an `http`
//! worker: a stale redelivery whose ack was lost is acked after a status check instead of being
//! dead-lettered, and of two copies racing one key the loser gets 409, checks, and never makes
//! a second effect.

use crate::support;

use std::time::Duration;

use crate::support::downstream::{Sim, dead_letters, http_worker_args, settled};
use crate::support::{TestTopology, Warren, eventually};
use warren::envelope::idempotency_key;
use warren_sim::api::ApiSettings;

/// `test.live` is live-only with a 4 s time to live and no queue TTL: the worker, not the
/// broker, decides when it is stale.
const LIVE_TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[events]
live_only = ["test.live"]
live_ttl = "4s"

[defaults]
queue_type = "quorum"
prefetch = 10
max_attempts = 3
retry_delays = ["200ms", "500ms"]
delivery_limit = 30
expires = "10m"

[[queues]]
name = "a"
bind = ["test.live"]
"#;

fn key(event_id: &str) -> String {
    idempotency_key(event_id, "http", "post")
}

/// Waits for the worker's "Worker consuming." line.
async fn consuming(w: &Warren) {
    eventually(Duration::from_secs(20), "the worker consuming", || {
        let up = w.log_text().contains("Worker consuming.");
        async move { up }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_redelivery_whose_effect_is_done_is_acked_not_dead_lettered() {
    // Every POST takes 1.5 s, long enough to kill the worker mid-call; the sim commits anyway.
    let sim = Sim::start(ApiSettings {
        latency: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let t = TestTopology::new("http-stale-done", LIVE_TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let url = sim.url("/events");
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let mut first = Warren::spawn(
        &http_worker_args(&t, "a", &url, &[]),
        &t.dir().join("first.log"),
        &[],
    );
    consuming(&first).await;
    let (id, body) = support::envelope("test.live", serde_json::json!({"n": 1}));
    let published_ms = support::now_ms();
    support::publish(
        &conn,
        &t.topology.events_exchange,
        "test.live",
        &[(id.clone(), body)],
    )
    .await;

    // The call is in flight: the worker dies before it can ack, as if a reset lost the ack.
    eventually(Duration::from_secs(10), "the POST arriving", || async {
        !sim.requests(Some(&key(&id))).await.is_empty()
    })
    .await;
    first.kill9();
    // The effect commits, and the event grows older than its time to live.
    eventually(Duration::from_secs(10), "the effect committed", || async {
        sim.effects().await == 1
    })
    .await;
    eventually(Duration::from_secs(10), "the event stale", || async {
        support::now_ms() > published_ms + 4_500
    })
    .await;

    let second = Warren::spawn(
        &http_worker_args(&t, "a", &url, &metrics),
        &t.dir().join("second.log"),
        &[],
    );
    settled(&conn, &t, "a", Duration::from_secs(30)).await;
    let dlq = t.topology.queue("a").unwrap().dlq();
    let dead = dead_letters(&conn, &dlq).await;
    assert!(
        dead.is_empty(),
        "dead-lettered: {dead:?}\n{}",
        second.log_text()
    );
    let ledger = sim.ledger().await;
    assert_eq!(ledger.effects, 1);
    let k = ledger.keys.iter().find(|k| k.key == key(&id)).expect("key");
    assert_eq!((k.effects, k.posts), (1, 1), "no second call: {k:?}");
    assert!(k.status_checks >= 1, "acked after a status check: {k:?}");
    let log = second.log_text();
    assert!(
        log.contains("Stale redelivery whose effect is done; acking it."),
        "{log}"
    );
    let addr = support::bridge::logged_addr(&second, "Serving /metrics").await;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let queue = t.queue("a");
    for (series, want) in [
        (
            format!("warren_worker_stale_done_total{{queue=\"{queue}\"}}"),
            1.0,
        ),
        (
            format!("warren_worker_deliveries_total{{queue=\"{queue}\",outcome=\"ack\"}}"),
            1.0,
        ),
    ] {
        assert_eq!(
            support::bridge::metric(&text, &series),
            Some(want),
            "{text}"
        );
    }

    // A stale event on its first delivery never ran: dead-lettered at once, with no call at all.
    let (old, body) = support::envelope("test.live", serde_json::json!({"n": 2}));
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["ts"] = serde_json::json!(support::now_ms() - 60_000);
    let body = serde_json::to_vec(&v).unwrap();
    support::publish(
        &conn,
        &t.topology.events_exchange,
        "test.live",
        &[(old.clone(), body)],
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the stale event dead-lettered",
        || async { support::queue_len(&conn, &dlq).await == 1 },
    )
    .await;
    let dead = dead_letters(&conn, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].event_id.as_str(), dead[0].kind.as_str()),
        (old.as_str(), "permanent")
    );
    assert!(dead[0].reason.starts_with("stale:"), "{:?}", dead[0]);
    assert!(sim.requests(Some(&key(&old))).await.is_empty());
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_redelivery_whose_effect_is_not_done_is_dead_lettered_saying_so() {
    let sim = Sim::start(ApiSettings::default()).await;
    let t = TestTopology::new("http-stale-not-done", LIVE_TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let queue = t.queue("a");
    // A consumer takes the event and goes away without acking (and without calling anything):
    // the broker redelivers it, marked redelivered, after its time to live has passed.
    let (id, mut body) = support::envelope("test.live", serde_json::json!({"n": 3}));
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["ts"] = serde_json::json!(support::now_ms() - 60_000);
    body = serde_json::to_vec(&v).unwrap();
    support::publish(
        &conn,
        &t.topology.events_exchange,
        "test.live",
        &[(id.clone(), body)],
    )
    .await;
    let taker = support::connect().await;
    let ch = taker.create_channel().await.expect("channel");
    let got = ch
        .basic_get(queue.as_str().into(), Default::default())
        .await
        .expect("basic.get");
    assert!(got.is_some(), "the event is in the queue");
    let _ = taker
        .close(200, "test: went away without an ack".into())
        .await;

    let w = Warren::spawn(
        &http_worker_args(&t, "a", &sim.url("/events"), &[]),
        &t.dir().join("w.log"),
        &[],
    );
    let dlq = t.topology.queue("a").unwrap().dlq();
    eventually(Duration::from_secs(20), "the dead letter", || async {
        support::queue_len(&conn, &dlq).await == 1
    })
    .await;
    let dead = dead_letters(&conn, &dlq).await;
    assert_eq!(dead[0].event_id, id);
    assert!(
        dead[0].reason.starts_with("stale:")
            && dead[0]
                .reason
                .ends_with("; status check: effect not done (not found)"),
        "{:?}\n{}",
        dead[0],
        w.log_text()
    );
    // One status check, and no call: a stale event is never acted on.
    let calls = sim.requests(Some(&key(&id))).await;
    assert_eq!(
        calls
            .iter()
            .map(|r| (r.method.as_str(), r.status))
            .collect::<Vec<_>>(),
        [("GET", 404)],
        "{calls:?}"
    );
    t.cleanup(&conn).await;
}

/// `test.dup` reaches two queues: each event is delivered twice at once, under one key.
const TWO_QUEUES: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 20
max_attempts = 6
retry_delays = ["200ms", "500ms", "1s"]
delivery_limit = 30
expires = "10m"

[[queues]]
name = "a"
bind = ["test.dup"]

[[queues]]
name = "b"
bind = ["test.dup"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_one_key_make_one_effect_through_409_and_a_status_check() {
    // No fault is injected: every 409 comes from the race. A POST holds its key in flight for
    // 2 s, so the copy that arrives second finds it in flight.
    let sim = Sim::start(ApiSettings {
        latency: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let t = TestTopology::new("http-409-race", TWO_QUEUES);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let url = sim.url("/events");
    let wa = Warren::spawn(
        &http_worker_args(&t, "a", &url, &[]),
        &t.dir().join("a.log"),
        &[],
    );
    let wb = Warren::spawn(
        &http_worker_args(&t, "b", &url, &[]),
        &t.dir().join("b.log"),
        &[],
    );
    consuming(&wa).await;
    consuming(&wb).await;
    let ids = support::publish_events(&conn, &t, "test.dup", serde_json::json!({}), 10).await;
    settled(&conn, &t, "a", Duration::from_secs(60)).await;
    settled(&conn, &t, "b", Duration::from_secs(60)).await;

    for q in ["a", "b"] {
        let dead = dead_letters(&conn, &t.topology.queue(q).unwrap().dlq()).await;
        assert!(dead.is_empty(), "{q}: {dead:?}");
    }
    let ledger = sim.ledger().await;
    assert_eq!(ledger.effects, 10, "one effect per event");
    for id in &ids {
        let k = key(id);
        let entry = ledger.keys.iter().find(|e| e.key == k).expect("key");
        assert_eq!(entry.effects, 1, "{id}: {entry:?}");
        let calls = sim.requests(Some(&k)).await;
        let shown = || format!("{id}: {calls:#?}");
        // The loser's POST was answered 409 while the winner's was in flight...
        let conflict = calls
            .iter()
            .position(|r| r.method == "POST" && r.status == 409)
            .unwrap_or_else(|| panic!("no 409: {}", shown()));
        // ...and it checked the status before it called again, never assuming done. The
        // winner's own POST (the first answered 2xx) may be logged after the loser's 409: it is
        // not the loser's next call.
        let winner = calls
            .iter()
            .position(|r| r.method == "POST" && (200..300).contains(&r.status));
        let next = calls
            .iter()
            .enumerate()
            .skip(conflict + 1)
            .filter(|(i, _)| Some(*i) != winner)
            .map(|(_, r)| r)
            .find(|r| r.method == "GET" || r.method == "POST")
            .unwrap_or_else(|| panic!("nothing after the 409: {}", shown()));
        assert_eq!(next.method, "GET", "{}", shown());
        // Both copies ended acked: one with the effect, the other with the stored outcome (a
        // status check's 200 or a replayed POST).
        let answered_done = calls
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count();
        assert!(answered_done >= 2, "{}", shown());
    }
    t.cleanup(&conn).await;
}
