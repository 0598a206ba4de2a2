//! The `warren-bench` command line: PerfTest-like measurements of warren's own code paths,
//! optionally beside a minimal lapin baseline in the same run.

use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::lanes::{LaneRouting, LanesSettings};
use crate::{
    BenchOptions, BenchReport, PIPELINE_PREFETCH, QueueType, RunSpec, SATURATION_IN_FLIGHT,
    Scenario, Side,
};
use warren::cli::OutputArg;
use warren::error::{Error, Result};
use warren::output::{self, Output, OutputFormat};

/// Scenario groups; each runs its parameter variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// Publish with confirms, confirm windows 1, 16, 256 and 1024.
    Publish,
    /// Consume and ack a backlog, prefetch 1, 10, 100 and 1000.
    Consume,
    /// Publish and consume at once, as fast as both go, with at most --max-in-flight messages
    /// published and not yet handled (default 1000).
    Saturation,
    /// Simulated upstream → bridge → queue → worker with the log handler.
    E2e,
    /// Publish → handler latency at 10, 25, 50 and 75% of the measured ceiling.
    Latency,
    /// Every message fails, waits in a 100 ms retry tier, fails again and is dead-lettered
    /// (prefetch 100 unless --prefetch is given).
    Retry,
    /// A laned queue (--lanes, 16) drained by 1, 2, 4 and 8 `warren worker` processes
    /// (--workers) with the http handler against a downstream answering in 5 ms
    /// (--downstream-latency); each worker count's rate and its ratio to one worker.
    Lanes,
    /// Events from a quorum queue into PostgreSQL (--database-url): warren's `postgres`
    /// handler with one connection against a raw lapin + tokio-postgres loop running the same
    /// statement on batches of --batch-size; always beside that baseline. Runs alone.
    Postgres,
    /// The event archive read whole (`warren archive read`'s code) against a raw lapin stream
    /// consumer, --messages events (default 100,000). Runs alone.
    ArchiveRead,
    /// The event archive replayed into a queue (`warren archive replay`'s code) against a raw
    /// lapin consumer + republisher with the same confirm window (--window, 100). Runs alone.
    ArchiveReplay,
    /// The saturation scenario on quorum queues, on a three-node cluster and on a single node
    /// in the same run, rounds alternating (--messages, --rounds); the bench starts both as
    /// throwaway nodes (scripts/rabbit-cluster.sh, scripts/rabbit-node.sh; run it from the
    /// repository root, as root or the rabbitmq user) and stops them after. Ignores --amqp-url.
    /// Runs alone.
    Cluster,
    /// All of the above but lanes (which runs `warren worker` processes), postgres, the
    /// archive and cluster.
    All,
}

/// Queue types to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueTypes {
    /// Classic queues.
    Classic,
    /// Quorum queues.
    Quorum,
    /// Classic, then quorum.
    Both,
}

/// The baseline to measure against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// A minimal lapin loop doing the same work, each round right after warren's.
    Raw,
    /// The aio-pika peer (`--peer`; make its venv with bench/peers/setup.sh). It has every
    /// scenario but `retry`.
    Peer,
}

