//! The command line: `warren <noun> <verb>`, clap derive, dispatch only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpUrl};
use crate::error::{Error, Result};
use crate::handlers::{Builtin, ChaosHandler, HttpHandler, LogHandler, TraderHandler};
use crate::http::{ClientSettings, HttpClient, StatusUrl, Token};
use crate::output::{self, OutputFormat};
use crate::telemetry::LogFormat;
use crate::topology::{self, DEFAULT_TOPOLOGY_FILE, Topology};
use crate::worker::{self, WorkerSettings};

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
    /// RabbitMQ URL, amqp:// or amqps://. Add ?heartbeat=N to change the 10 s heartbeat. The
    /// password is never printed. [default: amqp://guest:***@127.0.0.1:5672/%2f]
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
    #[arg(long, value_enum, env = "WARREN_LOG_FORMAT", global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    Dlq(crate::dlq::DlqCommand),
    /// Queues of the topology: ready, unacked, consumers, retry tiers and DLQ depth.
    Status(crate::status::StatusArgs),
}

/// `warren bridge …`
#[derive(Debug, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// The upstream event stream, ws:// or wss://. The key comes from PF_AGENT_KEY, the agent
    /// id from PF_AGENT_ID; neither is ever logged.
    #[arg(long)]
    pub url: Option<String>,
    /// Topics to subscribe to: event types or `domain.*`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_values_t = crate::bridge::upstream::DEFAULT_TOPICS.map(String::from))]
    pub topics: Vec<String>,
    /// Where the resume cursor is kept (last eventId confirmed with everything before it).
    /// Without it, a restart resumes from the latest events.
    #[arg(long)]
    pub cursor_file: Option<PathBuf>,
    /// Publishes awaiting their broker confirm at most; also bounds the frames held in memory.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub confirm_window: u32,
    /// Deadline for connecting to the upstream (TCP, TLS and WebSocket handshake).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How often to ping the upstream.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// No frame (event or pong) for this long means a dead connection: reconnect.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// How often the cursor file is rewritten (also every --confirm-window events and on exit).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub cursor_flush_interval: Duration,
    /// How long SIGTERM waits for outstanding confirms before persisting the cursor and exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Accept signed webhooks (POST /webhooks/events) on this address, e.g. 0.0.0.0:8080.
    #[arg(long, requires = "webhook_secret_file")]
    pub webhook_listen: Option<String>,
    /// Webhook signing secrets, one per line (`whsec_<base64>` or raw); any of them verifies.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The largest webhook body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub webhook_max_body: usize,
    /// Accepted skew of `webhook-timestamp` from our clock.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,
}

/// `warren sim …`
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// A simulated upstream: WebSocket event stream with replay and fault injection.
    Upstream(SimUpstreamArgs),
    /// A simulated downstream trading API with idempotency keys and deterministic faults.
    ///
    /// Prints `listening on ADDR` as its first stdout line. Set WARREN_SIM_API_TOKEN to require
    /// `Authorization: Bearer <token>`.
    Api(SimApiArgs),
}

/// `warren sim api …`
#[derive(Debug, Args)]
pub struct SimApiArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Seeds every fault decision, position id and P&L: the same seed, the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of requests answered 500 before doing anything.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests answered 429 with Retry-After before doing anything.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// The Retry-After sent with a 429 (rounded up to whole seconds).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_after: Duration,
    /// Share of requests whose effect is committed, then answered 504 (or left hanging, see
    /// --hang-ms).
    #[arg(long, default_value_t = 0.0)]
    pub ambiguous_rate: f64,
    /// How long half of the ambiguous requests hang before their 504 (make it longer than the
    /// client's timeout); 0: never hang.
    #[arg(long, default_value_t = 0)]
    pub hang_ms: u64,
    /// Share of requests answered 409 while a duplicate of them is processed in the background.
    #[arg(long, default_value_t = 0.0)]
    pub conflict_rate: f64,
    /// Share of idempotency keys whose every request is rejected with 422.
    #[arg(long, default_value_t = 0.0)]
    pub reject_rate: f64,
    /// Processing time of every POST, during which its key is in flight.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Only a key's first N requests can be faulted, so no key fails forever.
    #[arg(long, default_value_t = 3)]
    pub max_faults_per_key: u32,
}

