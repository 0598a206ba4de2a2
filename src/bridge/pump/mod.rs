//! The bridge loop. One task owns everything: the upstream socket, the broker connection, the
//! outbox and the cursor, so ordering needs no locks. It reads a frame only when the outbox has
//! room and the broker is connected and not blocked: that is the backpressure, and it keeps
//! memory bounded by the confirm window. Frames come in through `ingest`, go out and are
//! confirmed through `publish`; `connect` keeps both ends up and `drain` shuts down.

mod connect;
mod drain;
mod ingest;
mod publish;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::cursor::CursorFile;
use super::dedup::Dedup;
use super::ingress::{self, WebhookJob};
use super::outbox::Outbox;
use super::upstream::{UpstreamSettings, WsStream};
use super::{BridgeSettings, Stats};
use crate::amqp::{AmqpError, AmqpUrl, ConfirmWindow, Connection, Publisher};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::topology::Topology;
use drain::write_cursor;

/// A confirm that takes longer than this means the channel is stuck: reconnect and republish.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the loop wakes to retry, reconnect and notice a blocked or dead connection.
const TICK: Duration = Duration::from_millis(100);
/// Ready frames or confirms handled per wake-up before yielding to the rest of the loop.
const BURST: usize = 64;
/// At most one warning per this period for a recurring condition (invalid frames, unroutable).
const WARN_EVERY: Duration = Duration::from_secs(5);

struct Ws {
    stream: WsStream,
    /// Any frame, pongs included: the idle deadline.
    last_frame: Instant,
    /// Data frames only (or the subscribe): the silence deadline.
    last_event: Instant,
}

struct Broker {
    conn: Connection,
    publisher: Publisher,
}

/// What woke the loop.
enum Wake {
    Stop,
    Confirm((u64, Instant), Result<(), AmqpError>),
    Frame(Option<Result<WsMessage, WsError>>),
    Job(Option<WebhookJob>),
    Ping,
    Flush,
    Tick,
}

