//! The command line: `warren <noun> <verb>`, clap derive, dispatch only. The only module that
//! knows clap, signals and exit codes: it turns arguments into the library's typed settings and
//! a [`CancellationToken`](tokio_util::sync::CancellationToken), and results into an [`Outcome`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::amqp::{self, AmqpUrl};
use crate::error::{Error, Result};
use crate::output::OutputFormat;
use crate::telemetry::LogFormat;
use crate::topology::{DEFAULT_TOPOLOGY_FILE, Topology};

mod archive;
mod bridge;
mod console;
mod db;
mod demo;
mod dlq;
mod outcome;
mod signals;
mod sim;
mod status;
mod topology;
mod worker;

pub use archive::ArchiveCommand;
pub use bridge::BridgeArgs;
pub use console::ConsoleArgs;
pub use db::{DbArgs, DbCommand};
pub use demo::DemoArgs;
pub use dlq::DlqCommand;
pub use outcome::{Outcome, exit_code};
pub use sim::{SimApiArgs, SimCommand, SimUpstreamArgs};
pub use status::StatusArgs;
pub use topology::TopologyCommand;
pub use worker::{DownstreamArgs, HandlerName, WorkerArgs};

/// warren: a RabbitMQ task-queue worker fleet for event-driven trading agents.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Args)]
pub struct GlobalArgs {
    /// RabbitMQ URL, amqp:// or amqps://, or a cluster's nodes separated by commas (full URLs,
    /// or host:port after the first, which takes the rest from the first); warren connects to
    /// one that answers and moves to another when it goes. Add ?heartbeat=N to change the 10 s
    /// heartbeat. Passwords are never printed. [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(
        long,
        env = "AMQP_URL",
        global = true,
        hide_env_values = true,
        hide_default_value = true,
        default_value = amqp::DEFAULT_AMQP_URL
    )]
    pub amqp_url: String,

    /// Log format on stderr; RUST_LOG sets the level (default info).
    #[arg(long, value_enum, env = "WARREN_LOG_FORMAT", global = true, default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,
}

/// Shows the URL with its password redacted.
impl std::fmt::Debug for GlobalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalArgs")
            .field("amqp_url", &amqp::redact(&self.amqp_url))
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl GlobalArgs {
    /// The parsed broker URL.
    pub fn url(&self) -> Result<AmqpUrl> {
        self.amqp_url
            .parse()
            .map_err(|e: amqp::AmqpUrlError| Error::Usage(format!("--amqp-url / AMQP_URL: {e}")))
    }
}

/// `--log-format`, as clap parses it; see [`LogFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// `-o table|json|ndjson`, as clap parses it; see [`OutputFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// An aligned table.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl From<OutputArg> for OutputFormat {
    fn from(arg: OutputArg) -> Self {
        match arg {
            OutputArg::Table => OutputFormat::Table,
            OutputArg::Json => OutputFormat::Json,
            OutputArg::Ndjson => OutputFormat::Ndjson,
        }
    }
}

/// Where the topology comes from.
#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    /// The topology file.
    #[arg(short = 'f', long = "topology", env = "WARREN_TOPOLOGY", default_value = DEFAULT_TOPOLOGY_FILE)]
    pub file: PathBuf,
    /// A prefix added to every exchange and queue name, to run an isolated copy (tests, demos).
    #[arg(long, env = "WARREN_PREFIX", default_value = "")]
    pub prefix: String,
}

impl TopologyArgs {
    /// Loads and validates the topology.
    pub fn load(&self) -> Result<Topology> {
        Ok(Topology::load(&self.file, &self.prefix)?)
    }
}

/// The nouns.
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Declare, print or export the exchanges, queues and bindings in the topology file.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Consume work queues and run a handler on each event.
    Worker(WorkerArgs),
    /// Publish upstream WebSocket events (and signed webhooks) onto the events exchange.
    Bridge(BridgeArgs),
    /// Simulators for tests and demos.
    #[command(subcommand)]
    Sim(SimCommand),
    /// See why messages failed and put them back: list, show, stats, replay, purge, export.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queues of the topology: ready, unacked, consumers, retry tiers and DLQ depth.
    Status(StatusArgs),
    /// The PostgreSQL sink's schema: apply (create or migrate) and status.
    #[command(subcommand)]
    Db(DbCommand),
    /// A web console: queues live, dead letters by cause, canary replays (read-only unless
    /// --allow-changes).
    Console(ConsoleArgs),
    /// The event archive (a stream): info, read a window, replay it into a queue, backtest it.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Run the whole pipeline on the broker under a unique prefix (sim upstream, bridge, N
    /// worker processes, sim API), show progress, and reconcile: exit 1 if any event was lost.
    Demo(DemoArgs),
}

/// Runs the parsed command; main maps its result to the exit code with [`exit_code`].
pub async fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Topology(cmd) => topology::topology_command(&cli.global, cmd).await,
        Command::Worker(args) => worker::worker_command(&cli.global, args).await,
        Command::Bridge(args) => bridge::bridge_command(&cli.global, args).await,
        Command::Sim(SimCommand::Upstream(args)) => sim::sim_upstream_command(args).await,
        Command::Dlq(cmd) => dlq::dlq_command(&cli.global, cmd).await,
        Command::Status(args) => status::status_command(&cli.global, args).await,
        Command::Sim(SimCommand::Api(args)) => sim::sim_api_command(args).await,
        Command::Db(cmd) => db::db_command(cmd).await,
        Command::Demo(args) => demo::demo_command(&cli.global, args).await,
        Command::Console(args) => console::console_command(&cli.global, args).await,
        Command::Archive(cmd) => archive::archive_command(&cli.global, cmd).await,
    }
}
