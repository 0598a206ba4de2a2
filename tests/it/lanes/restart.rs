//! A key's lane is a pure function of the key and the lane count, computed by the publisher,
//! so it survives everything stateful: through the real bridge (fed by `warren sim upstream`,
//! whose ticks and candles carry `payload.pair`), each pair's events land in one lane, the
//! same one after a broker restart (`stop_app`/`start_app`) and after a bridge restart, and
//! that lane is `lane_of(pair, 8)` as the test computes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use warren::topology::lanes::{lane_header, lane_of, lane_queue};
use warren_sim::catalog::PAIRS;

use crate::support::bridge::{Sim, spawn_bridge};
use crate::support::{self, TestTopology};

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
name = "ticks"
bind = ["market.*"]
lanes = 8
lane_key = "payload.pair"
"#;

const LANES: u16 = 8;
/// Events of each pair a phase waits for, emitted after the phase began.
const PER_PAIR: usize = 5;

/// One message found in a lane.
#[derive(Debug)]
struct Seen {
    lane: u16,
    pair: String,
    header: Option<String>,
    id: String,
}

/// Drains the lanes until every pair has [`PER_PAIR`] events the sim emitted at or after
/// ledger position `mark`; returns everything drained.
async fn collect(conn: &lapin::Connection, queue: &str, sim: &Sim, mark: usize) -> Vec<Seen> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        for lane in 0..LANES {
            for d in super::drain_lane(conn, &lane_queue(queue, lane)).await {
                let body: serde_json::Value = serde_json::from_slice(&d.data).expect("json");
                seen.push(Seen {
                    lane,
                    pair: body["payload"]["pair"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no payload.pair in {body}"))
                        .to_string(),
                    header: warren::amqp::header_str(&d.properties, &lane_header(queue))
                        .map(str::to_string),
                    id: body["eventId"].as_str().expect("eventId").to_string(),
                });
            }
        }
        let position: HashMap<String, usize> = sim
            .ledger()
            .ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        let mut fresh: BTreeMap<&str, usize> = PAIRS.iter().map(|p| (*p, 0)).collect();
        for s in &seen {
            if position.get(&s.id).is_some_and(|i| *i >= mark)
                && let Some(n) = fresh.get_mut(s.pair.as_str())
            {
                *n += 1;
            }
        }
        if fresh.values().all(|n| *n >= PER_PAIR) {
            return seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "events emitted after position {mark} per pair: {fresh:?}\n{}",
            sim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks a phase: each event in `lane_of(pair)`, with that lane in its header, in one lane
/// only; returns pair → lane.
fn lanes_of(phase: &str, seen: &[Seen]) -> BTreeMap<String, u16> {
    eprintln!("{phase}: {} events drained from the lanes", seen.len());
    let mut by_pair: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut by_id: HashMap<&str, BTreeSet<u16>> = HashMap::new();
    for s in seen {
        assert_eq!(
            s.lane,
            lane_of(&s.pair, LANES),
            "{phase}: {} of {} in the wrong lane",
            s.id,
            s.pair
        );
        assert_eq!(
            s.header.as_deref(),
            Some(s.lane.to_string().as_str()),
            "{phase}: {}'s lane header",
            s.id
        );
        by_pair.entry(s.pair.clone()).or_default().insert(s.lane);
        by_id.entry(&s.id).or_default().insert(s.lane);
    }
    for (id, lanes) in by_id {
        assert_eq!(lanes.len(), 1, "{phase}: {id} in lanes {lanes:?}");
    }
    assert_eq!(
        by_pair.keys().map(String::as_str).collect::<Vec<_>>(),
        PAIRS
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "{phase}: pairs seen"
    );
    by_pair
        .into_iter()
        .map(|(pair, lanes)| {
            assert_eq!(lanes.len(), 1, "{phase}: {pair} in lanes {lanes:?}");
            (pair, *lanes.first().unwrap())
        })
        .collect()
}

fn restart_broker() {
    support::rabbitmqctl(&["stop_app"]);
    support::rabbitmqctl(&["start_app"]);
    support::rabbitmqctl(&["await_startup"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_lanes_keep_keys_across_a_broker_restart() {
    let _node = support::node::use_throwaway_node();
    let t = TestTopology::new("lanes-restart", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let ticks = t.queue("ticks");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &["--events", "100000", "--rate", "40", "--seed", "11"],
    );
    let cursor = t.dir().join("cursor");
    let bridge_args = ["--cursor-file", cursor.to_str().unwrap()];
    let mut bridge = spawn_bridge(&t, &sim.url(), &bridge_args, &t.dir().join("bridge-1.log"));

    let before = lanes_of("before", &collect(&conn, &ticks, &sim, 0).await);
    // Every pair has its own lane here (5, 7, 4 of 8), so a move could not hide.
    assert_eq!(before.values().collect::<BTreeSet<_>>().len(), PAIRS.len());

    tokio::task::spawn_blocking(restart_broker).await.unwrap();
    let mark = sim.ledger().ids.len();
    let conn = support::connect().await;
    let after_broker = lanes_of(
        "after the broker restart",
        &collect(&conn, &ticks, &sim, mark).await,
    );
    assert_eq!(
        after_broker, before,
        "a pair moved across the broker restart"
    );
    let log = bridge.log_text();
    assert!(
        log.matches("Broker connected").count() >= 2,
        "the bridge did not reconnect:\n{log}"
    );

    bridge.signal(Signal::SIGTERM);
    assert_eq!(
        bridge.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        bridge.log_text()
    );
    let mark = sim.ledger().ids.len();
    let mut bridge = spawn_bridge(&t, &sim.url(), &bridge_args, &t.dir().join("bridge-2.log"));
    let after_bridge = lanes_of(
        "after the bridge restart",
        &collect(&conn, &ticks, &sim, mark).await,
    );
    assert_eq!(
        after_bridge, before,
        "a pair moved across the bridge restart"
    );

    bridge.kill9();
    t.cleanup(&conn).await;
}
