//! `trader`: a momentum strategy ([`strategy`]) driving a trading API through the idempotent
//! client. Its state is per pair, so the trading queue is laned by pair (or a single-active-
//! consumer queue run with `--concurrency 1`): each pair's ticks reach one worker, in order,
//! and the worker that takes a lane over (or a standby) carries on from the API's positions.
//!
//! Every trade's key derives from the deciding event, so a redelivery or a replay repeats the
//! keys and the API replays its stored responses instead of trading again. Trades decided for
//! an event are kept until each succeeds (and dropped one by one as they do), so a retry
//! re-issues exactly the unfinished ones even though the tick itself is not windowed twice.
//!
//! A worker (a standby taking over, a restart) first loads the open positions from the API
//! (`GET <api>/positions`), each with the idempotency key and event id of the open that created
//! it. On a laned queue it does so per pair, before the first event of the pair after it took
//! the pair's lane over (the lane generation in the context changes), since another worker
//! may have traded the pair while it owned the lane. The strategy inherits them as opened by that event, so they count from the first tick
//! after it: a standby never opens a second position on a pair it inherited and closes it with
//! the key its predecessor would have used, and a fresh worker fed the whole stream again
//! decides exactly the first worker's trades, every one a replay.
//!
//! A tick older than its time to live (the queue's `message_ttl`, else `events.live_ttl`; by
//! `payload.timestamp_ms`) is dead-lettered as
//! permanent ("stale"), as the worker does for an event whose envelope `ts` is that old: never
//! traded on, never dropped unseen.

pub mod strategy;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use url::Url;

use self::strategy::{
    BACKTEST_KEYS, Direction, Input, LIVE_KEYS, Params, Strategy, Trade, open_key, open_key_in,
};
use crate::envelope::Envelope;
use crate::http::HttpClient;
use crate::worker::{Context, Handler, HandlerError, HandlerResult};

/// Decided-but-unfinished events kept for retries, at most (oldest dropped first).
const MAX_PENDING: usize = 1024;

/// The momentum trader.
#[derive(Debug)]
pub struct TraderHandler {
    client: HttpClient,
    open_url: Url,
    close_url: Url,
    positions_url: Url,
    loaded: tokio::sync::OnceCell<()>,
    state: Mutex<State>,
    /// The key namespace: [`LIVE_KEYS`], or [`BACKTEST_KEYS`] for a backtest.
    keys: &'static str,
    /// A backtest's record of every trade done, in order.
    journal: Option<Mutex<Vec<Executed>>>,
}

/// One trade a backtest's trader did, with the API's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Executed {
    /// `open` or `close`.
    pub kind: &'static str,
    /// The pair.
    pub pair: String,
    /// The position's side.
    pub direction: Direction,
    /// The event that decided it.
    pub event_id: String,
    /// The position.
    pub position_id: String,
    /// A close's realised P&L.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pnl_usdc: Option<f64>,
}

#[derive(Debug, Default)]
struct State {
    strategy: Strategy,
    /// Trades decided per eventId, until they all succeed.
    pending: BTreeMap<String, Vec<Trade>>,
    /// Position ids learnt from opens, by the open's key.
    position_ids: HashMap<String, String>,
    /// On a laned queue: the lane generation each pair's positions were loaded at.
    loaded_at: HashMap<String, u64>,
}

#[derive(Serialize)]
struct OpenBody<'a> {
    pair: &'a str,
    direction: Direction,
    size_usdc: f64,
    leverage: f64,
}

#[derive(Serialize)]
struct CloseBody<'a> {
    position_id: &'a str,
}

#[derive(Deserialize)]
struct Opened {
    position_id: String,
}

#[derive(Deserialize)]
struct Positions {
    positions: Vec<HeldPosition>,
}

#[derive(Deserialize)]
struct HeldPosition {
    position_id: String,
    pair: String,
    direction: Direction,
    /// The key of the open that created it.
    #[serde(default)]
    idempotency_key: Option<String>,
    /// The event that open was sent for.
    #[serde(default)]
    event_id: Option<String>,
}

impl HeldPosition {
    /// The event that decided this position, if the trader opened it: the API names an event
    /// whose open key is the position's key.
    fn opened_by(&self) -> Option<&str> {
        let event_id = self.event_id.as_deref()?;
        (self.idempotency_key.as_deref() == Some(open_key(event_id).as_str())).then_some(event_id)
    }
}

#[derive(Deserialize)]
struct Closed {
    #[serde(default)]
    realised_pnl_usdc: Option<f64>,
}

