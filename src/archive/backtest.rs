//! `archive backtest`: the built-in trader run over a window of the archive, in stream order,
//! against the simulated trading API (in process, seeded) or a URL. Its keys live in their own
//! namespace (`trader.backtest`), so no live key is touched, and they are the same for every
//! run of a window, so a rerun is deterministic: against the simulator the same seed gives the
//! same ids and P&L, and against a URL that keeps keys every call is answered from its store.

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{DEFAULT_PREFETCH, Walk, WalkStats, Window};
use crate::amqp::AmqpUrl;
use crate::error::Error;
use crate::handlers::TraderHandler;
use crate::handlers::trader::Executed;
use crate::handlers::trader::strategy::{Direction, Params};
use crate::http::{ClientSettings, HttpClient, StatusUrl};
use crate::worker::{Context, Handler, HandlerError};

/// How to backtest.
#[derive(Debug, Clone)]
pub struct BacktestSettings {
    /// The events.
    pub window: Window,
    /// The trading API; `None`: the simulated one, in process.
    pub api: Option<Url>,
    /// The simulated API's seed (position ids, P&L).
    pub seed: u64,
}

/// A position still open at the window's end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenPosition {
    /// The pair.
    pub pair: String,
    /// The side.
    pub direction: Direction,
}

/// What the trader did over the window. The same window gives the same report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BacktestReport {
    /// The window's flags.
    pub window: String,
    /// The API traded against.
    pub api: String,
    /// Events fed to the trader.
    pub events: u64,
    /// Every trade, in order, with the API's answer.
    pub trades: Vec<Executed>,
    /// Positions opened.
    pub opened: u64,
    /// Positions closed.
    pub closed: u64,
    /// The sum of the closes' realised P&L.
    pub realised_pnl_usdc: f64,
    /// Positions open at the end of the window.
    pub open_positions: Vec<OpenPosition>,
    /// Events the trader refused (a tick without a price, a close the API refused).
    pub refused: u64,
}

/// Runs the trader over the window. The report leaves out the walk's counters (duplicates,
/// reconnects), which describe the read rather than the strategy; they are returned beside it.
pub async fn backtest(
    url: &AmqpUrl,
    topology: &crate::topology::Topology,
    settings: &BacktestSettings,
    shutdown: &CancellationToken,
) -> Result<(BacktestReport, WalkStats), Error> {
    let sim_stop = shutdown.child_token();
    let (api, shown) = match &settings.api {
        Some(u) => (u.clone(), crate::http::shown(u).to_string()),
        None => (
            start_sim(settings.seed, sim_stop.clone()).await?,
            format!("simulated (seed {})", settings.seed),
        ),
    };
    let client = HttpClient::new(ClientSettings::default(), StatusUrl::for_api(&api), None)
        .map_err(Error::HttpClient)?;
    let trader = TraderHandler::backtest(client, &api, Params::default())
        .map_err(|e| Error::Usage(format!("--api: {e}")))?;
    let result = run(url, topology, settings, &trader, shutdown).await;
    sim_stop.cancel();
    let (events, refused, walk) = result?;
    let trades = trader.journal();
    let report = BacktestReport {
        window: settings.window.describe(),
        api: shown,
        events,
        opened: trades.iter().filter(|t| t.kind == "open").count() as u64,
        closed: trades.iter().filter(|t| t.kind == "close").count() as u64,
        realised_pnl_usdc: round_cents(trades.iter().filter_map(|t| t.pnl_usdc).sum()),
        open_positions: trader
            .open_positions()
            .into_iter()
            .map(|(pair, direction)| OpenPosition { pair, direction })
            .collect(),
        trades,
        refused,
    };
    Ok((report, walk))
}

async fn run(
    url: &AmqpUrl,
    topology: &crate::topology::Topology,
    settings: &BacktestSettings,
    trader: &TraderHandler,
    shutdown: &CancellationToken,
) -> Result<(u64, u64, WalkStats), Error> {
    let mut walk = Walk::open(
        url,
        topology,
        settings.window.clone(),
        None,
        DEFAULT_PREFETCH,
    )
    .await?;
    let ctx = Context {
        queue: "archive".into(),
        attempt: 0,
        redelivered: false,
        returned_from: None,
        message_ttl: None,
        lane_generation: None,
    };
    let mut events = 0;
    let mut refused = 0;
    let fed = async {
        while let Some(e) = walk.next(shutdown).await? {
            events += 1;
            match trader.handle(&e.event, &ctx).await {
                Ok(()) => {}
                Err(HandlerError::Permanent(why)) => {
                    refused += 1;
                    tracing::debug!(event_id = %e.event.event_id, reason = %why, "The trader refused an event.");
                }
                Err(other) => {
                    return Err(Error::Other(format!(
                        "backtest stopped at offset {} (event {}): {other}",
                        e.offset, e.event.event_id
                    )));
                }
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let stats = walk.close().await;
    fed?;
    if shutdown.is_cancelled() {
        return Err(Error::Other("backtest interrupted by a signal".into()));
    }
    if events == 0 {
        return Err(Error::Usage(format!(
            "{}: no events in this window",
            settings.window.describe()
        )));
    }
    Ok((events, refused, stats))
}

/// The simulated trading API on 127.0.0.1:0, no faults; returns its base URL.
async fn start_sim(seed: u64, stop: CancellationToken) -> Result<Url, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(format!("simulated API: cannot listen on 127.0.0.1:0: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("simulated API: {e}")))?;
    let settings = warren_sim::api::ApiSettings {
        seed,
        ..Default::default()
    };
    tokio::spawn(async move {
        if let Err(e) = warren_sim::api::run(listener, settings, stop).await {
            tracing::error!(error = %e, "Simulated API stopped.");
        }
    });
    Url::parse(&format!("http://{addr}/")).map_err(|e| Error::Other(e.to_string()))
}

/// P&L to the cent, so a sum's last float bits never differ between runs or platforms.
fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
