//! On-demand benchmark (ignored by default): sim → bridge → confirmed publishes at the sim's
//! maximum rate against a raw lapin publisher with the same confirm window, and the bridge's
//! RSS. Prints the report as JSON, then a table: bridge events/s, raw events/s, ratio, RSS.
//!
//! `BENCH_EVENTS=50000 BENCH_ROUNDS=3 cargo test --release -p warren-bench --test smoke bridge_bench -- --ignored --nocapture`

use crate::support;

use warren_bench::bridge::{BenchOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run on demand"]
async fn bridge_throughput_against_a_raw_publisher() {
    let mut opts = BenchOptions::new(support::amqp_url(), support::warren_exe());
    if let Some(n) = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.events = n;
    }
    if let Some(n) = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.rounds = n;
    }
    if let Ok(q) = std::env::var("BENCH_QUEUE_TYPE") {
        opts.queue_type = q;
    }
    let report = run(&opts).await.expect("benchmark runs");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{}", report.table());
}
