//! The bridge: upstream WebSocket and webhook ingress onto the topic exchange, losing nothing.
//!
//! Every frame is validated; a valid event is published persistent and `mandatory` with the
//! wire contract's properties, an invalid frame goes to the dead-letter exchange as `invalid`
//! with its raw bytes. Confirms are pipelined through a bounded window (the [`outbox`]); the
//! resume cursor moves only past the confirmed prefix of the stream, is persisted atomically,
//! and is what the bridge resumes from after any reconnect or restart.
//!
//! # Oversized and undecodable frames
//! Envelopes are limited to 1 MiB. The WebSocket layer reads frames up to
//! [`upstream::HARD_FRAME_LIMIT`] (16 MiB); a frame between the two is dead-lettered with its
//! first 64 KiB and its original size in `x-warren-original-size`, and the stream goes on.
//! The 1 MiB check is after the read on purpose: a socket limit of 1 MiB would fail the
//! connection on such a frame, and an upstream replaying it after the resume would loop (see
//! [`upstream::HARD_FRAME_LIMIT`], which also bounds memory per connection).
//! A frame over the hard limit, or a text frame that is not UTF-8 (an RFC 6455 violation the
//! WebSocket layer fails the connection on, before the bytes reach us), is recorded in the
//! dead-letter queue as `invalid` with the decoder's error, an empty body and
//! `x-warren-body-absent` saying why, and the bridge reconnects with `resumeFrom`. A stray
//! malformed frame is not replayed, so the stream goes on. One the upstream stores and replays
//! after every resume would fail each connection again, at the reconnect backoff's pace (its
//! ceiling grows to 60 s), logged and recorded each time: the bridge cannot skip it
//! without its eventId, and skipping blind could skip a real event.
//!
//! # Layout
//! - [`pump`]: the loop: read, validate, publish, confirm, cursor, reconnects, shutdown.
//! - [`outbox`]: pending publishes in stream order; the cursor is their confirmed prefix.
//! - [`route`]: event → message properties and headers; invalid frame → dead letter.
//! - [`cursor`]: the cursor file (write, fsync, rename, fsync the directory).
//! - [`dedup`]: the eventId window that drops replays and duplicates.
//! - [`upstream`]: WebSocket connect, bearer handshake, subscribe with `resumeFrom`.
//! - [`ingress`] and [`webhook`]: the webhook HTTP endpoint and its signature checks.
//! - [`metrics`]: `--metrics-listen`: the counters, gauges and histograms below, for Prometheus.

pub mod cursor;
pub mod dedup;
pub mod ingress;
pub mod metrics;
pub mod outbox;
mod pump;
pub mod route;
pub mod upstream;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use ulid::Ulid;

pub use ingress::WebhookSettings;
pub use metrics::BridgeMetrics;
pub use upstream::UpstreamSettings;

use crate::amqp::AmqpUrl;
use crate::error::Error;
use crate::topology::Topology;

/// A market feed ticks many times a second; half a minute without an event is a stuck producer.
pub const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the bridge runs.
#[derive(Debug)]
pub struct BridgeSettings {
    /// The broker.
    pub amqp_url: AmqpUrl,
    /// Where the events exchange, the dead-letter exchange and live-only types come from.
    pub topology: Topology,
    /// The upstream WebSocket; `None` runs webhook ingress only.
    pub upstream: Option<UpstreamSettings>,
    /// Webhook ingress; `None` disables it.
    pub webhook: Option<WebhookSettings>,
    /// The resume cursor file; `None` keeps the cursor in memory only.
    pub cursor_file: Option<PathBuf>,
    /// Publishes awaiting confirms at most (and frames held in memory at most).
    pub confirm_window: usize,
    /// Deadline for the TCP/TLS/WebSocket handshake.
    pub connect_timeout: Duration,
    /// How often to ping the upstream.
    pub ping_interval: Duration,
    /// No frame for this long means the connection is dead: reconnect.
    pub idle_timeout: Duration,
    /// No event for this long (pongs do not count) means the upstream is silent: warn,
    /// resubscribe from the cursor, report not ready until events flow. Zero turns it off.
    pub silence_timeout: Duration,
    /// How often the cursor is persisted (also every `confirm_window` events, and on shutdown).
    pub cursor_flush_interval: Duration,
    /// How long shutdown waits for outstanding confirms.
    pub shutdown_timeout: Duration,
}