/// `warren sim upstream …`
#[derive(Debug, Args)]
pub struct SimUpstreamArgs {
    /// Address to listen on; port 0 picks one. The first line on stdout is `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: String,
    /// Seed of the event sequence and the fault dice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events per second; 0 sends as fast as subscribers take them.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Events to emit; then the stream stays open (for replays) until SIGTERM.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// `ts` of the first event in epoch ms [default: now]. Pin it for byte-identical runs.
    #[arg(long)]
    pub start_ms: Option<u64>,
    /// `agentId` of every envelope.
    #[arg(long, default_value = "pf_agent_sim")]
    pub agent_id: String,
    /// How long events stay replayable after they are emitted.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub replay_window: Duration,
    /// At most this many events stay replayable.
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_capacity: usize,
    /// Write `<eventId> <type>` for every event emitted (ground truth for reconciliation).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Close each connection abruptly after it has sent N events.
    #[arg(long)]
    pub drop_every: Option<u64>,
    /// Probability that an event is sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Probability that a malformed frame precedes an event.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_rate: f64,
    /// Malformed kinds to rotate through [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub malformed_kinds: Vec<crate::sim::upstream::MalformedKind>,
    /// Each connection stops sending (and reading) after N events but keeps TCP open.
    #[arg(long)]
    pub stall_after: Option<u64>,
}

