//! The lanes spread over the live workers: as workers join one by one, one is killed with
//! SIGKILL and one stops with SIGTERM, each live worker is, within 10 s of the change, the
//! broker's active consumer of ⌊8/W⌋ or ⌈8/W⌉ lanes (and every lane has exactly one), as
//! `rabbitmqctl list_consumers` shows. The workers log each move as "Lane handover." with the
//! lane, the old owner and the new.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Handover, active_lanes, handovers, spawn_worker, worker_id};
use crate::support::{self, TestTopology, Warren};

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 3
retry_delays = ["1s"]
expires = "10m"

[[queues]]
name = "orders"
bind = ["trade.*"]
lanes = 8
lane_key = "payload.pair"
"#;

const LANES: usize = 8;
/// The convergence bound the lanes promise (heartbeat expiry + a heartbeat + the joiner's
/// listening time is 6 s), with room for a loaded machine.
const WITHIN: Duration = Duration::from_secs(10);

/// Why the broker's active lane consumers are not a fair split over `live`, or None.
fn unfair(active: &BTreeMap<u16, Vec<u32>>, live: &[u32]) -> Option<String> {
    let w = live.len();
    let (lo, hi) = (LANES / w, LANES.div_ceil(w));
    if active.len() != LANES || active.values().any(|pids| pids.len() != 1) {
        return Some(format!("not one active consumer per lane: {active:?}"));
    }
    let mut per: BTreeMap<u32, usize> = live.iter().map(|p| (*p, 0)).collect();
    for pids in active.values() {
        match per.get_mut(&pids[0]) {
            Some(n) => *n += 1,
            None => return Some(format!("pid {} is not live: {active:?}", pids[0])),
        }
    }
    per.values()
        .any(|n| *n < lo || *n > hi)
        .then(|| format!("lanes per live worker {per:?}, want {lo}..={hi}"))
}

/// Waits up to [`WITHIN`] for a fair split over `live`, then checks it holds a moment later.
async fn converges(queue: &str, live: &[u32], what: &str) -> Duration {
    let start = Instant::now();
    let mut last;
    loop {
        let active = active_lanes(queue);
        last = unfair(&active, live);
        if last.is_none() {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "{what}: no fair split over {live:?} within {WITHIN:?}: {}",
            last.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    // Settled, not passing through: still fair after two more heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(why) = unfair(&active_lanes(queue), live) {
        panic!("{what}: the split did not hold: {why}");
    }
    eprintln!("{what}: fair over {} workers after {took:?}", live.len());
    took
}

fn pids(ws: &[&Warren]) -> Vec<u32> {
    ws.iter().map(|w| w.pid()).collect()
}

fn moved(log: &str, from: &str, to: &str) -> Vec<Handover> {
    handovers(log)
        .into_iter()
        .filter(|h| h.from == from && h.to == to)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_spread_evenly_as_workers_join_crash_and_leave() {
    let t = TestTopology::new("lanes-balance", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let orders = t.queue("orders");
    let spawn = |i: usize| spawn_worker(&t, "orders", &["log"], &format!("w{i}.log"));

    let w1 = spawn(1);
    converges(&orders, &pids(&[&w1]), "1 worker").await;
    let id1 = worker_id(&w1.log_text(), w1.pid()).expect("w1's id");
    let taken: Vec<u16> = moved(&w1.log_text(), "-", &id1)
        .iter()
        .map(|h| h.lane)
        .collect();
    assert_eq!(taken, (0..8).collect::<Vec<u16>>(), "{}", w1.log_text());

    let w2 = spawn(2);
    converges(&orders, &pids(&[&w1, &w2]), "2 workers").await;
    let id2 = worker_id(&w2.log_text(), w2.pid()).expect("w2's id");
    assert_eq!(
        moved(&w1.log_text(), &id1, &id2).len(),
        4,
        "w1 hands 4 lanes to w2:\n{}",
        w1.log_text()
    );

    let mut w3 = spawn(3);
    converges(&orders, &pids(&[&w1, &w2, &w3]), "3 workers").await;
    let id3 = worker_id(&w3.log_text(), w3.pid()).expect("w3's id");

    // w1 dies without a word: the others expire it from the roster and take its lanes.
    let mut w1 = w1;
    w1.kill9();
    converges(&orders, &pids(&[&w2, &w3]), "kill -9 of one of 3").await;
    let from_dead =
        moved(&w2.log_text(), &id1, &id2).len() + moved(&w3.log_text(), &id1, &id3).len();
    assert!(
        from_dead > 0,
        "no survivor logged taking a lane from {id1}:\n{}\n{}",
        w2.log_text(),
        w3.log_text()
    );

    // w2 leaves cleanly: it says so, and w3 takes every lane at once.
    let mut w2 = w2;
    w2.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        w2.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        w2.log_text()
    );
    converges(&orders, &pids(&[&w3]), "SIGTERM of one of 2").await;
    assert!(
        !moved(&w3.log_text(), &id2, &id3).is_empty(),
        "w3 logged no lane from {id2}:\n{}",
        w3.log_text()
    );

    w3.kill9();
    t.cleanup(&conn).await;
}