impl BridgeSettings {
    /// Settings with the documented defaults for everything but the broker and topology.
    pub fn new(amqp_url: AmqpUrl, topology: Topology) -> Self {
        Self {
            amqp_url,
            topology,
            upstream: None,
            webhook: None,
            cursor_file: None,
            confirm_window: 256,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            cursor_flush_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters the bridge keeps; cheap to read from another task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames read from the upstream.
    pub received: AtomicU64,
    /// Valid upstream events, not duplicates, handed to the publisher.
    pub accepted: AtomicU64,
    /// Publishes sent, republishes included.
    pub published: AtomicU64,
    /// Publishes confirmed by the broker (events, dead letters, webhooks).
    pub confirmed: AtomicU64,
    /// Frames dead-lettered as invalid.
    pub invalid: AtomicU64,
    /// Confirmed publishes that matched no queue.
    pub unroutable: AtomicU64,
    /// Publishes the broker nacked (each is retried).
    pub nacked: AtomicU64,
    /// Replayed or duplicated frames dropped by the eventId window.
    pub duplicates: AtomicU64,
    /// Upstream connections made.
    pub upstream_connects: AtomicU64,
    /// Times the upstream was silent past the silence deadline (each one a resubscribe).
    pub upstream_silences: AtomicU64,
    /// When the last upstream event (any data frame) arrived, epoch ms; until the first, when
    /// the bridge first subscribed (0: never subscribed).
    pub last_event_ms: AtomicU64,
    /// Broker connections made.
    pub broker_connects: AtomicU64,
    /// Webhook events published and confirmed.
    pub webhooks_published: AtomicU64,
    /// Webhook deliveries answered as duplicates.
    pub webhooks_duplicate: AtomicU64,
    /// Webhook requests refused (signature, timestamp, body).
    pub webhooks_rejected: AtomicU64,
    /// The cursor's eventId time, epoch ms (0: no cursor yet).
    pub cursor_ms: AtomicU64,
    /// When the cursor was last persisted, epoch ms.
    pub cursor_persisted_at_ms: AtomicU64,
    /// Publishes not yet confirmed (the outbox length).
    pub in_flight: AtomicU64,
    /// Broker connected and, with an upstream, subscribed: what `/readyz` reports.
    pub ready: Arc<crate::metrics::Readiness>,
    /// Confirm latency and event lag.
    pub latency: metrics::Latencies,
    cursor: std::sync::Mutex<Option<Ulid>>,
}

impl Stats {
    /// The cursor: the last eventId confirmed together with everything before it.
    pub fn cursor(&self) -> Option<Ulid> {
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_cursor(&self, id: Ulid) {
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        self.cursor_ms.store(id.timestamp_ms(), Ordering::Relaxed);
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs the bridge until `shutdown` is cancelled; then stops reading, waits for outstanding
/// confirms up to the deadline, persists the cursor and returns.
pub async fn run(
    settings: BridgeSettings,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if settings.upstream.is_none() && settings.webhook.is_none() {
        return Err(Error::Usage(
            "bridge: give --url, --webhook-listen, or both".into(),
        ));
    }
    if let Some(u) = &settings.upstream {
        upstream::check_topics(&u.topics).map_err(Error::Usage)?;
        // wss:// needs a process-wide TLS provider; a second install is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    pump::Pump::start(settings, stats, shutdown)
        .await?
        .run()
        .await
}
