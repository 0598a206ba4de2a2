//! A silent upstream (socket open, pings answered, no events) is caught by the silence deadline,
//! not the idle deadline: the bridge warns, resubscribes from its cursor, counts it, and reports
//! not ready while the silence lasts; after each resume nothing is lost or duplicated.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::support::bridge::{
    BRIDGE_TOPOLOGY, Sim, counts, drain_ids, log_times, logged_addr, metric, spawn_bridge,
    wait_depth,
};
use crate::support::{TestTopology, connect, eventually};
use nix::sys::signal::Signal;

/// The silence deadline the bridge runs with here.
const SILENCE: Duration = Duration::from_secs(2);
/// What a resubscribe may add to the deadline: the 100 ms check, the WebSocket handshake and
/// the subscribe. A correctness bound: a bridge that waited for a second deadline fails it.
const MARGIN: Duration = Duration::from_millis(1500);

async fn get(addr: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("metrics server answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// `resume_from=` of each `Client subscribed.` line of the sim's log, in order.
fn resumes(sim_log: &str) -> Vec<String> {
    sim_log
        .lines()
        .filter(|l| l.contains("Client subscribed."))
        .map(|l| {
            l.split("resume_from=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_resubscribed_from_the_cursor_within_the_silence_deadline() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = TestTopology::new("bridge-silence", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    // Each connection sends 100 events, then answers pings and sends nothing more.
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "300", "--rate", "500", "--silent-after", "100"],
    );
    let cursor = t.dir().join("cursor");
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &[
            "--silence-timeout",
            "2s",
            // Pongs keep the idle deadline from ever firing: only the silence deadline can.
            "--idle-timeout",
            "30s",
            "--ping-interval",
            "300ms",
            "--cursor-file",
            cursor.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &t.dir().join("bridge.log"),
    );
    let addr = logged_addr(&bridge, "Serving /metrics").await;

    assert_eq!(
        wait_depth(&conn, &queue, 300, Duration::from_secs(60)).await,
        300,
        "{}",
        bridge.log_text()
    );
    // The stream has ended: the silence now lasts, and the bridge keeps resubscribing.
    eventually(Duration::from_secs(15), "not ready while silent", || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.0 == 503 }
    })
    .await;
    let body = get(&addr, "/metrics").await.1;
    let since = metric(&body, "warren_bridge_seconds_since_last_event").unwrap_or(0.0);
    assert!(
        since >= 1.0,
        "seconds since the last event: {since}\n{body}"
    );
    assert_eq!(get(&addr, "/healthz").await.0, 200, "alive all the same");
    eventually(
        Duration::from_secs(15),
        "a resubscribe after every silence",
        || {
            let log = sim.log_text();
            let silent = log_times(&log, "Silent: no more events");
            let subscribes = log_times(&log, "Client subscribed.");
            let done = silent.len() >= 3 && silent.iter().all(|s| subscribes.iter().any(|t| t > s));
            async move { done }
        },
    )
    .await;
    let body = get(&addr, "/metrics").await.1;
    let silences = metric(&body, "warren_bridge_upstream_silences_total").unwrap_or(0.0);
    assert!(silences >= 3.0, "silences counted: {silences}\n{body}");
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(30)), Some(0));

    let sim_log = sim.log_text();
    let text = bridge.log_text();
    let silent = log_times(&sim_log, "Silent: no more events");
    let subscribes = log_times(&sim_log, "Client subscribed.");
    for (i, s) in silent.iter().enumerate() {
        let next: SystemTime = *subscribes.iter().find(|t| *t > s).expect("waited above");
        let gap = next.duration_since(*s).unwrap();
        eprintln!("silence {i}: detected and resubscribed after {gap:.2?} (deadline {SILENCE:?})");
        assert!(
            gap <= SILENCE + MARGIN,
            "silence {i}: resubscribed after {gap:?}; the deadline is {SILENCE:?}\n{text}"
        );
        assert!(
            gap + Duration::from_millis(300) >= SILENCE,
            "silence {i}: resubscribed after {gap:?}, before the deadline"
        );
    }
    assert!(
        !text.contains("idle deadline"),
        "pongs kept it alive:\n{text}"
    );
    assert!(
        text.matches("Upstream silent past the deadline").count() >= 3,
        "{text}"
    );
    assert!(
        text.matches("Upstream events flowing again.").count() >= 2,
        "{text}"
    );
    // Each resubscribe starts from the cursor: the last event of the connection before.
    let ids = sim.ledger().ids;
    let r = resumes(&sim_log);
    assert_eq!(r[0], "", "the first subscribe has no cursor");
    assert_eq!(r[1], ids[99], "{sim_log}");
    assert_eq!(r[2], ids[199], "{sim_log}");
    assert!(r[3..].iter().all(|c| *c == ids[299]), "{r:?}");

    let got = drain_ids(&conn, &queue).await;
    let c = counts(&got);
    assert_eq!(
        c.keys().cloned().collect::<BTreeSet<_>>(),
        sim.ledger().set(),
        "nothing lost"
    );
    assert!(c.values().all(|&n| n == 1), "nothing published twice");
    t.cleanup(&conn).await;
}
