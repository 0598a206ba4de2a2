//! The worker: consume one or more work queues with a bounded prefetch, run the handler, and
//! settle every delivery through [`decide`] and [`settle`]. Reconnects with backoff, re-subscribes
//! consumers the broker cancels, runs redelivered messages alone, and drains on shutdown.
//!
//! # Why redelivered messages run alone
//! A message that crashes the process (abort, OOM kill) is redelivered with `redelivered = true`.
//! Every message unacked at the moment of a crash also counts a delivery towards the quorum
//! queue's delivery limit, so a poison message running beside innocent ones would drag them
//! into the DLQ with it. A redelivered message is therefore handled only after the consumers are
//! paused and everything else in flight has settled: the next crash charges it alone.

mod decide;
pub mod handler;
mod settle;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicCancelOptions;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use decide::{Disposition, decide, defer};
pub use handler::{Context, Handler, HandlerError, HandlerResult};
pub use settle::{Settled, settle};

use crate::amqp::{self, AmqpUrl, Channel, Connection, Delivery, ErrorKind, Publisher, hdr};
use crate::backoff::Backoff;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::topology::{QueueSpec, Topology};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The broker.
    pub url: AmqpUrl,
    /// The topology the queues come from (retry tiers, attempts, DLX).
    pub topology: Topology,
    /// Queues to consume, as named in the topology file.
    pub queues: Vec<String>,
    /// Per-consumer prefetch; `None` uses each queue's `prefetch` from the topology.
    pub prefetch: Option<u16>,
    /// Handlers running at once, across all queues.
    pub concurrency: usize,
    /// How long in-flight handlers may run after a shutdown signal.
    pub drain_timeout: Duration,
}

/// Counters a worker keeps; cheap to read from another task.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries received.
    pub received: AtomicU64,
    /// Handler calls made.
    pub handled: AtomicU64,
    /// Messages acked after a successful handler.
    pub acked: AtomicU64,
    /// Messages sent to a retry tier.
    pub retried: AtomicU64,
    /// Messages sent to the dead-letter exchange.
    pub dead_lettered: AtomicU64,
    /// Messages nacked with requeue.
    pub requeued: AtomicU64,
    /// Broker (re)connections made.
    pub connections: AtomicU64,
    /// Handlers running now.
    pub in_flight: AtomicU64,
}

