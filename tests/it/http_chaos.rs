//! The promise under fire: three `http` workers against a simulated API answering 500s, 429s,
//! 409s and ambiguous commits, while one worker is SIGKILLed about every second mid-call and
//! restarted. Every event must end with exactly one effect in the ledger, or in the DLQ for a
//! reason the run explains (the sim rejects its key, or the broker's delivery limit); none may
//! be missing and no key may have two effects. A dead letter may have a copy (dead-lettering is
//! at least once), never an effect beside it.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::downstream::{Sim, dead_letters, http_worker_args, settled};
use crate::support::{TestTopology, Warren};
use warren::envelope::idempotency_key;
use warren_sim::api::{ApiSettings, FaultPlan, FaultRates};

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
prefetch = 20
max_attempts = 10
retry_delays = ["200ms", "500ms", "1s"]
delivery_limit = 30
expires = "10m"

[[queues]]
name = "work"
bind = ["test.*"]
"#;

const EVENTS: usize = 600;
const WORKERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_call_with_every_fault_on_loses_nothing_and_doubles_nothing() {
    let settings = ApiSettings {
        seed: 7,
        rates: FaultRates {
            fail: 0.15,
            throttle: 0.10,
            ambiguous: 0.10,
            conflict: 0.10,
            reject: 0.03,
        },
        retry_after: Duration::from_secs(1),
        latency: Duration::from_millis(20),
        hang: Duration::from_millis(1500),
        max_faults_per_key: 3,
        token: None,
    };
    // The sim's own plan, to know which keys it rejects for good (422).
    let plan = FaultPlan::new(
        settings.seed,
        settings.rates.clone(),
        settings.max_faults_per_key,
        !settings.hang.is_zero(),
    );
    let sim = Sim::start(settings).await;
    let t = TestTopology::new("http-chaos", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let args = http_worker_args(
        &t,
        "work",
        &sim.url("/events"),
        &["--concurrency", "4", "--request-timeout", "500ms"],
    );
    let spawn = |i: usize, generation: usize| {
        Warren::spawn(&args, &t.dir().join(format!("w{i}-{generation}.log")), &[])
    };
    let mut workers: Vec<Warren> = (0..WORKERS).map(|i| spawn(i, 0)).collect();
    let ids = support::publish_events(
        &conn,
        &t,
        "test.event",
        serde_json::json!({"chaos": "on"}),
        EVENTS,
    )
    .await;
    let dlq = t.topology.queue("work").unwrap().dlq();

    // Kill one worker about every second while work remains; restart it at once.
    let started = Instant::now();
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let done = sim
            .ledger()
            .await
            .effects_by_event()
            .values()
            .filter(|e| **e > 0)
            .count()
            + support::queue_len(&conn, &dlq).await as usize;
        if done >= EVENTS || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let i = kills % WORKERS;
        workers[i].kill9();
        kills += 1;
        workers[i] = spawn(i, kills);
    }
    settled(&conn, &t, "work", Duration::from_secs(60)).await;

    // Reconcile the ledger and the DLQ against what was published.
    let ledger = sim.ledger().await;
    // The sim counts every commit per key: a key committed twice would show here. Two effects
    // for one event under two keys are caught by `effects_by_event` below.
    let doubled: Vec<_> = ledger.keys.iter().filter(|k| k.effects > 1).collect();
    assert!(doubled.is_empty(), "keys with two effects: {doubled:?}");
    let effects = ledger.effects_by_event();
    let dead = dead_letters(&conn, &dlq).await;
    let rejected: BTreeSet<&str> = ids
        .iter()
        .filter(|id| plan.rejects(&idempotency_key(id, "http", "post")))
        .map(String::as_str)
        .collect();
    let mut parked: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &dead {
        // Only two ways to the DLQ are expected here: the sim rejected the key (its seeded
        // verdict, a 422: permanent), or the broker's delivery limit after too many kills.
        // Every other fault is bounded per key and must end in an effect.
        let explained = (d.kind == "permanent"
            && rejected.contains(d.event_id.as_str())
            && d.reason.contains("422"))
            || (d.kind == "x-death" && d.death.as_deref() == Some("delivery_limit"));
        assert!(explained, "an unexpected dead letter: {d:?}");
        *parked.entry(d.event_id.as_str()).or_default() += 1;
    }
    let unparked: Vec<_> = rejected
        .iter()
        .filter(|id| !parked.contains_key(**id))
        .collect();
    assert!(
        unparked.is_empty(),
        "rejected keys not dead-lettered: {unparked:?}"
    );
    // Dead-lettering is at least once: a kill after the dead letter's confirm and before the
    // broker has the ack (a SIGKILLed socket with unread deliveries is reset, its unsent ack
    // with it) redelivers the message, and it is parked again. Copies of one event, with no
    // effect, are that; each needs a kill, so there are at most as many as kills.
    let mut missing = vec![];
    let mut both = vec![];
    let mut copies = 0;
    for id in &ids {
        let e = effects.get(id).copied().unwrap_or(0);
        let p = parked.get(id.as_str()).copied().unwrap_or(0);
        match (e, p) {
            (1, 0) | (0, 1) => {}
            (0, 0) => missing.push(id),
            (0, p) => copies += p - 1,
            _ => both.push((id, e, p)),
        }
    }
    assert!(
        copies <= kills,
        "{copies} extra dead-letter copies from {kills} kills"
    );
    assert!(
        missing.is_empty(),
        "events with no effect and no dead letter: {missing:?}"
    );
    assert!(
        both.is_empty(),
        "events with effects and dead letters (id, effects, dead letters): {both:?}"
    );
    assert_eq!(ledger.effects as usize + dead.len() - copies, EVENTS);

    // The faults and the kills really happened.
    let statuses: BTreeMap<u16, usize> =
        sim.requests(None)
            .await
            .iter()
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.status).or_default() += 1;
                m
            });
    for s in [500, 429, 409, 422] {
        assert!(statuses.contains_key(&s), "no {s} answered: {statuses:?}");
    }
    assert!(
        statuses.contains_key(&504) || statuses.contains_key(&0),
        "no ambiguous answer: {statuses:?}"
    );
    assert!(kills >= 3, "only {kills} kills");
    eprintln!(
        "{EVENTS} events: {} effects, {} dead letters ({copies} copies), {kills} kills in {:?}; \
         answers {statuses:?}",
        ledger.effects,
        dead.len(),
        started.elapsed()
    );
    drop(workers);
    t.cleanup(&conn).await;
}
