//! The `http` handler in real worker processes, against the simulated API and the real broker:
//! permanent answers are dead-lettered after one call, Retry-After is honoured in process and
//! through the retry tiers, and an ambiguous commit is settled by a status check alone.

use crate::support;

use std::time::Duration;

use crate::support::downstream::{Sim, dead_letters, http_worker_args, settled};
use crate::support::{TestTopology, Warren};
use warren::envelope::idempotency_key;
use warren_sim::api::{ApiSettings, FaultRates};

const TOPOLOGY: &str = r#"
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
bind = ["test.a"]

[[queues]]
name = "b"
bind = ["test.b"]
"#;

fn key(event_id: &str) -> String {
    idempotency_key(event_id, "http", "post")
}

fn spawn(t: &TestTopology, queue: &str, url: &str, extra: &[&str], log: &str) -> Warren {
    Warren::spawn(
        &http_worker_args(t, queue, url, extra),
        &t.dir().join(log),
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_400_and_422_are_dead_lettered_after_exactly_one_call() {
    // Every key is rejected (422) on /events; an envelope is not a trade, so /trade/open says 400.
    let sim = Sim::start(ApiSettings {
        rates: FaultRates {
            reject: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let t = TestTopology::new("http-perm", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let _w422 = spawn(&t, "a", &sim.url("/events"), &[], "a.log");
    let _w400 = spawn(&t, "b", &sim.url("/trade/open"), &[], "b.log");
    let ids_a = support::publish_events(&conn, &t, "test.a", serde_json::json!({"n": 1}), 10).await;
    let ids_b = support::publish_events(&conn, &t, "test.b", serde_json::json!({"n": 2}), 10).await;

    let (dlq_a, dlq_b) = (
        t.topology.queue("a").unwrap().dlq(),
        t.topology.queue("b").unwrap().dlq(),
    );
    support::eventually(Duration::from_secs(30), "20 dead letters", || async {
        support::queue_len(&conn, &dlq_a).await == 10
            && support::queue_len(&conn, &dlq_b).await == 10
    })
    .await;
    for (dlq, ids, status) in [(&dlq_a, &ids_a, "422"), (&dlq_b, &ids_b, "400")] {
        let dead = dead_letters(&conn, dlq).await;
        let mut got: Vec<_> = dead.iter().map(|d| d.event_id.clone()).collect();
        got.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got, want);
        for d in &dead {
            assert_eq!((d.kind.as_str(), d.attempt), ("permanent", 1), "{d:?}");
            assert!(d.reason.contains(status), "{d:?}");
        }
        for id in ids {
            let calls = sim.requests(Some(&key(id))).await;
            assert_eq!(
                calls.len(),
                1,
                "{id}: exactly one call and no status check: {calls:?}"
            );
            assert_eq!(calls[0].status.to_string(), status);
        }
    }
    assert_eq!(sim.ledger().await.effects, 0);
    t.cleanup(&conn).await;
}

/// Every POST of every key, in order: after each 429 the next call is at least `retry_after`
/// later. Returns how many 429s were checked.
async fn assert_retry_after_honoured(sim: &Sim, ids: &[String], retry_after_ms: u64) -> usize {
    let mut throttles = 0;
    let mut shortest = u64::MAX;
    for id in ids {
        let posts: Vec<_> = sim
            .requests(Some(&key(id)))
            .await
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert_eq!(posts.last().map(|p| p.status), Some(200), "{id}: {posts:?}");
        for pair in posts.windows(2) {
            if pair[0].status == 429 {
                throttles += 1;
                let gap = pair[1].at_ms - pair[0].at_ms;
                shortest = shortest.min(gap);
                assert!(
                    gap >= retry_after_ms,
                    "{id}: a call {gap} ms after a 429 with Retry-After {retry_after_ms} ms"
                );
            }
        }
    }
    eprintln!("Retry-After {retry_after_ms} ms: {throttles} throttles, shortest gap {shortest} ms");
    throttles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_comes_before_retry_after() {
    // Two throttles per key. 1 s is waited out in process; 2 s is longer than the client's
    // in-process budget and the longest tier, so it goes through the tiers with a not-before.
    let throttled = |secs| ApiSettings {
        rates: FaultRates {
            throttle: 1.0,
            ..Default::default()
        },
        retry_after: Duration::from_secs(secs),
        max_faults_per_key: 2,
        ..Default::default()
    };
    let short = Sim::start(throttled(1)).await;
    let long = Sim::start(throttled(2)).await;
    let t = TestTopology::new("http-retry-after", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let _wa = spawn(&t, "a", &short.url("/events"), &[], "a.log");
    let _wb = spawn(&t, "b", &long.url("/events"), &[], "b.log");
    let ids_a = support::publish_events(&conn, &t, "test.a", serde_json::json!({}), 10).await;
    let ids_b = support::publish_events(&conn, &t, "test.b", serde_json::json!({}), 10).await;
    support::eventually(Duration::from_secs(40), "all 20 committed", || async {
        short.ledger().await.effects == 10 && long.ledger().await.effects == 10
    })
    .await;
    assert_eq!(assert_retry_after_honoured(&short, &ids_a, 1000).await, 20);
    assert_eq!(assert_retry_after_honoured(&long, &ids_b, 2000).await, 20);
    settled(&conn, &t, "a", Duration::from_secs(20)).await;
    settled(&conn, &t, "b", Duration::from_secs(20)).await;
    for sim in [&short, &long] {
        assert!(sim.ledger().await.keys.iter().all(|k| k.effects == 1));
    }
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_commit_is_acked_after_a_status_check_without_a_second_effect() {
    // Every key's first call commits, then answers 504 or hangs past the 500 ms client timeout.
    let sim = Sim::start(ApiSettings {
        rates: FaultRates {
            ambiguous: 1.0,
            ..Default::default()
        },
        hang: Duration::from_secs(2),
        max_faults_per_key: 1,
        ..Default::default()
    })
    .await;
    let t = TestTopology::new("http-ambiguous", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let _w = spawn(
        &t,
        "a",
        &sim.url("/events"),
        &["--request-timeout", "500ms"],
        "a.log",
    );
    let ids = support::publish_events(&conn, &t, "test.a", serde_json::json!({}), 20).await;
    settled(&conn, &t, "a", Duration::from_secs(40)).await;

    let ledger = sim.ledger().await;
    assert_eq!(ledger.effects, 20);
    let by_event = ledger.effects_by_event();
    for id in &ids {
        assert_eq!(by_event.get(id), Some(&1), "{id}");
        let k = ledger
            .keys
            .iter()
            .find(|k| k.key == key(id))
            .expect("key in ledger");
        assert_eq!(k.posts, 1, "{id}: no second call");
        assert!(k.status_checks >= 1, "{id}: settled by a status check");
    }
    let q = t.topology.queue("a").unwrap();
    assert!(dead_letters(&conn, &q.dlq()).await.is_empty());
    // Some answered 504, some hung until the client gave up.
    let first_calls: Vec<u16> = sim
        .requests(None)
        .await
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert!(
        first_calls.iter().all(|s| *s == 504 || *s == 0),
        "{first_calls:?}"
    );
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn the_worker_refuses_http_without_a_url() {
    let t = TestTopology::new("http-usage", TOPOLOGY);
    let mut args = vec!["worker".to_string()];
    args.extend(t.args());
    args.extend(["-q", "a", "--handler", "http"].map(String::from));
    let mut w = Warren::spawn(&args, &t.dir().join("w.log"), &[]);
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(2));
    assert!(w.log_text().contains("--url"), "{}", w.log_text());
}