/// `warren topology …`
#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare everything idempotently; says what was created and what already existed.
    Apply {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print the resolved plan: every queue with its arguments, and every binding.
    Show {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Write RabbitMQ definitions.json, for brokers that load definitions at boot.
    Export {
        #[command(flatten)]
        topology: TopologyArgs,
        /// The virtual host the definitions are for.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete every queue and exchange of the topology, with their messages.
    Delete {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Confirm: messages in these queues are lost.
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

/// A built-in handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandlerName {
    /// Log each event to stderr and ack it.
    Log,
    /// Test/demo handler driven by the event's `payload.chaos` (sleep, fail, panic, abort).
    Chaos,
    /// POST each event's envelope to --url with an idempotency key; map the answer with the
    /// error taxonomy. Bearer token from WARREN_HTTP_TOKEN.
    Http,
    /// The momentum trader against the trading API at --api (needs --concurrency 1 and a
    /// single-active-consumer queue).
    Trader,
}

/// `warren worker …`
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// A queue to consume, as named in the topology file. Repeat for several.
    #[arg(short = 'q', long = "queue", required = true)]
    pub queues: Vec<String>,
    /// Unacked deliveries per consumer [default: the queue's prefetch in the topology].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,
    /// Handlers running at once, across all queues [default: 16; 1 for the trader].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// The handler to run.
    #[arg(long, value_enum, default_value_t = HandlerName::Log)]
    pub handler: HandlerName,
    /// How long in-flight handlers may finish after SIGTERM before they are requeued.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How long one handler call may run before it counts as a transient failure.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub handler_timeout: Duration,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9090).
    #[arg(long, env = "WARREN_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// chaos handler: append `<eventId> <attempt> <start|outcome> <epoch_ms>` lines to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    #[command(flatten)]
    pub downstream: DownstreamArgs,
}

/// Where the `http` and `trader` handlers send their calls, and how patiently.
#[derive(Debug, Clone, Args)]
pub struct DownstreamArgs {
    /// http handler: the URL each event is POSTed to.
    #[arg(long)]
    pub url: Option<url::Url>,
    /// trader handler: the trading API's base URL (`<api>/trade/open`, `<api>/trade/close`).
    #[arg(long)]
    pub api: Option<url::Url>,
    /// Status-check URL template; `{key}` becomes the idempotency key. A 200 means committed,
    /// a 404 unknown [default: <origin of --url or --api>/operations/{key}].
    #[arg(long)]
    pub status_url: Option<String>,
    /// Time allowed to connect to the downstream.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed for one downstream request; longer is an ambiguous outcome (status check).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Downstream calls per delivery (short, jittered) before the queue's retry tiers take over.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub http_tries: u32,
}

impl DownstreamArgs {
    /// The pooled client for a downstream at `base`.
    fn client(&self, base: &url::Url) -> Result<HttpClient> {
        let status = match &self.status_url {
            Some(t) => {
                StatusUrl::parse(t).map_err(|e| Error::Usage(format!("--status-url: {e}")))?
            }
            None => StatusUrl::for_api(base),
        };
        let settings = ClientSettings {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            tries: self.http_tries,
            ..ClientSettings::default()
        };
        let token = Token::from_env(crate::handlers::http::TOKEN_ENV);
        HttpClient::new(settings, status, token).map_err(Error::Other)
    }
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Topology(cmd) => topology_command(&cli.global, cmd).await,
        Command::Worker(args) => worker_command(&cli.global, args).await,
        Command::Bridge(args) => bridge_command(&cli.global, args).await,
        Command::Sim(SimCommand::Upstream(args)) => sim_upstream_command(args).await,
        Command::Dlq(cmd) => crate::dlq::run(&cli.global, cmd).await,
        Command::Status(args) => crate::status::run(&cli.global, args).await,
        Command::Sim(SimCommand::Api(args)) => sim_api_command(args).await,
    }
}

async fn bridge_command(global: &GlobalArgs, args: BridgeArgs) -> Result<u8> {
    let mut settings = crate::bridge::BridgeSettings::new(global.url()?, args.topology.load()?);
    if let Some(url) = args.url {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Usage(format!("{name} must be set when --url is given")))
        };
        settings.upstream = Some(crate::bridge::UpstreamSettings {
            url,
            topics: args.topics,
            agent_key: env("PF_AGENT_KEY")?,
            agent_id: env("PF_AGENT_ID")?,
        });
    }
    if let Some(addr) = args.webhook_listen {
        let path = args.webhook_secret_file.unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let secrets = crate::bridge::webhook::parse_secrets(&text)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Usage(format!("--webhook-listen {addr}: {e}")))?;
        settings.webhook = Some(crate::bridge::WebhookSettings {
            listener,
            secrets,
            max_body: args.webhook_max_body,
            tolerance: args.webhook_tolerance,
        });
    }
    settings.cursor_file = args.cursor_file;
    settings.confirm_window = args.confirm_window as usize;
    settings.connect_timeout = args.connect_timeout;
    settings.ping_interval = args.ping_interval;
    settings.idle_timeout = args.idle_timeout;
    settings.cursor_flush_interval = args.cursor_flush_interval;
    settings.shutdown_timeout = args.shutdown_timeout;
    let shutdown = crate::shutdown::on_signals();
    crate::bridge::run(
        settings,
        Arc::new(crate::bridge::Stats::default()),
        shutdown,
    )
    .await?;
    Ok(0)
}

async fn sim_upstream_command(args: SimUpstreamArgs) -> Result<u8> {
    use crate::sim::upstream::{self, Faults, UpstreamSettings};
    for (flag, p) in [
        ("--duplicate-rate", args.duplicate_rate),
        ("--malformed-rate", args.malformed_rate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Usage(format!(
                "{flag}: {p} is not a probability between 0 and 1"
            )));
        }
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("--listen {}: {e}", args.listen)))?;
    output::print_text(&format!("listening on {addr}")).map_err(stdout_error)?;
    let settings = UpstreamSettings {
        seed: args.seed,
        rate: args.rate,
        events: args.events,
        start_ms: args.start_ms.unwrap_or_else(upstream::now_ms),
        agent_id: args.agent_id,
        agent_key: std::env::var("PF_AGENT_KEY").ok().filter(|k| !k.is_empty()),
        replay_window: args.replay_window,
        replay_capacity: args.replay_capacity.max(1),
        ledger: args.ledger,
        faults: Faults {
            drop_every: args.drop_every.filter(|n| *n > 0),
            duplicate_rate: args.duplicate_rate,
            malformed_rate: args.malformed_rate,
            malformed_kinds: args.malformed_kinds,
            stall_after: args.stall_after.filter(|n| *n > 0),
        },
        pregenerate: false,
    };
    upstream::run(listener, settings, crate::shutdown::on_signals()).await?;
    Ok(0)
}

