//! One broker session of a worker: a consuming and a publishing connection, one lane per queue,
//! and the loop that feeds deliveries to jobs. A lane is re-subscribed on its own when the
//! broker cancels its consumer, and switches between careful and normal mode on its own.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, FuturesUnordered, SelectAll, Stream};
use futures_util::{Future, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Worker;
use super::handler::Handler;
use super::job::{InFlight, Job};
use super::settle;
use crate::amqp::{self, BatchPublisher, Channel, Connection, Inbound, Settler};
use crate::backoff::Backoff;
use crate::error::Error;

/// Publishing channels per worker for retries and dead letters, each pipelined by its own task
/// (see `amqp::batch`): more broker-side parallelism than one, and fewer confirm frames than
/// dozens.
const PUBLISH_CHANNELS: usize = 4;

/// How often the connections' status is checked: a connection lapin has found dead ends the
/// session within this (the consuming one usually sooner, through its consumer stream).
const HEALTH_CHECK: Duration = Duration::from_millis(250);

/// What the merged consumer streams yield: a delivery from lane `i`, or lane `i`'s end.
// Deliveries are the common case; boxing them would allocate once per message.
#[allow(clippy::large_enum_variant)]
enum Item {
    Delivery(usize, lapin::Result<Inbound>),
    Ended(usize),
}

enum State {
    /// Consuming; `careful` = prefetch 1 and redelivered messages run alone.
    Active { careful: bool },
    /// Consumer cancelled; taking what it had buffered before resubscribing.
    Pausing {
        to_careful: bool,
        suspects: VecDeque<Inbound>,
    },
    /// No consumer; a resubscribe is scheduled.
    Down,
}

struct Lane {
    channel: Option<Channel>,
    /// Settles the deliveries of `channel`, every consumer's on it.
    settler: Option<Arc<Settler>>,
    tag: String,
    state: State,
    backoff: Backoff,
    /// Single-active-consumer queues run one message at a time, in order, on their own task.
    sequential: Option<mpsc::UnboundedSender<Inbound>>,
}

// `Sync` as well as `Send`: the session is borrowed across awaits, and `worker::run` must be a
// `Send` future that users can `tokio::spawn`.
type Timer = Pin<Box<dyn Future<Output = usize> + Send + Sync>>;
type LaneStream = Pin<Box<dyn Stream<Item = Item> + Send + Sync>>;

pub(super) struct Session<'w, H> {
    w: &'w Worker<H>,
    consume_conn: Connection,
    publish_conn: Connection,
    publisher: BatchPublisher,
    lanes: Vec<Lane>,
    streams: SelectAll<LaneStream>,
    resubscribes: FuturesUnordered<Timer>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    hard_stop: CancellationToken,
    in_flight: Arc<InFlight>,
}

impl<'w, H: Handler> Session<'w, H> {
    pub async fn open(w: &'w Worker<H>) -> Result<Self, Error> {
        let url = &w.settings.url;
        let consume_conn = amqp::connect(url, "worker", "consume").await?;
        let publish_conn = amqp::connect(url, "worker", "publish").await?;
        let publisher = BatchPublisher::open(&publish_conn, PUBLISH_CHANNELS).await?;
        let mut s = Session {
            w,
            consume_conn,
            publish_conn,
            publisher,
            lanes: Vec::new(),
            streams: SelectAll::new(),
            resubscribes: FuturesUnordered::new(),
            tracker: TaskTracker::new(),
            permits: w.permits.clone(),
            hard_stop: CancellationToken::new(),
            in_flight: Arc::new(InFlight::default()),
        };
        for i in 0..w.specs.len() {
            let sequential = w.specs[i]
                .single_active_consumer
                .then(|| s.start_sequential(i));
            s.lanes.push(Lane {
                channel: None,
                settler: None,
                tag: String::new(),
                state: State::Down,
                backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
                sequential,
            });
            s.subscribe(i, true).await?;
        }
        Ok(s)
    }

