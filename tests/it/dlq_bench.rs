//! Benchmark (ignored by default): `dlq list` over 10,000 dead letters (JSON and table), and
//! replay throughput with `--window 1` and `--window 64` against a raw lapin get → publish →
//! confirm → ack loop in the same run, as ratios. Run on a quiet machine with
//! `cargo test --release --test it dlq_bench -- --ignored --nocapture`; `DLQ_BENCH_N=500` makes a
//! quick smoke run with fewer dead letters.

use std::time::{Duration, Instant};

use crate::support::dlq::{DLQ_TOPOLOGY, bench_count, bench_dead, refill, timed_warren};
use crate::support::{TestTopology, connect, queue_len};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};

/// The baseline: what a hand-written mover does, one message at a time.
async fn raw_move(conn: &lapin::Connection, from: &str, to: &str) -> usize {
    let get = conn.create_channel().await.unwrap();
    let publish = conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut moved = 0;
    while let Some(m) = get
        .basic_get(from.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let d = m.delivery;
        let confirm = publish
            .basic_publish(
                "".into(),
                to.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &d.data,
                d.properties.clone(),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        moved += 1;
    }
    moved
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture, preferably --release"]
async fn bench_list_and_replay_against_a_raw_loop() {
    let n = bench_count();
    let t = TestTopology::new("dlq-bench", DLQ_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let dlq = t.topology.queue("work").unwrap().dlq();
    let dead = bench_dead(n, &work);
    refill(&conn, &t, &dead).await;

    let mut lists: Vec<Duration> = (0..3)
        .map(|_| timed_warren(&t, &["dlq", "list", "-q", "work", "-o", "json"]))
        .collect();
    lists.sort();
    let mut tables: Vec<Duration> = (0..3)
        .map(|_| timed_warren(&t, &["dlq", "list", "-q", "work"]))
        .collect();
    tables.sort();
    let stats = timed_warren(&t, &["dlq", "stats", "-q", "work"]);
    assert_eq!(queue_len(&conn, &dlq).await, n as u32);

    // Alternate the contenders so that load from elsewhere on the machine hits them alike.
    let mut raw = vec![];
    let mut replays: Vec<(&str, Vec<Duration>)> = vec![("1", vec![]), ("64", vec![])];
    for _round in 0..2 {
        let start = Instant::now();
        assert_eq!(raw_move(&conn, &dlq, &work).await, n);
        raw.push(start.elapsed());
        refill(&conn, &t, &dead).await;
        for (window, times) in replays.iter_mut() {
            let args = [
                "dlq", "replay", "-q", "work", "-y", "--window", window, "-o", "json",
            ];
            times.push(timed_warren(&t, &args));
            assert_eq!(queue_len(&conn, &work).await, n as u32);
            refill(&conn, &t, &dead).await;
        }
    }
    let best = |v: &[Duration]| *v.iter().min().unwrap();

    println!(
        "dlq list over {n} dead letters: median of 3 {:?} (-o json), {:?} (table); stats {:?}",
        lists[1], tables[1], stats
    );
    println!(
        "raw lapin get-publish-confirm-ack loop: {raw:?}, best {:?} = {:.0} msg/s",
        best(&raw),
        rate(n, best(&raw))
    );
    for (window, times) in &replays {
        let d = best(times);
        println!(
            "warren dlq replay --window {window}: {times:?}, best {d:?} = {:.0} msg/s = {:.2}x the raw loop \
             (includes process start and the {n}-line report)",
            rate(n, d),
            best(&raw).as_secs_f64() / d.as_secs_f64()
        );
    }
    t.cleanup(&conn).await;
}
