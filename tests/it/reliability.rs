//! The reliability suite: the whole fleet (sim upstream → bridge → broker → 3 http workers →
//! sim api) as real processes, one fault per scenario while events flow, then a reconcile of
//! every emitted event (I1–I4), bounded RSS (I5) and recovery times (I6), with canary secrets
//! grepped out of every log.
//!
//! Every test is `disruptive_*` so nextest runs each alone: scenarios 3, 4 and 7 stop, block
//! and close the broker for everyone, and the others run five processes that would starve (and
//! be starved by) parallel tests. Run with `flock -x /tmp/warren-broker.lock`.
//! `RELIABILITY_SECS=N` runs each of scenarios 1–6 for N seconds of faults (default 25) and
//! scenario 7 for max(N, 60).

use crate::support;

use std::time::{Duration, Instant};

use crate::support::fleet::{BrokerGuard, Fleet, FleetOptions, ctl, fault_secs};
use crate::support::now_ms;
use crate::support::proxy::Mode;

/// Events per second from the upstream.
const RATE: u32 = 100;

/// Peak RSS allowed per warren role (debug build), KiB.
const RSS_LIMITS: &[(&str, u64)] = &[("worker", 96 * 1024), ("bridge", 96 * 1024)];

fn options(name: &'static str, secs: u64, api_flags: &[&str]) -> FleetOptions {
    FleetOptions {
        name,
        // Emission spans the whole fault period, so every fault has events after it.
        events: u64::from(RATE) * (secs + 3),
        rate: RATE,
        api_flags: api_flags.iter().map(|s| s.to_string()).collect(),
        upstream_flags: vec![],
        bridge_flags: vec![],
        nodes: vec![],
        bridge_first: 0,
    }
}

/// The downstream of scenario 6: 30% of first requests fail (500, 429, committed-then-504 or a
/// hang past the worker's 1 s timeout), 2% of keys are rejected for good.
const DOWNSTREAM_FAULTS: &[&str] = &[
    "--fail-rate",
    "0.10",
    "--throttle-rate",
    "0.10",
    "--ambiguous-rate",
    "0.10",
    "--reject-rate",
    "0.02",
    "--hang-ms",
    "1500",
    "--retry-after",
    "1s",
];

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

fn stop_app() {
    ctl(&["stop_app"]).expect("stop_app");
}

fn start_app() {
    ctl(&["start_app"]).expect("start_app");
    ctl(&["await_startup"]).expect("await_startup");
}

fn close_all() {
    // Fails harmlessly if a connection closes under it; the next round catches the rest.
    let _ = ctl(&["close_all_connections", "reliability: connection dropped"]);
}

