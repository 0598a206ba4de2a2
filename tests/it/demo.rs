//! `warren demo`, run as a user would: the binary against the real broker, its JSON report
//! checked against the promise (nothing lost, no effect twice), and nothing left behind.

use std::process::{Command, Output};

use crate::support::{amqp_url, rabbitmqctl};
use serde_json::Value;

fn demo(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("demo")
        .args(args)
        .env("AMQP_URL", url)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run warren demo")
}

/// The report, after checking the run succeeded.
fn report(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "warren demo failed ({:?}):\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not the JSON report ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn n(r: &Value, field: &str) -> u64 {
    r[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {r}"))
}

/// Every event accounted for once, each processed event effected once.
fn assert_promise_kept(r: &Value, events: u64) {
    assert_eq!(n(r, "emitted"), events, "{r}");
    assert_eq!(n(r, "lost"), 0, "{r}");
    assert_eq!(n(r, "effected_twice"), 0, "{r}");
    assert_eq!(n(r, "unrouted"), 0, "{r}");
    assert_eq!(n(r, "processed") + n(r, "dead_lettered"), events, "{r}");
    assert_eq!(n(r, "effects"), n(r, "processed"), "{r}");
    assert!(n(r, "published") >= events, "{r}");
}

/// No queue or exchange of the run's prefix is left on the broker.
fn assert_cleaned_up(r: &Value) {
    let prefix = r["prefix"].as_str().expect("prefix");
    assert!(prefix.starts_with("demo-"), "{prefix}");
    let queues = rabbitmqctl(&["list_queues", "-q", "name"]);
    let exchanges = rabbitmqctl(&["list_exchanges", "-q", "name"]);
    for name in queues.lines().chain(exchanges.lines()) {
        assert!(!name.starts_with(prefix), "left behind: {name}");
    }
}

#[test]
fn demo_processes_every_event_once_and_cleans_up() {
    let out = demo(
        &["--events", "300", "--workers", "2", "-o", "json"],
        &amqp_url(),
    );
    let r = report(&out);
    assert_promise_kept(&r, 300);
    // Without faults nothing fails, so everything is processed.
    assert_eq!(n(&r, "processed"), 300, "{r}");
    assert_eq!(n(&r, "worker_kills"), 0, "{r}");
    assert!(r["latency"]["p99_ms"].as_u64().is_some(), "{r}");
    assert_cleaned_up(&r);
}

#[test]
fn demo_with_faults_and_a_killed_worker_loses_nothing() {
    let out = demo(
        &[
            "--events",
            "300",
            "--workers",
            "2",
            "--faults",
            "--seed",
            "7",
            "-o",
            "json",
        ],
        &amqp_url(),
    );
    let r = report(&out);
    assert_promise_kept(&r, 300);
    assert_eq!(n(&r, "worker_kills"), 1, "{r}");
    // The faults did happen: duplicates reached the bridge and the downstream and were absorbed.
    assert!(r["duplicates_absorbed"]["bridge"].as_u64() > Some(0), "{r}");
    assert!(
        r["duplicates_absorbed"]["downstream"].as_u64() > Some(0),
        "{r}"
    );
    assert_cleaned_up(&r);
}

#[test]
fn demo_without_a_broker_says_so_in_one_line() {
    let out = demo(
        &["--events", "10"],
        "amqp://guest:s3cret-pw@127.0.0.1:1/%2f",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"", "no report without a broker");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    let line = lines[0];
    assert!(
        line.contains("no RabbitMQ at amqp://guest:***@127.0.0.1:1"),
        "{line}"
    );
    assert!(line.contains("scripts/demo.sh"), "{line}");
    assert!(line.contains("rabbitmq-server"), "{line}");
    for bad in ["panicked", "backtrace", "s3cret-pw"] {
        assert!(!stderr.contains(bad), "{bad} in {stderr}");
    }
}
