//! The `trader` handler in a real worker, against the simulated API: on a hand-written stream
//! it makes exactly the trades worked out by hand (50 USDC each); on a seeded stream with faults
//! on it trades exactly as the strategy says and stops on low balance; a replay of the whole
//! stream, to the same worker and then to a fresh one, causes no new effect. Stale ticks and a
//! standby taking over are in [`safety`].

mod safety;

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::downstream::{self, Sim, Step, TickWalk, settled};
use crate::support::trader::{PAIRS, TOPOLOGY, path, trader_args};
use crate::support::{TestTopology, Warren};
use warren::envelope::Envelope;
use warren::handlers::trader::strategy::{Input, Params, Strategy, Trade};
use warren_sim::api::{ApiSettings, FaultRates};

/// Trades the strategy decides over `messages`, with their deciding event's index.
fn expected(messages: &[(String, Vec<u8>)]) -> Vec<(usize, Trade)> {
    let mut s = Strategy::new(Params::default());
    let mut out = vec![];
    for (i, (_, body)) in messages.iter().enumerate() {
        let e = Envelope::parse(body).expect("valid envelope");
        let input = Input::from_event(&e).expect("valid input");
        out.extend(s.on_event(&e.event_id, &input).into_iter().map(|t| (i, t)));
    }
    out
}

fn tick(pair: &str, price: f64) -> Step {
    (
        "market.tick",
        serde_json::json!({"pair": pair, "price": price, "timestamp_ms": support::now_ms()}),
    )
}

/// `n` ticks of `pair` at `price`, none deciding anything.
fn flat(pair: &str, price: f64, n: usize) -> Vec<(&'static str, Step)> {
    (0..n).map(|_| ("", tick(pair, price))).collect()
}

