//! Support for the bridge and sim upstream tests: the topology they publish into, a running
//! `warren sim upstream`, its ledger, and reading event ids back from queues.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use super::{TestTopology, Warren, amqp_url};

/// One queue bound to every event type; ticks are live-only with a long TTL.
pub const BRIDGE_TOPOLOGY: &str = r##"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[events]
live_only = ["market.tick"]
live_ttl = "10m"

[defaults]
queue_type = "quorum"
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "all"
bind = ["#"]
"##;

/// The agent key the sim demands and the bridge presents.
pub const AGENT_KEY: &str = "pf_live_test_key_never_logged";
/// The agent id the bridge presents.
pub const AGENT_ID: &str = "pf_agent_test_id";

/// The environment the bridge needs.
pub fn bridge_env() -> Vec<(&'static str, &'static str)> {
    vec![("PF_AGENT_KEY", AGENT_KEY), ("PF_AGENT_ID", AGENT_ID)]
}

/// A running `warren sim upstream`.
pub struct Sim {
    pub child: Child,
    pub addr: String,
    pub ledger: PathBuf,
    pub log: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl Sim {
    /// Starts the sim on port 0 with `args`, a ledger and a log in `dir`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Self {
        let ledger = dir.join(format!("{name}.ledger"));
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["sim", "upstream", "--listen", "127.0.0.1:0", "--ledger"])
            .arg(&ledger)
            .args(args)
            .env("PF_AGENT_KEY", AGENT_KEY)
            .env("RUST_LOG", "info,warren=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("sim log"))
            .spawn()
            .expect("spawn sim");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("sim prints its address");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        Self {
            child,
            addr,
            ledger,
            log,
            _stdout: stdout,
        }
    }

    /// `ws://ADDR/api/stream`.
    pub fn url(&self) -> String {
        format!("ws://{}/api/stream", self.addr)
    }

    /// The ledger so far.
    pub fn ledger(&self) -> Ledger {
        Ledger::read(&self.ledger)
    }

    /// What the sim logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sim's ground truth.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every eventId, in emission order.
    pub ids: Vec<String>,
    /// Event type per eventId.
    pub types: BTreeMap<String, String>,
    /// Malformed frames sent, by kind.
    pub malformed: BTreeMap<String, usize>,
}

impl Ledger {
    /// Parses a ledger file.
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut l = Ledger::default();
        for line in text.lines() {
            if let Some(kind) = line.strip_prefix("# malformed ") {
                *l.malformed.entry(kind.to_string()).or_default() += 1;
            } else if let Some((id, t)) = line.split_once(' ') {
                l.ids.push(id.to_string());
                l.types.insert(id.to_string(), t.to_string());
            }
        }
        l
    }

    /// The distinct ids.
    pub fn set(&self) -> BTreeSet<String> {
        self.ids.iter().cloned().collect()
    }
}

/// `bridge --url … -f … --prefix …` plus `extra`.
pub fn bridge_args(t: &TestTopology, url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["bridge".into(), "--url".into(), url.into()];
    args.extend(t.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts the real bridge binary.
pub fn spawn_bridge(t: &TestTopology, url: &str, extra: &[&str], log: &Path) -> Warren {
    Warren::spawn(&bridge_args(t, url, extra), log, &bridge_env())
}

/// Takes every message from `queue` and returns their message ids, in order.
pub async fn drain_ids(conn: &Connection, queue: &str) -> Vec<String> {
    super::drain(conn, queue)
        .await
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// Waits until `queue` holds at least `n` ready messages, or `timeout` passes; returns the depth.
pub async fn wait_depth(conn: &Connection, queue: &str, n: u32, timeout: Duration) -> u32 {
    let start = std::time::Instant::now();
    loop {
        let depth = super::queue_len(conn, queue).await;
        if depth >= n || start.elapsed() > timeout {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes every message from `queue` with its full delivery, acking each.
pub async fn drain_all(conn: &Connection, queue: &str) -> Vec<lapin::message::Delivery> {
    super::drain(conn, queue).await
}

/// Reads messages without removing them would need a consumer; tests drain instead.
pub async fn get_one(conn: &Connection, queue: &str) -> Option<lapin::message::Delivery> {
    let ch = conn.create_channel().await.expect("channel");
    let m = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")?;
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    Some(m.delivery)
}

/// Counts of each id.
pub fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

/// The broker URL for in-process bridges.
pub fn url() -> warren::amqp::AmqpUrl {
    amqp_url().parse().expect("AMQP_URL parses")
}

/// When each line of `log` containing `needle` was written (tracing's RFC 3339 prefix).
pub fn log_times(log: &str, needle: &str) -> Vec<std::time::SystemTime> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|ts| humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')).ok())
        .collect()
}

/// The `addr=` of the first line of `w`'s log containing `needle` (servers bound to port 0
/// log the address they got), waiting up to 10 s for it.
pub async fn logged_addr(w: &Warren, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let found = w
            .log_text()
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .map(str::to_string);
        if let Some(a) = found {
            return a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no '{needle}' line with addr= in the log:\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the first sample of `series` (a name with its labels) in a Prometheus text body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
