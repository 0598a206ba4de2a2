//! `warren demo`: the whole pipeline on the local broker, with progress and a reconciliation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tabled::Tabled;

use super::{GlobalArgs, Outcome, OutputArg, signals};
use crate::demo::{self, DemoReport, DemoSettings, DemoSink};
use crate::error::{Error, Result};
use crate::output::{Output, OutputFormat};
use crate::postgres::DATABASE_URL_ENV;

/// `warren demo …`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Events the simulated upstream emits.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Worker processes to run (each consumes every work queue).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Events per second the upstream emits.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Seed of the event stream (types, payloads, duplicates, dropped connections) and of the
    /// API's faults, rolled per idempotency key and attempt. Event ids and timestamps follow the
    /// clock, so which events fail differs from run to run; how many, about the same.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Switch on the sims' faults (500s, 429s, ambiguous commits, 409s, rejections, duplicate
    /// events, dropped WebSockets) and SIGKILL a worker midway, then start a new one. With
    /// --sink postgres, the upstream's faults and the kill (the API is not called).
    #[arg(long)]
    pub faults: bool,
    /// Keep the queues, exchanges and logs afterwards (prints how to inspect them).
    #[arg(long)]
    pub keep: bool,
    /// How long to wait, after the last event is emitted, for every event to be processed or
    /// dead-lettered before reporting.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// The topology file [default: topology/warren.toml, built in]. Run under a unique prefix.
    #[arg(short = 'f', long = "topology")]
    pub topology: Option<PathBuf>,
    /// Where the workers put each event: POST it to the simulated API (`http`), or write it
    /// exactly once into PostgreSQL (`postgres`, in a schema of the run's own, dropped afterwards
    /// unless --keep) and reconcile the rows per event type in SQL.
    #[arg(long, value_enum, default_value_t = SinkArg::Http)]
    pub sink: SinkArg,
    /// --sink postgres: the database (postgres://user:password@host:5432/dbname). The password
    /// is never printed, and reaches the workers through their environment.
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Report format on stdout.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

/// `--sink`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkArg {
    /// The simulated trading API, through the `http` handler.
    Http,
    /// PostgreSQL, through the `postgres` handler.
    Postgres,
}

