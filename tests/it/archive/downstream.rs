//! A replayed window reaches a real `http` worker and the simulated API: the replay (killed
//! with SIGKILL midway and run again) reuses the live idempotency keys, so events whose effect
//! was done live are answered from the API's store and events the live path lost are done
//! now: each event of the window has exactly one effect, and events outside it none more.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{archived, publish_all, rfc3339, series};
use crate::support::downstream::{Sim, http_worker_args};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{self, Warren, drain, eventually, now_ms, queue_len};
use warren_sim::api::ApiSettings;

/// Waits for the worker's "Worker consuming." line.
async fn consuming(w: &Warren) {
    eventually(Duration::from_secs(30), "the worker consuming", || {
        let up = w.log_text().contains("Worker consuming.");
        async move { up }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_window_killed_and_rerun_makes_each_effect_exactly_once_downstream() {
    let sim = Sim::start(ApiSettings::default()).await;
    let (t, conn) = archived("archive-downstream").await;
    let work = t.queue("work");
    // 220 events a second apart: 0..150 are handled live, 150..220 are lost on the live path
    // (taken off the queue unhandled, as a bug would). The window is [10, 210).
    const N: usize = 220;
    const LIVE: usize = 150;
    const WINDOW: usize = 5;
    let start = now_ms() - 1_000_000;
    let events = series(start, N);
    let ids: Vec<String> = events.iter().map(|e| e.1.clone()).collect();
    let url = sim.url("/events");

    publish_all(&conn, &t, &events[..LIVE]).await;
    let mut live = Warren::spawn(
        &http_worker_args(&t, "work", &url, &[]),
        &t.dir().join("live.log"),
        &[],
    );
    eventually(
        Duration::from_secs(60),
        "the live worker's effects",
        || async { sim.effects().await == LIVE as u64 },
    )
    .await;
    eventually(Duration::from_secs(30), "the work queue empty", || async {
        queue_len(&conn, &work).await == 0
    })
    .await;
    live.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(live.wait_exit(Duration::from_secs(30)), Some(0));
    publish_all(&conn, &t, &events[LIVE..]).await;
    let lost = drain(&conn, &work).await;
    assert_eq!(lost.len(), N - LIVE, "the live path lost the rest");

    let progress = t.dir().join("progress.json");
    let mut args: Vec<String> = [
        "archive",
        "replay",
        "--from",
        &rfc3339(start + 10_000),
        "--to",
        &rfc3339(start + 210_000),
        "--into",
        "work",
        "--window-size",
        &WINDOW.to_string(),
        "--progress",
        &progress.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(t.args());
    // Slowed down by a proxy so the kill lands midway; no worker runs yet, so the queue's
    // depth is the replay's progress.
    let proxy = Proxy::start(support::node::broker_addr()).await;
    proxy.set(Mode::Latency(Duration::from_millis(15)));
    let mut first = Warren::spawn(
        &args,
        &t.dir().join("replay-1.log"),
        &[("AMQP_URL", &proxy.amqp_url(30))],
    );
    eventually(
        Duration::from_secs(60),
        "part of the window replayed",
        || async { queue_len(&conn, &work).await >= 60 },
    )
    .await;
    first.kill9();
    let before = queue_len(&conn, &work).await as usize;
    assert!(
        before < 200,
        "the kill came after the end ({before} in the queue)"
    );

    let worker = Warren::spawn(
        &http_worker_args(&t, "work", &url, &[]),
        &t.dir().join("worker.log"),
        &[],
    );
    consuming(&worker).await;
    let mut second = Warren::spawn(&args, &t.dir().join("replay-2.log"), &[]);
    assert_eq!(
        second.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        second.log_text()
    );
    let posts_of = |ledger: &support::downstream::LedgerView| -> BTreeMap<String, (u32, u32)> {
        ledger
            .keys
            .iter()
            .filter_map(|k| Some((k.event_id.clone()?, (k.effects, k.posts))))
            .collect()
    };
    // Done when every live-done event of the window has come back (a second POST) and every
    // lost one has its effect.
    eventually(
        Duration::from_secs(60),
        "the worker handles the replayed window",
        || async {
            let by_id = posts_of(&sim.ledger().await);
            ids[10..LIVE]
                .iter()
                .all(|id| by_id.get(id).is_some_and(|&(_, posts)| posts >= 2))
                && ids[LIVE..210]
                    .iter()
                    .all(|id| by_id.get(id).is_some_and(|&(effects, _)| effects == 1))
                && queue_len(&conn, &work).await == 0
        },
    )
    .await;
    // Anything still in flight lands now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queue_len(&conn, &work).await, 0);
    assert_eq!(
        queue_len(&conn, &t.topology.queue("work").unwrap().dlq()).await,
        0
    );

    let ledger = sim.ledger().await;
    let by_id = posts_of(&ledger);
    let effects = ledger.effects_by_event();
    for (i, id) in ids.iter().enumerate() {
        let got = effects.get(id).copied().unwrap_or(0);
        let (_, posts) = by_id.get(id).copied().unwrap_or((0, 0));
        match i {
            // Before the window: handled live, not replayed.
            0..10 => assert_eq!((got, posts), (1, 1), "event {i} ({id})"),
            // Done live, replayed: answered from the store, no second effect.
            10..LIVE => {
                assert_eq!(got, 1, "event {i} ({id}): one effect");
                assert!(posts >= 2, "event {i} ({id}): replayed ({posts} posts)");
            }
            // Lost live, replayed: done now, once.
            LIVE..210 => assert_eq!(got, 1, "event {i} ({id}): one effect"),
            // After the window: lost and not replayed.
            _ => assert_eq!((got, posts), (0, 0), "event {i} ({id})"),
        }
    }
    assert_eq!(ledger.effects, 210, "one effect per event, nothing else");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    assert_eq!(report["done"], true, "{report}");
    drop(worker);
    t.cleanup(&conn).await;
}
