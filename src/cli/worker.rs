//! `warren worker`: the handler choice and the worker's flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::{DbArgs, GlobalArgs, Outcome, TopologyArgs, signals};
use crate::error::{Error, Result};
use crate::handlers::postgres::{BatchSettings, NAME as POSTGRES_HANDLER};
use crate::handlers::{
    Builtin, ChaosHandler, HttpHandler, LogHandler, PostgresHandler, TraderHandler,
};
use crate::http::{ClientSettings, HttpClient, StatusUrl, Token};
use crate::postgres::Sink;
use crate::topology::Topology;
use crate::worker::{self, WorkerSettings};

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
    /// The momentum trader against the trading API at --api, on a queue laned by pair (or a
    /// single-active-consumer queue with --concurrency 1).
    Trader,
    /// Write each event exactly once into PostgreSQL (DATABASE_URL): the events table, domain
    /// tables by natural key, and an inbox row in the same transaction, in batches.
    Postgres,
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
    /// Handlers running at once, across all queues and lanes [default: 16; 1 for the trader on
    /// a plain queue]. A lane runs one message at a time; a worker owning more lanes than this
    /// runs them in turn.
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
    #[command(flatten)]
    pub sink: SinkArgs,
}

/// Where and how the `postgres` handler writes.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// postgres handler: events per transaction at most.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// postgres handler: how long a batch's first event waits for more before it is written.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,
    /// postgres handler: database connections, hence batches written at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_pool: u32,
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
        HttpClient::new(settings, status, token).map_err(Error::HttpClient)
    }
}

pub(super) async fn worker_command(global: &GlobalArgs, args: WorkerArgs) -> Result<Outcome> {
    let topology = args.topology.load()?;
    let handler = build_handler(&args).await?;
    // A laned queue orders each pair's ticks itself; a plain one only with one handler at once.
    let all_laned = args
        .queues
        .iter()
        .all(|q| topology.queue(q).is_ok_and(|s| s.lanes.is_some()));
    let concurrency = match (args.handler, args.concurrency) {
        (HandlerName::Trader, n) if all_laned => n.unwrap_or(16),
        (HandlerName::Trader, Some(n)) if n > 1 => {
            return Err(Error::Usage(
                "--handler trader decides ticks in delivery order: run it with --concurrency 1"
                    .into(),
            ));
        }
        (HandlerName::Trader, _) => 1,
        // Enough handlers waiting at once to fill every connection's batch.
        (HandlerName::Postgres, n) => {
            n.unwrap_or((args.sink.batch_size * args.sink.db_pool * 2).clamp(16, 10_000))
        }
        (_, n) => n.unwrap_or(16),
    };
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
    let shutdown: CancellationToken = signals::on_signals();
    let metrics = Arc::new(worker::WorkerMetrics::default());
    if let Some(addr) = &args.metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        if let Builtin::Postgres(h) = &handler {
            h.metrics().register(&mut registry);
        }
        crate::metrics::spawn(addr, registry, metrics.ready.clone(), shutdown.clone())
            .await
            .map_err(|e| Error::Usage(format!("--metrics-listen {addr}: {e}")))?;
    }
    worker::run(settings, handler, metrics, shutdown).await?;
    Ok(Outcome::Success)
}

/// The trader's state is per process: say so when a queue cannot keep ticks in order or stale.
fn warn_unfit_for_trading(topology: &Topology, queues: &[String]) {
    for spec in queues.iter().filter_map(|q| topology.queue(q).ok()) {
        if spec.lanes.is_none() && !spec.single_active_consumer {
            tracing::warn!(queue = %spec.name, "Trading queue neither laned nor single_active_consumer: several traders would split each pair's ticks.");
        }
        if spec.message_ttl.is_none() && !topology.is_live_only("market.tick") {
            tracing::warn!(queue = %spec.name, "Ticks are not live-only (events.live_only) and the queue has no message_ttl: stale ticks cannot be recognised.");
        }
    }
}

async fn build_handler(args: &WorkerArgs) -> Result<Builtin> {
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
        HandlerName::Postgres => {
            let sink = &args.sink;
            let settings = sink.db.settings("--handler postgres")?;
            let pool = settings.pool(sink.db_pool as usize)?;
            let writer = Sink::connect(settings, pool, POSTGRES_HANDLER).await?;
            tracing::info!(database = %writer.database(), batch_size = sink.batch_size, "Writing events into PostgreSQL.");
            Builtin::Postgres(PostgresHandler::start(
                writer,
                BatchSettings {
                    batch_size: sink.batch_size as usize,
                    linger: sink.batch_linger,
                    parallel: sink.db_pool as usize,
                },
            ))
        }
    })
}
