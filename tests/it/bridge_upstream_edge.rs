//! The real `warren bridge` against upstreams that misbehave in ways the sim does not script:
//! a frame over the WebSocket hard limit (16 MiB), a close frame with a reason, and a bad
//! `--topics` value, which is refused at startup instead of looping on refused subscribes.
//!
//! The upstream here is a small scripted WebSocket server on a real socket: connection `i`
//! plays `script[i]` (the last one for any later connection) and records each `resumeFrom`.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::bridge::{
    AGENT_KEY, BRIDGE_TOPOLOGY, drain_all, drain_ids, spawn_bridge, wait_depth,
};
use crate::support::{TestTopology, Warren, connect, envelope};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warren::amqp::{hdr, header_str};
use warren::bridge::route::{ABSENT_OVER_HARD_LIMIT, BODY_ABSENT};
use warren::bridge::upstream::HARD_FRAME_LIMIT;

#[derive(Clone)]
enum Step {
    /// A text frame.
    Text(Vec<u8>),
    /// A text frame of this many bytes.
    Big(usize),
    /// A close frame.
    Close(CloseCode, String),
    /// Send nothing more; answer pings until the client leaves.
    Hold,
}

struct Scripted {
    addr: std::net::SocketAddr,
    /// `resumeFrom` of each subscribe, in connection order.
    resumes: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: Vec<Vec<Step>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resumes = Arc::new(Mutex::new(vec![]));
        let seen = resumes.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                let steps = script[n.min(script.len() - 1)].clone();
                n += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    // The subscribe.
                    while let Some(Ok(msg)) = ws.next().await {
                        if let Message::Text(t) = msg {
                            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                            let resume = v["resumeFrom"].as_str().unwrap_or("").to_string();
                            seen.lock().unwrap().push(resume);
                            break;
                        }
                    }
                    for step in steps {
                        let sent = match step {
                            Step::Text(b) => {
                                ws.send(Message::text(String::from_utf8(b).unwrap())).await
                            }
                            Step::Big(n) => ws.send(Message::text("x".repeat(n))).await,
                            Step::Close(code, reason) => {
                                let frame = CloseFrame {
                                    code,
                                    reason: reason.into(),
                                };
                                ws.send(Message::Close(Some(frame))).await
                            }
                            Step::Hold => {
                                while let Some(Ok(_)) = ws.next().await {}
                                return;
                            }
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    // Let the client read what was sent before the socket goes.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                });
            }
        });
        Self {
            addr,
            resumes,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/api/stream", self.addr)
    }

    fn resumes(&self) -> Vec<String> {
        self.resumes.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tick() -> (String, Vec<u8>) {
    envelope(
        "market.tick",
        serde_json::json!({"pair": "BTC-USD", "price": 1.0, "timestamp_ms": 1}),
    )
}

/// A frame over the hard limit fails the connection from its header (never read into memory):
/// it is recorded in the ingress DLQ with an empty body and `x-warren-body-absent`, and the
/// bridge resumes from its cursor, never past an unconfirmed event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_is_recorded_without_a_body_and_the_bridge_resumes() {
    let t = TestTopology::new("bridge-huge", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let (queue, dlq) = (t.queue("all"), t.topology.ingress_dlq());
    let (id1, e1) = tick();
    // eventIds increase along the stream (ULIDs of one millisecond need not).
    let (id2, e2) = loop {
        let (id, e) = tick();
        if id > id1 {
            break (id, e);
        }
    };
    let upstream = Scripted::start(vec![
        vec![
            Step::Text(e1.clone()),
            Step::Big(HARD_FRAME_LIMIT + 1024),
            Step::Text(e2.clone()),
        ],
        // The resume: the upstream replays from the cursor (here, everything it has).
        vec![Step::Text(e1), Step::Text(e2), Step::Hold],
    ])
    .await;
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(&t, &upstream.url(), &[], &log);

    assert_eq!(
        wait_depth(&conn, &queue, 2, Duration::from_secs(30)).await,
        2,
        "{}",
        bridge.log_text()
    );
    assert_eq!(wait_depth(&conn, &dlq, 1, Duration::from_secs(10)).await, 1);
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    let resumes = upstream.resumes();
    assert!(resumes.len() >= 2, "{resumes:?}");
    assert_eq!(resumes[0], "", "a first start has no cursor");
    assert!(
        resumes[1].is_empty() || resumes[1] == id1,
        "the resume is at or before the confirmed prefix: {resumes:?}"
    );
    let mut ids = drain_ids(&conn, &queue).await;
    ids.sort();
    let mut want = vec![id1, id2];
    want.sort();
    assert_eq!(ids, want, "both events once; the replayed one dropped");
    let dead = drain_all(&conn, &dlq).await;
    assert_eq!(dead.len(), 1);
    let p = &dead[0].properties;
    assert_eq!(header_str(p, hdr::ERROR_KIND), Some("invalid"));
    assert_eq!(header_str(p, BODY_ABSENT), Some(ABSENT_OVER_HARD_LIMIT));
    assert!(dead[0].data.is_empty());
    let error = header_str(p, hdr::ERROR).unwrap();
    assert!(error.contains("bytes unavailable"), "{error}");
    t.cleanup(&conn).await;
}

/// The upstream's close code and reason are in the bridge's log, with the agent key masked
/// even when the reason repeats it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_and_reasons_from_the_upstream_are_logged_without_the_key() {
    let t = TestTopology::new("bridge-close", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let upstream = Scripted::start(vec![
        vec![Step::Close(
            CloseCode::Policy,
            format!("key {AGENT_KEY} may not subscribe to wallet.*"),
        )],
        vec![Step::Hold],
    ])
    .await;
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(&t, &upstream.url(), &[], &log);
    support::eventually(Duration::from_secs(20), "a second subscribe", || {
        let n = upstream.resumes().len();
        async move { n >= 2 }
    })
    .await;
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    let text = bridge.log_text();
    assert!(
        text.contains("code 1008 (Policy)")
            && text.contains(r#"key *** may not subscribe to wallet.*"#),
        "the close code and reason are logged:\n{text}"
    );
    assert!(!text.contains(AGENT_KEY), "the agent key leaked:\n{text}");
    t.cleanup(&conn).await;
}

/// A bad topic is a usage error at startup that names it; nothing connects.
#[test]
fn a_bad_topic_is_refused_at_startup_and_named() {
    let t = TestTopology::new("bridge-topics", BRIDGE_TOPOLOGY);
    for (topics, bad) in [
        ("market.*,wallet", "'wallet'"),
        ("market.#", "'market.#'"),
        ("job.*,Escrow.released", "'Escrow.released'"),
    ] {
        let log = t.dir().join("bridge.log");
        let mut bridge = spawn_bridge(
            &t,
            // Nothing listens here; the check comes first.
            "ws://127.0.0.1:9/api/stream",
            &["--topics", topics],
            &log,
        );
        let code = bridge.wait_exit(Duration::from_secs(20));
        let text = bridge.log_text();
        assert_eq!(code, Some(2), "{topics}: {text}");
        assert!(
            text.contains("--topics") && text.contains(bad),
            "{topics}: {text}"
        );
        assert!(!text.contains("Bridge starting"), "{text}");
    }
    let ok = Warren::spawn(
        &support::bridge::bridge_args(
            &t,
            "ws://127.0.0.1:9/api/stream",
            &["--topics", "market.tick,job.*"],
        ),
        &t.dir().join("ok.log"),
        &support::bridge::bridge_env(),
    );
    // A valid list gets past the check (and then waits for the broker and the upstream).
    std::thread::sleep(Duration::from_secs(2));
    let text = ok.log_text();
    assert!(!text.contains("--topics"), "{text}");
    drop(ok);
}