async fn topology_command(global: &GlobalArgs, cmd: TopologyCommand) -> Result<u8> {
    match cmd {
        TopologyCommand::Apply { topology, output } => {
            let t = topology.load()?;
            let url = global.url()?;
            let conn = amqp::connect(&url, "topology", "admin").await?;
            let result = topology::apply(&conn, &t.plan()).await;
            amqp::close(&conn).await;
            let report = result?;
            match output {
                OutputFormat::Table => {
                    output::print_text(&output::table(report.items.iter().map(|i| ApplyRow {
                        kind: i.kind,
                        name: i.name.clone(),
                        status: format!("{:?}", i.status).to_lowercase(),
                    })))
                    .map_err(stdout_error)?;
                    tracing::info!(
                        created = report.created(),
                        total = report.items.len(),
                        "Topology applied."
                    );
                }
                OutputFormat::Json => output::print_json(&report).map_err(stdout_error)?,
                OutputFormat::Ndjson => {
                    output::print_ndjson(&report.items).map_err(stdout_error)?
                }
            }
            Ok(0)
        }
        TopologyCommand::Show { topology, output } => {
            let plan = topology.load()?.plan();
            match output {
                OutputFormat::Table => {
                    let mut rows: Vec<ShowRow> = plan
                        .exchanges
                        .iter()
                        .map(|e| ShowRow {
                            object: "exchange".into(),
                            name: e.name.clone(),
                            details: e.kind.to_string(),
                        })
                        .collect();
                    rows.extend(plan.queues.iter().map(|q| {
                        ShowRow {
                            object: format!(
                                "queue ({})",
                                serde_json::to_value(q.role)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_string))
                                    .unwrap_or_default()
                            ),
                            name: q.name.clone(),
                            details: q
                                .arguments
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        }
                    }));
                    rows.extend(plan.bindings.iter().map(|b| ShowRow {
                        object: "binding".into(),
                        name: format!("{} -> {}", b.exchange, b.queue),
                        details: b.routing_key.clone(),
                    }));
                    output::print_text(&output::table(rows)).map_err(stdout_error)?;
                }
                OutputFormat::Json => output::print_json(&plan).map_err(stdout_error)?,
                OutputFormat::Ndjson => output::print_ndjson(&plan.queues).map_err(stdout_error)?,
            }
            Ok(0)
        }
        TopologyCommand::Export {
            topology,
            vhost,
            out,
        } => {
            let defs = topology.load()?.plan().definitions(&vhost);
            let text =
                serde_json::to_string_pretty(&defs).map_err(|e| Error::Other(e.to_string()))?;
            match out {
                Some(path) => std::fs::write(&path, text + "\n")
                    .map_err(|source| Error::Io { path, source })?,
                None => output::print_text(&text).map_err(stdout_error)?,
            }
            Ok(0)
        }
        TopologyCommand::Delete { topology, yes } => {
            if !yes {
                return Err(Error::Usage(
                    "topology delete removes every queue with its messages; pass -y to confirm"
                        .into(),
                ));
            }
            let t = topology.load()?;
            let conn = amqp::connect(&global.url()?, "topology", "admin").await?;
            let result = topology::delete(&conn, &t.plan()).await;
            amqp::close(&conn).await;
            let deleted = result?;
            tracing::info!(deleted, "Topology deleted.");
            Ok(0)
        }
    }
}

