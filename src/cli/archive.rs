//! `warren archive info|read|replay|backtest`: flags turned into the archive library's
//! settings, and its reports printed.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{GlobalArgs, Outcome, OutputArg, TopologyArgs, signals};
use crate::archive::{self, BacktestSettings, Bound, ReplaySettings, Window};
use crate::error::{Error, Result};
use crate::output::{self, Output};
use crate::status::Management;

/// `warren archive …`
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// First and last offset and event time, message count, size and retention of the archive.
    Info(InfoArgs),
    /// Print a window of the archive, each event once, in order.
    Read(ReadArgs),
    /// Republish a window into a work queue (confirms; resumable after a kill).
    Replay(ReplayArgs),
    /// Run the built-in trader over a window; report trades, P&L and positions.
    Backtest(BacktestArgs),
}

/// `archive info`
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// RabbitMQ management API, for the stream's size in bytes (without it the size is shown
    /// as unknown). Its user and password are the AMQP URL's unless this URL has its own.
    #[arg(
        long,
        env = "RABBITMQ_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

/// The window every reading command takes.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Start: an RFC 3339 time (2026-12-07T14:02:00Z), 'N ago' (15m ago), 'now', 'first', or
    /// an offset (digits). Times are the events' own; a time window is [from, to).
    #[arg(long, value_name = "TIME|OFFSET")]
    pub from: String,
    /// End: a time (exclusive) or an offset (inclusive) [default: the archive's end when the
    /// command starts].
    #[arg(long, value_name = "TIME|OFFSET")]
    pub to: Option<String>,
    /// Only this event type (repeat for several).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only this agent (repeat for several).
    #[arg(long = "agent", value_name = "AGENT_ID")]
    pub agents: Vec<String>,
}

impl WindowArgs {
    fn window(&self, topology: &crate::topology::Topology) -> Result<Window> {
        let from = Bound::parse("--from", &self.from)?;
        let to = self
            .to
            .as_deref()
            .map(|t| Bound::parse("--to", t))
            .transpose()?;
        Window::new(
            from,
            to,
            self.types.clone(),
            self.agents.clone(),
            archive::spec(topology)?,
        )
    }
}

/// `-o` for `archive read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadOutput {
    /// One JSON object per event: {offset, event}.
    Ndjson,
    /// One JSON array.
    Json,
}

/// `archive read`
#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = ReadOutput::Ndjson)]
    pub output: ReadOutput,
}

/// `archive replay`
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The work queue to republish into (its name in the topology file).
    #[arg(long, value_name = "QUEUE")]
    pub into: String,
    /// Publishes awaiting their confirm at once; a killed replay repeats at most this many.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub window_size: u32,
    /// The progress record: run the same replay again with it to resume after a kill.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "warren-archive-replay.json"
    )]
    pub progress: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

/// `archive backtest`
#[derive(Debug, Args)]
pub struct BacktestArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// A trading API to trade against (keys in the backtest namespace) [default: the
    /// simulated API, in process].
    #[arg(long, value_name = "URL")]
    pub api: Option<url::Url>,
    /// The simulated API's seed (position ids, P&L).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

pub(super) async fn archive_command(global: &GlobalArgs, cmd: ArchiveCommand) -> Result<Outcome> {
    match cmd {
        ArchiveCommand::Info(args) => info(global, args).await,
        ArchiveCommand::Read(args) => read(global, args).await,
        ArchiveCommand::Replay(args) => replay(global, args).await,
        ArchiveCommand::Backtest(args) => backtest(global, args).await,
    }
}

async fn info(global: &GlobalArgs, args: InfoArgs) -> Result<Outcome> {
    let topology = args.topology.load()?;
    let url = global.url()?;
    let management =
        Management::new(&args.management_url, &url).map_err(|e| Error::Usage(e.to_string()))?;
    let info = archive::info(&url, &topology, Some(&management)).await?;
    let mut out = Output::stdout();
    if args.output == OutputArg::Table {
        let end = |e: Option<archive::End>| match e {
            None => "(empty)".to_string(),
            Some(e) => format!("offset {}, {}", e.offset, archive::event_time(e.ts)),
        };
        out.text(&pairs(&[
            ("stream", info.stream.clone()),
            ("first", end(info.first)),
            ("last", end(info.last)),
            ("messages", info.messages.to_string()),
            ("size", info.size()),
            (
                "segments",
                info.segments
                    .map_or("unknown".into(), |n| format!("{n} file(s)")),
            ),
            (
                "binds",
                info.bind
                    .as_ref()
                    .map_or("every event (routed or not)".into(), |b| b.join(", ")),
            ),
            ("max age", format!("{}s", info.max_age_secs)),
            ("max bytes", info.max_bytes.to_string()),
            ("segment bytes", info.segment_bytes.to_string()),
            ("retention", info.retention.clone()),
        ]))?;
    } else {
        out.json(&info)?;
    }
    out.finish()?;
    Ok(Outcome::Success)
}

