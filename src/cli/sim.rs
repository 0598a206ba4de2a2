//! `warren sim upstream|api`: the simulated peers for tests and demos.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Outcome, signals};
use crate::error::{Error, Result};
use crate::output::Output;

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
    pub malformed_kinds: Vec<Malformed>,
    /// Each connection stops sending (and reading) after N events but keeps TCP open.
    #[arg(long)]
    pub stall_after: Option<u64>,
    /// Each connection stops sending events after N but keeps reading, so it still answers
    /// pings (a producer stuck behind a live socket).
    #[arg(long)]
    pub silent_after: Option<u64>,
}

/// A kind of malformed frame (`--malformed-kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Malformed {
    /// A text frame that is not JSON.
    NotJson,
    /// An envelope without `eventId`.
    MissingField,
    /// An envelope whose `ts` is a string.
    WrongType,
    /// A binary frame (the upstream sends text).
    Binary,
    /// A text frame over the 1 MiB limit.
    Oversized,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
}

impl Malformed {
    fn kind(self) -> warren_sim::upstream::MalformedKind {
        use warren_sim::upstream::MalformedKind as K;
        match self {
            Malformed::NotJson => K::NotJson,
            Malformed::MissingField => K::MissingField,
            Malformed::WrongType => K::WrongType,
            Malformed::Binary => K::Binary,
            Malformed::Oversized => K::Oversized,
            Malformed::InvalidUtf8 => K::InvalidUtf8,
        }
    }
}

pub(super) async fn sim_upstream_command(args: SimUpstreamArgs) -> Result<Outcome> {
    use warren_sim::upstream::{self, Faults, UpstreamSettings};
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
    Output::stdout().text(&format!("listening on {addr}"))?;
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
            malformed_kinds: args
                .malformed_kinds
                .into_iter()
                .map(Malformed::kind)
                .collect(),
            stall_after: args.stall_after.filter(|n| *n > 0),
            silent_after: args.silent_after.filter(|n| *n > 0),
        },
        pregenerate: false,
    };
    upstream::run(listener, settings, signals::on_signals()).await?;
    Ok(Outcome::Success)
}

pub(super) async fn sim_api_command(args: SimApiArgs) -> Result<Outcome> {
    let settings = warren_sim::api::ApiSettings {
        seed: args.seed,
        rates: warren_sim::api::FaultRates {
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
        token: std::env::var("WARREN_SIM_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(warren_sim::Token::new),
    };
    settings.rates.validate().map_err(Error::Usage)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("--listen {}: {e}", args.listen)))?;
    Output::stdout().text(&format!("listening on {addr}"))?;
    warren_sim::api::run(listener, settings, signals::on_signals()).await?;
    Ok(Outcome::Success)
}
