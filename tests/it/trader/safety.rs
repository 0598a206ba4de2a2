//! What keeps the trader safe: stale ticks (by the payload's observation time or the
//! envelope's `ts`) are dead-lettered, never traded on; a standby takes over when the active
//! trader dies; more than one handler at a time is refused.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::downstream::{self, Sim, Step, TickWalk, dead_letters, settled};
use crate::support::trader::{PAIRS, TOPOLOGY, trader_args};
use crate::support::{TestTopology, Warren};
use warren_sim::api::ApiSettings;

/// How old a stale event is in these tests: well past the queue's 5 min TTL.
const STALE_MS: u64 = 10 * 60 * 1000;

/// Envelopes for `steps` whose `ts` is `ts`.
fn envelopes_at(steps: &[Step], ts: u64) -> Vec<(String, Vec<u8>)> {
    downstream::envelopes(steps)
        .into_iter()
        .map(|(id, body)| {
            let mut v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            v["ts"] = ts.into();
            (id, serde_json::to_vec(&v).expect("json"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_ticks_are_dead_lettered_never_traded_on() {
    let sim = Sim::start(ApiSettings::default()).await;
    let t = TestTopology::new("trader-stale", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let _w = Warren::spawn(&trader_args(&t, &sim.base), &t.dir().join("w.log"), &[]);
    // A 2% climb that would open a long, twice, each stale one way (the queue's TTL is 5 min):
    let old = support::now_ms() - STALE_MS;
    let climb = |observed: Option<u64>| -> Vec<Step> {
        (0..30)
            .map(|i| {
                let mut p =
                    serde_json::json!({"pair": "BTC-USD", "price": 100.0 + i as f64 * 0.07});
                if let Some(ms) = observed {
                    p["timestamp_ms"] = ms.into();
                }
                ("market.tick", p)
            })
            .collect()
    };
    // observed 10 min ago (payload.timestamp_ms), published just now: the trader's check;
    let by_payload = downstream::envelopes(&climb(Some(old)));
    // observed just now, but the envelope's ts is 10 min old: the worker's, before the handler.
    let by_envelope = envelopes_at(&climb(Some(support::now_ms())), old);
    downstream::publish_typed(&conn, &t, &by_payload).await;
    downstream::publish_typed(&conn, &t, &by_envelope).await;
    settled(&conn, &t, "trading", Duration::from_secs(30)).await;
    assert_eq!(sim.ledger().await.posts, 0, "no call for a stale tick");
    // Every one is accounted for in the DLQ as a permanent "stale" failure, none dropped.
    let dlq = t.topology.queue("trading").unwrap().dlq();
    let dead: BTreeMap<String, (String, String)> = dead_letters(&conn, &dlq)
        .await
        .into_iter()
        .map(|d| (d.event_id, (d.kind, d.reason)))
        .collect();
    assert_eq!(dead.len(), by_payload.len() + by_envelope.len(), "{dead:?}");
    for (messages, says) in [
        (&by_payload, "stale: the tick was observed"),
        (&by_envelope, "stale: the event is"),
    ] {
        for (id, _) in messages {
            let (kind, reason) = dead.get(id).expect("dead-lettered");
            assert_eq!(kind, "permanent");
            assert!(reason.starts_with(says), "{reason}");
            assert!(reason.contains("time to live of 5m"), "{reason}");
        }
    }
    // The same climb, fresh: traded. The stale ticks were never windowed, so it takes a full
    // window of fresh ones.
    let fresh = downstream::envelopes(&climb(Some(support::now_ms())));
    downstream::publish_typed(&conn, &t, &fresh[..19]).await;
    settled(&conn, &t, "trading", Duration::from_secs(30)).await;
    assert_eq!(
        sim.ledger().await.posts,
        0,
        "19 fresh ticks are not a full window"
    );
    downstream::publish_typed(&conn, &t, &fresh[19..]).await;
    support::eventually(
        Duration::from_secs(30),
        "a fresh climb opens a long",
        || async { sim.ledger().await.effects == 1 },
    )
    .await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_active_trader_dies() {
    // The standby gets whatever the active one left unacked, then the whole second half.
    let sim = Sim::start(ApiSettings {
        latency: Duration::from_millis(30),
        ..Default::default()
    })
    .await;
    let t = TestTopology::new("trader-standby", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let messages = downstream::envelopes(&TickWalk::new(9, PAIRS).ticks(200));
    let (first, second) = messages.split_at(messages.len() / 2);
    let mut active = Warren::spawn(
        &trader_args(&t, &sim.base),
        &t.dir().join("active.log"),
        &[],
    );
    downstream::publish_typed(&conn, &t, first).await;
    // Once the first worker is consuming (and so holds the queue), start the standby.
    support::eventually(
        Duration::from_secs(30),
        "the active trader trades",
        || async { sim.ledger().await.effects >= 1 },
    )
    .await;
    let standby = Warren::spawn(
        &trader_args(&t, &sim.base),
        &t.dir().join("standby.log"),
        &[],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    active.kill9();
    downstream::publish_typed(&conn, &t, second).await;
    settled(&conn, &t, "trading", Duration::from_secs(60)).await;

    let dlq = t.topology.queue("trading").unwrap().dlq();
    assert_eq!(
        support::queue_len(&conn, &dlq).await,
        0,
        "nothing dead-lettered"
    );
    let ledger = sim.ledger().await;
    let twice: Vec<_> = ledger
        .effects_by_event_and_path()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "a decision ran twice: {twice:?}");
    // The standby loaded the inherited positions: never two open positions on one pair.
    let open = sim.open_per_pair().await;
    assert!(
        open.values().all(|n| *n <= 1),
        "two positions on one pair: {open:?}"
    );
    assert!(open.len() <= 3, "more than the 3-position cap: {open:?}");
    // Only the standby saw the second half: trades decided by it prove it took over.
    let later: std::collections::HashSet<&str> = second.iter().map(|(id, _)| id.as_str()).collect();
    let by_standby = ledger
        .committed()
        .iter()
        .filter(|k| k.event_id.as_deref().is_some_and(|id| later.contains(id)))
        .count();
    assert!(
        by_standby >= 1,
        "the standby traded after the failover:\n{}",
        standby.log_text()
    );
    eprintln!(
        "{} ticks, {} effects, {by_standby} decided by the standby",
        messages.len(),
        ledger.effects
    );
    t.cleanup(&conn).await;
}

#[test]
fn the_trader_refuses_concurrency_above_one() {
    let t = TestTopology::new("trader-usage", TOPOLOGY);
    let mut args = trader_args(&t, "http://127.0.0.1:9");
    args.extend(["--concurrency", "4"].map(String::from));
    let mut w = Warren::spawn(&args, &t.dir().join("w.log"), &[]);
    assert_eq!(w.wait_exit(Duration::from_secs(10)), Some(2));
    assert!(w.log_text().contains("--concurrency 1"), "{}", w.log_text());
}