/// Throughput, latency (p50/p99/max), CPU per message and peak RSS of warren's code paths.
/// Each side runs as its own child process, so CPU and memory figures are that side's alone.
#[derive(Debug, Parser)]
#[command(name = "warren-bench", version, about, long_about = None)]
pub struct BenchArgs {
    /// RabbitMQ URL, amqp:// or amqps://. The password is never printed.
    /// [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = warren::amqp::DEFAULT_AMQP_URL
    )]
    pub amqp_url: String,
    /// Scenario to run; repeat for several.
    #[arg(long = "scenario", value_enum, default_value = "all")]
    pub scenarios: Vec<ScenarioName>,
    /// Queue type of the scenario's queues.
    #[arg(long, value_enum, default_value_t = QueueTypes::Classic)]
    pub queue_type: QueueTypes,
    /// Messages per run [default: 20000; 8000 for lanes].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,
    /// Message body size in bytes (an event envelope padded to this size; at least ~150).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Also run this baseline, interleaved with warren, and report warren ÷ baseline; repeat
    /// (or give `raw,peer`) for both.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub baseline: Vec<Baseline>,
    /// Run only this side (for scripts that interleave other clients, like bench/compare).
    #[arg(long, value_enum, conflicts_with = "baseline")]
    pub side: Option<Side>,
    /// Prefetch of the `consume` and `retry` scenarios; repeat for several (default: 1, 10, 100
    /// and 1000 for `consume`, 100 for `retry`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Vec<u16>,
    /// Saturation: the load generator waits while this many messages are published and not yet
    /// handled; repeat for several. 0 sets no bound: the queue then grows for as long as
    /// publishing outruns consuming, and latency grows with --messages.
    #[arg(long, default_values_t = [SATURATION_IN_FLIGHT])]
    pub max_in_flight: Vec<u64>,
    /// The aio-pika peer program, run as `PEER --child SPEC` (for `--side peer`, `--baseline peer`).
    #[arg(long, default_value = "crates/warren-bench/peers/peer")]
    pub peer: std::path::PathBuf,
    /// Rounds per scenario; figures are medians, ratios the median of per-round ratios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Lanes: worker processes per run, each compared with one worker (always run); repeat or
    /// separate with commas.
    #[arg(long, value_delimiter = ',', default_values_t = crate::lanes::WORKERS,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Vec<u16>,
    /// Lanes: lanes of the queue.
    #[arg(long, default_value_t = crate::lanes::LANES,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(warren::topology::lanes::MAX_LANES)))]
    pub lanes: u16,
    /// Lanes: pairs (values of the lane key, payload.pair) the events are spread over, evenly
    /// over the lanes.
    #[arg(long, default_value_t = crate::lanes::PAIRS, value_parser = clap::value_parser!(u16).range(1..))]
    pub pairs: u16,
    /// Lanes: the downstream's processing time per request.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub downstream_latency: std::time::Duration,
    /// Lanes: --concurrency of each worker [default: the worker's own].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Lanes: how events reach their lanes: through the events exchange and the lanes
    /// exchange, as the bridge publishes, or straight to the lane queue their lane header
    /// names.
    #[arg(long, value_enum, default_value_t = LaneRouting::Exchange)]
    pub lane_routing: LaneRouting,
    /// Lanes: the `warren` binary the workers run [default: `warren` beside this program].
    #[arg(long)]
    pub warren: Option<std::path::PathBuf>,
    /// Postgres: the database, postgres://user:password@host/db (never printed).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Postgres: events per transaction, both sides.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Postgres: warren's database connections, hence batches written at once (the raw loop
    /// writes one batch at a time on one connection).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_pool: u32,
    /// Archive-replay: publishes awaiting their confirm at once, both sides [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window: Option<u32>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
    /// Internal: run one measured side described by this JSON and print its figures.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// `--scenario postgres`: its own rounds and table.
async fn postgres_scenario(args: &BenchArgs, url: warren::amqp::AmqpUrl) -> Result<u8> {
    if args.scenarios.len() > 1 {
        return Err(Error::Usage(
            "--scenario postgres runs alone: give no other --scenario".into(),
        ));
    }
    let Some(database_url) = args.database_url.clone() else {
        return Err(Error::Usage(
            "--scenario postgres needs a database: set DATABASE_URL or --database-url".into(),
        ));
    };
    let settings = crate::postgres::PgBenchSettings {
        url,
        database_url,
        events: args.messages.unwrap_or(20_000) as usize,
        batch_size: args.batch_size as usize,
        rounds: args.rounds as usize,
        pool: args.db_pool as usize,
    };
    let report = crate::postgres::run(&settings).await?;
    let mut out = Output::stdout();
    match OutputFormat::from(args.output) {
        OutputFormat::Table => {
            #[derive(tabled::Tabled)]
            struct Row {
                scenario: String,
                #[tabled(rename = "warren ev/s")]
                warren: String,
                #[tabled(rename = "raw ev/s")]
                raw: String,
                #[tabled(rename = "warren ÷ raw (min–max)")]
                ratio: String,
            }
            let ratios: Vec<f64> = report.rounds.iter().map(|r| r.warren / r.raw).collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            let row = Row {
                scenario: format!(
                    "postgres batch {}, pool {} ({} events, {} rounds)",
                    report.batch_size,
                    report.pool,
                    report.events,
                    report.rounds.len()
                ),
                warren: format!("{:.0}", report.warren_median),
                raw: format!("{:.0}", report.raw_median),
                ratio: format!("{:.2} ({lo:.2}–{hi:.2})", report.ratio_median),
            };
            out.text(&format!("{}\n", output::table([row])))?;
        }
        _ => out.json(&report)?,
    }
    out.finish()?;
    Ok(0)
}

