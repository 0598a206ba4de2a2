//! The headline lane test: per-key order and exactly-once effects under downstream faults and a
//! worker crash, with real `warren worker --handler http` processes sharing 8 lanes.
//!
//! 20,000 events over 50 pairs (`payload.seq` increasing per pair) are published as the bridge
//! publishes them (its properties and lane header, one confirm channel) while 4 workers consume
//! them into the recording downstream ([`crate::support::recorder`]), which fails ~5% of first
//! requests with 500 and ~3% with 429 `Retry-After: 0`. With `--http-tries 1` every fault goes
//! back to the lane, which holds itself and retries in process. One worker is killed with
//! SIGKILL at 30% of the effects, while every lane waits for the answer to an effect the
//! downstream has already recorded (its lanes wait for the roster to expire it, and its unacked
//! messages go back to the lanes' heads, to be replayed), and a fresh one joins at 60% (lanes
//! move to it between messages). At the end every event has had exactly one effect, nothing was
//! dead-lettered, and in every pair the first effects arrived in strictly increasing `seq`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use warren::envelope::idempotency_key;

use super::{handovers, lane_queues, publish_laned, spawn_worker, worker_id};
use crate::support::downstream::Rng;
use crate::support::recorder::{Faults, Recorder};
use crate::support::{self, TestTopology};

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
expires = "10m"

[[queues]]
name = "orders"
bind = ["trade.*"]
lanes = 8
lane_key = "payload.pair"
prefetch = 20
max_attempts = 6
retry_delays = ["20ms", "50ms", "100ms"]
# A lane handed over or crashed returns its prefetched messages; each return counts.
delivery_limit = 1000
"#;

