//! Webhook ingress on a real socket, publishing to the real broker: valid requests are
//! published once (2xx only after the confirm); forged, tampered, stale, replayed, malformed
//! and oversized ones publish nothing.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::bridge::{BRIDGE_TOPOLOGY, counts, drain_all};
use crate::support::{TestTopology, connect, envelope, queue_len};
use tokio_util::sync::CancellationToken;
use warren::amqp::{hdr, header_str};
use warren::bridge::webhook::{Secret, parse_secrets, sign, sign_pf};
use warren::bridge::{BridgeSettings, Stats, WebhookSettings, run};

const NEW_KEY: &str = "whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==";
const OLD_KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PF_KEY: &str = "pf_plain_secret";

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn post(&self, body: &[u8], headers: &[(&str, String)]) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(&self.url)
            .body(body.to_vec())
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    async fn standard(
        &self,
        key: &Secret,
        id: &str,
        ts: i64,
        signed: &[u8],
        sent: &[u8],
    ) -> (u16, serde_json::Value) {
        let sig = sign(key, id, ts, signed);
        self.post(
            sent,
            &[
                ("webhook-id", id.into()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ],
        )
        .await
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_webhooks_are_published_once_and_bad_ones_never() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = TestTopology::new("bridge-hook", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secrets = parse_secrets(&format!("{NEW_KEY}\n{OLD_KEY}\n{PF_KEY}\n")).unwrap();
    let mut settings = BridgeSettings::new(support::url(), t.topology.clone());
    settings.webhook = Some(WebhookSettings {
        listener,
        secrets,
        max_body: 64 * 1024,
        tolerance: Duration::from_secs(300),
    });
    let stats = Arc::new(Stats::default());
    let token = CancellationToken::new();
    let bridge = tokio::spawn(run(settings, stats.clone(), token.clone()));
    let c = Client {
        http: reqwest::Client::new(),
        url: format!("http://{addr}/webhooks/events"),
    };
    let new_key = &parse_secrets(NEW_KEY).unwrap()[0];
    let old_key = &parse_secrets(OLD_KEY).unwrap()[0];
    let pf_key = &parse_secrets(PF_KEY).unwrap()[0];
    let stranger = &parse_secrets("whsec_bm90LW91ci1rZXktYXQtYWxs").unwrap()[0];

    let (id1, body1) = envelope(
        "escrow.released",
        serde_json::json!({"escrow_id": "esc_1", "amount_usdc": 5.0}),
    );
    let (id2, body2) = envelope("job.completed", serde_json::json!({"job_id": "job_1"}));
    let (id3, body3) = envelope(
        "wallet.low_balance",
        serde_json::json!({"balance_usdc": 1.0}),
    );
    let ts = now();

    // Valid: the current key, the rotated-out key, and the seeds' X-PF-Signature.
    let (s, j) = c.standard(new_key, "msg_1", ts, &body1, &body1).await;
    assert_eq!((s, j["status"].as_str()), (200, Some("published")), "{j}");
    let (s, _) = c.standard(old_key, "msg_2", ts, &body2, &body2).await;
    assert_eq!(s, 200);
    let (s, _) = c
        .post(
            &body3,
            &[
                ("x-pf-signature", sign_pf(pf_key, &body3)),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
            ],
        )
        .await;
    assert_eq!(s, 200);

    // Replayed: the same webhook-id (and the same X-PF event) again: 2xx, not published again.
    let (s, j) = c.standard(new_key, "msg_1", ts, &body1, &body1).await;
    assert_eq!((s, j["status"].as_str()), (200, Some("duplicate")));
    let (s, j) = c
        .post(&body3, &[("x-pf-signature", sign_pf(pf_key, &body3))])
        .await;
    assert_eq!((s, j["status"].as_str()), (200, Some("duplicate")));

    // Forged, tampered, stale, future, malformed, unsigned, oversized.
    let (other_id, other) = envelope("job.failed", serde_json::json!({"job_id": "job_x"}));
    let (s, _) = c.standard(stranger, "msg_3", ts, &other, &other).await;
    assert_eq!(s, 401, "forged");
    let tampered = String::from_utf8(other.clone())
        .unwrap()
        .replace("job_x", "job_y")
        .into_bytes();
    let (s, _) = c.standard(new_key, "msg_4", ts, &other, &tampered).await;
    assert_eq!(s, 401, "tampered");
    let (s, j) = c.standard(new_key, "msg_5", ts - 600, &other, &other).await;
    assert_eq!(s, 401, "stale: {j}");
    let (s, _) = c.standard(new_key, "msg_6", ts + 600, &other, &other).await;
    assert_eq!(s, 401, "from the future");
    let (s, _) = c
        .post(&other, &[("x-pf-signature", sign_pf(stranger, &other))])
        .await;
    assert_eq!(s, 401, "forged X-PF");
    let not_envelope = br#"{"hello":"world"}"#;
    let (s, j) = c
        .standard(new_key, "msg_7", ts, not_envelope, not_envelope)
        .await;
    assert_eq!(s, 422, "signed but not an envelope: {j}");
    assert!(j["error"].as_str().unwrap().contains("eventId"));
    let (s, _) = c.post(&other, &[("webhook-id", "msg_8".into())]).await;
    assert_eq!(s, 400, "headers missing");
    let (s, _) = c.post(&other, &[]).await;
    assert_eq!(s, 400, "unsigned");
    let mut big = serde_json::from_slice::<serde_json::Value>(&other).unwrap();
    big["payload"]["pad"] = "x".repeat(70 * 1024).into();
    let big = serde_json::to_vec(&big).unwrap();
    let (s, _) = c.standard(new_key, "msg_9", ts, &big, &big).await;
    assert_eq!(s, 413, "oversized");

    assert_eq!(stats.webhooks_published.load(Ordering::Relaxed), 3);
    assert_eq!(stats.webhooks_duplicate.load(Ordering::Relaxed), 2);
    token.cancel();
    bridge.await.unwrap().unwrap();

    assert_eq!(queue_len(&conn, &queue).await, 3);
    let deliveries = drain_all(&conn, &queue).await;
    let ids: Vec<String> = deliveries
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    let got = counts(&ids);
    let want: std::collections::BTreeMap<String, usize> = [id1, id2, id3.clone()]
        .into_iter()
        .map(|i| (i, 1))
        .collect();
    assert_eq!(got, want);
    assert!(!ids.contains(&other_id));
    let d3 = deliveries
        .iter()
        .find(|d| d.properties.message_id().as_ref().unwrap().as_str() == id3)
        .unwrap();
    assert_eq!(
        header_str(&d3.properties, hdr::TRACEPARENT),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "a sender's traceparent is kept"
    );
    t.cleanup(&conn).await;
}