fn memory_alarm(on: bool) {
    if on {
        ctl(&["set_vm_memory_high_watermark", "0.0001"]).expect("raise the memory alarm");
    } else {
        ctl(&["eval", support::RESTORE_WATERMARK]).expect("restore the watermark");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_1_worker_kill9() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs();
    let mut fleet = Fleet::start(options("worker-kill", secs, &[])).await;
    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let at = now_ms();
        fleet.restart_worker(kills % support::fleet::WORKERS);
        fleet.mark(&format!("worker-kill#{kills}"), at);
        kills += 1;
    }
    fleet.quiesce(Duration::from_secs(90)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    assert!(kills >= 5, "only {kills} kills");
    assert!(report.recoveries("worker-kill").len() >= kills - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_2_bridge_kill9() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs();
    let mut fleet = Fleet::start(options("bridge-kill", secs, &[])).await;
    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let at = now_ms();
        fleet.restart_bridge();
        fleet.mark(&format!("bridge-kill#{kills}"), at);
        kills += 1;
    }
    fleet.quiesce(Duration::from_secs(90)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    assert!(kills >= 5, "only {kills} kills");
    assert!(report.recoveries("bridge-kill").len() >= kills - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_3_broker_restart_and_closed_connections() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs();
    // stop_app/start_app take seconds of their own and reconnects back off: emit for longer.
    let mut fleet = Fleet::start(options("broker-restart", secs + 25, &[])).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at = now_ms();
    tokio::task::spawn_blocking(stop_app).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(start_app).await.unwrap();
    fleet.mark("stop-app", at);
    // Ten closes spread over the fault time.
    let step = Duration::from_secs(secs) / 12;
    for i in 0..10 {
        tokio::time::sleep(step).await;
        let at = now_ms();
        tokio::task::spawn_blocking(close_all).await.unwrap();
        fleet.mark(&format!("close-all#{i}"), at);
    }
    fleet.quiesce(Duration::from_secs(120)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    assert!(
        !report.recoveries("stop-app").is_empty(),
        "no recovery after stop_app"
    );
    assert!(
        report.recoveries("close-all").len() >= 8,
        "{:?}",
        report.recovery_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_4_memory_alarm() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs().max(26);
    let mut fleet = Fleet::start(options("memory-alarm", secs, &[])).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at = now_ms();
    tokio::task::spawn_blocking(|| memory_alarm(true))
        .await
        .unwrap();
    // Publishes already on the wire may still land; anything emitted after this may not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let emitted_blocked = fleet.emitted();
    tokio::time::sleep(Duration::from_secs(17)).await;
    let alarm_end = now_ms();
    tokio::task::spawn_blocking(|| memory_alarm(false))
        .await
        .unwrap();
    fleet.mark("memory-alarm", at);
    fleet.quiesce(Duration::from_secs(90)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    let leaked: Vec<_> = report
        .commits
        .iter()
        .filter(|(i, at)| *i >= emitted_blocked && *at < alarm_end)
        .collect();
    assert!(
        leaked.is_empty(),
        "events emitted during the alarm took effect before it ended: {leaked:?}"
    );
    assert_eq!(report.recoveries("memory-alarm").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_5_proxy_latency_blackhole_reset() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs();
    let mut fleet = Fleet::start(options("proxy", secs, &[])).await;
    let step = Duration::from_secs(secs / 5).max(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let at = now_ms();
    fleet.proxy(Mode::Latency(Duration::from_millis(100)));
    tokio::time::sleep(step).await;
    fleet.proxy(Mode::Pass);
    fleet.mark("latency", at);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Half-open: bytes vanish, sockets stay up. Only the 2 s heartbeat can notice.
    let accepted = fleet.proxy.accepted();
    let at = now_ms();
    fleet.proxy(Mode::BlackHole);
    tokio::time::sleep(step.max(Duration::from_secs(8))).await;
    fleet.proxy(Mode::Pass);
    fleet.mark("blackhole", at);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        fleet.proxy.accepted() >= accepted + support::fleet::WORKERS,
        "workers did not reconnect after the black hole"
    );

    for i in 0..3 {
        let accepted = fleet.proxy.accepted();
        let at = now_ms();
        fleet.proxy.reset_all();
        fleet.mark(&format!("reset#{i}"), at);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            fleet.proxy.accepted() > accepted,
            "no reconnect after reset {i}"
        );
    }
    fleet.quiesce(Duration::from_secs(90)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    for f in ["latency", "blackhole", "reset"] {
        assert!(!report.recoveries(f).is_empty(), "no recovery after {f}");
    }
    // Heartbeat 2 s: two intervals and a second, plus lapin's half-interval check granularity.
    assert_eq!(report.half_open_ms.len(), support::fleet::WORKERS);
    assert!(
        report.half_open_ms.iter().all(|ms| *ms <= 6000),
        "half-open connections noticed late: {:?} ms",
        report.half_open_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_6_downstream_faults() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs();
    let mut opts = options("downstream", secs, DOWNSTREAM_FAULTS);
    // The upstream also goes silent (pings answered, no events) after each 1000 events.
    opts.upstream_flags = vec!["--silent-after".into(), "1000".into()];
    opts.bridge_flags = vec!["--silence-timeout".into(), "3s".into()];
    let mut fleet = Fleet::start(opts).await;
    fleet.quiesce(Duration::from_secs(secs + 120)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    assert!(!report.silences_s.is_empty(), "no silence was detected");
    assert!(
        report.silences_s.iter().all(|s| *s < 4.5),
        "silences caught late: {:?}",
        report.silences_s
    );
    assert!(report.dead > 0, "no rejection reached the DLQ");
    assert!(report.repeats_absorbed > 0, "no request was repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_reliability_7_everything_at_once() {
    let _broker = BrokerGuard::new();
    let secs = fault_secs().max(60);
    let mut fleet = Fleet::start(options("all", secs, DOWNSTREAM_FAULTS)).await;
    let start = Instant::now();
    let at_s = |s: u64| start + Duration::from_secs(s) * secs as u32 / 60;
    let mut fault_start = 0;
    for t in 0..60u64 {
        sleep_until(at_s(t)).await;
        if t % 5 == 2 {
            let at = now_ms();
            fleet.restart_worker((t / 5) as usize % support::fleet::WORKERS);
            fleet.mark(&format!("worker-kill#{t}"), at);
        }
        if t % 7 == 4 {
            let at = now_ms();
            fleet.restart_bridge();
            fleet.mark(&format!("bridge-kill#{t}"), at);
        }
        match t {
            8 => {
                fault_start = now_ms();
                tokio::task::spawn_blocking(stop_app).await.unwrap();
            }
            12 => {
                tokio::task::spawn_blocking(start_app).await.unwrap();
                fleet.mark("stop-app", fault_start);
            }
            20 => {
                fault_start = now_ms();
                tokio::task::spawn_blocking(|| memory_alarm(true))
                    .await
                    .unwrap();
            }
            32 => {
                tokio::task::spawn_blocking(|| memory_alarm(false))
                    .await
                    .unwrap();
                fleet.mark("memory-alarm", fault_start);
            }
            35 => {
                fault_start = now_ms();
                fleet.proxy(Mode::Latency(Duration::from_millis(100)));
            }
            39 => {
                fleet.proxy(Mode::Pass);
                fleet.mark("latency", fault_start);
            }
            41 => {
                fault_start = now_ms();
                fleet.proxy(Mode::BlackHole);
            }
            48 => {
                fleet.proxy(Mode::Pass);
                fleet.mark("blackhole", fault_start);
            }
            50 | 53 => {
                let at = now_ms();
                fleet.proxy.reset_all();
                fleet.mark(&format!("reset#{t}"), at);
            }
            55..=59 => {
                let at = now_ms();
                tokio::task::spawn_blocking(close_all).await.unwrap();
                fleet.mark(&format!("close-all#{t}"), at);
            }
            _ => {}
        }
    }
    fleet.quiesce(Duration::from_secs(180)).await;
    let report = fleet.finish(RSS_LIMITS).await;
    assert!(report.dead > 0, "no rejection reached the DLQ");
    assert!(
        report
            .recovery_ms
            .iter()
            .filter(|(_, r)| r.is_some())
            .count()
            >= 20,
        "too few measured recoveries: {:?}",
        report.recovery_ms
    );
}
