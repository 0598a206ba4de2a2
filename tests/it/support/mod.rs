//! Shared integration-test support: unique topologies on the real broker, publishing test
//! envelopes, reading queues, running the real `warren` binary, and polling for conditions.
//!
//! Every AMQP name a test creates carries a unique prefix and an `x-expires`, and tests call
//! [`TestTopology::cleanup`] at the end; the expiry catches what a failed test leaves behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection};
use warren::amqp::{self, AmqpUrl};
use warren::topology::Topology;

/// The broker every test uses.
pub fn amqp_url() -> String {
    if let Some(node) = node::current() {
        return node.url.clone();
    }
    std::env::var("AMQP_URL").unwrap_or_else(|_| amqp::DEFAULT_AMQP_URL.to_string())
}

/// A parsed [`amqp_url`].
pub fn url() -> AmqpUrl {
    amqp_url().parse().expect("AMQP_URL parses")
}

/// A connection for the test itself.
pub async fn connect() -> Connection {
    amqp::connect(&url(), "test", "driver")
        .await
        .expect("broker reachable")
}

/// A prefix no other test (or earlier run) uses, e.g. `t-retry-01J….`.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "t-{test}-{}.",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A test topology: fast retry tiers, short expiry, two queues bound to overlapping keys.
pub const FAST_TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 20
max_attempts = 3
retry_delays = ["300ms", "600ms"]
delivery_limit = 4
expires = "10m"

[[queues]]
name = "work"
bind = ["test.*", "shared.event"]

[[queues]]
name = "other"
bind = ["shared.event"]
"#;

/// A topology written to a temp file and namespaced under a unique prefix.
pub struct TestTopology {
    pub prefix: String,
    pub path: PathBuf,
    pub topology: Topology,
    _dir: tempfile::TempDir,
}

impl TestTopology {
    /// Writes `toml` to a temp file and loads it under a unique prefix. With
    /// `WARREN_TEST_KEEP=1` the scratch directory (logs, records) survives the test.
    pub fn new(test: &str, toml: &str) -> Self {
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("warren-{test}-"))
            .tempdir()
            .expect("tempdir");
        if std::env::var("WARREN_TEST_KEEP").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let path = dir.path().join("topology.toml");
        std::fs::write(&path, toml).expect("write topology");
        let prefix = unique_prefix(test);
        let topology = Topology::load(&path, &prefix).expect("test topology is valid");
        Self {
            prefix,
            path,
            topology,
            _dir: dir,
        }
    }

    /// [`FAST_TOPOLOGY`] under a unique prefix.
    pub fn fast(test: &str) -> Self {
        Self::new(test, FAST_TOPOLOGY)
    }

    /// A scratch directory that lives as long as the topology.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The full name of a queue from the file.
    pub fn queue(&self, name: &str) -> String {
        self.topology
            .queue(name)
            .expect("queue in test topology")
            .name
            .clone()
    }

    /// `-f <file> --prefix <prefix>`, for the binary.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-f".into(),
            self.path.display().to_string(),
            "--prefix".into(),
            self.prefix.clone(),
        ]
    }

    /// Declares everything.
    pub async fn apply(&self, conn: &Connection) {
        warren::topology::apply(conn, &self.topology.plan())
            .await
            .expect("apply test topology");
    }

    /// Deletes everything the topology declared.
    pub async fn cleanup(&self, conn: &Connection) {
        let _ = warren::topology::delete(conn, &self.topology.plan()).await;
    }
}

/// A valid envelope of `event_type` with `payload`; returns (eventId, body).
pub fn envelope(event_type: &str, payload: serde_json::Value) -> (String, Vec<u8>) {
    let id = ulid::Ulid::generate().to_string();
    let body = serde_json::json!({
        "eventId": id,
        "type": event_type,
        "agentId": "pf_agent_test",
        "payload": payload,
        "ts": now_ms(),
    });
    (id, serde_json::to_vec(&body).expect("json"))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Publishes raw bodies with confirms, as the bridge would (persistent, message_id = id).
pub async fn publish(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    messages: &[(String, Vec<u8>)],
) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for (id, body) in messages {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .expect("publish");
        let c = confirm.await.expect("confirm");
        assert!(c.is_ack(), "broker nacked a test publish");
        assert!(
            c.take_message().is_none(),
            "test publish to {exchange}/{routing_key} was unroutable"
        );
    }
    let _ = ch.close(200, "ok".into()).await;
}

/// Publishes `n` envelopes of `event_type` with `payload` to the topology's events exchange.
pub async fn publish_events(
    conn: &Connection,
    t: &TestTopology,
    event_type: &str,
    payload: serde_json::Value,
    n: usize,
) -> Vec<String> {
    let msgs: Vec<_> = (0..n)
        .map(|_| envelope(event_type, payload.clone()))
        .collect();
    publish(conn, &t.topology.events_exchange, event_type, &msgs).await;
    msgs.into_iter().map(|(id, _)| id).collect()
}