async fn read(global: &GlobalArgs, args: ReadArgs) -> Result<Outcome> {
    let topology = args.topology.load()?;
    let window = args.window.window(&topology)?;
    let shutdown = signals::on_signals();
    let mut out = Output::stdout();
    let json = args.output == ReadOutput::Json;
    let mut all = Vec::new();
    let stats = archive::read(&global.url()?, &topology, window, &shutdown, |e| {
        if json {
            all.push(e.clone());
            Ok(())
        } else if out.is_closed() {
            Ok(())
        } else {
            out.line(e)
        }
    })
    .await?;
    if json {
        out.json(&all)?;
    }
    out.finish()?;
    tracing::info!(
        events = stats.matched,
        scanned = stats.scanned,
        duplicates = stats.duplicates,
        unreadable = stats.unreadable,
        resubscribed = stats.resubscribed,
        first_offset = ?stats.first_offset,
        last_offset = ?stats.last_offset,
        "Archive window read."
    );
    Ok(if shutdown.is_cancelled() {
        Outcome::Interrupted
    } else {
        Outcome::Success
    })
}

async fn replay(global: &GlobalArgs, args: ReplayArgs) -> Result<Outcome> {
    let topology = args.topology.load()?;
    let settings = ReplaySettings {
        window: args.window.window(&topology)?,
        into: args.into.clone(),
        confirm_window: args.window_size as usize,
        progress: args.progress.clone(),
    };
    let shutdown = signals::on_signals();
    let report = archive::replay(&global.url()?, &topology, &settings, &shutdown).await?;
    let mut out = Output::stdout();
    if args.output == OutputArg::Table {
        out.text(&pairs(&[
            ("into", report.into.clone()),
            ("window", report.window.clone()),
            ("published (confirmed)", report.published.to_string()),
            (
                "resumed after offset",
                report.resumed_after.map_or("-".into(), |o| o.to_string()),
            ),
            (
                "confirmed through offset",
                report
                    .confirmed_through
                    .map_or("-".into(), |o| o.to_string()),
            ),
            ("duplicates skipped", report.walk.duplicates.to_string()),
            ("unreadable skipped", report.walk.unreadable.to_string()),
            (
                "result",
                report.interrupted.clone().map_or("complete".into(), |why| {
                    format!("stopped: {why}; run it again to resume")
                }),
            ),
        ]))?;
    } else {
        out.json(&report)?;
    }
    out.finish()?;
    Ok(match &report.interrupted {
        None => Outcome::Success,
        Some(_) if shutdown.is_cancelled() => Outcome::Interrupted,
        Some(_) => Outcome::Failure,
    })
}

async fn backtest(global: &GlobalArgs, args: BacktestArgs) -> Result<Outcome> {
    let topology = args.topology.load()?;
    let settings = BacktestSettings {
        window: args.window.window(&topology)?,
        api: args.api.clone(),
        seed: args.seed,
    };
    let shutdown = signals::on_signals();
    let (report, walk) = archive::backtest(&global.url()?, &topology, &settings, &shutdown).await?;
    tracing::info!(
        events = report.events,
        duplicates = walk.duplicates,
        resubscribed = walk.resubscribed,
        "Backtest done."
    );
    let mut out = Output::stdout();
    if args.output == OutputArg::Table {
        let mut rows = tabled::builder::Builder::default();
        rows.push_record([
            "kind",
            "pair",
            "direction",
            "event",
            "position",
            "P&L (USDC)",
        ]);
        for t in &report.trades {
            rows.push_record([
                t.kind.to_string(),
                t.pair.clone(),
                t.direction.as_str().to_string(),
                t.event_id.clone(),
                t.position_id.clone(),
                t.pnl_usdc.map_or(String::new(), |p| format!("{p:.2}")),
            ]);
        }
        let mut table = rows.build();
        output::style(&mut table);
        out.text(&table.to_string())?;
        out.text(&pairs(&[
            ("window", report.window.clone()),
            ("api", report.api.clone()),
            ("events", report.events.to_string()),
            (
                "opened / closed",
                format!("{} / {}", report.opened, report.closed),
            ),
            (
                "realised P&L (USDC)",
                format!("{:.2}", report.realised_pnl_usdc),
            ),
            (
                "open at the end",
                if report.open_positions.is_empty() {
                    "none".into()
                } else {
                    report
                        .open_positions
                        .iter()
                        .map(|p| format!("{} {}", p.pair, p.direction.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            ("refused events", report.refused.to_string()),
        ]))?;
    } else {
        out.json(&report)?;
    }
    out.finish()?;
    Ok(Outcome::Success)
}

/// A two-column table.
fn pairs(rows: &[(&str, String)]) -> String {
    let mut b = tabled::builder::Builder::default();
    for (k, v) in rows {
        b.push_record([k.to_string(), v.clone()]);
    }
    let mut t = b.build();
    output::style(&mut t);
    t.to_string()
}
