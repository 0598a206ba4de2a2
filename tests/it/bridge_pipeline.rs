//! Sim → bridge → queue on real sockets and the real broker: the set of eventIds in the queue
//! equals the sim's ledger, each exactly once, with the wire contract's properties.

use crate::support;

use std::time::Duration;

use crate::support::bridge::{
    AGENT_KEY, BRIDGE_TOPOLOGY, Sim, counts, drain_all, spawn_bridge, wait_depth,
};
use crate::support::{TestTopology, connect};
use nix::sys::signal::Signal;
use warren::amqp::{hdr, header_str};

#[tokio::test]
async fn every_event_the_sim_emits_lands_in_the_queue_once() {
    let t = TestTopology::new("bridge-pipe", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            "1500",
            "--rate",
            "3000",
            "--seed",
            "11",
            "--duplicate-rate",
            "0.05",
        ],
    );
    let cursor = t.dir().join("cursor");
    let log = t.dir().join("bridge.log");
    let mut bridge = spawn_bridge(
        &t,
        &sim.url(),
        &["--cursor-file", cursor.to_str().unwrap()],
        &log,
    );

    let depth = wait_depth(&conn, &queue, 1500, Duration::from_secs(60)).await;
    assert_eq!(depth, 1500, "bridge log:\n{}", bridge.log_text());
    bridge.signal(Signal::SIGTERM);
    assert_eq!(
        bridge.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        bridge.log_text()
    );

    let ledger = sim.ledger();
    assert_eq!(ledger.ids.len(), 1500);
    let deliveries = drain_all(&conn, &queue).await;
    let ids: Vec<String> = deliveries
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .to_string()
        })
        .collect();
    let c = counts(&ids);
    assert_eq!(
        c.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        ledger.set()
    );
    assert!(
        c.values().all(|&n| n == 1),
        "no restart, so no duplicate may reach the queue"
    );

    // The cursor file holds the last event, and the sim's duplicates were dropped.
    let stored = std::fs::read_to_string(&cursor).unwrap();
    assert_eq!(stored.trim(), ledger.ids.last().unwrap());
    let log_text = bridge.log_text();
    assert!(
        !log_text.contains(AGENT_KEY),
        "the agent key must never be logged"
    );
    assert!(
        !log_text.contains(support::bridge::AGENT_ID),
        "the agent id must never be logged"
    );

    // Wire contract.
    for d in &deliveries {
        let p = &d.properties;
        let id = p.message_id().as_ref().unwrap().as_str();
        let kind = p.kind().as_ref().unwrap().as_str();
        assert_eq!(ledger.types[id], kind);
        assert_eq!(d.routing_key.as_str(), kind);
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "warren-bridge");
        assert!(p.timestamp().is_some());
        assert_eq!(header_str(p, hdr::AGENT_ID), Some("pf_agent_sim"));
        assert!(warren::bridge::route::is_traceparent(
            header_str(p, hdr::TRACEPARENT).unwrap()
        ));
        if kind == "market.tick" {
            assert_eq!(*p.delivery_mode(), Some(1));
            assert_eq!(p.expiration().as_ref().unwrap().as_str(), "600000");
        } else {
            assert_eq!(*p.delivery_mode(), Some(2));
        }
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(body["eventId"], id);
    }
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn a_wrong_agent_key_is_refused_and_the_bridge_keeps_trying() {
    let t = TestTopology::new("bridge-auth", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let sim = Sim::spawn(t.dir(), "sim", &["--events", "10"]);
    let log = t.dir().join("bridge.log");
    let args = support::bridge::bridge_args(&t, &sim.url(), &[]);
    let mut bridge = support::Warren::spawn(
        &args,
        &log,
        &[("PF_AGENT_KEY", "wrong"), ("PF_AGENT_ID", "a")],
    );
    support::eventually(
        Duration::from_secs(20),
        "the bridge reports the 401",
        || {
            let text = bridge.log_text();
            async move { text.contains("refused the agent key (401)") }
        },
    )
    .await;
    assert!(bridge.running());
    assert!(!bridge.log_text().contains("wrong"));
    bridge.signal(Signal::SIGTERM);
    assert_eq!(bridge.wait_exit(Duration::from_secs(20)), Some(0));
    t.cleanup(&conn).await;
}