pub(super) async fn demo_command(global: &GlobalArgs, args: DemoArgs) -> Result<Outcome> {
    let (topology_text, topology_source) = match &args.topology {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?,
            path.clone(),
        ),
        None => (
            demo::DEFAULT_TOPOLOGY.to_string(),
            PathBuf::from("topology/warren.toml (built in)"),
        ),
    };
    let sink = match (args.sink, &args.database_url) {
        (SinkArg::Http, _) => DemoSink::Http,
        (SinkArg::Postgres, Some(url)) => DemoSink::Postgres {
            database_url: url.clone(),
        },
        (SinkArg::Postgres, None) => {
            return Err(Error::Usage(format!(
                "--sink postgres needs a database: set {DATABASE_URL_ENV} or --database-url"
            )));
        }
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::Other(format!("cannot find the warren binary to run workers: {e}")))?;
    let settings = DemoSettings {
        amqp_url: global.url()?,
        amqp_url_raw: global.amqp_url.clone(),
        topology_text,
        topology_source,
        events: args.events,
        rate: args.rate,
        workers: args.workers,
        seed: args.seed,
        faults: args.faults,
        keep: args.keep,
        settle_timeout: args.settle_timeout,
        exe,
        sink,
    };
    let report = demo::run(settings, signals::on_signals()).await?;
    let mut out = Output::stdout();
    match args.output.into() {
        OutputFormat::Table => out.text(&table(&report))?,
        OutputFormat::Json => out.json(&report)?,
        OutputFormat::Ndjson => out.ndjson([&report])?,
    }
    if report.interrupted {
        eprintln!(
            "warren demo: interrupted; the report above is partial (events not yet settled count as lost)"
        );
        return Ok(Outcome::Interrupted);
    }
    // Reconciled: every event processed, dead-lettered or unrouted, and none effected twice.
    let reconciled = report.reconciled();
    if !reconciled {
        eprintln!(
            "warren demo: {} event(s) lost, {} effected twice, {} stored but never emitted (first lost: {})",
            report.lost,
            report.effected_twice,
            report.phantom,
            report.lost_ids.join(", ")
        );
    }
    Ok(if reconciled {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

#[derive(Tabled)]
struct Row {
    what: String,
    value: String,
}

/// `pf.trading 0:120 1:98 …`: acks per lane, grouped by laned queue; `-` without lanes.
fn lanes_cell(lanes: &std::collections::BTreeMap<String, u64>, prefix: &str) -> String {
    let mut by_queue: std::collections::BTreeMap<&str, Vec<(u16, u64)>> = Default::default();
    for (lane_queue, n) in lanes {
        if let Some((queue, lane)) = lane_queue.rsplit_once(".lane.")
            && let Ok(lane) = lane.parse()
        {
            by_queue.entry(queue).or_default().push((lane, *n));
        }
    }
    if by_queue.is_empty() {
        return "-".into();
    }
    by_queue
        .into_iter()
        .map(|(queue, mut lanes)| {
            lanes.sort_unstable();
            let counts: Vec<String> = lanes.iter().map(|(l, n)| format!("{l}:{n}")).collect();
            let queue = queue.strip_prefix(prefix).unwrap_or(queue);
            format!("{queue} {}", counts.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `market.candle 120/120 (+120 domain)`, a line per type: rows in the events table / distinct events
/// emitted, per type, and the type's rows in its domain table.
fn rows_cell(r: &DemoReport) -> String {
    r.rows
        .iter()
        .map(|t| {
            let domain = if t.domain_rows > 0 {
                format!(" (+{} domain)", t.domain_rows)
            } else {
                String::new()
            };
            format!("{} {}/{}{domain}", t.event_type, t.stored, t.emitted)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn table(r: &DemoReport) -> String {
    let row = |what: &str, value: String| Row {
        what: what.to_string(),
        value,
    };
    let kinds = if r.dead_letters.is_empty() {
        "none".to_string()
    } else {
        r.dead_letters
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = vec![
        row("emitted", r.emitted.to_string()),
        row("published (confirmed)", r.published.to_string()),
        row("processed", r.processed.to_string()),
        row("effects in the ledger", r.effects.to_string()),
        row("effected twice", r.effected_twice.to_string()),
        row(
            "duplicates absorbed",
            format!(
                "{} (bridge {}, downstream {})",
                r.duplicates_absorbed.total,
                r.duplicates_absorbed.bridge,
                r.duplicates_absorbed.downstream
            ),
        ),
        row("dead-lettered events", r.dead_lettered.to_string()),
        row("dead letters by kind", kinds),
        row("unrouted (no queue binds)", r.unrouted.to_string()),
        row("LOST", r.lost.to_string()),
        row("throughput", format!("{:.0} events/s", r.throughput_per_s)),
        row(
            "latency (event ts → effect)",
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms
            ),
        ),
        row("workers killed (SIGKILL)", r.worker_kills.to_string()),
        row("acked per lane", lanes_cell(&r.lanes, &r.prefix)),
        row("sink", r.sink.clone()),
        row("prefix", r.prefix.clone()),
    ];
    if !r.rows.is_empty() {
        // After "effected twice": what PostgreSQL holds, per type, counted in SQL.
        rows.insert(5, row("postgres rows per type", rows_cell(r)));
        rows.insert(6, row("stored, never emitted", r.phantom.to_string()));
    }
    if r.interrupted {
        rows.insert(0, row("INTERRUPTED", "partial report (Ctrl-C)".into()));
    }
    // Two columns of label and value: no header row.
    let mut t = tabled::Table::new(rows);
    t.with(tabled::settings::Style::sharp().remove_horizontals())
        .with(tabled::settings::Remove::row(
            tabled::settings::object::Rows::first(),
        ));
    t.to_string()
}