    /// Runs until shutdown (`Ok`) or until a connection is lost (`Err`), then drains.
    pub async fn run(mut self) -> Result<(), Error> {
        let result = self.consume().await;
        self.w.metrics.ready.set(false);
        self.finish(result.is_ok()).await;
        let channels: Vec<Channel> = self
            .lanes
            .iter()
            .filter_map(|l| l.channel.clone())
            .collect();
        let close = async move {
            for channel in &channels {
                amqp::close_channel(channel).await;
            }
            amqp::close(&self.publish_conn).await;
            amqp::close(&self.consume_conn).await;
        };
        if result.is_ok() {
            close.await;
            tracing::info!("Worker stopped cleanly.");
        } else {
            // A connection is known dead, and the other may be half-open too (a black hole
            // takes both): a polite close would wait on it. Close in the background, end now.
            tokio::spawn(close);
        }
        result
    }

    fn job(&self, i: usize) -> Job<H> {
        Job {
            handler: self.w.handler.clone(),
            spec: self.w.specs[i].clone(),
            publisher: self.publisher.clone(),
            dead_letter_exchange: self.w.dead_letter_exchange.clone(),
            metrics: self.w.queue_metrics[i].clone(),
            handler_timeout: self.w.settings.handler_timeout,
            hard_stop: self.hard_stop.clone(),
            in_flight: self.in_flight.clone(),
            live: self.w.live.clone(),
        }
    }

