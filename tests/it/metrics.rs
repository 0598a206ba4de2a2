//! `--metrics-listen` on the worker and the bridge: `/metrics` counters move during a run,
//! `/healthz` answers, and `/readyz` turns unready while the broker cannot be reached.

use crate::support;

use std::time::Duration;

use crate::support::bridge::{BRIDGE_TOPOLOGY, Sim, drain_ids, spawn_bridge};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestTopology, Warren, connect, eventually};
use serde_json::json;

/// The address the process logged as `Serving /metrics…` (it binds port 0).
async fn metrics_addr(w: &Warren) -> String {
    let mut addr = String::new();
    eventually(
        Duration::from_secs(10),
        "metrics server address in the log",
        || {
            let log = w.log_text();
            let found = log
                .lines()
                .find(|l| l.contains("Serving /metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .map(|a| a.split_whitespace().next().unwrap_or("").to_string());
            if let Some(a) = found {
                addr = a;
            }
            let done = !addr.is_empty();
            async move { done }
        },
    )
    .await;
    addr
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("metrics server answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The value of `series` (the name with its labels); 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(&format!("{series} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Cuts the broker off behind `proxy`: `/readyz` turns 503 while `/healthz` stays 200 (liveness
/// does not depend on the broker), then 200 again once the process has reconnected.
async fn readiness_follows_the_broker(proxy: &Proxy, addr: &str) {
    proxy.set(Mode::Refuse);
    eventually(
        Duration::from_secs(15),
        "unready while the broker is unreachable",
        || async move { get(addr, "/readyz").await.0 == 503 },
    )
    .await;
    assert_eq!(get(addr, "/healthz").await.0, 200, "liveness");
    proxy.set(Mode::Pass);
    eventually(Duration::from_secs(30), "ready again", || async move {
        get(addr, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn worker_metrics_move_and_readiness_follows_the_broker_connection() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = TestTopology::fast("metrics");
    let conn = connect().await;
    t.apply(&conn).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;

    let mut args = vec!["worker".to_string(), "--handler".into(), "chaos".into()];
    args.extend(t.args());
    args.extend([
        "-q".into(),
        "work".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let w = Warren::spawn(
        &args,
        &t.dir().join("w.log"),
        &[("AMQP_URL", &proxy.amqp_url(2))],
    );
    let addr = metrics_addr(&w).await;

    assert_eq!(get(&addr, "/healthz").await.0, 200);
    eventually(Duration::from_secs(10), "ready", || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.0 == 200 }
    })
    .await;

    support::publish_events(&conn, &t, "test.ok", json!({}), 5).await;
    support::publish_events(
        &conn,
        &t,
        "test.bad",
        json!({"chaos": {"action": "permanent"}}),
        2,
    )
    .await;
    let queue = t.queue("work");
    let ack = format!("warren_worker_deliveries_total{{queue=\"{queue}\",outcome=\"ack\"}}");
    let dead = format!("warren_worker_deliveries_total{{queue=\"{queue}\",outcome=\"dead\"}}");
    eventually(Duration::from_secs(15), "ack and dead counters", || {
        let (addr, ack, dead) = (addr.clone(), ack.clone(), dead.clone());
        async move {
            let body = get(&addr, "/metrics").await.1;
            sample(&body, &ack) == 5.0 && sample(&body, &dead) == 2.0
        }
    })
    .await;
    let body = get(&addr, "/metrics").await.1;
    for series in [
        "warren_worker_handler_duration_seconds_bucket",
        "warren_worker_settle_duration_seconds_bucket",
        "warren_worker_event_lag_seconds_bucket",
        "warren_worker_in_flight",
        "warren_worker_reconnects_total",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    assert_eq!(sample(&body, "warren_worker_reconnects_total"), 0.0);
    assert_eq!(
        sample(
            &body,
            &format!("warren_worker_event_lag_seconds_count{{queue=\"{queue}\"}}")
        ),
        7.0,
        "event lag by queue:\n{body}"
    );
    let build = format!(
        "warren_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&body, &build), 1.0, "{body}");

    readiness_follows_the_broker(&proxy, &addr).await;
    let body = get(&addr, "/metrics").await.1;
    assert!(
        sample(&body, "warren_worker_reconnects_total") >= 1.0,
        "{body}"
    );
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn bridge_metrics_move_and_readiness_follows_the_broker_connection() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = TestTopology::new("bridge-metrics", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    const EVENTS: usize = 400;
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            &EVENTS.to_string(),
            "--rate",
            "200",
            "--seed",
            "7",
        ],
    );
    let cursor = t.dir().join("cursor");
    let w = {
        let url = proxy.amqp_url(2);
        // The stream ends early; readiness here must follow the broker, not the silence.
        let mut extra = vec![
            "--cursor-file",
            cursor.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--silence-timeout",
            "off",
        ];
        extra.extend(["--amqp-url", &url]);
        spawn_bridge(&t, &sim.url(), &extra, &t.dir().join("bridge.log"))
    };
    let addr = metrics_addr(&w).await;
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    eventually(Duration::from_secs(10), "ready", || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.0 == 200 }
    })
    .await;

    // Mid-stream the counters are moving; once the stream ends they add up to the ledger.
    let published = r#"warren_bridge_events_received_total{source="ws",outcome="published"}"#;
    let confirmed = r#"warren_bridge_publishes_total{outcome="confirmed"}"#;
    eventually(
        Duration::from_secs(10),
        "counters moving mid-stream",
        || {
            let addr = addr.clone();
            async move {
                let v = sample(&get(&addr, "/metrics").await.1, published);
                v > 0.0 && v < EVENTS as f64
            }
        },
    )
    .await;
    eventually(Duration::from_secs(30), "every event counted", || {
        let addr = addr.clone();
        async move {
            let body = get(&addr, "/metrics").await.1;
            sample(&body, published) == EVENTS as f64 && sample(&body, confirmed) == EVENTS as f64
        }
    })
    .await;
    let body = get(&addr, "/metrics").await.1;
    assert_eq!(
        sample(&body, "warren_bridge_publish_confirm_seconds_count"),
        EVENTS as f64,
        "{body}"
    );
    assert_eq!(
        sample(&body, "warren_bridge_event_lag_seconds_count"),
        EVENTS as f64
    );
    assert!(body.contains("warren_bridge_publish_confirm_seconds_bucket{le="));
    assert!(body.contains("warren_build_info{version="), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("warren_bridge_cursor_age_seconds ")),
        "the cursor age is reported once a cursor exists:\n{body}"
    );
    assert_eq!(sample(&body, "warren_bridge_in_flight"), 0.0);
    assert_eq!(
        sample(&body, r#"warren_bridge_reconnects_total{peer="broker"}"#),
        0.0
    );

    readiness_follows_the_broker(&proxy, &addr).await;
    let body = get(&addr, "/metrics").await.1;
    assert!(
        sample(&body, r#"warren_bridge_reconnects_total{peer="broker"}"#) >= 1.0,
        "{body}"
    );

    // Nothing was lost on the way: the queue holds every event the sim emitted.
    let ids = drain_ids(&conn, &t.queue("all")).await;
    let got: std::collections::BTreeSet<_> = ids.into_iter().collect();
    assert_eq!(got, sim.ledger().set());
    t.cleanup(&conn).await;
}
