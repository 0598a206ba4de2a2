//! `archive replay --into`: exactly the window's events reach the queue, in order; a replay
//! killed with SIGKILL and run again from its progress record loses nothing and repeats at
//! most its confirm window.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren::archive::{Bound, ReplaySettings, Window};

use super::{archived, publish_all, series};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{self, Warren, drain, now_ms, queue_len};

fn ids_in(deliveries: &[lapin::message::Delivery]) -> Vec<String> {
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

#[tokio::test]
async fn replay_puts_exactly_the_window_into_the_queue_once() {
    let (t, conn) = archived("archive-replay").await;
    let events = series(now_ms() - 100_000, 40);
    publish_all(&conn, &t, &events).await;
    let a = t.topology.archive.as_ref().unwrap();
    let settings = ReplaySettings {
        window: Window::new(
            Bound::Offset(10),
            Some(Bound::Offset(29)),
            vec![],
            vec![],
            a,
        )
        .unwrap(),
        into: "replayed".into(),
        confirm_window: 8,
        progress: t.dir().join("progress.json"),
    };
    let shutdown = CancellationToken::new();
    let report = warren::archive::replay(&support::url(), &t.topology, &settings, &shutdown)
        .await
        .unwrap();
    assert_eq!(report.published, 20);
    assert_eq!(report.confirmed_through, Some(29));
    assert!(report.interrupted.is_none());
    let got = drain(&conn, &t.queue("replayed")).await;
    let want: Vec<String> = events[10..30].iter().map(|e| e.1.clone()).collect();
    assert_eq!(ids_in(&got), want);
    let offset =
        warren::amqp::header_str(&got[0].properties, warren::archive::ARCHIVE_OFFSET_HEADER);
    assert_eq!(offset, Some("10"));
    // The same replay again: its record says complete, nothing is published twice.
    let again = warren::archive::replay(&support::url(), &t.topology, &settings, &shutdown)
        .await
        .unwrap();
    assert_eq!(again.published, 0);
    assert_eq!(queue_len(&conn, &t.queue("replayed")).await, 0);
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_and_run_again_loses_nothing_and_repeats_at_most_its_window() {
    let (t, conn) = archived("archive-replay-kill").await;
    const N: usize = 300;
    const WINDOW: usize = 5;
    let events = series(now_ms() - 1_000_000, N);
    publish_all(&conn, &t, &events).await;
    let queue = t.queue("replayed");
    let progress = t.dir().join("progress.json");
    let mut args: Vec<String> = ["archive", "replay", "--from", "first", "--into", "replayed"]
        .map(String::from)
        .to_vec();
    args.extend([
        "--window-size".into(),
        WINDOW.to_string(),
        "--progress".into(),
    ]);
    args.push(progress.display().to_string());
    args.extend(t.args());
    // Slowed down by a proxy, so the kill lands midway.
    let proxy = Proxy::start(support::node::broker_addr()).await;
    proxy.set(Mode::Latency(Duration::from_millis(15)));
    let mut first = Warren::spawn(
        &args,
        &t.dir().join("first.log"),
        &[("AMQP_URL", &proxy.amqp_url(30))],
    );
    support::eventually(
        Duration::from_secs(60),
        "a third of the window replayed",
        || async { queue_len(&conn, &queue).await >= (N / 3) as u32 },
    )
    .await;
    first.kill9();
    let before = queue_len(&conn, &queue).await as usize;
    assert!(
        before < N,
        "the kill came after the end ({before} in the queue)"
    );
    let mut second = Warren::spawn(
        &args,
        &t.dir().join("second.log"),
        &[("AMQP_URL", &support::amqp_url())],
    );
    assert_eq!(
        second.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        second.log_text()
    );

    let got = ids_in(&drain(&conn, &queue).await);
    let mut seen = BTreeSet::new();
    let firsts: Vec<String> = got
        .iter()
        .filter(|id| seen.insert((*id).clone()))
        .cloned()
        .collect();
    let want: Vec<String> = events.iter().map(|e| e.1.clone()).collect();
    assert_eq!(firsts, want, "every event, in order");
    let repeated = got.len() - N;
    assert!(
        repeated <= WINDOW,
        "{repeated} repeated; the confirm window is {WINDOW}"
    );
    t.cleanup(&conn).await;
}
