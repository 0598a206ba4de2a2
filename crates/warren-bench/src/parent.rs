//! The parent of `warren bench`: declares a throwaway topology per run, fills backlogs, runs the
//! simulated upstream, starts each side as a child process, and folds the rounds into a report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::scenarios::properties;
use super::stats::median;
use super::{
    Percentiles, QueueType, RUN_LIMIT, RunSpec, Scenario, Side, SideResult, message_body, stats,
};
use warren::amqp::{self, AmqpUrl, ConfirmWindow, Message, Publisher};
use warren::error::Error;
use warren::topology::{self, Topology};
use warren_sim::upstream::{self, UpstreamSettings};

use crate::lanes::{LaneBench, LanesSettings};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The broker.
    pub url: AmqpUrl,
    /// The broker URL as given (handed to the children through `AMQP_URL`, never argv).
    pub amqp_url: String,
    /// The `warren` binary the children run.
    pub exe: PathBuf,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Queue types, in order.
    pub queue_types: Vec<QueueType>,
    /// Messages per run.
    pub messages: u64,
    /// Body size, bytes.
    pub size: usize,
    /// Sides, in the order each round runs them.
    pub sides: Vec<Side>,
    /// Rounds per scenario.
    pub rounds: usize,
    /// The latency scenarios' ceiling is the fastest raw saturation run before them; without
    /// one, a raw saturation run with this bound measures it (0: none).
    pub max_in_flight: u64,
    /// The aio-pika peer program (`bench/peers/peer`), run as `PEER --child SPEC`.
    pub peer: PathBuf,
    /// Cancelled on SIGINT/SIGTERM: the run in progress stops, its topology is deleted, and
    /// the bench fails.
    pub stop: CancellationToken,
    /// The lanes scenario's settings; needed when `scenarios` has a lanes entry.
    pub lanes: Option<LanesSettings>,
}

/// One side's figures over the rounds: medians, and the largest peak RSS.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Messages per second, median.
    pub msgs_per_sec: f64,
    /// Latency percentiles, each the median over rounds.
    pub latency: Option<Percentiles>,
    /// CPU µs per message, median.
    pub cpu_us_per_msg: f64,
    /// Peak RSS, KiB, the largest of the rounds.
    pub peak_rss_kib: u64,
    /// Retry scenario: outcome → ack ms, median (see [`SideResult::settle_ms`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_ms: Option<f64>,
    /// Every round.
    pub runs: Vec<SideResult>,
}

/// warren ÷ a baseline, the median of the per-round ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Throughput ratio, median.
    pub throughput: f64,
    /// Smallest per-round throughput ratio.
    pub throughput_min: f64,
    /// Largest per-round throughput ratio.
    pub throughput_max: f64,
    /// CPU per message ratio, median.
    pub cpu: f64,
    /// p99 latency ratio, median (where latency is measured).
    pub p99: Option<f64>,
    /// Outcome → ack time ratio, median (retry scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle: Option<f64>,
    /// Peak RSS ratio (largest of each side).
    pub rss: f64,
}

/// One scenario on one queue type.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Label.
    pub scenario: String,
    /// The scenario and its parameter.
    pub params: Scenario,
    /// The queue type.
    pub queue_type: QueueType,
    /// Offered rate, messages per second (latency scenarios).
    pub offered_rate: Option<f64>,
    /// warren's figures.
    pub warren: Option<Summary>,
    /// The raw baseline's figures.
    pub raw: Option<Summary>,
    /// The aio-pika peer's figures.
    pub peer: Option<Summary>,
    /// warren ÷ raw.
    pub ratios: Option<Ratios>,
    /// warren ÷ the aio-pika peer.
    pub peer_ratios: Option<Ratios>,
    /// Lanes: this many workers ÷ one worker, round by round (CPU: all the workers' together
    /// per message; RSS: the largest worker's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Ratios>,
    /// Lanes: how the runs were made, and their convergence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lanes: Option<LanesRow>,
}

