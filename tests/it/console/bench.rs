//! Benchmark (ignored by default): the console's dead-letter pages over 10,000 dead letters,
//! time to the full body over HTTP, against `warren dlq list` over the same DLQ in the same run,
//! and the DLQ's depth unchanged afterwards. Run on a quiet machine with
//! `cargo test --release --test it console_bench -- --ignored --nocapture`; `DLQ_BENCH_N=500`
//! makes a quick smoke run.

use std::time::{Duration, Instant};

use super::{Console, client};
use crate::support::dlq::{DLQ_TOPOLOGY, bench_count, bench_dead, refill, timed_warren};
use crate::support::{TestTopology, connect, queue_len};

const ROUNDS: usize = 5;

/// Time from sending the request to the last byte of the body; the body.
async fn timed_get(http: &reqwest::Client, url: &str) -> (Duration, String) {
    let start = Instant::now();
    let r = http.get(url).send().await.expect("GET");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let body = r.text().await.expect("body");
    (start.elapsed(), body)
}

/// Median, min and max, in milliseconds.
fn spread(v: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[0], ms[ms.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release"]
async fn console_bench_first_pages_over_10000_dead_letters() {
    let n = bench_count();
    let t = TestTopology::new("console-bench", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    refill(&conn, &t, &bench_dead(n, &work)).await;
    let console = Console::start(&t, false).await;
    let http = client();
    let group = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("queue", &work)
        .append_pair("type", "test.bench")
        .append_pair("kind", "exhausted")
        .append_pair("fp", "HTTP 503 for order <n>")
        .finish();
    let pages = [
        ("/dlq (groups)", "/dlq".to_string()),
        ("group's first page", format!("/dlq/messages?{group}")),
    ];
    // The console's first request opens its connection; not part of a page's time.
    timed_get(&http, &console.url("/")).await;

    let mut times: Vec<Vec<Duration>> = vec![vec![]; pages.len()];
    let mut lists = vec![];
    let mut first_page_lists = vec![];
    // Alternate the contenders so that load from elsewhere on the machine hits them alike.
    for _ in 0..ROUNDS {
        for ((_, path), times) in pages.iter().zip(times.iter_mut()) {
            let (took, body) = timed_get(&http, &console.url(path)).await;
            if path == "/dlq" {
                assert!(
                    body.contains(&format!(r#"<strong id="total">{n}</strong>"#)),
                    "every dead letter counted"
                );
            } else {
                assert_eq!(body.matches(r#"<tr class="letter""#).count(), 50.min(n));
            }
            times.push(took);
        }
        lists.push(timed_warren(&t, &["dlq", "list", "-q", "work"]));
        first_page_lists.push(timed_warren(
            &t,
            &["dlq", "list", "-q", "work", "--limit", "50"],
        ));
    }
    assert_eq!(
        queue_len(&conn, &dlq).await,
        n as u32,
        "browsing consumed nothing"
    );

    let (list, list_min, list_max) = spread(&lists);
    let (first, first_min, first_max) = spread(&first_page_lists);
    println!(
        "over {n} dead letters, {ROUNDS} rounds, time to the full body (median, min–max):\n  \
         warren dlq list -q work (table, process start included): {list:.0} ms ({list_min:.0}–{list_max:.0})\n  \
         warren dlq list -q work --limit 50: {first:.0} ms ({first_min:.0}–{first_max:.0})"
    );
    for ((name, _), times) in pages.iter().zip(&times) {
        let (median, min, max) = spread(times);
        println!(
            "  console {name}: {median:.0} ms ({min:.0}–{max:.0}) = {:.2}x dlq list, {:.2}x dlq list --limit 50",
            median / list,
            median / first
        );
    }
    console.stop().await;
    t.cleanup(&conn).await;
}