/// `--scenario archive-read|archive-replay`: its own rounds and table.
async fn archive_scenario(
    args: &BenchArgs,
    url: warren::amqp::AmqpUrl,
    scenario: crate::archive::ArchiveScenario,
) -> Result<u8> {
    if args.scenarios.len() > 1 {
        return Err(Error::Usage(
            "--scenario archive-read and archive-replay run alone: give one --scenario".into(),
        ));
    }
    let events = args.messages.unwrap_or(100_000) as usize;
    let window = args.window.unwrap_or(100) as usize;
    let report = crate::archive::run(&url, scenario, events, args.rounds as usize, window).await?;
    let mut out = Output::stdout();
    match OutputFormat::from(args.output) {
        OutputFormat::Table => {
            #[derive(tabled::Tabled)]
            struct Row {
                scenario: String,
                #[tabled(rename = "warren ev/s")]
                warren: String,
                #[tabled(rename = "raw ev/s")]
                raw: String,
                #[tabled(rename = "warren ÷ raw (min–max)")]
                ratio: String,
            }
            let ratios: Vec<f64> = report.rounds.iter().map(|r| r.warren / r.raw).collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            let name = match scenario {
                crate::archive::ArchiveScenario::ArchiveRead => "archive-read".to_string(),
                crate::archive::ArchiveScenario::ArchiveReplay => {
                    format!("archive-replay, confirm window {window}")
                }
            };
            let row = Row {
                scenario: format!(
                    "{name} ({} events, {} rounds)",
                    report.events,
                    report.rounds.len()
                ),
                warren: format!("{:.0}", report.warren_median),
                raw: format!("{:.0}", report.raw_median),
                ratio: format!("{:.2} ({lo:.2}–{hi:.2})", report.ratio_median),
            };
            out.text(&format!("{}\n", output::table([row])))?;
        }
        _ => out.json(&report)?,
    }
    out.finish()?;
    Ok(0)
}

/// `--scenario cluster`: its own brokers, rounds and table.
async fn cluster_scenario(args: &BenchArgs) -> Result<u8> {
    if args.scenarios.len() > 1 {
        return Err(Error::Usage(
            "--scenario cluster runs alone: give no other --scenario".into(),
        ));
    }
    let settings = crate::cluster::ClusterSettings {
        events: args.messages.unwrap_or(20_000),
        size: args.size,
        rounds: args.rounds as usize,
        exe: std::env::current_exe()
            .map_err(|e| Error::Other(format!("bench: cannot find its own binary: {e}")))?,
        stop: on_ctrl_c(),
    };
    let report = crate::cluster::run(&settings).await?;
    let mut out = Output::stdout();
    match OutputFormat::from(args.output) {
        OutputFormat::Table => out.text(&crate::cluster::render(&report))?,
        _ => out.json(&report)?,
    }
    out.finish()?;
    Ok(0)
}

