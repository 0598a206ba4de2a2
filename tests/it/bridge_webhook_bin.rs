//! Webhook ingress through the real binary: `warren bridge --webhook-listen 127.0.0.1:0
//! --webhook-secret-file F` (no upstream). A valid signed POST is answered 200 only once its
//! publish is confirmed, so the event is already in the queue, once; a forged or tampered one
//! gets a 4xx and nothing is published. The secret never reaches the log.

use std::time::Duration;

use crate::support::bridge::{BRIDGE_TOPOLOGY, drain_ids, logged_addr};
use crate::support::{TestTopology, Warren, connect, envelope, queue_len};
use nix::sys::signal::Signal;
use warren::bridge::webhook::{parse_secrets, sign};

const KEY: &str = "whsec_YmluYXJ5LWxldmVsLXdlYmhvb2stc2VjcmV0LWtleQ==";
const STRANGER: &str = "whsec_bm90LW91ci1rZXktYXQtYWxs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_publishes_a_signed_webhook_once_and_refuses_a_forged_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = TestTopology::new("bridge-hook-bin", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let secrets = t.dir().join("webhook-secrets");
    std::fs::write(&secrets, format!("{KEY}\n")).unwrap();
    let mut args: Vec<String> = [
        "bridge",
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-secret-file",
        secrets.to_str().unwrap(),
        "--webhook-max-body",
        "4096",
    ]
    .map(String::from)
    .to_vec();
    args.extend(t.args());
    let log = t.dir().join("bridge.log");
    let mut bridge = Warren::spawn(&args, &log, &[]);
    let addr = logged_addr(&bridge, "Webhook ingress listening").await;
    let url = format!("http://{addr}/webhooks/events");

    let key = &parse_secrets(KEY).unwrap()[0];
    let stranger = &parse_secrets(STRANGER).unwrap()[0];
    let http = reqwest::Client::new();
    let post = |id: &str, sig: String, ts: i64, body: Vec<u8>| {
        http.post(&url)
            .timeout(Duration::from_secs(40))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let (id, body) = envelope("job.completed", serde_json::json!({"job_id": "job_bin"}));
    // The broker connection may still be coming up: a 503 asks the sender to retry.
    let start = std::time::Instant::now();
    let (status, json) = loop {
        let resp = post(
            "msg_bin_1",
            sign(key, "msg_bin_1", now, &body),
            now,
            body.clone(),
        )
        .await
        .expect("the bridge answers");
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap_or_default();
        if status != 503 || start.elapsed() > Duration::from_secs(20) {
            break (status, json);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200, "{json}\n{}", bridge.log_text());
    assert_eq!(json["status"], "published", "{json}");
    // 200 came after the confirm: the event is in the queue now, not eventually.
    assert_eq!(queue_len(&conn, &queue).await, 1);

    let (forged_id, forged) = envelope("job.failed", serde_json::json!({"job_id": "job_forged"}));
    let resp = post(
        "msg_bin_2",
        sign(stranger, "msg_bin_2", now, &forged),
        now,
        forged.clone(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "forged");
    let tampered = String::from_utf8(forged.clone())
        .unwrap()
        .replace("job_forged", "job_tampered")
        .into_bytes();
    let resp = post(
        "msg_bin_3",
        sign(key, "msg_bin_3", now, &forged),
        now,
        tampered,
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "tampered");
    // Unsigned (400), signed but not an envelope (422), too large (413): each answered in
    // JSON and logged with its status.
    let unsigned = http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 400, "unsigned");
    let not_envelope = br#"{"hello":"world"}"#.to_vec();
    let resp = post(
        "msg_bin_4",
        sign(key, "msg_bin_4", now, &not_envelope),
        now,
        not_envelope,
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 422, "not an envelope");
    let big = vec![b' '; 8192];
    let resp = post("msg_bin_5", sign(key, "msg_bin_5", now, &big), now, big)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413, "too large");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "413 in plain text: {:?}",
        resp.headers()
    );
    let json: serde_json::Value = resp.json().await.expect("a JSON 413");
    assert_eq!(json["status"], "rejected", "{json}");
    // The valid one again: a duplicate, not a second publish.
    let resp = post("msg_bin_1", sign(key, "msg_bin_1", now, &body), now, body)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));
    let ids = drain_ids(&conn, &queue).await;
    assert_eq!(ids, vec![id], "published once; the forged one never");
    assert!(!ids.contains(&forged_id));
    let text = bridge.log_text();
    for status in [401, 400, 422, 413] {
        assert!(
            text.lines()
                .any(|l| l.contains("Webhook rejected.") && l.contains(&format!("status={status}"))),
            "no log line for the rejected {status}:\n{text}"
        );
    }
    assert!(text.contains("webhook_id=\"msg_bin_2\""), "{text}");
    let secret_b64 = KEY.trim_start_matches("whsec_");
    assert!(!text.contains(secret_b64), "the secret leaked:\n{text}");
    t.cleanup(&conn).await;
}
