//! `compare` in a tiny smoke run: warren, raw lapin and the aio-pika peer each measure
//! consume, e2e and saturation once against the real broker, the report carries every figure
//! the comparison needs, every contender holds saturation's in-flight bound, and every run's
//! topology is gone afterwards. Checks the plumbing only: no timing is asserted. Needs python3 (the script is stdlib only; it makes the peer's venv from PyPI with
//! peers/setup.sh when missing). Without python3 the test fails, unless
//! WARREN_NO_PYTHON=1 says so on purpose.

use std::path::Path;
use std::process::Command;

use crate::support::{amqp_url, json_report, rabbitmqctl};
use serde_json::Value;

const MESSAGES: u64 = 200;
/// Saturation's bound, well under `MESSAGES` and the publishers' 256-message confirm window.
const BOUND: u64 = 30;

fn has_python() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn figure(run: &Value, field: &str) -> f64 {
    run[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {run}"))
}

#[test]
#[ignore = "needs python3 and valgrind: crates/warren-bench/check.sh runs it"]
fn compare_runs_all_three_contenders_and_cleans_up() {
    if !has_python() {
        if std::env::var("WARREN_NO_PYTHON").as_deref() == Ok("1") {
            eprintln!("SKIPPED on purpose (WARREN_NO_PYTHON=1): bench/compare needs python3");
            return;
        }
        panic!("bench/compare needs python3 (apt-get install python3 python3-venv)");
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(here.join("compare"))
        .args(["--rounds", "1", "--messages", &MESSAGES.to_string()])
        .args([
            "--scenario",
            "consume",
            "--scenario",
            "e2e",
            "--scenario",
            "saturation",
        ])
        .args(["--max-in-flight", &BOUND.to_string(), "--json"])
        .args(["--warren", env!("CARGO_BIN_EXE_warren-bench")])
        .arg("--fsync-dir")
        .arg(std::env::temp_dir())
        .env("AMQP_URL", amqp_url())
        .output()
        .expect("run bench/compare");
    let report = json_report(&out, "bench/compare");

    // One round: every scenario once per contender, in the interleaved order.
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 1, "{report}");
    let round = &rounds[0];
    assert!(figure(&round["fsync"], "max_ms") >= 0.0, "{round}");
    let order: Vec<(String, String)> = round["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap_or("").to_string(),
                r["contender"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["consume", "e2e", "saturation"]
        .iter()
        .flat_map(|s| {
            ["warren", "raw", "peer"]
                .iter()
                .map(move |c| (s.to_string(), c.to_string()))
        })
        .collect();
    assert_eq!(order, want, "{round}");

    let queues = rabbitmqctl(&["list_queues", "-q", "name"]);
    let exchanges = rabbitmqctl(&["list_exchanges", "-q", "name"]);
    for run in round["runs"].as_array().expect("runs") {
        let r = &run["result"];
        let contender = run["contender"].as_str().unwrap_or("");
        assert_eq!(r["side"], contender, "{run}");
        assert_eq!(r["messages"].as_u64(), Some(MESSAGES), "{run}");
        assert!(figure(r, "msgs_per_sec") > 0.0, "{run}");
        assert!(figure(r, "cpu_us_per_msg") > 0.0, "{run}");
        assert!(figure(r, "peak_rss_kib") > 0.0, "{run}");
        assert!(run["steal_pct"].is_number(), "{run}");
        if run["scenario"] == "saturation" {
            // Every contender, the Python peer included, held the bound.
            let peak = r["peak_in_flight"].as_u64().expect("peak_in_flight");
            assert!(peak <= BOUND, "{contender}: {peak} in flight: {run}");
            assert!(r["latency"]["p99_us"].as_u64().is_some(), "{run}");
        }
        // Nothing of the run's topology is left on the broker.
        let prefix = r["prefix"].as_str().expect("prefix");
        assert!(prefix.starts_with("bench-"), "{run}");
        for name in queues.lines().chain(exchanges.lines()) {
            assert!(!name.starts_with(prefix), "left behind: {name}");
        }
    }

    // Medians per contender and both ratios, with their spread, for each scenario.
    for s in report["scenarios"].as_array().expect("scenarios") {
        for c in ["warren", "raw", "peer"] {
            let tp = &s["contenders"][c]["throughput"];
            assert!(figure(tp, "median") > 0.0, "{s}");
        }
        for key in ["warren/raw", "warren/peer"] {
            let r = &s["ratios"][key];
            for f in ["throughput", "cpu_us_per_msg", "peak_rss_kib"] {
                let v = &r[f];
                assert!(
                    figure(v, "min") <= figure(v, "median")
                        && figure(v, "median") <= figure(v, "max"),
                    "{key} {f}: {v}"
                );
            }
        }
        assert!(!s["targets"].as_array().expect("targets").is_empty(), "{s}");
    }
}
