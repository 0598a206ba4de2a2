//! After a bridge `kill -9` loop, the archive holds every event the upstream emitted, once per
//! publish: the same ids, with the same counts (the bridge's overlap included), as the work
//! queue that binds every event.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use warren::amqp::StreamOffset;
use warren::archive::StreamReader;
use warren::envelope::Envelope;

use crate::support::bridge::{BRIDGE_TOPOLOGY, Sim, counts, drain_ids, spawn_bridge, wait_depth};
use crate::support::{self, TestTopology, connect, queue_len};

const EVENTS: u32 = 600;
const K: u32 = 100;

#[tokio::test]
async fn after_a_bridge_kill_loop_the_archive_holds_every_event_once_per_publish() {
    let toml = format!(
        "{BRIDGE_TOPOLOGY}\n[archive]\nname = \"archive\"\nmax_bytes = 100_000_000\nsegment_bytes = 1_000_000\n"
    );
    let t = TestTopology::new("archive-bridge-kill", &toml);
    let conn = connect().await;
    t.apply(&conn).await;
    let queue = t.queue("all");
    let sim = Sim::spawn(
        t.dir(),
        "sim",
        &[
            "--events",
            &EVENTS.to_string(),
            "--rate",
            "600",
            "--seed",
            "11",
            "--drop-every",
            "53",
        ],
    );
    let cursor = t.dir().join("cursor");
    let args = [
        "--cursor-file",
        cursor.to_str().unwrap(),
        "--confirm-window",
        "16",
    ];
    let mut depth = 0;
    let mut kills = 0;
    loop {
        let log = t.dir().join(format!("bridge-{kills}.log"));
        let mut bridge = spawn_bridge(&t, &sim.url(), &args, &log);
        let reached = wait_depth(&conn, &queue, depth + K, Duration::from_secs(30)).await;
        assert!(
            reached > depth,
            "round {kills} made no progress:\n{}",
            bridge.log_text()
        );
        if sim.ledger().ids.len() as u32 == EVENTS && reached >= EVENTS {
            // The last round ends cleanly, once the cursor covers the ledger's last event.
            let last = sim.ledger().ids.last().unwrap().clone();
            support::eventually(
                Duration::from_secs(30),
                "the cursor reaches the last event",
                || {
                    let c = std::fs::read_to_string(&cursor).unwrap_or_default();
                    let last = last.clone();
                    async move { c.trim() == last }
                },
            )
            .await;
            bridge.signal(Signal::SIGTERM);
            assert_eq!(
                bridge.wait_exit(Duration::from_secs(30)),
                Some(0),
                "{}",
                bridge.log_text()
            );
            break;
        }
        bridge.kill9();
        kills += 1;
        depth = reached;
        assert!(kills < 30, "the loop does not end");
    }
    assert!(kills >= 3, "only {kills} kills");

    let in_queue = queue_len(&conn, &queue).await as u64;
    let queued = counts(&drain_ids(&conn, &queue).await);
    // Every record of the stream, duplicates included, by the reader the commands use.
    let stream = &t.topology.archive.as_ref().unwrap().name;
    let mut reader = StreamReader::open(&support::url(), stream, StreamOffset::First, 200)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut ids = Vec::new();
    while (ids.len() as u64) < in_queue {
        let r = reader.next(&shutdown).await.unwrap().unwrap();
        ids.push(Envelope::parse(&r.body).expect("an envelope").event_id);
    }
    reader.close().await;
    let archived = counts(&ids);
    let ledger = sim.ledger().set();
    assert_eq!(
        archived
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ledger,
        "every emitted event, nothing else"
    );
    assert_eq!(
        archived, queued,
        "once per publish: the same copies as the work queue"
    );
    eprintln!(
        "kills={kills} events={} publishes={}",
        ledger.len(),
        ids.len()
    );
    t.cleanup(&conn).await;
}