/// How a lanes row was measured.
#[derive(Debug, Clone, Serialize)]
pub struct LanesRow {
    /// Worker processes.
    pub workers: u16,
    /// Lanes of the queue.
    pub lanes: u16,
    /// Pairs (lane key values), spread evenly over the lanes.
    pub pairs: u16,
    /// Events per run.
    pub events: u64,
    /// The downstream's processing time per request, ms.
    pub downstream_latency_ms: f64,
    /// How the events reached their lanes.
    pub routing: crate::lanes::LaneRouting,
    /// The flags every worker ran with.
    pub worker_args: String,
    /// lanes ÷ latency: the most the queue can drain with every lane always busy.
    pub lane_ceiling_msgs_per_sec: f64,
    /// Seconds from starting the workers until each owned its share of the lanes, median.
    pub convergence_secs: f64,
    /// Busy share of the machine's CPUs while timed, percent, median.
    pub machine_busy_pct: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Messages per run.
    pub messages: u64,
    /// Body size, bytes.
    pub size: usize,
    /// Rounds per scenario.
    pub rounds: usize,
    /// One row per scenario and queue type.
    pub rows: Vec<Row>,
}

/// Runs every scenario on every queue type, `rounds` times with the sides interleaved.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, Error> {
    let (laned, plain): (Vec<Scenario>, Vec<Scenario>) = opts
        .scenarios
        .iter()
        .partition(|s| matches!(s, Scenario::Lanes { .. }));
    let total = (plain.len() * opts.queue_types.len() * opts.rounds * opts.sides.len()
        + laned.len() * opts.rounds) as u64;
    let bar = progress(total);
    let mut rows = Vec::new();
    for &qt in &opts.queue_types {
        if plain.is_empty() {
            break;
        }
        let mut ceiling: Option<f64> = None;
        for &scenario in &plain {
            let rate = match scenario {
                Scenario::Latency { percent } => {
                    if ceiling.is_none() {
                        bar.set_message(format!("{} ceiling", qt.as_str()));
                        let saturation = Scenario::Saturation {
                            max_in_flight: opts.max_in_flight,
                        };
                        let r = one_run(opts, saturation, qt, Side::Raw, None).await?;
                        ceiling = Some(r.msgs_per_sec);
                    }
                    ceiling.map(|c| c * f64::from(percent) / 100.0)
                }
                _ => None,
            };
            let mut runs: Vec<(Side, SideResult)> = Vec::new();
            for _ in 0..opts.rounds {
                for &side in &opts.sides {
                    if side == Side::Peer && !scenario.peer_applies() {
                        bar.inc(1);
                        continue;
                    }
                    bar.set_message(format!("{} {} {:?}", scenario.label(), qt.as_str(), side));
                    let r = match one_run(opts, scenario, qt, side, rate).await {
                        // One failed run (a dropped connection, a stuck child) costs that run,
                        // not the whole report: run it once more.
                        Err(error) if !opts.stop.is_cancelled() => {
                            tracing::warn!(%error, "Run failed; running it again.");
                            one_run(opts, scenario, qt, side, rate).await?
                        }
                        r => r?,
                    };
                    if matches!(scenario, Scenario::Saturation { .. }) && side == Side::Raw {
                        ceiling = Some(ceiling.map_or(r.msgs_per_sec, |c| c.max(r.msgs_per_sec)));
                    }
                    bar.inc(1);
                    if bar.is_hidden() {
                        // Off a terminal the bar is hidden: one line per run instead.
                        tracing::info!(
                            run = bar.position(),
                            of = total,
                            scenario = %scenario.label(),
                            queue_type = qt.as_str(),
                            side = ?side,
                            msgs_per_sec = r.msgs_per_sec.round(),
                            "Run finished."
                        );
                    }
                    runs.push((side, r));
                }
            }
            rows.push(row(scenario, qt, rate, runs));
        }
    }
    if !laned.is_empty() {
        rows.extend(run_lanes(opts, &laned, &bar, total).await?);
    }
    bar.finish_and_clear();
    Ok(BenchReport {
        messages: opts.messages,
        size: opts.size,
        rounds: opts.rounds,
        rows,
    })
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} runs  {msg}") {
        bar.set_style(style);
    }
    bar
}

