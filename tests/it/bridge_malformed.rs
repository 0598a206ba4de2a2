//! Malformed frames of every kind land in the ingress DLQ as `invalid`, the bridge stays up,
//! and every valid event around them arrives.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::bridge::{
    BRIDGE_TOPOLOGY, Sim, counts, drain_all, drain_ids, spawn_bridge, wait_depth,
};
use crate::support::{TestTopology, connect};
use nix::sys::signal::Signal;
use warren::amqp::{hdr, header_str, header_u64};
use warren::bridge::route::{ABSENT_INVALID_UTF8, BODY_ABSENT, ORIGINAL_SIZE, TRUNCATED_BYTES};

#[tokio::test]
async fn every_kind_of_malformed_frame_is_dead_lettered_and_valid_events_all_arrive() {
    let t = TestTopology::new("bridge-bad", BRIDGE_TOPOLOGY);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let dlq = t.topology.ingress_dlq();
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            "400",
            "--rate",
            "800",
            "--seed",
            "3",
            "--malformed-rate",
            "0.1",
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

    assert_eq!(
        wait_depth(&conn, &queue, 400, Duration::from_secs(60)).await,
        400,
        "{}",
        bridge.log_text()
    );
    let ledger = sim.ledger();
    let sent: usize = ledger.malformed.values().sum();
    assert!(
        ledger.malformed.len() == 6,
        "the sim sent every kind: {:?}",
        ledger.malformed
    );
    wait_depth(&conn, &dlq, sent as u32, Duration::from_secs(20)).await;
    assert!(bridge.running(), "the bridge must stay up");
    bridge.signal(Signal::SIGTERM);
    assert_eq!(
        bridge.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        bridge.log_text()
    );

    let ids = drain_ids(&conn, &queue).await;
    let c = counts(&ids);
    assert_eq!(
        c.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        ledger.set()
    );

    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let dead = drain_all(&conn, &dlq).await;
    for d in &dead {
        let p = &d.properties;
        assert_eq!(header_str(p, hdr::ERROR_KIND), Some("invalid"));
        assert_eq!(
            header_str(p, hdr::ORIGIN_QUEUE),
            Some(t.topology.events_exchange.as_str())
        );
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/octet-stream"
        );
        let error = header_str(p, hdr::ERROR).unwrap();
        let body = String::from_utf8_lossy(&d.data);
        if !error.contains("UTF-8") && !error.contains("utf-8") {
            assert_eq!(header_str(p, BODY_ABSENT), None, "{error}");
        }
        let kind = if error.contains("not a JSON object") && body.starts_with("not json #") {
            "not-json"
        } else if error.contains("field 'eventId' is missing") {
            "missing-field"
        } else if error.contains("field 'ts'") {
            "wrong-type"
        } else if error.contains("binary frame") && body.contains("\"eventId\"") {
            "binary"
        } else if header_u64(p, ORIGINAL_SIZE).is_some_and(|n| n > 1024 * 1024)
            && d.data.len() == TRUNCATED_BYTES
        {
            "oversized"
        } else if error.contains("UTF-8") || error.contains("utf-8") {
            // tungstenite fails the connection on it without handing over the bytes: the
            // dead letter says so instead of passing off an empty body as the frame.
            assert!(d.data.is_empty());
            assert_eq!(header_str(p, BODY_ABSENT), Some(ABSENT_INVALID_UTF8));
            "invalid-utf8"
        } else {
            panic!(
                "unexpected dead letter: {error} / {}",
                &body[..body.len().min(80)]
            );
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let expected: BTreeMap<&str, usize> = ledger
        .malformed
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        kinds, expected,
        "every malformed frame the sim sent is in the DLQ, by kind"
    );
    t.cleanup(&conn).await;
}
