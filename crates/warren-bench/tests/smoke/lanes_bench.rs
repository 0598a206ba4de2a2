//! The lanes scenario in a tiny run: 200 events on a 16-lane queue, drained by one `warren
//! worker` process, then two, one round. Checks the plumbing: every event effected exactly once
//! in each run (the bench fails a run otherwise: the simulated API's ledger must hold one
//! effect per event, the lanes and the dead-letter queue nothing), no duplicate POSTs, the
//! report's rows and ratios to one worker, and nothing left under the run's prefix. No timing
//! is asserted.
//!
//! The events go through the events exchange, as the bridge publishes them: the bench refuses a
//! fill where an event reaches more than one lane.

use std::process::Command;

use crate::support::{amqp_url, json_report, rabbitmqctl, warren_exe};

const EVENTS: u64 = 200;

#[test]
fn lanes_drain_exactly_once_with_one_and_two_workers_and_clean_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-bench"))
        .args(["--scenario", "lanes", "--workers", "2", "--rounds", "1"])
        .args(["--messages", &EVENTS.to_string(), "--concurrency", "4"])
        .arg("--warren")
        .arg(warren_exe())
        .args(["-o", "json"])
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
        ["lanes=16, 1 worker", "lanes=16, 2 workers"],
        "{report}"
    );
    let queues = rabbitmqctl(&["list_queues", "-q", "name"]);
    let exchanges = rabbitmqctl(&["list_exchanges", "-q", "name"]);
    for (row, workers) in rows.iter().zip([1, 2]) {
        assert_eq!(row["params"]["kind"], "lanes", "{row}");
        assert_eq!(row["params"]["workers"], workers, "{row}");
        assert_eq!(row["params"]["lanes"], 16, "{row}");
        assert_eq!(row["queue_type"], "quorum", "{row}");
        let scaling = &row["scaling"];
        assert!(
            scaling["throughput"].as_f64().unwrap_or(0.0) > 0.0,
            "no ratio to one worker: {row}"
        );
        let lanes = &row["lanes"];
        assert_eq!(lanes["events"].as_u64(), Some(EVENTS), "{row}");
        assert_eq!(lanes["routing"], "exchange", "{row}");
        assert!(
            lanes["worker_args"]
                .as_str()
                .unwrap_or("")
                .contains("--handler http"),
            "{row}"
        );
        let runs = row["warren"]["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1, "{row}");
        let run = &runs[0];
        assert_eq!(run["messages"].as_u64(), Some(EVENTS), "{run}");
        assert!(run["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{run}");
        assert_eq!(run["lanes"]["workers"], workers, "{run}");
        assert_eq!(run["lanes"]["replays"].as_u64(), Some(0), "{run}");
        assert!(
            run["lanes"]["convergence_secs"].as_f64().unwrap_or(0.0) > 0.0,
            "{run}"
        );
        let prefix = run["prefix"].as_str().expect("prefix");
        assert!(prefix.starts_with("bench-"), "{run}");
        for name in queues.lines().chain(exchanges.lines()) {
            assert!(!name.starts_with(prefix), "left behind: {name}");
        }
    }
    // One worker is the reference: its own ratio is 1.
    assert_eq!(
        rows[0]["scaling"]["throughput"].as_f64(),
        Some(1.0),
        "{report}"
    );
}