const EVENTS: usize = 20_000;
const PAIRS: usize = 50;
const LANES: u16 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_keep_per_pair_order_and_effect_once_under_faults_and_a_worker_kill() {
    let started = Instant::now();
    let t = TestTopology::new("lanes-order", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let orders = t.queue("orders");
    let recorder = Recorder::start(Faults {
        seed: 0x1a2e5,
        error_500: 0.05,
        throttle_429: 0.03,
    })
    .await;
    let url = recorder.events_url();
    let http = ["http", "--url", url.as_str(), "--http-tries", "1"];
    let mut workers: Vec<_> = (0..4)
        .map(|i| spawn_worker(&t, "orders", &http, &format!("w{i}.log")))
        .collect();

    // The stream: pairs picked by a seeded dice, seq counting up per pair.
    let mut rng = Rng::new(7);
    let mut next_seq = vec![0u64; PAIRS];
    let events: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|_| {
            let p = (rng.next_u64() % PAIRS as u64) as usize;
            let seq = next_seq[p];
            next_seq[p] += 1;
            support::envelope(
                "trade.fill",
                serde_json::json!({"pair": format!("P{p:02}"), "seq": seq}),
            )
        })
        .collect();
    let expected: HashMap<String, String> = events
        .iter()
        .map(|(id, _)| (idempotency_key(id, "http", "post"), id.clone()))
        .collect();
    let publishing = tokio::spawn({
        let (conn, topology) = (support::connect().await, t.topology.clone());
        async move { publish_laned(&conn, &topology, &events).await }
    });

    // Crash one worker at 30% of the effects, add a fresh one at 60%.
    let mut killed = None;
    let mut joined = None;
    let deadline = Instant::now() + Duration::from_secs(75);
    while recorder.effects() < EVENTS as u64 {
        let done = recorder.effects() as usize;
        if killed.is_none() && done >= EVENTS * 3 / 10 {
            // Kill with every lane's current message effected and unanswered, so the dead
            // worker's lanes restart from messages whose effect is already done.
            recorder.hold();
            support::eventually(Duration::from_secs(10), "8 lanes in flight", || async {
                recorder.held() == u64::from(LANES)
            })
            .await;
            let pid = workers[0].pid();
            workers[0].kill9();
            recorder.release();
            killed = Some((pid, recorder.effects() as usize));
        }
        if joined.is_none() && done >= EVENTS * 6 / 10 {
            workers.push(spawn_worker(&t, "orders", &http, "w4.log"));
            joined = Some((workers[4].pid(), done));
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {EVENTS} events effected after 75 s: {:?}",
            recorder.tally()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publishing.await.expect("every publish confirmed");
    let (killed, joined) = (killed.unwrap(), joined.unwrap());

    // Let the last acks land: every lane empty, nothing unacked on the live workers.
    let live: Vec<u32> = workers[1..].iter().map(|w| w.pid()).collect();
    support::eventually(Duration::from_secs(15), "lanes empty, all acked", || {
        let (conn, orders, live) = (&conn, &orders, &live);
        async move {
            let mut ready = 0;
            for q in lane_queues(orders, LANES) {
                ready += support::queue_len(conn, &q).await;
            }
            ready == 0 && live.iter().all(|pid| support::unacked_of(*pid) == 0)
        }
    })
    .await;

    let tally = recorder.tally();
    eprintln!(
        "{EVENTS} events, {PAIRS} pairs, {LANES} lanes: {tally:?}; killed pid {} at {} effects, \
         pid {} joined at {}; {:.1} s",
        killed.0,
        killed.1,
        joined.0,
        joined.1,
        started.elapsed().as_secs_f64()
    );
    // Exactly once: one effect per event, for exactly the events published.
    assert_eq!(tally.effects, EVENTS as u64, "{tally:?}");
    assert_eq!(tally.malformed, 0, "{tally:?}");
    let effected = recorder.effected_keys();
    assert_eq!(effected.len(), EVENTS);
    assert_eq!(
        effected, expected,
        "effected keys differ from the published events"
    );
    // Order: per pair, the first effects came in strictly increasing seq, and all of them.
    assert_eq!(
        tally.order_violations,
        0,
        "first order violations (pair, previous seq, seq): {:?}",
        recorder.violations(10)
    );
    for (pair, seqs) in recorder.effects_by_pair() {
        let p: usize = pair[1..].parse().unwrap();
        assert_eq!(
            seqs,
            (0..next_seq[p]).collect::<Vec<_>>(),
            "pair {pair}: the first effects, in arrival order"
        );
    }
    // Nothing dead-lettered, nothing unrouted.
    let spec = t.topology.queue("orders").unwrap();
    assert_eq!(
        support::queue_len(&conn, &spec.dlq()).await,
        0,
        "dead letters"
    );
    assert_eq!(
        support::queue_len(&conn, &t.topology.unrouted_queue()).await,
        0
    );
    // The faults happened, and they went through the lanes' own retries.
    assert!(
        tally.faults_500 > 0 && tally.faults_429 > 0,
        "no faults injected: {tally:?}"
    );
    assert_eq!(
        tally.requests,
        tally.effects + tally.replays + tally.faults_500 + tally.faults_429,
        "{tally:?}"
    );
    // The killed worker's lanes were redelivered from an effected message: a replay each.
    assert!(tally.replays > 0, "no replay after the kill: {tally:?}");
    // The crash and the join moved lanes: the joiner took lanes, and a survivor took the
    // dead worker's.
    let dead_id = worker_id(&workers[0].log_text(), killed.0).expect("the killed worker's id");
    let joiner_log = workers[4].log_text();
    let joiner_id = worker_id(&joiner_log, joined.0).expect("the joiner's id");
    assert!(
        handovers(&joiner_log).iter().any(|h| h.to == joiner_id),
        "the joiner took no lane:\n{joiner_log}"
    );
    let taken_from_dead: BTreeSet<u16> = workers[1..4]
        .iter()
        .flat_map(|w| handovers(&w.log_text()))
        .filter(|h| h.from == dead_id)
        .map(|h| h.lane)
        .collect();
    assert!(
        !taken_from_dead.is_empty(),
        "no survivor logged taking a lane from the killed worker {dead_id}"
    );
    drop(workers);
    t.cleanup(&conn).await;
}