impl TraderHandler {
    /// A trader calling the API at `api` (`<api>/trade/open`, `<api>/trade/close`).
    pub fn new(client: HttpClient, api: &Url, params: Params) -> Result<Self, String> {
        let mut base = api.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| format!("--api: cannot derive {p}: {e}"))
        };
        Ok(Self {
            client,
            open_url: join("trade/open")?,
            close_url: join("trade/close")?,
            positions_url: join("positions")?,
            loaded: tokio::sync::OnceCell::new(),
            state: Mutex::new(State {
                strategy: Strategy::new(params),
                ..Default::default()
            }),
            keys: LIVE_KEYS,
            journal: None,
        })
    }

    /// A trader for a backtest: keys in [`BACKTEST_KEYS`] (no live key is ever touched, and
    /// every run of a window repeats the same keys), starting flat (positions at the API are
    /// not loaded), and keeping a journal of its trades ([`TraderHandler::journal`]).
    pub fn backtest(client: HttpClient, api: &Url, params: Params) -> Result<Self, String> {
        let mut t = Self::new(client, api, params)?;
        t.keys = BACKTEST_KEYS;
        t.journal = Some(Mutex::new(Vec::new()));
        let _ = t.loaded.set(());
        Ok(t)
    }

    /// A backtest's trades so far, in order (empty for a live trader).
    pub fn journal(&self) -> Vec<Executed> {
        self.journal
            .as_ref()
            .map(|j| j.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Positions the strategy holds, by pair.
    pub fn open_positions(&self) -> Vec<(String, Direction)> {
        self.state().strategy.open_positions()
    }

    fn record(&self, e: Executed) {
        if let Some(j) = &self.journal {
            j.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        }
    }

    fn open_key(&self, event_id: &str) -> String {
        open_key_in(self.keys, event_id)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The trades to run for this event: those still pending from an earlier attempt, or the
    /// strategy's fresh decision.
    fn decide(&self, event: &Envelope, input: &Input) -> Vec<Trade> {
        let mut s = self.state();
        if let Some(trades) = s.pending.get(&event.event_id) {
            return trades.clone();
        }
        let trades = s.strategy.on_event(&event.event_id, input);
        if !trades.is_empty() {
            s.pending.insert(event.event_id.clone(), trades.clone());
            while s.pending.len() > MAX_PENDING {
                s.pending.pop_first();
            }
        }
        trades
    }

    async fn execute(&self, trade: &Trade) -> HandlerResult {
        match trade {
            Trade::Open {
                pair,
                direction,
                event_id,
            } => {
                let id = self.open(pair, *direction, event_id).await?;
                self.record(Executed {
                    kind: "open",
                    pair: pair.clone(),
                    direction: *direction,
                    event_id: event_id.clone(),
                    position_id: id.clone(),
                    pnl_usdc: None,
                });
                tracing::info!(pair = %pair, direction = direction.as_str(), position_id = %id, event_id = %event_id, "Position opened.");
                Ok(())
            }
            Trade::Close {
                pair,
                direction,
                event_id,
                opened_by,
            } => {
                let known = self
                    .state()
                    .position_ids
                    .get(&self.open_key(opened_by))
                    .cloned();
                let position_id = match known {
                    Some(id) => id,
                    // Unknown here: ask for the open's stored outcome by its key. Never POST the
                    // open again to learn its id: if it never happened, that would open it now.
                    None => match self.client.lookup(&self.open_key(opened_by)).await? {
                        Some(stored) => stored.json::<Opened>()?.position_id,
                        None => {
                            tracing::warn!(pair = %pair, direction = direction.as_str(), event_id = %event_id, "The position to close was never opened; nothing to close.");
                            return Ok(());
                        }
                    },
                };
                let body = json_body(&CloseBody {
                    position_id: &position_id,
                })?;
                let response = self
                    .client
                    .post_idempotent(
                        &self.close_url,
                        &trade.key_in(self.keys),
                        body,
                        &headers(event_id, "trader.close"),
                    )
                    .await?;
                let closed: Closed = response.json()?;
                self.state().position_ids.remove(&self.open_key(opened_by));
                self.record(Executed {
                    kind: "close",
                    pair: pair.clone(),
                    direction: *direction,
                    event_id: event_id.clone(),
                    position_id: position_id.clone(),
                    pnl_usdc: closed.realised_pnl_usdc,
                });
                tracing::info!(pair = %pair, position_id = %position_id, pnl_usdc = closed.realised_pnl_usdc, event_id = %event_id, "Position closed.");
                Ok(())
            }
        }
    }

    /// Drops a trade that succeeded from the event's pending list, so a retry does not run it
    /// again.
    fn finished(&self, event_id: &str, trade: &Trade) {
        let mut s = self.state();
        if let Some(left) = s.pending.get_mut(event_id) {
            left.retain(|t| t.key() != trade.key());
            if left.is_empty() {
                s.pending.remove(event_id);
            }
        }
    }

    /// `GET <api>/positions` once, before the first event: positions opened by another worker
    /// (the one this standby replaces) count towards the cap and are closed on a flip, from the
    /// first tick after the event that opened them. A position the trader did not open (no
    /// event id, or a key that is not the open key of its event) counts at once. A 404 means
    /// the API has no such endpoint: start empty.
    async fn load_positions(&self) -> Result<(), HandlerError> {
        self.load_pair_positions(None).await
    }

    /// Loads the open positions of `pair` (all pairs for `None`), replacing what the strategy
    /// believed of that pair.
    async fn load_pair_positions(&self, pair: Option<&str>) -> Result<(), HandlerError> {
        let Some(list) = self
            .client
            .get_json::<Positions>(&self.positions_url)
            .await?
        else {
            tracing::warn!(url = %crate::http::shown(&self.positions_url), "No positions endpoint; starting with no open positions.");
            return Ok(());
        };
        let mut s = self.state();
        if let Some(pair) = pair {
            s.strategy.forget(pair);
        }
        let list = Positions {
            positions: list
                .positions
                .into_iter()
                .filter(|p| pair.is_none_or(|want| p.pair == want))
                .collect(),
        };
        for p in &list.positions {
            if let Some(opened_by) = p.opened_by() {
                s.position_ids
                    .insert(self.open_key(opened_by), p.position_id.clone());
                s.strategy.inherit(&p.pair, p.direction, opened_by);
            } else {
                let opened_by = format!("loaded:{}", p.position_id);
                s.position_ids
                    .insert(self.open_key(&opened_by), p.position_id.clone());
                s.strategy.adopt(&p.pair, p.direction, &opened_by);
            }
        }
        if !list.positions.is_empty() {
            tracing::info!(
                open = list.positions.len(),
                "Loaded open positions from the API."
            );
        }
        Ok(())
    }

    /// `POST /trade/open` with the key of the open decided by `event_id`; returns the position id.
    async fn open(
        &self,
        pair: &str,
        direction: Direction,
        event_id: &str,
    ) -> Result<String, HandlerError> {
        let params = self.state().strategy.params().clone();
        let body = json_body(&OpenBody {
            pair,
            direction,
            size_usdc: params.size_usdc,
            leverage: params.leverage,
        })?;
        let key = self.open_key(event_id);
        let response = self
            .client
            .post_idempotent(
                &self.open_url,
                &key,
                body,
                &headers(event_id, "trader.open"),
            )
            .await?;
        let opened: Opened = response.json()?;
        self.state()
            .position_ids
            .insert(key, opened.position_id.clone());
        Ok(opened.position_id)
    }
}

impl Handler for TraderHandler {
    fn name(&self) -> &str {
        "trader"
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        let input = Input::from_event(event).map_err(|e| HandlerError::permanent(e.to_string()))?;
        if let Input::Tick { at_ms, .. } = &input
            && let Some(ttl) = ctx.message_ttl
        {
            let age = now_ms().saturating_sub(*at_ms);
            if age > ttl.as_millis() as u64 {
                // Never traded on, and not windowed: dead-lettered like an event whose `ts` is
                // that old (the worker's own check), so every stale tick is accounted for.
                return Err(HandlerError::permanent(format!(
                    "stale: the tick was observed {} ago, longer than its time to live of {}",
                    humantime::format_duration(Duration::from_millis(age / 1000 * 1000)),
                    humantime::format_duration(ttl)
                )));
            }
        }
        match (ctx.lane_generation, &input) {
            // A laned queue: the pair's positions, once per lane ownership.
            (Some(generation), Input::Tick { pair, .. }) => {
                let stale = self.state().loaded_at.get(pair) != Some(&generation);
                if stale {
                    self.load_pair_positions(Some(pair)).await?;
                    self.state().loaded_at.insert(pair.clone(), generation);
                }
            }
            (Some(_), _) => {}
            (None, _) => {
                self.loaded
                    .get_or_try_init(|| self.load_positions())
                    .await?;
            }
        }
        let trades = self.decide(event, &input);
        for trade in &trades {
            if let Err(error) = self.execute(trade).await {
                if matches!(error, HandlerError::Permanent(_)) {
                    // The API refused for good: the pair is flat as far as we can tell.
                    let mut s = self.state();
                    s.pending.remove(&event.event_id);
                    s.strategy.forget(trade.pair());
                }
                return Err(error);
            }
            self.finished(&event.event_id, trade);
        }
        Ok(())
    }
}

/// The `X-Warren-*` headers for a trade decided by `event_id`.
fn headers(event_id: &str, kind: &'static str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(event_id) {
        h.insert("x-warren-event-id", v);
    }
    h.insert(
        "x-warren-event-type",
        reqwest::header::HeaderValue::from_static(kind),
    );
    h
}

fn json_body<T: Serialize>(value: &T) -> Result<Bytes, HandlerError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| HandlerError::permanent(format!("cannot encode the request: {e}")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