fn row(scenario: Scenario, qt: QueueType, rate: Option<f64>, runs: Vec<(Side, SideResult)>) -> Row {
    let of = |side: Side| -> Vec<SideResult> {
        runs.iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, r)| r.clone())
            .collect()
    };
    let (w, r, p) = (of(Side::Warren), of(Side::Raw), of(Side::Peer));
    Row {
        scenario: scenario.label(),
        params: scenario,
        queue_type: qt,
        offered_rate: rate,
        ratios: ratios(&w, &r),
        peer_ratios: ratios(&w, &p),
        warren: summarize(w),
        raw: summarize(r),
        peer: summarize(p),
        scaling: None,
        lanes: None,
    }
}

/// The lanes scenario: one laned topology, rounds that run each worker count in turn (1, 2,
/// 4, 8, 1, 2, 4, 8…), a row per worker count with its ratio to one worker.
async fn run_lanes(
    opts: &BenchOptions,
    scenarios: &[Scenario],
    bar: &ProgressBar,
    total: u64,
) -> Result<Vec<Row>, Error> {
    let settings = opts
        .lanes
        .as_ref()
        .ok_or_else(|| Error::Usage("bench: the lanes scenario needs its settings".into()))?;
    let Some(&Scenario::Lanes { lanes, .. }) = scenarios.first() else {
        return Ok(Vec::new());
    };
    if opts.stop.is_cancelled() {
        return Err(Error::Other("bench: interrupted".into()));
    }
    let bench = LaneBench::open(&opts.url, lanes, settings.pairs).await?;
    let mut runs: Vec<Vec<SideResult>> = vec![Vec::new(); scenarios.len()];
    let outcome: Result<(), Error> = async {
        for _ in 0..opts.rounds {
            for (i, &scenario) in scenarios.iter().enumerate() {
                let Scenario::Lanes { workers, .. } = scenario else {
                    continue;
                };
                bar.set_message(scenario.label());
                let run = || bench.run(&opts.amqp_url, settings, workers, &opts.stop);
                let r = match run().await {
                    // As elsewhere: one failed run costs that run, not the report.
                    Err(error) if !opts.stop.is_cancelled() => {
                        tracing::warn!(%error, "Lanes run failed; running it again.");
                        run().await?
                    }
                    r => r?,
                };
                bar.inc(1);
                if bar.is_hidden() {
                    tracing::info!(
                        run = bar.position(),
                        of = total,
                        scenario = %scenario.label(),
                        msgs_per_sec = r.msgs_per_sec.round(),
                        convergence_secs = r.lanes.as_ref().map(|l| l.convergence_secs),
                        "Run finished."
                    );
                }
                runs[i].push(r);
            }
        }
        Ok(())
    }
    .await;
    bench.close().await;
    outcome?;
    let one = scenarios
        .iter()
        .position(|s| matches!(s, Scenario::Lanes { workers: 1, .. }))
        .map(|i| runs[i].clone())
        .unwrap_or_default();
    Ok(scenarios
        .iter()
        .zip(runs)
        .map(|(&scenario, runs)| {
            let workers = match scenario {
                Scenario::Lanes { workers, .. } => workers,
                _ => 0,
            };
            let lane_med = |f: &dyn Fn(&crate::lanes::LaneRun) -> f64| {
                median(
                    &mut runs
                        .iter()
                        .filter_map(|r| r.lanes.as_ref().map(f))
                        .collect::<Vec<_>>(),
                )
            };
            let detail = LanesRow {
                workers,
                lanes,
                pairs: settings.pairs,
                events: settings.events,
                downstream_latency_ms: settings.latency.as_secs_f64() * 1000.0,
                routing: settings.routing,
                worker_args: settings.worker_args(),
                lane_ceiling_msgs_per_sec: settings.ceiling(lanes),
                convergence_secs: lane_med(&|l| l.convergence_secs),
                machine_busy_pct: lane_med(&|l| l.machine_busy_pct),
            };
            Row {
                scenario: scenario.label(),
                params: scenario,
                queue_type: QueueType::Quorum,
                offered_rate: None,
                scaling: ratios(&runs, &one),
                warren: summarize(runs),
                raw: None,
                peer: None,
                ratios: None,
                peer_ratios: None,
                lanes: Some(detail),
            }
        })
        .collect())
}

