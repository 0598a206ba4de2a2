//! `warren demo`: the whole pipeline on the local broker, with progress and a reconciliation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tabled::Tabled;

use super::{GlobalArgs, Outcome, OutputArg, signals};
use crate::demo::{self, DemoReport, DemoSettings};
use crate::error::{Error, Result};
use crate::output::{Output, OutputFormat};

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
    /// events, dropped WebSockets) and SIGKILL a worker midway, then start a new one.
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
    /// Report format on stdout.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
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
    let reconciled = report.lost == 0 && report.effected_twice == 0;
    if !reconciled {
        eprintln!(
            "warren demo: {} event(s) lost, {} effected twice (first lost: {})",
            report.lost,
            report.effected_twice,
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
        row("prefix", r.prefix.clone()),
    ];
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
