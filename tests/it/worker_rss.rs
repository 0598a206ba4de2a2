//! Benchmark, not a timed test (ignored by default): the peak RSS of a `warren worker` process
//! alone, at prefetch 100 and 1000, while it works through a backlog of 20 000 events, on
//! classic and quorum queues, in two modes: every event acked (`chaos` with no directive), and every event
//! failing, sent to a 100 ms retry tier, failing again and dead-lettered (`chaos` with
//! `"action": "transient"`: each delivery is a republish and its confirm before its ack).
//! `warren-bench` measures its scenarios in one process with their load generator; this puts
//! the worker in a process of its own, as deployed. Run it in release:
//!
//! `cargo test --release --test it worker_rss -- --ignored --nocapture`

use std::time::{Duration, Instant};

use crate::support::{self, TestTopology, Warren};

const N: usize = 20_000;

fn topology(queue_type: &str) -> String {
    // Classic queues have no delivery limit (warren refuses the field there).
    let delivery_limit = if queue_type == "quorum" {
        "delivery_limit = 10"
    } else {
        ""
    };
    format!(
        r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "{queue_type}"
prefetch = 100
max_attempts = 2
retry_delays = ["100ms"]
{delivery_limit}
expires = "10m"

[[queues]]
name = "bench"
bind = ["bench.*"]
"#
    )
}

/// `VmHWM` (peak resident set) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib as f64 / 1024.0
}

/// Fills the queue, runs a worker over it until every event is through (acked, or in the
/// DLQ), and returns the worker's peak RSS. (No rate: the check for the last acks asks
/// `rabbitmqctl`, which takes longer than the work itself.)
async fn run(conn: &lapin::Connection, queue_type: &str, prefetch: u16, fail: bool) -> f64 {
    let mode = if fail { "retry" } else { "ack" };
    let name = format!("rss-{queue_type}-{prefetch}-{mode}");
    let t = TestTopology::new(&name, &topology(queue_type));
    t.apply(conn).await;
    let queue = t.queue("bench");
    let dlq = t.topology.queues[0].dlq();
    let payload = if fail {
        serde_json::json!({"chaos": {"action": "transient"}})
    } else {
        serde_json::json!({"n": 1})
    };
    support::publish_events(conn, &t, "bench.event", payload, N).await;
    let mut args = vec!["worker".to_string()];
    args.extend(t.args());
    args.extend(["-q", "bench", "--prefetch", &prefetch.to_string()].map(String::from));
    args.extend(["--handler", "chaos"].map(String::from));
    let mut w = Warren::spawn(&args, &t.dir().join("w.log"), &[("RUST_LOG", "warn")]);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let through = if fail {
            support::queue_len(conn, &dlq).await as usize >= N
        } else {
            // Exact unacked counts from the worker's channels (quorum queue stats lag).
            support::queue_len(conn, &queue).await == 0 && support::unacked_of(w.pid()) == 0
        };
        if through {
            break;
        }
        assert!(w.running(), "{name}: the worker exited:\n{}", w.log_text());
        assert!(
            Instant::now() < deadline,
            "{name}: the worker did not finish:\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss = peak_rss_mib(w.pid());
    w.kill9();
    if fail {
        assert_eq!(support::queue_len(conn, &dlq).await as usize, N);
        // A dead letter of this run: exhausted after its second attempt.
        let dead = support::bridge::get_one(conn, &dlq)
            .await
            .expect("a dead letter");
        let kind = warren::amqp::header_str(&dead.properties, warren::amqp::hdr::ERROR_KIND);
        assert_eq!(kind, Some("exhausted"), "{name}");
        let attempt = warren::amqp::header_u32(&dead.properties, warren::amqp::hdr::ATTEMPT);
        assert_eq!(attempt, 2, "{name}");
    } else {
        let dead = support::queue_len(conn, &dlq).await;
        assert_eq!(dead, 0, "{name}: events were dead-lettered");
    }
    t.cleanup(conn).await;
    rss
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn worker_peak_rss_under_load() {
    let conn = support::connect().await;
    println!("worker alone, {N} events per run:");
    for prefetch in [100, 1000] {
        for queue_type in ["classic", "quorum"] {
            for fail in [false, true] {
                let rss = run(&conn, queue_type, prefetch, fail).await;
                let mode = if fail {
                    "retry, then dead-letter"
                } else {
                    "ack"
                };
                println!("  prefetch {prefetch:4} {queue_type:7} {mode:24} peak RSS {rss:5.1} MiB");
            }
        }
    }
}
