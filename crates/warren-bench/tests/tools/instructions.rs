//! `instructions` in a small run: both sides of the retry scenario under callgrind against
//! the real broker, a per-message count for each, their ratio, the functions that differ, and no
//! topology left behind. Checks the plumbing, not the figures. Needs python3 and valgrind; without
//! them the test fails, unless WARREN_NO_VALGRIND=1 says so on purpose.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{amqp_url, json_report, rabbitmqctl};
use serde_json::Value;

const MESSAGES: u64 = 200;
/// Functions listed: enough that warren's republish lane is surely among them.
const TOP: usize = 200;

fn has(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn instructions(args: &[&str]) -> Output {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("python3")
        .arg(here.join("instructions"))
        .args(args)
        .args(["--warren", env!("CARGO_BIN_EXE_warren-bench")])
        .env("AMQP_URL", amqp_url())
        .output()
        .expect("run bench/instructions")
}

#[test]
#[ignore = "needs python3 and valgrind: crates/warren-bench/check.sh runs it"]
fn instructions_counts_both_sides_of_the_retry_path_and_cleans_up() {
    if !has("python3", "--version") || !has("valgrind", "--version") {
        if std::env::var("WARREN_NO_VALGRIND").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED on purpose (WARREN_NO_VALGRIND=1): bench/instructions needs valgrind"
            );
            return;
        }
        panic!("bench/instructions needs python3 and valgrind (apt-get install -y valgrind)");
    }
    let messages = MESSAGES.to_string();
    let top = TOP.to_string();
    let out = instructions(&["--messages", &messages, "--top", &top, "--json"]);
    let report = json_report(&out, "bench/instructions");
    assert_eq!(report["scenario"], "retry", "{report}");
    assert_eq!(report["messages"].as_u64(), Some(MESSAGES), "{report}");
    let warren = report["warren_per_message"].as_f64().expect("warren count");
    let raw = report["raw_per_message"].as_f64().expect("raw count");
    assert!(warren > 10_000.0 && raw > 10_000.0, "{report}");
    // What was counted is each side's measuring child, of the run the report names.
    for side in ["warren", "raw"] {
        let counted = report["counted"][side].as_str().expect("counted");
        let prefix = report["prefixes"][side].as_str().expect("prefix");
        assert!(
            counted.contains("bench --child") && counted.contains(prefix),
            "{side}: {counted}"
        );
        assert!(
            counted.contains(&format!("\"side\":\"{side}\"")),
            "{side}: {counted}"
        );
    }
    let ratio = report["ratio"].as_f64().expect("ratio");
    assert!((ratio - warren / raw).abs() < 0.01, "{report}");

    // The functions come largest difference first, and warren's own republish lane, which
    // raw has not, is among them. (Which functions make the first ten varies with the build
    // and the run: allocator and copy routines can fill them.)
    let top = report["top"].as_array().expect("top");
    assert_eq!(top.len(), TOP, "{report}");
    let diff = |t: &Value| {
        let w = t["warren_per_message"]
            .as_i64()
            .expect("warren_per_message");
        let r = t["raw_per_message"].as_i64().expect("raw_per_message");
        (w - r).abs()
    };
    // Rounded per message, the order may swap neighbours that differ by less than one.
    assert!(
        top.windows(2).all(|p| diff(&p[0]) + 1 >= diff(&p[1])),
        "not in order of difference: {report}"
    );
    assert!(
        top.iter().any(|t| t["function"]
            .as_str()
            .is_some_and(|f| f.contains("batch::run_lane"))
            && t["raw_per_message"] == 0
            && t["warren_per_message"].as_i64().unwrap_or(0) > 0),
        "{report}"
    );

    // Nothing of either run's topology is left on the broker.
    let queues = rabbitmqctl(&["list_queues", "-q", "name"]);
    let exchanges = rabbitmqctl(&["list_exchanges", "-q", "name"]);
    for side in ["warren", "raw"] {
        let prefix = report["prefixes"][side].as_str().expect("prefix");
        assert!(prefix.starts_with("bench-"), "{report}");
        for name in queues.lines().chain(exchanges.lines()) {
            assert!(!name.starts_with(prefix), "left behind: {name}");
        }
    }
}

#[test]
#[ignore = "needs python3 and valgrind: crates/warren-bench/check.sh runs it"]
fn instructions_refuses_bad_arguments_naming_them() {
    if !has("python3", "--version") {
        if std::env::var("WARREN_NO_VALGRIND").as_deref() == Ok("1") {
            return;
        }
        panic!("bench/instructions needs python3");
    }
    for (args, field) in [
        (&["--messages", "0"][..], "--messages"),
        (&["--prefetch", "70000"][..], "--prefetch"),
        (&["--max-in-flight", "-1"][..], "--max-in-flight"),
        (&["--scenario", "nope"][..], "--scenario"),
    ] {
        let out = instructions(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
}