/// `a ÷ b` round by round (the sides ran interleaved, so index `i` is round `i` of both).
fn ratios(a: &[SideResult], b: &[SideResult]) -> Option<Ratios> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let pairs = a.iter().zip(b);
    let mut tp: Vec<f64> = pairs
        .clone()
        .map(|(a, b)| a.msgs_per_sec / b.msgs_per_sec)
        .collect();
    let mut cpu: Vec<f64> = pairs
        .clone()
        .map(|(a, b)| a.cpu_us_per_msg / b.cpu_us_per_msg)
        .collect();
    let mut settle: Vec<f64> = pairs
        .clone()
        .filter_map(|(a, b)| Some(a.settle_ms? / b.settle_ms?.max(1e-6)))
        .collect();
    let mut p99: Vec<f64> = pairs
        .filter_map(|(a, b)| Some(a.latency?.p99_us as f64 / b.latency?.p99_us.max(1) as f64))
        .collect();
    let peak = |v: &[SideResult]| v.iter().map(|x| x.peak_rss_kib).max().unwrap_or(0);
    let throughput = median(&mut tp);
    Some(Ratios {
        throughput,
        throughput_min: tp.first().copied().unwrap_or(0.0),
        throughput_max: tp.last().copied().unwrap_or(0.0),
        cpu: median(&mut cpu),
        p99: (!p99.is_empty()).then(|| median(&mut p99)),
        settle: (!settle.is_empty()).then(|| median(&mut settle)),
        rss: peak(a) as f64 / peak(b).max(1) as f64,
    })
}

fn summarize(runs: Vec<SideResult>) -> Option<Summary> {
    if runs.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&SideResult) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let lat = |f: &dyn Fn(&Percentiles) -> u64| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.latency.map(|l| f(&l) as f64))
            .collect();
        (!v.is_empty()).then(|| median(&mut v) as u64)
    };
    let latency = match (lat(&|l| l.p50_us), lat(&|l| l.p99_us), lat(&|l| l.max_us)) {
        (Some(p50_us), Some(p99_us), Some(max_us)) => Some(Percentiles {
            p50_us,
            p99_us,
            max_us,
        }),
        _ => None,
    };
    Some(Summary {
        msgs_per_sec: med(&|r| r.msgs_per_sec),
        latency,
        cpu_us_per_msg: med(&|r| r.cpu_us_per_msg),
        peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
        settle_ms: {
            let mut v: Vec<f64> = runs.iter().filter_map(|r| r.settle_ms).collect();
            (!v.is_empty()).then(|| median(&mut v))
        },
        runs,
    })
}

