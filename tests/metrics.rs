//! `--metrics-listen`: `/metrics` counters move during a run, `/healthz` answers, and `/readyz`
//! turns unready while the broker cannot be reached.

mod support;

use std::time::Duration;

use serde_json::json;
use support::proxy::{Mode, Proxy};
use support::{TestTopology, Warren, connect, eventually};

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

fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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
        "warren_worker_event_lag_seconds_bucket",
        "warren_worker_in_flight",
        "warren_worker_reconnects_total",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    assert_eq!(sample(&body, "warren_worker_reconnects_total"), 0.0);

    // The broker becomes unreachable: the worker is not ready until it reconnects.
    proxy.set(Mode::Refuse);
    eventually(
        Duration::from_secs(15),
        "unready while the broker is unreachable",
        || {
            let addr = addr.clone();
            async move { get(&addr, "/readyz").await.0 == 503 }
        },
    )
    .await;
    assert_eq!(
        get(&addr, "/healthz").await.0,
        200,
        "liveness does not depend on the broker"
    );
    proxy.set(Mode::Pass);
    eventually(Duration::from_secs(30), "ready again", || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.0 == 200 }
    })
    .await;
    let body = get(&addr, "/metrics").await.1;
    assert!(
        sample(&body, "warren_worker_reconnects_total") >= 1.0,
        "{body}"
    );
    t.cleanup(&conn).await;
}