/// Ready messages in a queue.
pub async fn queue_len(conn: &Connection, queue: &str) -> u32 {
    amqp::inspect_queue(conn, queue)
        .await
        .expect("broker answers")
        .unwrap_or_else(|| panic!("queue {queue} exists"))
        .0
}

/// Takes every message out of a queue (acking each) and returns them in order.
pub async fn drain(conn: &Connection, queue: &str) -> Vec<lapin::message::Delivery> {
    let ch = conn.create_channel().await.expect("channel");
    let mut out = vec![];
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        out.push(m.delivery);
    }
    let _ = ch.close(200, "ok".into()).await;
    out
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Sets the memory watermark back to the broker's configured value (`rabbitmq.conf` or the
/// version's default: 0.4 before 4.0, 0.6 since), whatever a test set at runtime.
pub const RESTORE_WATERMARK: &str = "case application:get_env(rabbit, vm_memory_high_watermark) of \
     {ok, W} -> ok = vm_memory_monitor:set_vm_memory_high_watermark(W), W; Other -> Other end.";

/// Runs `rabbitmqctl` and returns stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = node::ctl_command()
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

/// `messages_unacknowledged` of one queue as `rabbitmqctl list_queues` reports it (exact for
/// classic queues). For quorum queues this comes from periodic stats and can lag; use
/// [`unacked_of`] for exact counts. Panics when the queue is not listed or its figure is not
/// a number, so that `unacked(q) == 0` cannot pass for a queue that is not there.
pub fn unacked(queue: &str) -> u64 {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ]);
    let (_, n) = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .unwrap_or_else(|| panic!("queue '{queue}' is not in `rabbitmqctl list_queues`"));
    n.trim().parse().unwrap_or_else(|_| {
        panic!("queue '{queue}': messages_unacknowledged is {n:?}, not a number")
    })
}

/// Broker-side pids of the connections opened by OS process `pid` (their client-provided
/// names, `warren <component> <host:pid> <role>`, carry the OS pid).
pub fn connections_of(pid: u32) -> Vec<String> {
    let needle = format!(":{pid} ");
    rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .filter(|(_, props)| {
        props
            .split("\"connection_name\",\"")
            .nth(1)
            .is_some_and(|rest| rest.contains(&needle))
    })
    .map(|(conn, _)| conn.to_string())
    .collect()
}

/// `(state, client-provided name)` of every broker connection, e.g. `("blocked", "warren worker
/// host:42 publish")`. Connections without a name are left out.
pub fn connection_states() -> Vec<(String, String)> {
    rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "state",
        "client_properties",
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .filter_map(|(state, props)| {
        let name = props.split("\"connection_name\",\"").nth(1)?;
        let name = name.split('"').next()?;
        Some((state.trim().to_string(), name.to_string()))
    })
    .collect()
}

/// Messages delivered to OS process `pid` and not yet acked, summed over its channels. Read
/// from the channel processes, which (unlike quorum-queue stats) are exact at any moment.
pub fn unacked_of(pid: u32) -> u64 {
    unacked_on(&connections_of(pid))
}

/// Unacked messages over every channel of the given broker connections.
pub fn unacked_on(conns: &[String]) -> u64 {
    rabbitmqctl(&[
        "list_channels",
        "-q",
        "--no-table-headers",
        "connection",
        "messages_unacknowledged",
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .filter(|(conn, _)| conns.iter().any(|c| c == conn))
    .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
    .sum()
}

/// Closes every broker connection opened by OS process `pid`, leaving other tests' alone.
pub fn close_connections_of(pid: u32) -> usize {
    let conns = connections_of(pid);
    for conn in &conns {
        let _ = node::ctl_command()
            .args(["close_connection", conn, "test: dropped connection"])
            .output();
    }
    conns.len()
}

/// A running `warren` process; killed with SIGKILL when dropped.
pub struct Warren {
    pub child: Child,
    pub log: PathBuf,
}

impl Warren {
    /// Starts `warren <args>` with stderr going to `log`.
    pub fn spawn(args: &[String], log: &Path, envs: &[(&str, &str)]) -> Self {
        let stderr = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(args)
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info,warren=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawn warren"),
            log: log.to_path_buf(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (SIGTERM, SIGINT…).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal");
    }

    /// Waits for exit up to `timeout`; returns the exit status code (None if killed by signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if start.elapsed() > timeout {
                self.kill9();
                panic!(
                    "warren did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// What it wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        if self.running() {
            self.kill9();
        }
    }
}

pub mod bridge;
pub mod cluster;
pub mod dlq;
pub mod downstream;
pub mod fleet;
pub mod node;
pub mod pg;
pub mod proxy;
pub mod recorder;
pub mod trader;
pub mod worker;