    /// The task that runs a single-active-consumer queue's messages one by one, in order.
    fn start_sequential(&self, i: usize) -> mpsc::UnboundedSender<Inbound> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Inbound>();
        let job = self.job(i);
        let shutdown = self.w.shutdown.clone();
        let metrics = self.w.queue_metrics[i].clone();
        self.tracker.spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => None,
                    d = rx.recv() => d,
                };
                let Some(delivery) = next else { break };
                job.clone().run(delivery, None).await;
            }
            rx.close();
            while let Ok(delivery) = rx.try_recv() {
                metrics.settled(settle::requeue(&delivery).await);
            }
        });
        tx
    }

    /// Starts lane `i`'s consumer on its channel, opening the channel if needed. QoS is set
    /// before `basic.consume`; careful mode uses prefetch 1 (single-active-consumer queues never
    /// switch: cancelling would hand their slot to a standby mid-message).
    async fn subscribe(&mut self, i: usize, careful: bool) -> Result<(), Error> {
        let spec = &self.w.specs[i];
        let careful = careful && !spec.single_active_consumer;
        let lane = &mut self.lanes[i];
        if lane
            .channel
            .as_ref()
            .is_none_or(|c| !c.status().connected())
        {
            let channel = amqp::channel(&self.consume_conn).await?;
            lane.settler = Some(Settler::new(channel.clone()));
            lane.channel = Some(channel);
        }
        let (Some(channel), Some(on)) = (lane.channel.as_ref(), lane.settler.clone()) else {
            return Err(Error::Other("no consuming channel".into()));
        };
        let prefetch = if careful {
            1
        } else {
            self.w.settings.prefetch.unwrap_or(spec.prefetch)
        };
        let tag = format!(
            "warren-{}-{}-{}",
            amqp::identity(),
            spec.name,
            ulid::Ulid::generate()
        );
        let consumer = amqp::consume(channel, &spec.name, prefetch, &tag).await?;
        // Each delivery keeps the channel it came on, to be settled there.
        self.streams.push(Box::pin(
            consumer
                .map(move |d| Item::Delivery(i, d.map(|d| Inbound::new(d, on.clone()))))
                .chain(stream::once(async move { Item::Ended(i) })),
        ));
        lane.tag = tag;
        lane.state = State::Active { careful };
        lane.backoff.connected();
        Ok(())
    }

    async fn consume(&mut self) -> Result<(), Error> {
        let mut health = tokio::time::interval(HEALTH_CHECK);
        loop {
            let item = tokio::select! {
                biased;
                _ = self.w.shutdown.cancelled() => return Ok(()),
                _ = health.tick() => {
                    if !self.publish_conn.status().connected() || !self.publisher.is_open() {
                        return Err(Error::Other("the publishing connection or channel was lost".into()));
                    }
                    if !self.consume_conn.status().connected() {
                        return Err(Error::Other("the consuming connection was lost".into()));
                    }
                    continue;
                }
                Some(i) = self.resubscribes.next() => {
                    self.resubscribe(i).await?;
                    continue;
                }
                item = self.streams.next() => item,
            };
            match item {
                Some(Item::Delivery(i, Ok(delivery))) => self.on_delivery(i, delivery).await?,
                Some(Item::Delivery(i, Err(error))) => {
                    return Err(Error::Other(format!(
                        "consumer of queue '{}' failed: {error}",
                        self.w.specs[i].name
                    )));
                }
                Some(Item::Ended(i)) => self.on_ended(i).await?,
                // Every lane is down; the resubscribe timers drive the loop.
                None => {
                    tokio::select! {
                        _ = self.w.shutdown.cancelled() => return Ok(()),
                        Some(i) = self.resubscribes.next() => self.resubscribe(i).await?,
                    }
                }
            }
        }
    }

    async fn on_delivery(&mut self, i: usize, delivery: Inbound) -> Result<(), Error> {
        if let Some(tx) = &self.lanes[i].sequential {
            if let Err(unsent) = tx.send(delivery) {
                self.requeue(i, &unsent.0).await;
            }
            return Ok(());
        }
        match &mut self.lanes[i].state {
            State::Active { careful: true } if delivery.redelivered => {
                self.run_alone(i, delivery).await;
            }
            State::Active { careful: true } => {
                // The backlog of returned messages is through: back to full speed.
                self.dispatch(i, delivery).await;
                self.pause(i, false, VecDeque::new()).await?;
            }
            State::Active { careful: false } if delivery.redelivered => {
                tracing::info!(queue = %self.w.specs[i].name, "Redelivered messages; running them one at a time.");
                self.pause(i, true, VecDeque::from([delivery])).await?;
            }
            State::Pausing { suspects, .. } if delivery.redelivered => suspects.push_back(delivery),
            _ => self.dispatch(i, delivery).await,
        }
        Ok(())
    }

    /// Cancels lane `i`'s consumer; its buffered deliveries still arrive, then `Ended(i)`. If
    /// the cancel fails, the suspects are requeued before the error ends the session: nothing
    /// taken from the broker is left unsettled.
    async fn pause(
        &mut self,
        i: usize,
        to_careful: bool,
        suspects: VecDeque<Inbound>,
    ) -> Result<(), Error> {
        if let Some(channel) = &self.lanes[i].channel
            && let Err(error) = amqp::cancel(channel, &self.lanes[i].tag).await
        {
            for delivery in &suspects {
                self.requeue(i, delivery).await;
            }
            return Err(error.into());
        }
        self.lanes[i].state = State::Pausing {
            to_careful,
            suspects,
        };
        Ok(())
    }

    async fn on_ended(&mut self, i: usize) -> Result<(), Error> {
        match std::mem::replace(&mut self.lanes[i].state, State::Down) {
            State::Pausing {
                to_careful,
                mut suspects,
            } => {
                while let Some(delivery) = suspects.pop_front() {
                    self.run_alone(i, delivery).await;
                }
                if self.w.shutdown.is_cancelled() {
                    return Ok(());
                }
                if let Err(error) = self.subscribe(i, to_careful).await {
                    self.schedule_resubscribe(i, &error)?;
                }
            }
            State::Active { .. } => {
                tracing::warn!(queue = %self.w.specs[i].name, "Consumer cancelled by the broker; re-subscribing.");
                self.resubscribes.push(Box::pin(async move { i }));
            }
            State::Down => {}
        }
        Ok(())
    }

    async fn resubscribe(&mut self, i: usize) -> Result<(), Error> {
        if !matches!(self.lanes[i].state, State::Down) {
            return Ok(());
        }
        match self.subscribe(i, true).await {
            Ok(()) => {
                tracing::info!(queue = %self.w.specs[i].name, "Consumer re-subscribed.");
                Ok(())
            }
            Err(error) => self.schedule_resubscribe(i, &error),
        }
    }

    /// Retries lane `i` later, unless the connection itself is gone (then the session ends).
    fn schedule_resubscribe(&mut self, i: usize, error: &Error) -> Result<(), Error> {
        if !self.consume_conn.status().connected() {
            return Err(Error::Other(format!(
                "the consuming connection was lost: {error}"
            )));
        }
        let delay = self.lanes[i].backoff.next_delay();
        tracing::warn!(queue = %self.w.specs[i].name, %error, retry_in_ms = delay.as_millis() as u64, "Re-subscribe failed.");
        self.resubscribes.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            i
        }));
        Ok(())
    }

    /// Waits for a concurrency permit, then runs the delivery in a tracked task.
    async fn dispatch(&mut self, i: usize, delivery: Inbound) {
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p.ok(),
            _ = self.w.shutdown.cancelled() => None,
        };
        let Some(permit) = permit else {
            self.requeue(i, &delivery).await;
            return;
        };
        let job = self.job(i);
        self.tracker.spawn(job.run(delivery, Some(permit)));
    }

    /// Runs one delivery with nothing else in flight, and waits for it to settle.
    async fn run_alone(&mut self, i: usize, delivery: Inbound) {
        self.wait_idle().await;
        if self.w.shutdown.is_cancelled() {
            self.requeue(i, &delivery).await;
            return;
        }
        let job = self.job(i);
        self.tracker.spawn(job.run(delivery, None));
        self.wait_idle().await;
    }

    async fn wait_idle(&self) {
        tokio::select! {
            _ = self.in_flight.idle() => {}
            _ = self.w.shutdown.cancelled() => {}
        }
    }

    async fn requeue(&self, i: usize, delivery: &Inbound) {
        self.w.queue_metrics[i].settled(settle::requeue(delivery).await);
    }

    /// Stops consuming, requeues what was prefetched, and drains in-flight handlers up to the
    /// deadline (at once if the connection is gone: their acks could not be sent).
    async fn finish(&mut self, graceful: bool) {
        let connected = self.consume_conn.status().connected();
        if graceful && connected {
            // A consumer that cannot be cancelled would keep delivering, and requeueing each
            // delivery would charge it against the quorum delivery limit, over and over:
            // close its channel instead (the broker requeues what the channel holds, once).
            let mut closed = vec![false; self.lanes.len()];
            for (i, lane) in self.lanes.iter().enumerate() {
                if let (Some(channel), State::Active { .. }) = (&lane.channel, &lane.state)
                    && let Err(error) = amqp::cancel(channel, &lane.tag).await
                {
                    tracing::warn!(queue = %self.w.specs[i].name, %error, "Cannot cancel the consumer; closing its channel.");
                    amqp::close_channel(channel).await;
                    closed[i] = true;
                }
            }
            let mut requeued = 0u64;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(item) = self.streams.next().await {
                    // Deliveries of a closed channel cannot be settled; the broker has them.
                    if let Item::Delivery(i, Ok(d)) = item
                        && !closed[i]
                    {
                        self.requeue(i, &d).await;
                        requeued += 1;
                    }
                }
            })
            .await;
            for i in 0..self.lanes.len() {
                if let State::Pausing { suspects, .. } =
                    std::mem::replace(&mut self.lanes[i].state, State::Down)
                {
                    for d in suspects {
                        self.requeue(i, &d).await;
                        requeued += 1;
                    }
                }
            }
            if requeued > 0 {
                tracing::info!(requeued, "Requeued prefetched messages.");
            }
        }
        for lane in &mut self.lanes {
            lane.sequential = None;
        }
        self.tracker.close();
        if !connected {
            self.hard_stop.cancel();
        }
        let deadline = if connected {
            self.w.settings.drain_timeout
        } else {
            Duration::ZERO
        };
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            if connected {
                tracing::warn!(
                    still_running = self.in_flight_count(),
                    "Drain deadline passed; requeueing in-flight messages."
                );
            }
            self.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
    }

    fn in_flight_count(&self) -> usize {
        self.tracker.len()
    }
}