/// A stream written and worked out by hand for the seeds' parameters (a 20-tick window, a 0.3%
/// threshold, at most 3 positions): each step's label names the trades it decides, if any.
fn hand_written_stream() -> Vec<(&'static str, Step)> {
    let mut s = vec![];
    // A: 19 ticks do not fill the window; the 20th makes it full at +0.2%: under the threshold.
    s.extend(flat("A", 100.0, 19));
    s.push(("", tick("A", 100.2)));
    // Window [100 x18, 100.2, 100.5]: +0.5%, long: open A long.
    s.push(("A long", tick("A", 100.5)));
    // +0.6%, long again: hold.
    s.push(("", tick("A", 100.6)));
    // B: [50 x19, 49.8]: -0.4%, short: open B short.
    s.extend(flat("B", 50.0, 19));
    s.push(("B short", tick("B", 49.8)));
    // C: [10 x19, 10.05]: +0.5%: open C long. Three are open now.
    s.extend(flat("C", 10.0, 19));
    s.push(("C long", tick("C", 10.05)));
    // D: [20 x19, 20.1]: +0.5%, a long signal, but three are open: nothing.
    s.extend(flat("D", 20.0, 19));
    s.push(("", tick("D", 20.1)));
    // Paused: this tick would flip A (100 -> 98: -2%), but it is ignored, not even windowed.
    s.push((
        "",
        (
            "wallet.low_balance",
            serde_json::json!({"balance_usdc": 4.2}),
        ),
    ));
    s.push(("", tick("A", 98.0)));
    s.push((
        "",
        ("escrow.released", serde_json::json!({"amount_usdc": 20.0})),
    ));
    // A: [100 x16, 100.2, 100.5, 100.6, 99.0]: -1%, short: close A long, open A short.
    s.push(("A flip", tick("A", 99.0)));
    // B: [50 x18, 49.8, 50.5]: +1%, long: close B short, open B long.
    s.push(("B flip", tick("B", 50.5)));
    // Paused again: this tick would flip C (10 -> 9: -10%).
    s.push((
        "",
        (
            "wallet.low_balance",
            serde_json::json!({"balance_usdc": 3.0}),
        ),
    ));
    s.push(("", tick("C", 9.0)));
    s.push((
        "",
        (
            "wallet.balance_changed",
            serde_json::json!({"new_balance_usdc": 500.0}),
        ),
    ));
    // C: [10 x18, 10.05, 9.9]: -1%, short: close C long, open C short.
    s.push(("C flip", tick("C", 9.9)));
    // D: [20 x18, 20.1, 20.2]: +1%, long, but three are still open: nothing.
    s.push(("", tick("D", 20.2)));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_a_hand_written_stream_exactly_as_worked_out_by_hand() {
    let sim = Sim::start(ApiSettings::default()).await;
    let stream = hand_written_stream();
    let steps: Vec<Step> = stream.iter().map(|(_, s)| s.clone()).collect();
    let messages = downstream::envelopes(&steps);
    let id_of: BTreeMap<&str, &str> = stream
        .iter()
        .zip(&messages)
        .filter(|((label, _), _)| !label.is_empty())
        .map(|((label, _), (id, _))| (*label, id.as_str()))
        .collect();
    // (deciding step, endpoint, pair, side opened); in this order, each once.
    let want: &[(&str, &str, &str, Option<&str>)] = &[
        ("A long", "/trade/open", "A", Some("long")),
        ("B short", "/trade/open", "B", Some("short")),
        ("C long", "/trade/open", "C", Some("long")),
        ("A flip", "/trade/close", "A", None),
        ("A flip", "/trade/open", "A", Some("short")),
        ("B flip", "/trade/close", "B", None),
        ("B flip", "/trade/open", "B", Some("long")),
        ("C flip", "/trade/close", "C", None),
        ("C flip", "/trade/open", "C", Some("short")),
    ];

    let t = TestTopology::new("trader-hand", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let worker = Warren::spawn(&trader_args(&t, &sim.base), &t.dir().join("w.log"), &[]);
    downstream::publish_typed(&conn, &t, &messages).await;
    settled(&conn, &t, "trading", Duration::from_secs(60)).await;
    let dlq = t.topology.queue("trading").unwrap().dlq();
    assert_eq!(support::queue_len(&conn, &dlq).await, 0);

    let ledger = sim.ledger().await;
    let committed = ledger.committed();
    let got: Vec<(String, String, String, Option<String>)> = committed
        .iter()
        .map(|k| {
            let body = &k.stored.as_ref().expect("stored").body;
            (
                k.event_id.clone().unwrap_or_default(),
                k.path.clone(),
                body["pair"].as_str().unwrap_or("").to_string(),
                body["direction"].as_str().map(str::to_string),
            )
        })
        .collect();
    let wanted: Vec<(String, String, String, Option<String>)> = want
        .iter()
        .map(|(label, path, pair, side)| {
            (
                id_of[label].to_string(),
                path.to_string(),
                pair.to_string(),
                side.map(str::to_string),
            )
        })
        .collect();
    assert_eq!(got, wanted, "{}", worker.log_text());
    assert!(committed.iter().all(|k| k.effects == 1));
    // Each close closed the position its pair's first open created.
    let position = |i: usize| committed[i].stored.as_ref().unwrap().body["position_id"].clone();
    for (close, open) in [(3, 0), (5, 1), (7, 2)] {
        assert_eq!(position(close), position(open), "trade {close}");
    }

    // What is left open: the three flipped-into positions, 50 USDC at 3x each.
    let mut held: Vec<(String, String, String, f64, f64)> = sim
        .positions()
        .await
        .iter()
        .map(|p| {
            (
                p["pair"].as_str().unwrap_or("").to_string(),
                p["direction"].as_str().unwrap_or("").to_string(),
                p["event_id"].as_str().unwrap_or("").to_string(),
                p["size_usdc"].as_f64().unwrap_or(0.0),
                p["leverage"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    held.sort_by(|a, b| a.0.cmp(&b.0));
    let expected_held: Vec<(String, String, String, f64, f64)> = [
        ("A", "short", "A flip"),
        ("B", "long", "B flip"),
        ("C", "short", "C flip"),
    ]
    .iter()
    .map(|(pair, side, label)| {
        (
            pair.to_string(),
            side.to_string(),
            id_of[label].to_string(),
            50.0,
            3.0,
        )
    })
    .collect();
    assert_eq!(held, expected_held);
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_as_the_strategy_says_pauses_on_low_balance_and_replays_trade_nothing() {
    // 500s and ambiguous commits, at most two per key: the client's three tries always get
    // through within one delivery, so the order of trades is the order of ticks.
    let sim = Sim::start(ApiSettings {
        seed: 5,
        rates: FaultRates {
            fail: 0.2,
            ambiguous: 0.1,
            ..Default::default()
        },
        max_faults_per_key: 2,
        ..Default::default()
    })
    .await;
    let mut walk = TickWalk::new(42, PAIRS);
    let mut steps: Vec<Step> = walk.ticks(90);
    let pause_at = steps.len();
    steps.push((
        "wallet.low_balance",
        serde_json::json!({"balance_usdc": 4.2}),
    ));
    steps.extend(walk.ticks(60));
    let resume_at = steps.len();
    steps.push((
        "wallet.balance_changed",
        serde_json::json!({"new_balance_usdc": 500.0}),
    ));
    steps.extend(walk.ticks(90));
    let messages = downstream::envelopes(&steps);

    let want = expected(&messages);
    let opens = want
        .iter()
        .filter(|(_, t)| matches!(t, Trade::Open { .. }))
        .count();
    let closes = want.len() - opens;
    assert!(
        opens >= 4 && closes >= 2,
        "the stream must exercise the strategy: {opens} opens, {closes} closes"
    );
    assert!(want.iter().any(|(i, _)| *i < pause_at) && want.iter().any(|(i, _)| *i > resume_at));
    assert!(
        want.iter().all(|(i, _)| *i < pause_at || *i > resume_at),
        "nothing while paused"
    );
    eprintln!(
        "{} events decide {opens} opens and {closes} closes",
        messages.len()
    );
    // Without the pause the same stream would have traded in that stretch: the pause matters.
    let mut unpaused = messages.clone();
    unpaused.remove(pause_at);
    assert!(
        expected(&unpaused)
            .iter()
            .any(|(i, _)| (pause_at..resume_at - 1).contains(i)),
        "the paused stretch must hold signals"
    );

    let t = TestTopology::new("trader", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let mut worker = Warren::spawn(&trader_args(&t, &sim.base), &t.dir().join("w1.log"), &[]);
    downstream::publish_typed(&conn, &t, &messages).await;
    support::eventually(
        Duration::from_secs(60),
        "every decided trade in the ledger",
        || async { sim.ledger().await.effects as usize >= want.len() },
    )
    .await;
    settled(&conn, &t, "trading", Duration::from_secs(30)).await;

    // The ledger holds exactly the decided trades, in order, each once.
    let ledger = sim.ledger().await;
    let committed = ledger.committed();
    let got: Vec<(String, String)> = committed
        .iter()
        .map(|k| (k.path.clone(), k.key.clone()))
        .collect();
    let wanted: Vec<(String, String)> = want
        .iter()
        .map(|(_, t)| (path(t).to_string(), t.key()))
        .collect();
    assert_eq!(got, wanted, "{}", worker.log_text());
    for (k, (_, t)) in committed.iter().zip(&want) {
        let body = &k.stored.as_ref().expect("stored").body;
        assert_eq!(body["pair"], t.pair());
        if let Trade::Open { direction, .. } = t {
            assert_eq!(body["direction"], direction.as_str());
        }
    }
    let dlq = t.topology.queue("trading").unwrap().dlq();
    assert_eq!(support::queue_len(&conn, &dlq).await, 0);
    let posts_before = ledger.posts;

    // Replay 1: the same worker has seen every eventId; nothing is traded or even called.
    downstream::publish_typed(&conn, &t, &messages).await;
    settled(&conn, &t, "trading", Duration::from_secs(30)).await;
    let again = sim.ledger().await;
    assert_eq!(again.effects as usize, want.len());
    assert_eq!(again.posts, posts_before, "a seen tick is not traded again");

    // Replay 2: a fresh worker has no memory of the ticks. It loads the positions the API still
    // holds, each with the event that opened it, and they count only from the tick after that
    // event: replaying the whole history from the start, it decides exactly the first worker's
    // trades, under the same keys, and the API answers every one with its stored response.
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(worker.wait_exit(Duration::from_secs(30)), Some(0));
    let held_before = sim.position_ids().await;
    let fresh = Warren::spawn(&trader_args(&t, &sim.base), &t.dir().join("w2.log"), &[]);
    downstream::publish_typed(&conn, &t, &messages).await;
    settled(&conn, &t, "trading", Duration::from_secs(60)).await;
    let replayed = sim.ledger().await;
    assert_eq!(
        replayed.effects,
        again.effects,
        "a replay to a fresh worker caused new effects:\n{}",
        fresh.log_text()
    );
    let doubled: Vec<_> = replayed.keys.iter().filter(|k| k.effects > 1).collect();
    assert!(doubled.is_empty(), "keys with two effects: {doubled:?}");
    let got_again: Vec<(String, String)> = replayed
        .committed()
        .iter()
        .map(|k| (k.path.clone(), k.key.clone()))
        .collect();
    assert_eq!(got_again, wanted, "the same trades, nothing else");
    // It did decide them all again: every trade was posted once more, and replayed.
    assert!(
        replayed.posts >= again.posts + want.len() as u64,
        "{} posts before, {} after, {} trades",
        again.posts,
        replayed.posts,
        want.len()
    );
    assert_eq!(
        sim.position_ids().await,
        held_before,
        "the same positions open"
    );
    assert_eq!(support::queue_len(&conn, &dlq).await, 0);
    t.cleanup(&conn).await;
}
