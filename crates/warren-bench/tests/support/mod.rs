//! What the benchmark's test binaries (`smoke`, `tools`) share: the broker's URL, `rabbitmqctl`,
//! a command's JSON report, and the `warren` binary the bridge and lanes benchmarks start.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The broker under test: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| warren::amqp::DEFAULT_AMQP_URL.to_string())
}

/// Runs `rabbitmqctl` and returns its stdout; panics with its stderr when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The JSON report a command printed on stdout, once it exited 0; `what` names the command in
/// the panic, which carries its stderr.
pub fn json_report(out: &std::process::Output, what: &str) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The `warren` binary built beside `warren-bench` (`cargo build --workspace` builds both).
pub fn warren_exe() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_warren-bench"));
    let warren = bench.with_file_name("warren");
    assert!(
        warren.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        warren.display()
    );
    warren
}
