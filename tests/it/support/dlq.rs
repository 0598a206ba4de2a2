//! Helpers for the DLQ tests: dead letters as the worker would write them, broker-made dead
//! letters (delivery limit, TTL), and running `warren dlq …` as a subprocess.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueuePurgeOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use warren::amqp::{self, AMQPValue, ConfirmWindow, Message, Publisher, hdr, set_header};

use super::{TestTopology, amqp_url, envelope, queue_len};

/// A topology with a work queue (delivery limit 2) and a live queue whose messages expire
/// after 200 ms.
pub const DLQ_TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[events]
live_only = ["live.tick"]
live_ttl = "200ms"

[defaults]
queue_type = "quorum"
prefetch = 50
max_attempts = 3
retry_delays = ["300ms", "600ms"]
delivery_limit = 2
expires = "10m"

[[queues]]
name = "work"
bind = ["test.#"]

[[queues]]
name = "live"
bind = ["live.tick"]
message_ttl = "200ms"
"#;

/// One dead letter to publish: what the worker would have stamped on it.
#[derive(Debug, Clone)]
pub struct Dead {
    pub id: String,
    pub event_type: String,
    pub kind: &'static str,
    pub error: String,
    pub origin: String,
    /// The DLX routing key (the DLQ it lands in); normally the origin.
    pub route: String,
    pub attempt: u32,
    pub body: Vec<u8>,
}

impl Dead {
    /// A valid envelope of `event_type` dead-lettered from `origin` as `kind`.
    pub fn new(event_type: &str, kind: &'static str, error: &str, origin: &str) -> Self {
        Self::with_payload(event_type, kind, error, origin, serde_json::json!({"n": 1}))
    }

    /// Like [`Dead::new`] with the envelope's payload given (e.g. a chaos directive).
    pub fn with_payload(
        event_type: &str,
        kind: &'static str,
        error: &str,
        origin: &str,
        payload: serde_json::Value,
    ) -> Self {
        let (id, body) = envelope(event_type, payload);
        Self {
            id,
            event_type: event_type.into(),
            kind,
            error: error.into(),
            origin: origin.into(),
            route: origin.into(),
            attempt: if kind == "exhausted" { 3 } else { 1 },
            body,
        }
    }

