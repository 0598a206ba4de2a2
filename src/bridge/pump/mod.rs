//! The bridge loop. One task owns everything: the upstream socket, the broker connection, the
//! outbox and the cursor, so ordering needs no locks. It reads a frame only when the outbox has
//! room and the broker is connected and not blocked: that is the backpressure, and it keeps
//! memory bounded by the confirm window.

mod connect;
mod drain;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::cursor::CursorFile;
use super::dedup::Dedup;
use super::ingress::{self, WebhookJob};
use super::outbox::{Origin, Outbox, Outgoing};
use super::upstream::{UpstreamSettings, WsStream};
use super::{BridgeSettings, Stats, route};
use crate::amqp::{AmqpError, AmqpUrl, ConfirmWindow, Connection, Message, Publisher};
use crate::backoff::Backoff;
use crate::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE_BYTES};
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
    last_frame: Instant,
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
                // The idle deadline measures the upstream's silence, not ours.
                ws.last_frame = Instant::now();
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

    async fn on_frame(&mut self, frame: Option<Result<WsMessage, WsError>>) {
        let msg = match frame {
            None => return self.upstream_failed("the upstream closed the connection"),
            Some(Err(e)) => {
                // tungstenite fails the connection on these before handing over any bytes:
                // a text frame that is not UTF-8 (its error holds only a lossy rendering of
                // the bad sequence), or a frame over HARD_FRAME_LIMIT (refused from its
                // header, never read). Record it, say why the body is empty, resume.
                let absent = match e {
                    WsError::Utf8(_) => Some(route::ABSENT_INVALID_UTF8),
                    WsError::Capacity(_) => Some(route::ABSENT_OVER_HARD_LIMIT),
                    _ => None,
                };
                if let Some(why) = absent {
                    Stats::add(&self.stats.received, 1);
                    let error =
                        format!("frame rejected by the WebSocket layer, bytes unavailable: {e}");
                    self.dead_letter(Vec::new(), &error, route::BodyNote::Absent(why))
                        .await;
                }
                return self.upstream_failed(&e.to_string());
            }
            Some(Ok(msg)) => msg,
        };
        if let Some(ws) = &mut self.ws {
            ws.last_frame = Instant::now();
        }
        match msg {
            WsMessage::Text(text) => self.on_text(text.as_bytes()).await,
            WsMessage::Binary(bytes) => {
                Stats::add(&self.stats.received, 1);
                self.dead_letter(
                    bytes.to_vec(),
                    "binary frame; the upstream sends JSON text frames",
                    route::BodyNote::Whole,
                )
                .await;
            }
            WsMessage::Close(frame) => {
                let reason = self.close_reason(frame.as_ref());
                self.upstream_failed(&reason);
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }

    /// The upstream's close code and reason, for the log: a refused subscribe (a bad topic, a
    /// revoked key) says why here. The agent key never appears, even if the reason echoes it.
    fn close_reason(&self, frame: Option<&CloseFrame>) -> String {
        let Some(f) = frame else {
            return "the upstream closed the connection (no close code)".into();
        };
        let mut reason: String = f.reason.as_str().chars().take(200).collect();
        if let Some(key) = self.upstream.as_ref().map(|u| u.agent_key.as_str())
            && !key.is_empty()
        {
            reason = reason.replace(key, "***");
        }
        format!(
            "the upstream closed the connection: code {} ({:?}), reason {reason:?}",
            f.code, f.code
        )
    }

    async fn on_text(&mut self, frame: &[u8]) {
        Stats::add(&self.stats.received, 1);
        if frame.len() > MAX_ENVELOPE_BYTES {
            let error = EnvelopeError::TooLarge(frame.len()).to_string();
            let kept = frame[..route::TRUNCATED_BYTES].to_vec();
            let note = route::BodyNote::Truncated(frame.len());
            return self.dead_letter(kept, &error, note).await;
        }
        let event = match Envelope::parse(frame) {
            Ok(e) => e,
            Err(error) => {
                let error = error.to_string();
                return self
                    .dead_letter(frame.to_vec(), &error, route::BodyNote::Whole)
                    .await;
            }
        };
        let Ok(id) = Ulid::from_string(&event.event_id) else {
            let error = "field 'eventId': not a ULID";
            return self
                .dead_letter(frame.to_vec(), error, route::BodyNote::Whole)
                .await;
        };
        if !self.dedup.accept(id) {
            Stats::add(&self.stats.duplicates, 1);
            return;
        }
        Stats::add(&self.stats.accepted, 1);
        self.observe_lag(event.ts);
        let traceparent = route::frame_traceparent(frame).unwrap_or_else(route::new_traceparent);
        let out = self.event_message(&event, frame.to_vec(), &traceparent);
        let seq = self.outbox.push(out, Origin::Stream(id));
        self.publish(seq).await;
    }

    async fn on_job(&mut self, job: WebhookJob) {
        self.observe_lag(job.event.ts);
        let traceparent = job
            .traceparent
            .clone()
            .unwrap_or_else(route::new_traceparent);
        let out = self.event_message(&job.event, job.body, &traceparent);
        let seq = self.outbox.push(out, Origin::Webhook(Some(job.reply)));
        self.publish(seq).await;
    }

    fn event_message(&self, event: &Envelope, body: Vec<u8>, traceparent: &str) -> Outgoing {
        let live_ttl = if self.topology.is_live_only(&event.event_type) {
            self.topology.live_ttl
        } else {
            None
        };
        Outgoing {
            exchange: self.events_exchange.clone(),
            routing_key: event.event_type.clone(),
            properties: route::event_properties(
                event,
                live_ttl,
                traceparent,
                self.topology.lane_headers(event),
            ),
            body,
        }
    }

    async fn dead_letter(&mut self, body: Vec<u8>, error: &str, note: route::BodyNote) {
        let n = self.stats.invalid.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn_invalid.ready() {
            tracing::warn!(%error, invalid_total = n, "Invalid frame; dead-lettering it.");
        }
        let now_secs = now_ms() / 1000;
        let out = Outgoing {
            exchange: self.dead_letter_exchange.clone(),
            routing_key: self.events_exchange.to_string(),
            properties: route::invalid_properties(error, &self.events_exchange, note, now_secs),
            body,
        };
        let seq = self.outbox.push(out, Origin::Invalid);
        self.publish(seq).await;
    }

    /// Publishes slot `seq` if the broker is up; otherwise it waits for the reconnect.
    async fn publish(&mut self, seq: u64) {
        let Some(broker) = &self.broker else {
            self.dirty = true;
            return;
        };
        let Some(out) = self.outbox.mark_sent(seq) else {
            return;
        };
        let sent = broker
            .publisher
            .send(Message {
                exchange: &out.exchange,
                routing_key: &out.routing_key,
                body: &out.body,
                properties: out.properties.clone(),
                mandatory: true,
            })
            .await;
        match sent {
            Ok(confirm) => {
                Stats::add(&self.stats.published, 1);
                self.window.push((seq, Instant::now()), confirm);
            }
            Err(error) => self.broker_failed(&error.to_string()),
        }
    }

    async fn publish_due(&mut self) {
        self.dirty = false;
        for seq in self.outbox.due(Instant::now()) {
            // A blocked connection (memory or disk alarm) takes no publishes: writing would
            // park this loop on the socket, and with it confirms, acks and shutdown.
            if self
                .broker
                .as_ref()
                .is_none_or(|b| b.conn.status().blocked())
            {
                self.dirty = true;
                return;
            }
            self.publish(seq).await;
        }
        self.dirty |= self.outbox.has_waiting();
    }

    fn on_confirm(&mut self, (seq, sent): (u64, Instant), result: Result<(), AmqpError>) {
        if matches!(
            result,
            Ok(()) | Err(AmqpError::Returned { .. } | AmqpError::Nacked { .. })
        ) {
            let latency = &self.stats.latency.confirm;
            latency.observe(sent.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => {
                if self.outbox.confirm(seq) {
                    Stats::add(&self.stats.confirmed, 1);
                    self.since_flush += 1;
                }
            }
            Err(error @ AmqpError::Returned { .. }) => {
                let n = self.stats.unroutable.fetch_add(1, Ordering::Relaxed) + 1;
                if self.warn_unroutable.ready() {
                    // The topology's alternate exchange keeps unbound event types in
                    // `<events>.unrouted`; a return means it is missing or routes nowhere
                    // (its queue deleted or expired), or the ingress DLQ is gone.
                    tracing::warn!(%error, unroutable_total = n, "Publish matched no queue, not even the alternate exchange's <events>.unrouted (apply the topology again); dropped by the broker.");
                }
                if self.outbox.confirm(seq) {
                    Stats::add(&self.stats.confirmed, 1);
                    self.since_flush += 1;
                }
            }
            Err(error @ AmqpError::Nacked { .. }) => {
                let n = self.stats.nacked.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(delay) = self.outbox.nack(seq, Instant::now())
                    && self.warn_nacked.ready()
                {
                    tracing::warn!(
                        %error,
                        nacked_total = n,
                        retry_in_ms = delay.as_millis() as u64,
                        "Publish nacked; retrying in order."
                    );
                }
                self.dirty = true;
            }
            Err(error) => self.broker_failed(&error.to_string()),
        }
    }

    /// Now minus the event's own timestamp, at its first publish.
    fn observe_lag(&self, ts_ms: u64) {
        let lag = now_ms().saturating_sub(ts_ms) as f64 / 1000.0;
        self.stats.latency.event_lag.observe(lag);
    }

    /// Publishes the loop's state for `/metrics` and `/readyz`: two relaxed stores.
    fn report_state(&self) {
        let stats = &self.stats;
        stats
            .in_flight
            .store(self.outbox.len() as u64, Ordering::Relaxed);
        let subscribed = self.upstream.is_none() || self.ws.is_some();
        stats.ready.set(self.broker.is_some() && subscribed);
    }

    fn advance_cursor(&mut self) {
        if let Some(id) = self.outbox.pop_confirmed() {
            self.cursor = Some(id);
            self.dedup.raise_floor(id);
            self.stats.set_cursor(id);
            self.flush_cursor(false);
        }
    }

    /// Hands the cursor to the writer: on the timer, or once a window's worth has moved, so a
    /// crash replays at most about two windows.
    fn flush_cursor(&mut self, timer: bool) {
        if self.cursor == self.cursor_queued || !(timer || self.since_flush >= self.window_size) {
            return;
        }
        if let Some(tx) = &self.cursor_tx {
            tx.send_replace(self.cursor);
        }
        self.cursor_queued = self.cursor;
        self.since_flush = 0;
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