fn expand(
    names: &[ScenarioName],
    prefetches: &[u16],
    in_flight: &[u64],
    workers: &[u16],
    lanes: u16,
) -> Vec<Scenario> {
    let all = names.contains(&ScenarioName::All);
    let has = |n: ScenarioName| all || names.contains(&n);
    let mut out = Vec::new();
    if has(ScenarioName::Publish) {
        out.extend([1, 16, 256, 1024].map(|window| Scenario::Publish { window }));
    }
    // --prefetch, or the scenario's own default list.
    let prefetch_or = |default: &'static [u16]| {
        if prefetches.is_empty() {
            default.to_vec()
        } else {
            prefetches.to_vec()
        }
    };
    if has(ScenarioName::Consume) {
        out.extend(
            prefetch_or(&[1, 10, 100, 1000])
                .into_iter()
                .map(|prefetch| Scenario::Consume { prefetch }),
        );
    }
    if has(ScenarioName::Saturation) {
        out.extend(
            in_flight
                .iter()
                .map(|&max_in_flight| Scenario::Saturation { max_in_flight }),
        );
    }
    if has(ScenarioName::E2e) {
        out.push(Scenario::EndToEnd);
    }
    if has(ScenarioName::Latency) {
        out.extend([10, 25, 50, 75].map(|percent| Scenario::Latency { percent }));
    }
    if has(ScenarioName::Retry) {
        out.extend(
            prefetch_or(&[PIPELINE_PREFETCH])
                .into_iter()
                .map(|prefetch| Scenario::Retry { prefetch }),
        );
    }
    // Not part of `all`: it needs the `warren` binary and runs worker processes.
    if names.contains(&ScenarioName::Lanes) {
        let mut counts = vec![1];
        for &w in workers {
            if !counts.contains(&w) {
                counts.push(w);
            }
        }
        out.extend(
            counts
                .into_iter()
                .map(|workers| Scenario::Lanes { workers, lanes }),
        );
    }
    out
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(args: BenchArgs) -> Result<u8> {
    let url: warren::amqp::AmqpUrl =
        args.amqp_url
            .parse()
            .map_err(|e: warren::amqp::AmqpUrlError| {
                Error::Usage(format!("--amqp-url / AMQP_URL: {e}"))
            })?;
    if let Some(json) = &args.child {
        let spec: RunSpec = serde_json::from_str(json)
            .map_err(|e| Error::Usage(format!("--child: not a run spec: {e}")))?;
        let result = crate::run_child(&spec, &url).await?;
        let line = serde_json::to_string(&result).map_err(|e| Error::Other(e.to_string()))?;
        Output::stdout().text(&line)?;
        return Ok(0);
    }
    if args.scenarios.contains(&ScenarioName::Postgres) {
        return postgres_scenario(&args, url).await;
    }
    if args.scenarios.contains(&ScenarioName::Cluster) {
        return cluster_scenario(&args).await;
    }
    for (name, scenario) in [
        (
            ScenarioName::ArchiveRead,
            crate::archive::ArchiveScenario::ArchiveRead,
        ),
        (
            ScenarioName::ArchiveReplay,
            crate::archive::ArchiveScenario::ArchiveReplay,
        ),
    ] {
        if args.scenarios.contains(&name) {
            return archive_scenario(&args, url, scenario).await;
        }
    }
    let sides = match args.side {
        Some(side) => vec![side],
        None => {
            let mut sides = vec![Side::Warren];
            for b in &args.baseline {
                let side = match b {
                    Baseline::Raw => Side::Raw,
                    Baseline::Peer => Side::Peer,
                };
                if !sides.contains(&side) {
                    sides.push(side);
                }
            }
            sides
        }
    };
    if sides.contains(&Side::Peer) && !args.peer.is_file() {
        return Err(Error::Usage(format!(
            "--peer: {} is not a file (run from the repository root, or give --peer; \
             crates/warren-bench/peers/setup.sh makes the peer's venv)",
            args.peer.display()
        )));
    }
    let scenarios = expand(
        &args.scenarios,
        &args.prefetch,
        &args.max_in_flight,
        &args.workers,
        args.lanes,
    );
    let lanes = if scenarios
        .iter()
        .any(|s| matches!(s, Scenario::Lanes { .. }))
    {
        Some(LanesSettings {
            warren_exe: crate::lanes::find_warren(args.warren.as_deref())?,
            events: args.messages.unwrap_or(crate::lanes::EVENTS),
            pairs: args.pairs,
            latency: args.downstream_latency,
            concurrency: args.concurrency,
            routing: args.lane_routing,
        })
    } else {
        None
    };
    let opts = BenchOptions {
        url,
        amqp_url: args.amqp_url.clone(),
        exe: std::env::current_exe()
            .map_err(|e| Error::Other(format!("bench: cannot find its own binary: {e}")))?,
        scenarios,
        queue_types: match args.queue_type {
            QueueTypes::Classic => vec![QueueType::Classic],
            QueueTypes::Quorum => vec![QueueType::Quorum],
            QueueTypes::Both => vec![QueueType::Classic, QueueType::Quorum],
        },
        messages: args.messages.unwrap_or(20_000),
        size: args.size,
        sides,
        rounds: args.rounds as usize,
        max_in_flight: args
            .max_in_flight
            .first()
            .copied()
            .unwrap_or(SATURATION_IN_FLIGHT),
        peer: args.peer.clone(),
        stop: on_ctrl_c(),
        lanes,
    };
    let report = crate::run(&opts).await?;
    let mut out = Output::stdout();
    match args.output.into() {
        OutputFormat::Table => out.text(&render(&report))?,
        OutputFormat::Json => out.json(&report)?,
        OutputFormat::Ndjson => out.ndjson(&report.rows)?,
    }
    Ok(0)
}

