//! A webhook sender that hangs up while its publish waits for a confirm (here: the queue is
//! full and nacks) must not leave its id stuck: once the publish is confirmed, the sender's
//! retry is answered "duplicate" and the event is in the queue exactly once.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{TestTopology, connect, drain, envelope, publish};
use tokio_util::sync::CancellationToken;
use warren::bridge::webhook::{parse_secrets, sign};
use warren::bridge::{BridgeSettings, Stats, WebhookSettings, run};

const KEY: &str = "whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==";

const FULL: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "classic"
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "tiny"
bind = ["escrow.*", "filler.*"]
max_length = 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_up_webhook_is_published_once_and_its_retry_is_a_duplicate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = TestTopology::new("bridge-hook-abandon", FULL);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("tiny");
    // Fill the queue: the next publish is nacked until it is drained.
    let filler = envelope("filler.x", serde_json::json!({}));
    publish(&conn, &t.topology.events_exchange, "filler.x", &[filler]).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = BridgeSettings::new(support::url(), t.topology.clone());
    settings.webhook = Some(WebhookSettings {
        listener,
        secrets: parse_secrets(KEY).unwrap(),
        max_body: 64 * 1024,
        tolerance: Duration::from_secs(300),
    });
    let token = CancellationToken::new();
    let bridge = tokio::spawn(run(settings, Arc::new(Stats::default()), token.clone()));
    let url = format!("http://{addr}/webhooks/events");
    let key = &parse_secrets(KEY).unwrap()[0];
    let (id, body) = envelope(
        "escrow.released",
        serde_json::json!({"escrow_id": "esc_9", "amount_usdc": 5.0}),
    );
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let send = |timeout: Duration| {
        let req = reqwest::Client::new()
            .post(&url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("webhook-id", "msg_abandon")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(key, "msg_abandon", ts, &body))
            .body(body.clone());
        async move { req.send().await }
    };

    // The sender gives up after a second: the publish is still being nacked.
    match send(Duration::from_secs(1)).await {
        Err(e) => assert!(e.is_timeout(), "{e}"),
        Ok(resp) => panic!(
            "answered while the queue is full: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ),
    }
    // Make room; the bridge's next retry is confirmed.
    let drained = drain(&conn, &queue).await;
    assert_eq!(drained.len(), 1, "only the filler so far");

    // The sender retries: within seconds (not the 30 s confirm wait) it hears "duplicate".
    let start = Instant::now();
    let answer = loop {
        let resp = send(Duration::from_secs(40)).await.expect("answered");
        let status = resp.status().as_u16();
        let json: serde_json::Value = resp.json().await.unwrap_or_default();
        if status == 200 || start.elapsed() > Duration::from_secs(20) {
            break (status, json);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1["status"], "duplicate", "{}", answer.1);
    assert!(start.elapsed() < Duration::from_secs(20));

    let ids: Vec<String> = drain(&conn, &queue)
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![id], "published exactly once");
    token.cancel();
    let _ = bridge.await;
    t.cleanup(&conn).await;
}
