//! `warren-bench` itself in a tiny smoke run against the real broker: the retry scenario at a
//! prefetch given on the command line, beside the raw baseline. Checks the plumbing (every
//! message reaches the dead-letter queue on both sides, the report names the prefetch, the
//! topology is gone afterwards); no timing is asserted.

use std::process::Command;

use crate::support::{amqp_url, json_report, rabbitmqctl};

const MESSAGES: u64 = 100;

#[test]
fn retry_runs_at_the_given_prefetch_on_both_sides_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-bench"))
        .args(["--scenario", "retry", "--prefetch", "7"])
        .args(["--messages", &MESSAGES.to_string(), "--baseline", "raw"])
        .args(["-o", "json"])
        .env("AMQP_URL", amqp_url())
        .output()
        .expect("run warren-bench");
    let report = json_report(&out, "warren-bench");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{report}");
    let row = &rows[0];
    assert_eq!(row["scenario"], "retry+dead-letter prefetch=7", "{row}");
    assert_eq!(row["params"]["kind"], "retry", "{row}");
    assert_eq!(row["params"]["prefetch"], 7, "{row}");
    assert!(row["ratios"].is_object(), "no warren ÷ raw: {row}");
    assert!(
        row["ratios"]["settle"].as_f64().unwrap_or(0.0) > 0.0,
        "{row}"
    );

    let queues = rabbitmqctl(&["list_queues", "-q", "name"]);
    let exchanges = rabbitmqctl(&["list_exchanges", "-q", "name"]);
    for side in ["warren", "raw"] {
        let run = &row[side]["runs"][0];
        // A run ends only once its dead-letter queue holds every message.
        assert_eq!(run["messages"].as_u64(), Some(MESSAGES), "{side}: {run}");
        assert!(run["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{run}");
        // Each side timed its settles (failure → republish confirmed → ack).
        assert!(
            run["settle_ms"].as_f64().unwrap_or(0.0) > 0.0,
            "{side}: {run}"
        );
        let prefix = run["prefix"].as_str().expect("prefix");
        assert!(prefix.starts_with("bench-"), "{run}");
        for name in queues.lines().chain(exchanges.lines()) {
            assert!(!name.starts_with(prefix), "left behind: {name}");
        }
    }
}

/// Saturation reports, beside the completion rate and latency, the load generator's own rate
/// and its backlog's high-water mark on each side. With `--max-in-flight`, neither side's
/// publisher ever has more than that many messages published and not yet handled; with 0, no
/// bound applies and the high-water mark is still reported.
#[test]
fn saturation_bounds_each_sides_backlog_and_reports_its_publish_rate() {
    const BOUND: u64 = 40;
    let out = Command::new(env!("CARGO_BIN_EXE_warren-bench"))
        .args(["--scenario", "saturation"])
        .args([
            "--max-in-flight",
            &BOUND.to_string(),
            "--max-in-flight",
            "0",
        ])
        .args(["--messages", "600", "--baseline", "raw", "-o", "json"])
        .env("AMQP_URL", amqp_url())
        .output()
        .expect("run warren-bench");
    let report = json_report(&out, "warren-bench");
    let rows = report["rows"].as_array().expect("rows");
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        labels,
        [
            format!("saturation in-flight≤{BOUND}").as_str(),
            "saturation unbounded"
        ],
        "{report}"
    );
    assert_eq!(
        rows[0]["params"]["max_in_flight"].as_u64(),
        Some(BOUND),
        "{report}"
    );
    assert_eq!(
        rows[1]["params"]["max_in_flight"].as_u64(),
        Some(0),
        "{report}"
    );
    let queues = rabbitmqctl(&["list_queues", "-q", "name"]);
    for (i, row) in rows.iter().enumerate() {
        for side in ["warren", "raw"] {
            let run = &row[side]["runs"][0];
            assert_eq!(run["messages"].as_u64(), Some(600), "{side}: {run}");
            let published = run["publish_msgs_per_sec"].as_f64().unwrap_or(0.0);
            let consumed = run["msgs_per_sec"].as_f64().unwrap_or(0.0);
            assert!(published > 0.0 && consumed > 0.0, "{side}: {run}");
            assert!(run["latency"]["p99_us"].as_f64().is_some(), "{side}: {run}");
            let peak = run["peak_in_flight"].as_u64().expect("peak_in_flight");
            if i == 0 {
                assert!(
                    peak <= BOUND,
                    "{side}: {peak} in flight, bound {BOUND}: {run}"
                );
            } else {
                // Unbounded, a publisher with 256 confirms outstanding gets further ahead of
                // its consumer than the bound: so the bounded row's check can fail.
                assert!(
                    peak > BOUND,
                    "{side}: unbounded, only {peak} in flight: {run}"
                );
            }
            let prefix = run["prefix"].as_str().expect("prefix");
            assert!(
                queues.lines().all(|q| !q.starts_with(prefix)),
                "{side}: left behind"
            );
        }
    }
}