#[derive(tabled::Tabled)]
struct Line {
    #[tabled(rename = "scenario")]
    scenario: String,
    #[tabled(rename = "queue")]
    queue: &'static str,
    #[tabled(rename = "side")]
    side: &'static str,
    #[tabled(rename = "msg/s")]
    rate: String,
    #[tabled(rename = "p50/p99/max µs")]
    latency: String,
    #[tabled(rename = "CPU µs/msg")]
    cpu: String,
    #[tabled(rename = "peak RSS MiB")]
    rss: String,
}

/// A token cancelled on Ctrl-C or SIGTERM: the run stops and deletes what it declared.
fn on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        trigger.cancel();
    });
    token
}

fn render(report: &BenchReport) -> String {
    let mut lines = Vec::new();
    for row in &report.rows {
        let label = match row.offered_rate {
            Some(rate) => format!("{} ({rate:.0}/s)", row.scenario),
            None => row.scenario.clone(),
        };
        for (side, s) in [
            ("warren", &row.warren),
            ("raw", &row.raw),
            ("aio-pika", &row.peer),
        ] {
            let Some(s) = s else { continue };
            lines.push(Line {
                scenario: label.clone(),
                queue: row.queue_type.as_str(),
                side,
                rate: format!("{:.0}", s.msgs_per_sec),
                latency: match (s.latency, s.settle_ms, &row.lanes) {
                    (Some(l), _, _) => format!("{}/{}/{}", l.p50_us, l.p99_us, l.max_us),
                    (None, Some(ms), _) => format!("settle {ms:.1} ms"),
                    (None, None, Some(l)) => format!("converged in {:.1} s", l.convergence_secs),
                    (None, None, None) => "-".into(),
                },
                cpu: format!("{:.1}", s.cpu_us_per_msg),
                rss: format!("{:.1}", s.peak_rss_kib as f64 / 1024.0),
            });
        }
        for (side, r) in [
            ("warren÷raw", &row.ratios),
            ("warren÷aio-pika", &row.peer_ratios),
            ("÷1 worker", &row.scaling),
        ] {
            let Some(r) = r else { continue };
            lines.push(Line {
                scenario: label.clone(),
                queue: row.queue_type.as_str(),
                side,
                rate: format!(
                    "{:.2}× ({:.2}–{:.2})",
                    r.throughput, r.throughput_min, r.throughput_max
                ),
                latency: match (r.p99, r.settle) {
                    (Some(p), _) => format!("p99 {p:.2}×"),
                    (None, Some(s)) => format!("settle {s:.2}×"),
                    (None, None) => "-".into(),
                },
                cpu: format!("{:.2}×", r.cpu),
                rss: format!("{:.2}×", r.rss),
            });
        }
    }
    let mut notes = Vec::new();
    if report.rows.iter().any(|r| r.lanes.is_none()) {
        notes.push(format!(
            "{} messages of {} bytes per run, {} round(s); figures are medians.",
            report.messages, report.size, report.rounds
        ));
    }
    if let Some(l) = report.rows.iter().find_map(|r| r.lanes.as_ref()) {
        let busy: Vec<String> = report
            .rows
            .iter()
            .filter_map(|r| r.lanes.as_ref())
            .map(|l| format!("{}: {:.0}%", l.workers, l.machine_busy_pct))
            .collect();
        notes.push(format!(
            "lanes: a quorum queue of {} lanes keyed by payload.pair, {} pairs spread evenly, {} \
             events per run published {}, a downstream answering in {} ms; {} round(s), worker \
             counts interleaved; figures are medians, ratios the median of per-round ratios.\n\
             Each worker: {}. A lane runs one message at a time, and a worker runs at most \
             --concurrency of its lanes at once, so a worker's ceiling is concurrency ÷ latency \
             and the queue's {} lanes ÷ {} ms = {:.0} msg/s.\n\
             Timed from convergence (every worker owning its share of the lanes) to the last \
             effect; CPU is all the workers' per message, RSS the largest worker's. Machine \
             busy while timed, by workers: {}.",
            l.lanes,
            l.pairs,
            l.events,
            match l.routing {
                LaneRouting::Exchange => "through the events exchange",
                LaneRouting::Direct => "straight to their lane queues (--lane-routing direct)",
            },
            l.downstream_latency_ms,
            report.rounds,
            l.worker_args,
            l.lanes,
            l.downstream_latency_ms,
            l.lane_ceiling_msgs_per_sec,
            busy.join(", ")
        ));
    }
    format!("{}\n{}", output::table(lines), notes.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_applies_to_consume_and_retry_and_each_has_its_own_default() {
        use ScenarioName::{Consume, Retry};
        assert_eq!(
            expand(&[Retry], &[], &[], &[], 16),
            [Scenario::Retry {
                prefetch: PIPELINE_PREFETCH
            }]
        );
        assert_eq!(
            expand(&[Consume, Retry], &[10, 1000], &[], &[], 16),
            [
                Scenario::Consume { prefetch: 10 },
                Scenario::Consume { prefetch: 1000 },
                Scenario::Retry { prefetch: 10 },
                Scenario::Retry { prefetch: 1000 },
            ]
        );
        assert_eq!(expand(&[Consume], &[], &[], &[], 16).len(), 4);
    }

    #[test]
    fn lanes_always_run_one_worker_first_and_are_not_in_all() {
        let lanes = |workers: u16| Scenario::Lanes { workers, lanes: 16 };
        assert_eq!(
            expand(&[ScenarioName::Lanes], &[], &[], &[4, 2, 4], 16),
            [lanes(1), lanes(4), lanes(2)]
        );
        assert_eq!(
            expand(&[ScenarioName::Lanes], &[], &[], &[1, 2, 4, 8], 16),
            [lanes(1), lanes(2), lanes(4), lanes(8)]
        );
        assert!(
            expand(&[ScenarioName::All], &[], &[1000], &[1, 2], 16)
                .iter()
                .all(|s| !matches!(s, Scenario::Lanes { .. }))
        );
        assert_eq!(lanes(4).label(), "lanes=16, 4 workers");
    }

    #[test]
    fn saturation_runs_once_per_in_flight_bound() {
        assert_eq!(
            expand(&[ScenarioName::Saturation], &[], &[1000, 0], &[], 16),
            [
                Scenario::Saturation {
                    max_in_flight: 1000
                },
                Scenario::Saturation { max_in_flight: 0 },
            ]
        );
        assert_eq!(
            Scenario::Saturation { max_in_flight: 0 }.max_in_flight(),
            None
        );
        assert_eq!(
            Scenario::Saturation { max_in_flight: 5 }.max_in_flight(),
            Some(5)
        );
    }
}