/// Rate-limits a recurring warning.
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn ready(&mut self) -> bool {
        let now = Instant::now();
        if self.0.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

pub(super) struct Pump {
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Cancelled on shutdown in the main loop; at the drain deadline while draining.
    stop: CancellationToken,
    url: AmqpUrl,
    topology: Topology,
    events_exchange: Arc<str>,
    dead_letter_exchange: Arc<str>,
    upstream: Option<UpstreamSettings>,
    connect_timeout: Duration,
    ping_interval: Duration,
    idle_timeout: Duration,
    silence_timeout: Duration,
    /// Set when the silence deadline fired: when the last event came. Cleared by the next event.
    silent_since: Option<Instant>,
    flush_interval: Duration,
    shutdown_timeout: Duration,
    window_size: usize,

    outbox: Outbox,
    /// Outstanding confirms, tagged with the outbox slot and when the publish went out.
    window: ConfirmWindow<(u64, Instant)>,
    /// Some slot is unsent or waiting for a retry.
    dirty: bool,
    broker: Option<Broker>,
    broker_backoff: Backoff,
    broker_retry_at: Instant,
    ws: Option<Ws>,
    ws_backoff: Backoff,
    ws_retry_at: Instant,
    dedup: Dedup,

    cursor: Option<Ulid>,
    cursor_queued: Option<Ulid>,
    since_flush: usize,
    cursor_file: Option<CursorFile>,
    cursor_tx: Option<watch::Sender<Option<Ulid>>>,
    cursor_writer: Option<JoinHandle<()>>,

    jobs: Option<mpsc::Receiver<WebhookJob>>,
    ingress: Option<JoinHandle<()>>,
    ingress_stop: CancellationToken,
    warn_invalid: Throttle,
    warn_unroutable: Throttle,
    warn_nacked: Throttle,
}

impl Pump {
    /// Loads the cursor and starts the webhook listener; connects nothing yet.
    pub(super) async fn start(
        s: BridgeSettings,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let cursor_file = s.cursor_file.map(CursorFile::new);
        let cursor = match &cursor_file {
            Some(f) => f.load()?,
            None => None,
        };
        if let Some(id) = cursor {
            stats.set_cursor(id);
        }
        let (cursor_tx, cursor_writer) = match &cursor_file {
            Some(f) => {
                let (tx, rx) = watch::channel(cursor);
                (
                    Some(tx),
                    Some(tokio::spawn(write_cursor(f.clone(), rx, stats.clone()))),
                )
            }
            None => (None, None),
        };
        let window_size = s.confirm_window.max(1);
        let ingress_stop = CancellationToken::new();
        let (jobs, ingress) = match s.webhook {
            Some(w) => {
                let (tx, rx) = mpsc::channel(window_size);
                (
                    Some(rx),
                    Some(ingress::spawn(w, tx, stats.clone(), ingress_stop.clone())),
                )
            }
            None => (None, None),
        };
        tracing::info!(
            events_exchange = %s.topology.events_exchange,
            upstream = %s.upstream.as_ref().map(|u| redact_ws_url(&u.url)).unwrap_or_else(|| "-".into()),
            cursor = %cursor.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
            confirm_window = window_size,
            "Bridge starting."
        );
        let now = Instant::now();
        Ok(Self {
            stop: shutdown.child_token(),
            shutdown,
            url: s.amqp_url,
            events_exchange: Arc::from(s.topology.events_exchange.as_str()),
            dead_letter_exchange: Arc::from(s.topology.dead_letter_exchange.as_str()),
            topology: s.topology,
            upstream: s.upstream,
            connect_timeout: s.connect_timeout,
            ping_interval: s.ping_interval,
            idle_timeout: s.idle_timeout,
            silence_timeout: s.silence_timeout,
            silent_since: None,
            flush_interval: s.cursor_flush_interval,
            shutdown_timeout: s.shutdown_timeout,
            window_size,
            outbox: Outbox::new(window_size),
            window: ConfirmWindow::new(window_size),
            dirty: false,
            broker: None,
            broker_backoff: Backoff::reconnect(),
            broker_retry_at: now,
            ws: None,
            ws_backoff: Backoff::reconnect(),
            ws_retry_at: now,
            // Replays overlap by at most what is unconfirmed, which the window bounds.
            dedup: Dedup::new((window_size * 4).max(4096), cursor),
            cursor,
            cursor_queued: cursor,
            since_flush: 0,
            cursor_file,
            cursor_tx,
            cursor_writer,
            jobs,
            ingress,
            ingress_stop,
            warn_invalid: Throttle::default(),
            warn_unroutable: Throttle::default(),
            warn_nacked: Throttle::default(),
            stats,
        })
    }

    pub(super) async fn run(mut self) -> Result<(), Error> {
        let mut ping = tokio::time::interval(self.ping_interval);
        let mut flush = tokio::time::interval(self.flush_interval);
        let mut tick = tokio::time::interval(TICK);
        for t in [&mut ping, &mut flush, &mut tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        while !self.shutdown.is_cancelled() {
            self.ensure_broker().await;
            self.ensure_upstream().await;
            if self.dirty {
                self.publish_due().await;
            }
            let reading = self.can_read();
            if !reading && let Some(ws) = &mut self.ws {
                // The idle and silence deadlines measure the upstream's silence, not ours.
                let now = Instant::now();
                ws.last_frame = now;
                ws.last_event = now;
            }
            let wake = {
                let window = &mut self.window;
                let ws = self.ws.as_mut().map(|w| &mut w.stream);
                let jobs = self.jobs.as_mut();
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => Wake::Stop,
                    Some((tag, r)) = window.next(), if !window.is_empty() => Wake::Confirm(tag, r),
                    f = next_frame(ws), if reading => Wake::Frame(f),
                    j = next_job(jobs), if reading => Wake::Job(j),
                    _ = ping.tick() => Wake::Ping,
                    _ = flush.tick() => Wake::Flush,
                    _ = tick.tick() => Wake::Tick,
                }
            };
            match wake {
                Wake::Stop => break,
                Wake::Confirm(tag, r) => {
                    self.on_confirm(tag, r);
                    self.take_ready_confirms();
                }
                Wake::Frame(f) => {
                    self.on_frame(f).await;
                    self.take_ready_frames().await;
                }
                Wake::Job(Some(job)) => self.on_job(job).await,
                Wake::Job(None) => self.jobs = None,
                Wake::Ping => self.ping().await,
                Wake::Flush => self.flush_cursor(true),
                Wake::Tick => {
                    self.check_broker();
                    self.check_idle();
                    self.check_silence();
                }
            }
            self.advance_cursor();
            self.report_state();
        }
        self.stats.ready.set(false);
        self.finish().await
    }

    /// Handles frames that are already buffered without another trip through `select!`.
    async fn take_ready_frames(&mut self) {
        for _ in 0..BURST {
            if !self.can_read() {
                return;
            }
            let Some(ws) = &mut self.ws else { return };
            match ws.stream.next().now_or_never() {
                Some(f) => self.on_frame(f).await,
                None => return,
            }
        }
    }

    /// Takes confirms that have already arrived.
    fn take_ready_confirms(&mut self) {
        for _ in 0..BURST {
            match self.window.next().now_or_never() {
                Some(Some((tag, r))) => self.on_confirm(tag, r),
                _ => return,
            }
        }
    }

    fn can_read(&self) -> bool {
        self.outbox.has_room()
            && self
                .broker
                .as_ref()
                .is_some_and(|b| !b.conn.status().blocked())
    }
}

async fn next_frame(ws: Option<&mut WsStream>) -> Option<Result<WsMessage, WsError>> {
    match ws {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn next_job(jobs: Option<&mut mpsc::Receiver<WebhookJob>>) -> Option<WebhookJob> {
    match jobs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The upstream URL for logs: no credentials, no query string.
fn redact_ws_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
