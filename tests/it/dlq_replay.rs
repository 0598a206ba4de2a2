//! `warren dlq replay` against the real broker: exactly the selected messages go back to the
//! queue they failed in and are processed by a worker; failures do not loop; unroutable items
//! fail alone with exit code 3; `--dry-run` changes nothing.

use std::time::{Duration, Instant};

use crate::support::dlq::{
    DLQ_TOPOLOGY, Dead, delivery_ids, ids, publish_dead, warren_json, warren_t,
};
use crate::support::{TestTopology, Warren, connect, drain, eventually, queue_len};

/// The chaos record's outcome lines (`<eventId> <attempt> <outcome> <ms>`; `start` lines skipped).
fn record_lines(path: &std::path::Path) -> Vec<(String, u32, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(2) != Some("start"))
        .map(|l| {
            let mut p = l.split(' ');
            (
                p.next().unwrap().to_string(),
                p.next().unwrap().parse().unwrap(),
                p.next().unwrap().to_string(),
            )
        })
        .collect()
}

/// Test 2: `replay --type X` moves exactly the X messages; a worker then processes them with
/// their attempts reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_type_moves_exactly_those_and_a_worker_processes_them() {
    let t = TestTopology::new("dlq-replay-type", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..70)
        .map(|i| {
            let ty = if i % 7 < 3 { "test.x" } else { "test.y" };
            Dead::new(
                ty,
                if i % 2 == 0 { "permanent" } else { "exhausted" },
                "HTTP 503",
                &work,
            )
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let xs: Vec<String> = dead
        .iter()
        .filter(|d| d.event_type == "test.x")
        .map(|d| d.id.clone())
        .collect();
    let ys: Vec<String> = dead
        .iter()
        .filter(|d| d.event_type == "test.y")
        .map(|d| d.id.clone())
        .collect();

    let report = warren_json(
        &t,
        &["dlq", "replay", "-q", "work", "--type", "test.x", "-y"],
    );
    assert_eq!(
        ids(&report),
        xs,
        "the report lists exactly the X messages, in queue order"
    );
    assert!(
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "replayed"),
        "{report}"
    );
    assert_eq!(queue_len(&conn, &work).await, xs.len() as u32);
    assert_eq!(queue_len(&conn, &dlq).await, ys.len() as u32);

    let record = t.dir().join("record.txt");
    let mut args = vec![
        "worker".to_string(),
        "-q".into(),
        "work".into(),
        "--handler".into(),
        "chaos".into(),
    ];
    args.extend(["--record".into(), record.display().to_string()]);
    args.extend(t.args());
    let mut worker = Warren::spawn(&args, &t.dir().join("worker.log"), &[]);
    eventually(
        Duration::from_secs(30),
        "the worker handles every replayed message",
        || async { record_lines(&record).len() >= xs.len() },
    )
    .await;
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    worker.wait_exit(Duration::from_secs(30));

    let mut handled: Vec<String> = record_lines(&record)
        .into_iter()
        .map(|(id, attempt, outcome)| {
            assert_eq!(
                (attempt, outcome.as_str()),
                (0, "ok"),
                "attempts are reset for {id}"
            );
            id
        })
        .collect();
    handled.sort();
    let mut want = xs.clone();
    want.sort();
    assert_eq!(handled, want, "each X message handled exactly once");
    assert_eq!(queue_len(&conn, &work).await, 0);
    assert_eq!(
        delivery_ids(&drain(&conn, &dlq).await),
        ys,
        "the Y messages stay, in order"
    );
    t.cleanup(&conn).await;
}