async fn worker_command(global: &GlobalArgs, args: WorkerArgs) -> Result<u8> {
    let handler = build_handler(&args)?;
    let concurrency = match (args.handler, args.concurrency) {
        (HandlerName::Trader, Some(n)) if n > 1 => {
            return Err(Error::Usage(
                "--handler trader decides ticks in delivery order: run it with --concurrency 1"
                    .into(),
            ));
        }
        (HandlerName::Trader, _) => 1,
        (_, n) => n.unwrap_or(16),
    };
    let topology = args.topology.load()?;
    if args.handler == HandlerName::Trader {
        warn_unfit_for_trading(&topology, &args.queues);
    }
    let settings = WorkerSettings {
        url: global.url()?,
        topology,
        queues: args.queues.clone(),
        prefetch: args.prefetch,
        concurrency: concurrency as usize,
        drain_timeout: args.drain_timeout,
        handler_timeout: args.handler_timeout,
    };
    let shutdown: CancellationToken = crate::shutdown::on_signals();
    let metrics = Arc::new(worker::WorkerMetrics::default());
    if let Some(addr) = &args.metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        crate::metrics::spawn(addr, registry, metrics.ready.clone(), shutdown.clone())
            .await
            .map_err(|e| Error::Usage(format!("--metrics-listen {addr}: {e}")))?;
    }
    worker::run(settings, handler, metrics, shutdown).await?;
    Ok(0)
}

/// The trader's state is per process: say so when a queue cannot keep ticks in order or stale.
fn warn_unfit_for_trading(topology: &Topology, queues: &[String]) {
    for spec in queues.iter().filter_map(|q| topology.queue(q).ok()) {
        if !spec.single_active_consumer {
            tracing::warn!(queue = %spec.name, "Trading queue without single_active_consumer: several traders would split each pair's ticks.");
        }
        if spec.message_ttl.is_none() {
            tracing::warn!(queue = %spec.name, "Trading queue without message_ttl: stale ticks cannot be recognised.");
        }
    }
}

fn build_handler(args: &WorkerArgs) -> Result<Builtin> {
    let d = &args.downstream;
    Ok(match args.handler {
        HandlerName::Log => Builtin::Log(LogHandler),
        HandlerName::Chaos => Builtin::Chaos(ChaosHandler::new(args.record.clone())),
        HandlerName::Http => {
            let url = d
                .url
                .clone()
                .ok_or_else(|| Error::Usage("--handler http needs --url URL".into()))?;
            let client = d.client(&url)?;
            tracing::info!(url = %crate::http::shown(&url), status_url = %client.status_url(), "Forwarding events over HTTP.");
            Builtin::Http(HttpHandler::new(client, url))
        }
        HandlerName::Trader => {
            let api = d
                .api
                .clone()
                .ok_or_else(|| Error::Usage("--handler trader needs --api URL".into()))?;
            let client = d.client(&api)?;
            tracing::info!(api = %crate::http::shown(&api), status_url = %client.status_url(), "Trading.");
            let trader = TraderHandler::new(
                client,
                &api,
                crate::handlers::trader::strategy::Params::default(),
            )
            .map_err(Error::Usage)?;
            Builtin::Trader(trader)
        }
    })
}

async fn sim_api_command(args: SimApiArgs) -> Result<u8> {
    use std::io::Write;
    let settings = crate::sim::api::ApiSettings {
        seed: args.seed,
        rates: crate::sim::api::FaultRates {
            fail: args.fail_rate,
            throttle: args.throttle_rate,
            ambiguous: args.ambiguous_rate,
            conflict: args.conflict_rate,
            reject: args.reject_rate,
        },
        retry_after: args.retry_after,
        latency: Duration::from_millis(args.latency_ms),
        hang: Duration::from_millis(args.hang_ms),
        max_faults_per_key: args.max_faults_per_key,
        token: Token::from_env("WARREN_SIM_API_TOKEN"),
    };
    settings.rates.validate().map_err(Error::Usage)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("--listen {}: {e}", args.listen)))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)?;
    crate::sim::api::run(listener, settings, crate::shutdown::on_signals()).await?;
    Ok(0)
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("<stdout>"),
        source: e,
    }
}

#[derive(tabled::Tabled)]
struct ApplyRow {
    kind: &'static str,
    name: String,
    status: String,
}

#[derive(tabled::Tabled)]
struct ShowRow {
    object: String,
    name: String,
    details: String,
}