/// The bench topology: one work queue bound to everything; the retry scenario gets one
/// 100 ms retry tier and two attempts.
fn topology_toml(qt: QueueType, scenario: Scenario) -> String {
    let (attempts, delays) = match scenario {
        Scenario::Retry { .. } => (2, r#"["100ms"]"#),
        _ => (1, "[]"),
    };
    format!(
        "[exchanges]\nevents = \"ev\"\ndead_letter = \"ev.dlx\"\n\n[defaults]\nqueue_type = \"{}\"\n\
         prefetch = {}\nmax_attempts = {attempts}\nretry_delays = {delays}\nexpires = \"10m\"\n\n\
         [[queues]]\nname = \"work\"\nbind = [\"#\"]\n",
        qt.as_str(),
        scenario.prefetch(),
    )
}

/// One side of one scenario in a child process, on its own topology, removed afterwards.
pub async fn one_run(
    opts: &BenchOptions,
    scenario: Scenario,
    qt: QueueType,
    side: Side,
    rate: Option<f64>,
) -> Result<SideResult, Error> {
    let prefix = format!(
        "bench-{}.",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let file = std::env::temp_dir().join(format!("warren-{prefix}toml"));
    std::fs::write(&file, topology_toml(qt, scenario)).map_err(|source| Error::Io {
        path: file.clone(),
        source,
    })?;
    let result = async {
        let t = Topology::load(&file, &prefix)?;
        let conn = amqp::connect(&opts.url, "bench", "driver").await?;
        let outcome = async {
            if opts.stop.is_cancelled() {
                return Err(Error::Other("bench: interrupted".into()));
            }
            topology::apply(&conn, &t.plan()).await?;
            let mut spec = RunSpec {
                side,
                scenario,
                queue_type: qt,
                messages: opts.messages,
                size: opts.size,
                topology_file: file.clone(),
                prefix: prefix.clone(),
                exchange: t.events_exchange.clone(),
                dead_letter_exchange: t.dead_letter_exchange.clone(),
                queue: t.queues[0].name.clone(),
                rate,
                upstream: None,
                resume_from: None,
            };
            if let Scenario::Consume { .. } = scenario {
                fill(&conn, &t, opts).await?;
            }
            if scenario == Scenario::EndToEnd {
                let sim_stop = CancellationToken::new();
                // Stops the sim however this run ends, interrupted included.
                let _sim_guard = sim_stop.clone().drop_guard();
                let (url, resume, sim) = start_sim(opts.messages, sim_stop.clone()).await?;
                spec.upstream = Some(url);
                spec.resume_from = Some(resume);
                let r = child(opts, &spec).await;
                sim_stop.cancel();
                let _ = sim.await;
                return r;
            }
            child(opts, &spec).await
        };
        // An interrupted run drops its child (killed) and still deletes its topology.
        let outcome = tokio::select! {
            r = outcome => r,
            _ = opts.stop.cancelled() => Err(Error::Other("bench: interrupted".into())),
        };
        let _ = topology::delete(&conn, &t.plan()).await;
        amqp::close(&conn).await;
        outcome
    }
    .await;
    let _ = std::fs::remove_file(&file);
    result.map(|r| SideResult { prefix, ..r })
}

/// Fills the work queue with a backlog, outside the measured process.
async fn fill(conn: &amqp::Connection, t: &Topology, opts: &BenchOptions) -> Result<(), Error> {
    let publisher = Publisher::open(conn).await?;
    let mut window = ConfirmWindow::new(1024);
    for _ in 0..opts.messages {
        if window.is_full()
            && let Some(((), r)) = window.next().await
        {
            r?;
        }
        let body = message_body(opts.size, stats::now_us());
        let confirm = publisher
            .send(Message {
                exchange: &t.events_exchange,
                routing_key: super::EVENT_TYPE,
                body: &body,
                properties: properties(),
                mandatory: true,
            })
            .await?;
        window.push((), confirm);
    }
    while let Some(((), r)) = window.next().await {
        r?;
    }
    Ok(())
}

/// A simulated upstream with the whole stream generated and waiting in its replay buffer.
async fn start_sim(
    events: u64,
    stop: CancellationToken,
) -> Result<(String, String, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(format!("bench: bind the sim: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("bench: the sim's address: {e}")))?;
    let start_ms = upstream::now_ms();
    let task = tokio::spawn(async move {
        let _ = upstream::run(
            listener,
            UpstreamSettings {
                seed: 1,
                rate: 0,
                events,
                start_ms,
                agent_id: "pf_agent_bench".into(),
                agent_key: Some("bench".into()),
                replay_capacity: events as usize,
                pregenerate: true,
                ..UpstreamSettings::default()
            },
            stop,
        )
        .await;
    });
    let resume = ulid::Ulid::from_parts(start_ms.saturating_sub(1), 0).to_string();
    Ok((format!("ws://{addr}/api/stream"), resume, task))
}

/// Runs `spec` in `warren-bench --child` and reads its one JSON line.
async fn child(opts: &BenchOptions, spec: &RunSpec) -> Result<SideResult, Error> {
    let json = serde_json::to_string(spec).map_err(|e| Error::Other(format!("bench: {e}")))?;
    let mut command = match spec.side {
        Side::Peer => tokio::process::Command::new(&opts.peer),
        Side::Warren | Side::Raw => tokio::process::Command::new(&opts.exe),
    };
    let program = match spec.side {
        Side::Peer => &opts.peer,
        Side::Warren | Side::Raw => &opts.exe,
    };
    let run = command
        .args(["--child", &json])
        .env("AMQP_URL", &opts.amqp_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT + Duration::from_secs(60), run)
        .await
        .map_err(|_| {
            Error::Other(format!(
                "bench: {} ({:?}) timed out",
                spec.scenario.label(),
                spec.side
            ))
        })?
        .map_err(|e| Error::Other(format!("bench: start {}: {e}", program.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::Other(format!(
            "bench: {} ({:?} side) failed ({}): {}",
            spec.scenario.label(),
            spec.side,
            out.status,
            stderr.trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| {
        Error::Other(format!(
            "bench: the {:?} side printed no result ({e}): {}",
            spec.side,
            stderr.trim()
        ))
    })
}
