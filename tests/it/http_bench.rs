//! Benchmark, not a timed test (ignored by default): events per second through the `http`
//! handler against the simulated API at 0 ms latency, prefetch 100, concurrency 32, next to two
//! baselines measured in the same run: the same worker with a handler that does nothing
//! (`chaos` with no directive: the broker's ceiling), and the HTTP client alone at concurrency 32
//! (the HTTP ceiling). Run it in release:
//!
//! `cargo test --release --test it http_bench -- --ignored --nocapture`
//!
//! The three measurements are interleaved over several rounds and reported as medians, so a
//! burst of load from elsewhere on the machine skews one sample, not a whole column.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::downstream::Sim;
use crate::support::{TestTopology, Warren};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::sync::Semaphore;
use url::Url;
use warren::http::{ClientSettings, HttpClient, StatusUrl};
use warren_sim::api::ApiSettings;

const N: usize = 20_000;
const ROUNDS: usize = 3;

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 100
max_attempts = 3
retry_delays = ["1s"]
delivery_limit = 10
expires = "10m"

[[queues]]
name = "bench"
bind = ["bench.*"]
"#;

/// The HTTP client alone: N POSTs with unique keys, 32 at a time.
async fn client_alone(sim: &Sim) -> f64 {
    let base = Url::parse(&sim.base).unwrap();
    let client =
        HttpClient::new(ClientSettings::default(), StatusUrl::for_api(&base), None).unwrap();
    let url = Url::parse(&sim.url("/events")).unwrap();
    let permits = Arc::new(Semaphore::new(32));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let body = Bytes::from(format!(r#"{{"n":{i}}}"#));
            client
                .post_idempotent(&url, &format!("raw-{i}"), body, &HeaderMap::new())
                .await
                .unwrap();
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    N as f64 / started.elapsed().as_secs_f64()
}

/// Fills the queue with N events, starts a worker with `handler_args`, and times from the
/// first consumed message until `done(queue)` says all N are through.
async fn through_worker<F, Fut>(
    conn: &lapin::Connection,
    name: &str,
    handler_args: &[&str],
    done: F,
) -> f64
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = TestTopology::new(name, TOPOLOGY);
    t.apply(conn).await;
    let queue = t.queue("bench");
    support::publish_events(conn, &t, "bench.event", serde_json::json!({"n": 1}), N).await;
    let mut args = vec!["worker".to_string()];
    args.extend(t.args());
    args.extend(["-q", "bench", "--prefetch", "100", "--concurrency", "32"].map(String::from));
    args.extend(handler_args.iter().map(|s| s.to_string()));
    let _w = Warren::spawn(&args, &t.dir().join("w.log"), &[("RUST_LOG", "warn")]);
    while support::queue_len(conn, &queue).await as usize >= N {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    while !done(queue.clone()).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = N as f64 / started.elapsed().as_secs_f64();
    t.cleanup(conn).await;
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn http_handler_throughput() {
    let conn = support::connect().await;
    let (mut raw, mut null, mut http) = (vec![], vec![], vec![]);
    for round in 1..=ROUNDS {
        let raw_sim = Sim::start(ApiSettings::default()).await;
        raw.push(client_alone(&raw_sim).await);

        // `chaos` with no directive acks at once. Done when no message is ready; at most one
        // prefetch window (100 of 20 000) may still be unacked, which flatters this baseline.
        null.push(
            through_worker(&conn, "bench-null", &["--handler", "chaos"], |q| {
                let conn = &conn;
                async move { support::queue_len(conn, &q).await == 0 }
            })
            .await,
        );

        let sim = Sim::start(ApiSettings::default()).await;
        let url = sim.url("/events");
        http.push(
            through_worker(
                &conn,
                "bench-http",
                &["--handler", "http", "--url", &url],
                |_| async { sim.effects().await as usize >= N },
            )
            .await,
        );
        assert_eq!(sim.ledger().await.effects as usize, N);
        println!(
            "round {round}: client alone {:.0}, no-op worker {:.0}, http worker {:.0} events/s",
            raw[round - 1],
            null[round - 1],
            http[round - 1]
        );
    }
    let (raw, null, http) = (median(raw), median(null), median(http));
    println!(
        "medians over {ROUNDS} rounds of {N} events, prefetch 100, concurrency 32 (events/s):"
    );
    println!("  http client alone (HTTP ceiling):        {raw:>8.0}");
    println!("  worker + no-op handler (broker ceiling): {null:>8.0}");
    println!("  worker + http handler:                   {http:>8.0}");
    println!(
        "  http / no-op = {:.2}, http / client alone = {:.2}",
        http / null,
        http / raw
    );
}
