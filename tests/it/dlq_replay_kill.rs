//! Test 3: `kill -9` in the middle of a replay of 10,000 dead letters loses nothing; at most
//! `--window` messages end up in both the DLQ and the work queue. Running the replay again
//! finishes the job.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::dlq::{DLQ_TOPOLOGY, Dead, delivery_ids, publish_dead, warren_t};
use crate::support::{TestTopology, Warren, connect, drain, eventually, queue_len, unacked};

const N: usize = 10_000;

async fn kill_mid_replay_then_account(test: &str, window: usize) {
    let t = TestTopology::new(test, DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..N)
        .map(|i| Dead::new("test.bulk", "exhausted", &format!("timeout #{i}"), &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    assert_eq!(queue_len(&conn, &dlq).await, N as u32);

    let window_arg = window.to_string();
    let mut args: Vec<String> = ["dlq", "replay", "-q", "work", "-y", "--window", &window_arg]
        .map(String::from)
        .to_vec();
    args.extend(t.args());
    let mut replay = Warren::spawn(&args, &t.dir().join("replay.log"), &[]);
    eventually(
        Duration::from_secs(120),
        "the replay is well under way",
        || async { queue_len(&conn, &work).await >= (N / 3) as u32 },
    )
    .await;
    assert!(
        replay.running(),
        "the replay finished before it could be killed; log:\n{}",
        replay.log_text()
    );
    replay.kill9();

    // The broker notices the dead connection and puts the unacked DLQ messages back.
    eventually(
        Duration::from_secs(30),
        "the killed replay's deliveries are requeued",
        || async { unacked(&dlq) == 0 },
    )
    .await;
    let in_work = delivery_ids(&drain(&conn, &work).await);
    let in_dlq = delivery_ids(&drain(&conn, &dlq).await);
    assert!(
        in_work.len() >= N / 3 && in_work.len() < N,
        "killed mid-way: {} replayed",
        in_work.len()
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in in_work.iter().chain(&in_dlq) {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let missing = dead
        .iter()
        .filter(|d| !seen.contains_key(d.id.as_str()))
        .count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(missing, 0, "every message is in the DLQ or the work queue");
    assert!(
        seen.values().all(|&n| n <= 2),
        "no message is in three places"
    );
    assert!(
        duplicated <= window,
        "{duplicated} duplicates with --window {window}"
    );
    assert_eq!(seen.len(), N);
    eprintln!(
        "killed after {} replayed; {} still in the DLQ; {duplicated} duplicated (window {window})",
        in_work.len(),
        in_dlq.len()
    );
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_replay_of_10000_loses_nothing_and_duplicates_at_most_one() {
    kill_mid_replay_then_account("dlq-kill-1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_pipelined_replay_duplicates_at_most_the_window() {
    kill_mid_replay_then_account("dlq-kill-32", 32).await;
}

/// After a kill, running the replay again moves the rest; every message ends in the work queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_run_again_after_a_kill_finishes_the_job() {
    let t = TestTopology::new("dlq-kill-resume", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead: Vec<Dead> = (0..2_000)
        .map(|_| Dead::new("test.bulk", "permanent", "boom", &work))
        .collect();
    publish_dead(&conn, &t, &dead).await;
    let mut args: Vec<String> = ["dlq", "replay", "-q", "work", "-y", "--rate", "2000/s"]
        .map(String::from)
        .to_vec();
    args.extend(t.args());
    let mut replay = Warren::spawn(&args, &t.dir().join("replay.log"), &[]);
    eventually(
        Duration::from_secs(60),
        "the replay is under way",
        || async { queue_len(&conn, &work).await >= 300 },
    )
    .await;
    replay.kill9();
    eventually(Duration::from_secs(30), "deliveries requeued", || async {
        unacked(&dlq) == 0
    })
    .await;

    let (code, _, err) = warren_t(&t, &["dlq", "replay", "-q", "work", "-y", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(queue_len(&conn, &dlq).await, 0);
    let mut in_work = delivery_ids(&drain(&conn, &work).await);
    assert!(
        in_work.len() <= dead.len() + 1,
        "at most one duplicate: {}",
        in_work.len()
    );
    in_work.sort();
    in_work.dedup();
    let mut want: Vec<String> = dead.iter().map(|d| d.id.clone()).collect();
    want.sort();
    assert_eq!(in_work, want);
    t.cleanup(&conn).await;
}