    /// Its properties, as `FailureHeaders::apply` writes them.
    pub fn properties(&self) -> BasicProperties {
        let mut m: BTreeMap<ShortString, AMQPValue> = BTreeMap::new();
        set_header(&mut m, hdr::AGENT_ID, "pf_agent_test");
        set_header(
            &mut m,
            hdr::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        set_header(&mut m, hdr::ATTEMPT, self.attempt);
        set_header(&mut m, hdr::ORIGIN_QUEUE, self.origin.as_str());
        set_header(&mut m, hdr::ERROR_KIND, self.kind);
        set_header(&mut m, hdr::ERROR, self.error.as_str());
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        set_header(&mut m, hdr::FIRST_FAILED_AT, now.as_str());
        set_header(&mut m, hdr::LAST_FAILED_AT, now);
        set_header(&mut m, hdr::WORKER, "testhost:1");
        BasicProperties::default()
            .with_message_id(self.id.as_str().into())
            .with_type(self.event_type.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(FieldTable::from(m))
    }
}

/// Publishes dead letters to the topology's DLX (routing key = origin), pipelined with
/// confirms, as the worker's DeadLetter disposition does.
pub async fn publish_dead(conn: &Connection, t: &TestTopology, dead: &[Dead]) {
    let publisher = Publisher::open(conn).await.expect("publisher");
    let mut window: ConfirmWindow<usize> = ConfirmWindow::new(256);
    for (i, d) in dead.iter().enumerate() {
        let confirm = publisher
            .send(Message {
                exchange: &t.topology.dead_letter_exchange,
                routing_key: &d.route,
                body: &d.body,
                properties: d.properties(),
                mandatory: true,
            })
            .await
            .expect("publish dead letter");
        window.push(i, confirm);
        while window.is_full() {
            window
                .next()
                .await
                .unwrap()
                .1
                .expect("dead letter confirmed");
        }
    }
    while let Some((_, r)) = window.next().await {
        r.expect("dead letter confirmed");
    }
}

/// Dead letters per benchmark run (`dlq_bench`, `console_bench`): 10,000, or `DLQ_BENCH_N`.
pub fn bench_count() -> usize {
    std::env::var("DLQ_BENCH_N")
        .ok()
        .map(|n| n.parse().expect("DLQ_BENCH_N is a number"))
        .unwrap_or(10_000)
}

/// The benchmarks' dead letters: `n` of one group (`HTTP 503 for order <n>`, exhausted) that
/// failed in `work`.
pub fn bench_dead(n: usize, work: &str) -> Vec<Dead> {
    (0..n)
        .map(|i| {
            Dead::new(
                "test.bench",
                "exhausted",
                &format!("HTTP 503 for order {i}"),
                work,
            )
        })
        .collect()
}

/// Empties the `work` queue of `t` and its DLQ, then publishes `dead` to the DLQ.
pub async fn refill(conn: &Connection, t: &TestTopology, dead: &[Dead]) {
    let ch = conn.create_channel().await.expect("channel");
    for q in [t.queue("work"), t.topology.queue("work").unwrap().dlq()] {
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }
    let _ = ch.close(200, "refilled".into()).await;
    publish_dead(conn, t, dead).await;
}

/// Publishes `n` envelopes straight to `queue` (default exchange); returns their ids.
pub async fn publish_to_queue(
    conn: &Connection,
    queue: &str,
    event_type: &str,
    n: usize,
) -> Vec<String> {
    let msgs: Vec<_> = (0..n)
        .map(|_| envelope(event_type, serde_json::json!({"n": 1})))
        .collect();
    super::publish(conn, "", queue, &msgs).await;
    msgs.into_iter().map(|(id, _)| id).collect()
}

/// Makes the broker dead-letter everything in quorum queue `queue` for its delivery limit:
/// consume every message on a fresh connection, then close the connection with all of them
/// unacked, until the queue is empty. A consumer going away counts as a delivery attempt in
/// every RabbitMQ version (unlike `basic.nack`, which stops counting in 4.3).
pub async fn exceed_delivery_limit(queue: &str) {
    for _round in 0..20 {
        let conn = amqp::connect(&super::url(), "test", "crash-loop")
            .await
            .expect("connect");
        let ready = queue_len(&conn, queue).await;
        if ready == 0 {
            amqp::close(&conn).await;
            return;
        }
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_qos(ready.min(60_000) as u16, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "crash".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut got = 0;
        while got < ready {
            match tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
                Ok(Some(Ok(_))) => got += 1,
                _ => break,
            }
        }
        // Close the connection without acking: the "worker" died mid-message.
        let _ = conn.close(320, "test: simulated crash".into()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("queue '{queue}' still has messages after 20 crash rounds");
}

/// Runs `warren <args>` to completion with stdin not a terminal. It blocks the calling thread:
/// tests calling it use a multi-threaded runtime so their own connections keep heartbeating.
pub fn warren(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run warren")
}

/// `args` followed by the topology's `-f … --prefix …`.
pub fn with_topology<'a>(t: &'a TestTopology, args: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(t.args());
    v
}

/// Runs `warren <args> -f … --prefix …` and returns (exit code, stdout, stderr).
pub fn warren_t(t: &TestTopology, args: &[&str]) -> (i32, String, String) {
    let v = with_topology(t, args);
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    let out = warren(&refs);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How long `warren <args> -f … --prefix …` took, start to exit (process start included);
/// panics with stderr on a non-zero exit.
pub fn timed_warren(t: &TestTopology, args: &[&str]) -> Duration {
    let start = std::time::Instant::now();
    let (code, _, err) = warren_t(t, args);
    let took = start.elapsed();
    assert_eq!(code, 0, "warren {args:?} failed: {err}");
    took
}

/// Runs `warren <args> -o json` with the topology and parses stdout; panics with stderr on a
/// non-zero exit.
pub fn warren_json(t: &TestTopology, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let (code, out, err) = warren_t(t, &a);
    assert_eq!(code, 0, "warren {args:?} failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("warren {args:?}: bad JSON ({e}): {out}"))
}

/// The `id` of every item of a JSON listing or report.
pub fn ids(v: &serde_json::Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

/// The message ids of `deliveries`.
pub fn delivery_ids(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .expect("message_id")
                .to_string()
        })
        .collect()
}

/// Runs `warren <args> -f … --prefix …` with stdin a pseudo-terminal (stdout and stderr are
/// pipes): waits for the confirmation prompt on stderr, types `answer` and Enter, and returns
/// (exit code, stdout, stderr). If warren exits without asking, that is returned as is.
pub fn warren_on_tty(t: &TestTopology, args: &[&str], answer: &str) -> (i32, String, String) {
    use std::io::{Read, Write};
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )
    .expect("openpty");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(with_topology(t, args))
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::from(std::fs::File::from(pty.slave)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warren");
    let mut terminal = std::fs::File::from(pty.master);
    let mut stderr = child.stderr.take().expect("stderr");
    let mut err = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&err).contains("[y/N] ") {
        match stderr.read(&mut buf).expect("read stderr") {
            0 => break,
            n => err.extend_from_slice(&buf[..n]),
        }
    }
    // Typed at the terminal; the line discipline hands it over on Enter. The terminal stays
    // open until warren exits.
    terminal
        .write_all(format!("{answer}\n").as_bytes())
        .expect("type the answer");
    stderr.read_to_end(&mut err).expect("read stderr");
    let out = child.wait_with_output().expect("wait for warren");
    drop(terminal);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