impl Stats {
    fn count(&self, settled: Settled) {
        let counter = match settled {
            Settled::Acked => &self.acked,
            Settled::Retried | Settled::Deferred => &self.retried,
            Settled::DeadLettered => &self.dead_lettered,
            Settled::Requeued => &self.requeued,
            Settled::Lost => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs a worker until `shutdown` is cancelled, then drains and returns.
pub async fn run<H: Handler>(
    settings: WorkerSettings,
    handler: H,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if settings.queues.is_empty() {
        return Err(Error::Usage("worker: give at least one queue with -q".into()));
    }
    let specs = settings
        .queues
        .iter()
        .map(|q| settings.topology.queue(q).map(|s| Arc::new(s.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let worker = Worker {
        handler: Arc::new(handler),
        specs,
        stats,
        dead_letter_exchange: Arc::from(settings.topology.dead_letter_exchange.as_str()),
        settings,
        shutdown,
    };
    let mut backoff = Backoff::reconnect();
    loop {
        match worker.session(&mut backoff).await {
            Ok(()) => return Ok(()),
            Err(error) if worker.shutdown.is_cancelled() => {
                tracing::warn!(%error, "Broker error during shutdown.");
                return Ok(());
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Broker session ended; reconnecting.");
                tokio::select! {
                    _ = worker.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

struct Worker<H> {
    handler: Arc<H>,
    specs: Vec<Arc<QueueSpec>>,
    stats: Arc<Stats>,
    dead_letter_exchange: Arc<str>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
}

/// What the merged consumer stream yields: a delivery from queue `i`, or queue `i`'s end.
// Deliveries are the common case; boxing them would allocate once per message.
#[allow(clippy::large_enum_variant)]
enum Item {
    Delivery(usize, lapin::Result<Delivery>),
    Ended(usize),
}

/// One connection pair's worth of state.
struct Session {
    consume_conn: Connection,
    publish_conn: Connection,
    publisher: Publisher,
    channels: Vec<Channel>,
    tags: Vec<String>,
    streams: SelectAll<BoxStream<'static, Item>>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    hard_stop: CancellationToken,
}

impl<H: Handler> Worker<H> {
    async fn session(&self, backoff: &mut Backoff) -> Result<(), Error> {
        let url = &self.settings.url;
        let consume_conn = amqp::connect(url, "worker", "consume").await?;
        let publish_conn = amqp::connect(url, "worker", "publish").await?;
        let publisher = Publisher::open(&publish_conn).await?;
        let mut s = Session {
            consume_conn,
            publish_conn,
            publisher,
            channels: Vec::new(),
            tags: Vec::new(),
            streams: SelectAll::new(),
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(self.settings.concurrency.max(1))),
            hard_stop: CancellationToken::new(),
        };
        for i in 0..self.specs.len() {
            self.subscribe(&mut s, i).await?;
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        backoff.connected();
        tracing::info!(
            queues = ?self.specs.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            concurrency = self.settings.concurrency,
            "Worker consuming."
        );

        let result = self.consume(&mut s).await;
        self.finish(&mut s, result.is_ok()).await;
        result
    }

    fn prefetch(&self, spec: &QueueSpec) -> u16 {
        self.settings.prefetch.unwrap_or(spec.prefetch)
    }

    /// Starts (or restarts) the consumer for queue `i`; QoS is set before `basic.consume`.
    async fn subscribe(&self, s: &mut Session, i: usize) -> Result<(), Error> {
        let spec = &self.specs[i];
        let tag = format!("warren-{}-{}-{}", amqp::identity(), spec.name, ulid::Ulid::generate());
        let (channel, consumer) =
            amqp::consume(&s.consume_conn, &spec.name, self.prefetch(spec), &tag).await?;
        let stream = consumer
            .map(move |d| Item::Delivery(i, d))
            .chain(stream::once(async move { Item::Ended(i) }))
            .boxed();
        s.streams.push(stream);
        if i < s.channels.len() {
            s.channels[i] = channel;
            s.tags[i] = tag;
        } else {
            s.channels.push(channel);
            s.tags.push(tag);
        }
        Ok(())
    }

    /// The main loop: hand deliveries to handler tasks until shutdown or a broker error.
    async fn consume(&self, s: &mut Session) -> Result<(), Error> {
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            let item = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = health.tick() => {
                    if !s.publish_conn.status().connected() {
                        return Err(Error::Other("the publishing connection was lost".into()));
                    }
                    continue;
                }
                item = s.streams.next() => item,
            };
            match item {
                Some(Item::Delivery(i, Ok(delivery))) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if delivery.redelivered {
                        self.isolate(s, i, delivery).await?;
                    } else {
                        self.dispatch(s, i, delivery).await;
                    }
                }
                Some(Item::Delivery(i, Err(error))) => {
                    return Err(Error::Other(format!(
                        "consumer of queue '{}' failed: {error}",
                        self.specs[i].name
                    )));
                }
                Some(Item::Ended(i)) => self.resubscribe(s, i).await?,
                None => return Err(Error::Other("no consumer is left".into())),
            }
        }
    }

    /// The broker cancelled a consumer (queue deleted, leader moved): subscribe again.
    async fn resubscribe(&self, s: &mut Session, i: usize) -> Result<(), Error> {
        if !s.consume_conn.status().connected() {
            return Err(Error::Other("the consuming connection was lost".into()));
        }
        let name = &self.specs[i].name;
        tracing::warn!(queue = %name, "Consumer cancelled by the broker; re-subscribing.");
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.subscribe(s, i).await {
                Ok(()) => {
                    tracing::info!(queue = %name, "Consumer re-subscribed.");
                    return Ok(());
                }
                Err(error) => {
                    if !s.consume_conn.status().connected() {
                        return Err(error);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(queue = %name, %error, retry_in_ms = delay.as_millis() as u64, "Re-subscribe failed.");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits for a concurrency permit, then runs the delivery in a tracked task.
    async fn dispatch(&self, s: &mut Session, i: usize, delivery: Delivery) {
        let permit = tokio::select! {
            p = s.permits.clone().acquire_owned() => p.ok(),
            _ = self.shutdown.cancelled() => None,
        };
        let Some(permit) = permit else {
            self.settle_requeue(&delivery).await;
            return;
        };
        let job = self.job(s, i);
        s.tracker.spawn(job.run(delivery, Some(permit)));
    }

    fn job(&self, s: &Session, i: usize) -> Job<H> {
        Job {
            handler: self.handler.clone(),
            spec: self.specs[i].clone(),
            publisher: s.publisher.clone(),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            stats: self.stats.clone(),
            hard_stop: s.hard_stop.clone(),
        }
    }

    /// Runs a redelivered message alone: pause every consumer, let everything else settle,
    /// then handle the suspects one by one, then resume.
    async fn isolate(&self, s: &mut Session, first_queue: usize, first: Delivery) -> Result<(), Error> {
        tracing::debug!(queue = %self.specs[first_queue].name, "Redelivered message; running it alone.");
        let mut suspects = VecDeque::from([(first_queue, first)]);
        self.pause_all(s, &mut suspects).await?;
        self.wait_in_flight(s).await;
        while let Some((i, delivery)) = suspects.pop_front() {
            if self.shutdown.is_cancelled() {
                self.settle_requeue(&delivery).await;
                continue;
            }
            self.job(s, i).run(delivery, None).await;
        }
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        for i in 0..self.specs.len() {
            self.subscribe(s, i).await?;
        }
        Ok(())
    }

    /// Cancels every consumer and takes what they had buffered: redelivered messages join
    /// `suspects`, the rest are dispatched normally.
    async fn pause_all(
        &self,
        s: &mut Session,
        suspects: &mut VecDeque<(usize, Delivery)>,
    ) -> Result<(), Error> {
        for (channel, tag) in s.channels.iter().zip(&s.tags) {
            amqp::timed(
                || format!("cancel consumer {tag}"),
                channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await?;
        }
        // Each consumer's stream yields its buffered deliveries, then ends.
        while let Some(item) = s.streams.next().await {
            match item {
                Item::Delivery(i, Ok(d)) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if d.redelivered {
                        suspects.push_back((i, d));
                    } else {
                        self.dispatch(s, i, d).await;
                    }
                }
                Item::Delivery(_, Err(error)) => {
                    return Err(Error::Other(format!("consumer failed while pausing: {error}")));
                }
                Item::Ended(_) => {}
            }
        }
        Ok(())
    }

    async fn wait_in_flight(&self, s: &Session) {
        s.tracker.close();
        tokio::select! {
            _ = s.tracker.wait() => {}
            _ = self.shutdown.cancelled() => {}
        }
        s.tracker.reopen();
    }

    async fn settle_requeue(&self, delivery: &Delivery) {
        self.stats.count(settle::requeue(delivery).await);
    }

    /// Stops consuming, drains in-flight handlers up to the deadline, requeues the rest and
    /// closes both connections.
    async fn finish(&self, s: &mut Session, graceful: bool) {
        if graceful && s.consume_conn.status().connected() {
            for (channel, tag) in s.channels.iter().zip(&s.tags) {
                let _ = amqp::timed(
                    || "cancel consumer",
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                )
                .await;
            }
            // Whatever the consumers had buffered goes back to the queue.
            let leftovers = tokio::time::timeout(Duration::from_secs(5), async {
                let mut n = 0u64;
                while let Some(item) = s.streams.next().await {
                    if let Item::Delivery(_, Ok(d)) = item {
                        self.settle_requeue(&d).await;
                        n += 1;
                    }
                }
                n
            })
            .await
            .unwrap_or(0);
            if leftovers > 0 {
                tracing::info!(requeued = leftovers, "Requeued prefetched messages.");
            }
        }
        s.tracker.close();
        let drained = tokio::time::timeout(self.settings.drain_timeout, s.tracker.wait()).await;
        if drained.is_err() {
            tracing::warn!(
                still_running = s.tracker.len(),
                "Drain deadline passed; requeueing in-flight messages."
            );
            s.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.tracker.wait()).await;
        }
        for channel in &s.channels {
            if channel.status().connected() {
                let _ = amqp::timed(|| "close channel", channel.close(200, "bye".into())).await;
            }
        }
        amqp::close(&s.publish_conn).await;
        amqp::close(&s.consume_conn).await;
        if graceful {
            tracing::info!("Worker stopped cleanly.");
        }
    }
}

/// Everything one delivery's task needs.
struct Job<H> {
    handler: Arc<H>,
    spec: Arc<QueueSpec>,
    publisher: Publisher,
    dead_letter_exchange: Arc<str>,
    stats: Arc<Stats>,
    hard_stop: CancellationToken,
}

impl<H: Handler> Job<H> {
    async fn run(self, delivery: Delivery, permit: Option<OwnedSemaphorePermit>) {
        let now = now_ms();
        let attempt = amqp::header_u32(&delivery.properties, hdr::ATTEMPT);
        let disposition = match Envelope::parse(&delivery.data) {
            Err(error) => Disposition::DeadLetter {
                kind: ErrorKind::Invalid,
                reason: error.to_string(),
                attempt: attempt + 1,
            },
            Ok(event) => {
                let not_before = amqp::header_u64(&delivery.properties, hdr::NOT_BEFORE);
                match defer(not_before, &self.spec, now) {
                    Some(d) => d,
                    None => match self.call(&event, &delivery, attempt).await {
                        Some(result) => decide(&result, attempt, &self.spec, now_ms()),
                        None => Disposition::Requeue,
                    },
                }
            }
        };
        let settled = settle(
            &delivery,
            &disposition,
            &self.spec,
            &self.publisher,
            &self.dead_letter_exchange,
        )
        .await;
        self.stats.count(settled);
        drop(permit);
    }

    /// Runs the handler, turning a panic into a transient failure. `None` when the drain
    /// deadline stopped it.
    async fn call(&self, event: &Envelope, delivery: &Delivery, attempt: u32) -> Option<HandlerResult> {
        let ctx = Context {
            queue: self.spec.name.clone(),
            attempt,
            redelivered: delivery.redelivered,
            message_ttl: self.spec.message_ttl,
        };
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let handled = AssertUnwindSafe(self.handler.handle(event, &ctx)).catch_unwind();
        let result = tokio::select! {
            r = handled => Some(r.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(queue = %self.spec.name, event_id = %event.event_id, panic = %what, "Handler panicked.");
                Err(HandlerError::transient(format!("handler panicked: {what}")))
            })),
            _ = self.hard_stop.cancelled() => None,
        };
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
