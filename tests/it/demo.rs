//! `warren demo`, run as a user would: the binary against the real broker, its JSON report
//! checked against the promise (nothing lost, no effect twice), and nothing left behind.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{amqp_url, rabbitmqctl};
use serde_json::Value;

fn demo(args: &[&str], url: &str) -> Output {
    demo_in(args, url, &std::env::temp_dir())
}

/// `warren demo` with its temp directory (`TMPDIR`) in `tmp`.
fn demo_in(args: &[&str], url: &str, tmp: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("demo")
        .args(args)
        .env("AMQP_URL", url)
        .env("RUST_LOG", "info")
        .env("TMPDIR", tmp)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run warren demo")
}

/// What a temp directory holds, by name.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read the temp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
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
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = demo_in(
        &["--events", "300", "--workers", "2", "-o", "json"],
        &amqp_url(),
        tmp.path(),
    );
    let r = report(&out);
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "left in TMPDIR");
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

/// `--keep` prints commands for status and every read of the DLQs; each one runs as printed
/// with `warren` on PATH, and the removal line leaves neither queues nor files behind.
#[test]
fn demo_keep_hints_run_as_printed_and_remove_everything() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let url = amqp_url();
    let out = demo_in(
        &[
            "--events", "300", "--faults", "--seed", "7", "--keep", "-o", "json",
        ],
        &url,
        tmp.path(),
    );
    let r = report(&out);
    assert!(
        n(&r, "dead_lettered") > 0,
        "the faults dead-letter some: {r}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hints: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  warren "))
        .collect();
    for command in [
        "status ",
        "dlq list ",
        "dlq stats ",
        "dlq show ",
        "dlq replay ",
        "topology delete ",
    ] {
        assert!(
            hints.iter().any(|h| h.starts_with(command)),
            "no `warren {command}` hint in:\n{stderr}"
        );
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_warren"))
        .parent()
        .expect("bin dir");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The removal line last, as a user would.
    for hint in &hints {
        let line = format!("warren {hint}");
        let run = Command::new("sh")
            .args(["-c", &line])
            .env("PATH", &path)
            .env("AMQP_URL", &url)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the hint");
        assert!(
            run.status.success(),
            "`{line}` failed ({:?}):\n{}{}",
            run.status,
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    assert_cleaned_up(&r);
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "left in TMPDIR");
}

/// Processes whose command line holds `needle` (the demo's workers carry its prefix).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// Ctrl-C mid-run: the demo stops its workers, deletes its queues, prints the partial report
/// and exits 130.
#[test]
fn demo_interrupted_prints_a_partial_report_cleans_up_and_exits_130() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["demo", "--events", "20000", "--rate", "200", "-o", "json"])
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "info")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warren demo");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("Demo: emitted") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Mid-run: the first progress line is out, the workers consume.
    rx.recv_timeout(std::time::Duration::from_secs(90))
        .expect("a progress line");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("wait for the demo");
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report on stdout ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(r["interrupted"], Value::Bool(true), "{r}");
    assert!(n(&r, "emitted") < 20000, "stopped mid-run: {r}");
    assert_eq!(n(&r, "effected_twice"), 0, "{r}");
    let prefix = r["prefix"].as_str().expect("prefix");
    assert_eq!(processes_with(prefix), Vec::<String>::new(), "workers left");
    assert_cleaned_up(&r);
    assert_eq!(entries(tmp.path()), Vec::<String>::new(), "left in TMPDIR");
}

/// `--help` promises only what the seed controls.
#[test]
fn demo_help_says_what_the_seed_controls() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["demo", "--help"])
        .output()
        .expect("warren demo --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(!help.contains("the same seed, the same run"), "{help}");
    assert!(
        help.contains("rolled per idempotency key and attempt"),
        "{help}"
    );
    assert!(help.contains("follow the clock"), "{help}");
}

/// The worker kill of `--faults` comes at 40% of the events settled, processed or
/// dead-lettered: a run whose events mostly dead-letter (here every tick and candle goes stale
/// at once) kills one too.
#[test]
fn demo_with_faults_kills_a_worker_when_most_events_dead_letter() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let topology = tmp.path().join("stale.toml");
    let text = warren::demo::DEFAULT_TOPOLOGY.replace(
        "live_only = [\"market.tick\"]\nlive_ttl = \"30s\"",
        "live_only = [\"market.tick\", \"market.candle\"]\nlive_ttl = \"1ms\"",
    );
    assert_ne!(text, warren::demo::DEFAULT_TOPOLOGY, "the topology changed");
    std::fs::write(&topology, text).expect("write the topology");
    let out = demo_in(
        &[
            "--events",
            "300",
            "--faults",
            "-f",
            topology.to_str().expect("utf-8 path"),
            "-o",
            "json",
        ],
        &amqp_url(),
        tmp.path(),
    );
    let r = report(&out);
    assert_promise_kept(&r, 300);
    assert!(
        n(&r, "processed") * 10 < 300 * 4,
        "most events dead-lettered: {r}"
    );
    assert_eq!(n(&r, "worker_kills"), 1, "{r}");
}

/// `--sink postgres`: the same pipeline into PostgreSQL, a worker killed midway; the rows per
/// type, counted in SQL, equal the distinct events emitted, and the run's schema is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_into_postgres_reconciles_rows_in_sql_and_drops_its_schema() {
    use crate::support::pg::{CANARY, database_url};
    let url = database_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["demo", "--sink", "postgres", "--events", "300"])
            .args(["--workers", "2", "--faults", "--seed", "3", "-o", "json"])
            .env("AMQP_URL", amqp_url())
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            .output()
            .expect("run warren demo")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(CANARY), "the password leaked:\n{stderr}");
    let r = report(&out);
    assert_promise_kept(&r, 300);
    assert_eq!(r["sink"], "postgres", "{r}");
    assert_eq!(n(&r, "worker_kills"), 1, "{r}");
    assert_eq!(n(&r, "phantom"), 0, "{r}");
    let rows = r["rows"].as_array().expect("rows per type");
    let stored: u64 = rows.iter().map(|t| n(t, "stored")).sum();
    let emitted: u64 = rows.iter().map(|t| n(t, "emitted")).sum();
    assert_eq!(emitted, 300, "{r}");
    assert_eq!(stored, n(&r, "processed"), "{r}");
    for t in rows {
        let dead = n(t, "emitted") - n(t, "stored");
        assert!(dead <= n(&r, "dead_lettered"), "{t} in {r}");
    }
    // Two workers on the laned trading queue and on payments: events bound twice, and the
    // killed worker's redeliveries, were found in the inbox.
    assert!(n(&r["duplicates_absorbed"], "downstream") > 0, "{r}");
    let schema = format!(
        "demo_{}",
        r["prefix"]
            .as_str()
            .unwrap()
            .trim_start_matches("demo-")
            .trim_end_matches('.')
    );
    let (client, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let left = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .expect("query");
    assert_eq!(left.get::<_, i64>(0), 0, "schema {schema} left behind");
    assert_cleaned_up(&r);
}

#[test]
fn demo_into_postgres_without_a_database_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["demo", "--sink", "postgres", "--events", "10"])
        .env("AMQP_URL", amqp_url())
        .env_remove("DATABASE_URL")
        .output()
        .expect("run warren demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--database-url") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
}