/// A replayed message that fails again lands back in the DLQ while the replay runs; the replay
/// takes only the messages present at its start, so it ends, and the copy counts the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_only_the_snapshot_so_messages_that_fail_again_do_not_loop() {
    let t = TestTopology::new("dlq-replay-loop", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let chaos = serde_json::json!({"chaos": {"action": "permanent"}});
    let dead: Vec<Dead> = (0..40)
        .map(|_| {
            Dead::with_payload(
                "test.poison",
                "permanent",
                "chaos: permanent failure",
                &work,
                chaos.clone(),
            )
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;

    let mut args = vec![
        "worker".to_string(),
        "-q".into(),
        "work".into(),
        "--handler".into(),
        "chaos".into(),
    ];
    args.extend(t.args());
    let mut worker = Warren::spawn(&args, &t.dir().join("worker.log"), &[]);
    for round in 1..=2u64 {
        let (code, out, err) = warren_t(
            &t,
            &[
                "dlq", "replay", "-q", "work", "-y", "--rate", "200/s", "-o", "json",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            report["items"].as_array().unwrap().len(),
            40,
            "round {round}: each message replayed once"
        );
        eventually(
            Duration::from_secs(30),
            "every replayed message fails back into the DLQ",
            || async { queue_len(&conn, &dlq).await == 40 && queue_len(&conn, &work).await == 0 },
        )
        .await;
        let listing = warren_json(&t, &["dlq", "list", "-q", "work"]);
        for item in listing["items"].as_array().unwrap() {
            assert_eq!(item["replayed"], round, "{item}");
            assert_eq!(
                item["attempts"], 1,
                "attempts were reset before the new failure: {item}"
            );
            assert_eq!(item["kind"], "permanent");
        }
    }
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    worker.wait_exit(Duration::from_secs(30));
    t.cleanup(&conn).await;
}

/// An item whose origin is not a topology queue, or whose origin queue is gone, fails alone
/// and stays in its DLQ; the rest are replayed; the exit code is 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_items_fail_alone_stay_in_the_dlq_and_exit_3() {
    let t = TestTopology::new("dlq-replay-fail", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let live = t.queue("live");
    let work_dlq = t.topology.queue("work").unwrap().dlq();
    let live_dlq = t.topology.queue("live").unwrap().dlq();
    let mut dead = vec![];
    for i in 0..8 {
        let mut d = Dead::new("test.a", "permanent", "boom", &work);
        if i % 3 == 1 {
            d.origin = "somewhere.else".into();
        }
        dead.push(d);
    }
    dead.push(Dead::new("live.tick", "exhausted", "boom", &live));
    dead.push(Dead::new("live.tick", "exhausted", "boom", &live));
    publish_dead(&conn, &t, &dead).await;
    let stray: Vec<String> = dead
        .iter()
        .filter(|d| d.origin == "somewhere.else")
        .map(|d| d.id.clone())
        .collect();
    // The origin queue disappears: republishing to it is unroutable.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(live.as_str().into(), Default::default())
        .await
        .unwrap();

    let (code, out, err) = warren_t(&t, &["dlq", "replay", "--all", "-y", "-o", "json"]);
    assert_eq!(code, 3, "partial failure exits 3: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let failed: Vec<&serde_json::Value> =
        items.iter().filter(|i| i["outcome"] == "failed").collect();
    assert_eq!(failed.len(), stray.len() + 2, "{report}");
    assert!(
        failed.iter().any(|i| i["error"]
            .as_str()
            .unwrap()
            .contains("'somewhere.else' is not a work queue")),
        "{report}"
    );
    assert!(
        failed
            .iter()
            .any(|i| i["error"].as_str().unwrap().contains("unroutable")),
        "{report}"
    );
    assert!(err.contains("replayed 5, failed 5"), "{err}");

    assert_eq!(queue_len(&conn, &work).await, 5);
    assert_eq!(delivery_ids(&drain(&conn, &work_dlq).await), stray);
    assert_eq!(queue_len(&conn, &live_dlq).await, 2);
    t.cleanup(&conn).await;
}

/// `--dry-run` reports what would move and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_replay_changes_nothing() {
    let t = TestTopology::new("dlq-replay-dry", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..12)
        .map(|i| {
            Dead::new(
                if i < 4 { "test.a" } else { "test.b" },
                "permanent",
                "x",
                &work,
            )
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;

    let report = warren_json(
        &t,
        &[
            "dlq",
            "replay",
            "-q",
            "work",
            "--type",
            "test.b",
            "--dry-run",
        ],
    );
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    assert!(
        items.iter().all(|i| i["outcome"] == "would_replay"),
        "{report}"
    );
    assert_eq!(report["dry_run"], true);
    assert_eq!(queue_len(&conn, &work).await, 0);
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!(delivery_ids(&drain(&conn, &dlq).await), all);
    t.cleanup(&conn).await;
}

/// Ctrl-C stops a replay after the message in flight is settled: nothing is lost or duplicated,
/// the rest stays in the DLQ, and the summary says it stopped early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_replay_cleanly() {
    let t = TestTopology::new("dlq-replay-int", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..300)
        .map(|_| Dead::new("test.a", "permanent", "x", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let mut args: Vec<String> = ["dlq", "replay", "-q", "work", "-y", "--rate", "100/s"]
        .map(String::from)
        .to_vec();
    args.extend(t.args());
    let mut replay = Warren::spawn(&args, &t.dir().join("replay.log"), &[]);
    eventually(
        Duration::from_secs(30),
        "the replay is under way",
        || async { queue_len(&conn, &work).await >= 20 },
    )
    .await;
    replay.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        replay.wait_exit(Duration::from_secs(30)),
        Some(1),
        "an interrupted replay exits 1"
    );
    assert!(
        replay.log_text().contains("stopped early: interrupted"),
        "{}",
        replay.log_text()
    );
    let mut ids = delivery_ids(&drain(&conn, &work).await);
    let moved = ids.len();
    ids.extend(delivery_ids(&drain(&conn, &dlq).await));
    assert!(moved < 300, "stopped before the end: {moved}");
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        ids, all,
        "each message exactly once, the replayed ones first"
    );
    t.cleanup(&conn).await;
}

/// With several republishes in flight, lapin may attach a return to another message's
/// confirm. Returns are matched by message id, so an unroutable message is never acked out of
/// the DLQ (lost) and a routed one is never reported failed for another's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replay_never_acks_a_returned_message() {
    let t = TestTopology::new("dlq-replay-returns", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let live = t.queue("live");
    let dlq = t.topology.queue("work").unwrap().dlq();
    // Half of them name the live queue as their origin, and the live queue is gone.
    let dead: Vec<Dead> = (0..400)
        .map(|i| {
            let mut d = Dead::new("test.a", "permanent", "x", &work);
            if i % 2 == 1 {
                d.origin = live.clone();
            }
            d
        })
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(live.as_str().into(), Default::default())
        .await
        .unwrap();

    let (code, out, err) = warren_t(
        &t,
        &[
            "dlq", "replay", "-q", "work", "-y", "--window", "16", "-o", "json",
        ],
    );
    assert_eq!(code, 3, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    for item in report["items"].as_array().unwrap() {
        let to_live = item["origin"] == live.as_str();
        assert_eq!(
            item["outcome"],
            if to_live { "failed" } else { "replayed" },
            "{item}"
        );
    }
    let stranded: Vec<String> = dead
        .iter()
        .filter(|d| d.origin == live)
        .map(|d| d.id.clone())
        .collect();
    let routed: Vec<String> = dead
        .iter()
        .filter(|d| d.origin == work)
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(
        delivery_ids(&drain(&conn, &dlq).await),
        stranded,
        "every unroutable message stays"
    );
    assert_eq!(delivery_ids(&drain(&conn, &work).await), routed);
    t.cleanup(&conn).await;
}

/// Replay refuses to run without -y when stdin is not a terminal, and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_yes_off_a_terminal_refuses_and_moves_nothing() {
    let t = TestTopology::new("dlq-replay-noyes", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..10)
        .map(|_| Dead::new("test.r", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let (code, out, err) = warren_t(&t, &["dlq", "replay", "-q", "work"]);
    assert_eq!(
        code, 2,
        "replay without -y off a terminal must refuse: {err}"
    );
    assert!(
        err.contains("-y") && err.contains("not a terminal"),
        "the refusal says why and how to confirm: {err}"
    );
    assert!(out.is_empty(), "{out}");
    assert_eq!(queue_len(&conn, &work).await, 0, "nothing replayed");
    let all: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!(
        delivery_ids(&drain(&conn, &dlq).await),
        all,
        "the DLQ as it was"
    );
    t.cleanup(&conn).await;
}

/// `--rate 20/s` paces the republishes: 50 messages are 49 intervals of 50 ms apart, so the
/// run cannot take less than 2.45 s. Only a lower bound is checked: a slow machine passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_the_replay() {
    let t = TestTopology::new("dlq-replay-rate", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..50)
        .map(|_| Dead::new("test.r", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let start = Instant::now();
    let report = warren_json(&t, &["dlq", "replay", "-q", "work", "-y", "--rate", "20/s"]);
    let took = start.elapsed();
    assert_eq!(ids(&report).len(), 50);
    assert!(
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["outcome"] == "replayed"),
        "{report}"
    );
    assert_eq!(queue_len(&conn, &work).await, 50);
    assert_eq!(queue_len(&conn, &dlq).await, 0);
    assert!(
        took >= Duration::from_millis(2200),
        "50 messages at 20/s took only {took:?}: --rate did not pace"
    );
    t.cleanup(&conn).await;
}
