//! One lane this worker owns: a consumer on the lane's queue, on a channel of its own, that
//! runs the messages one at a time, in order. A failure holds the lane: transient failures
//! are retried in process (the queue's `retry_delays`, at least a 429's `Retry-After`) until
//! `max_attempts`, then dead-lettered; the next message waits. Releasing the lane, or shutting
//! down, lets the message in hand finish, then closes the channel: the broker puts back what
//! was not started, in order, ahead of the lane's later messages, for the next owner.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::super::decide::{Disposition, decide};
use super::super::handler::{Context, Handler, HandlerError};
use super::super::job::{LiveOnly, call_handler, now_ms};
use super::super::metrics::QueueMetrics;
use super::super::settle::settle;
use crate::amqp::{self, BatchPublisher, Channel, ErrorKind, Inbound, Settler, hdr};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::topology::QueueSpec;

/// What a lane's task needs; shared by all the lanes of one queue in a session.
pub(super) struct LaneShared<H> {
    pub handler: Arc<H>,
    pub publisher: BatchPublisher,
    pub dead_letter_exchange: Arc<str>,
    pub handler_timeout: Duration,
    /// Live-only event types and their TTL: the age past which a handler sees them as stale.
    pub live: Arc<LiveOnly>,
    /// Cancelled at the drain deadline: handlers still running are abandoned.
    pub hard_stop: CancellationToken,
    /// The worker's `--concurrency`, shared with its other queues: a lane waits for a permit
    /// before each handler call, so a worker that owns more lanes than that runs them in turn.
    pub permits: Arc<Semaphore>,
}

/// Why a lane's task ended.
#[derive(Debug)]
pub(super) enum LaneEnd {
    /// Released or shut down, with nothing left unsettled but what the channel close returns.
    Released,
    /// The broker cancelled the consumer or closed the channel.
    Lost(String),
}

/// Runs lane `spec` (the lane's own queue spec) until `release` is cancelled or the broker
/// ends the consumer. `generation` counts this worker's lane acquisitions, for handlers that
/// keep per-key state (the trader reloads positions when it changes).
pub(super) async fn run<H: Handler>(
    shared: Arc<LaneShared<H>>,
    channel: Channel,
    spec: Arc<QueueSpec>,
    metrics: QueueMetrics,
    release: CancellationToken,
    generation: u64,
) -> Result<LaneEnd, Error> {
    let tag = format!("warren-{}-{}", amqp::identity(), spec.name);
    let mut consumer = amqp::consume(&channel, &spec.name, spec.prefetch, &tag).await?;
    let on = Settler::new(channel.clone());
    let end = loop {
        let next = tokio::select! {
            biased;
            _ = release.cancelled() => break LaneEnd::Released,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => Inbound::new(d, on.clone()),
            Some(Err(error)) => break LaneEnd::Lost(error.to_string()),
            None => break LaneEnd::Lost("the broker cancelled the consumer".into()),
        };
        let mut delivery = delivery;
        if !handle(
            &shared,
            &spec,
            &metrics,
            &mut delivery,
            &release,
            generation,
        )
        .await
        {
            break LaneEnd::Released;
        }
    };
    // Deliveries buffered but not started go back to the queue, in order, with the channel.
    drop(consumer);
    amqp::close_channel(&channel).await;
    Ok(end)
}

/// Handles one delivery to the end: settled, or (false) left for the broker to put back
/// because the lane is being released or the worker stopped during a retry's wait.
async fn handle<H: Handler>(
    shared: &LaneShared<H>,
    spec: &QueueSpec,
    metrics: &QueueMetrics,
    delivery: &mut Inbound,
    release: &CancellationToken,
    generation: u64,
) -> bool {
    let mut attempt = amqp::header_u32(&delivery.properties, hdr::ATTEMPT);
    let event = match Envelope::parse(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            let invalid = Disposition::DeadLetter {
                kind: ErrorKind::Invalid,
                reason: error.to_string(),
                attempt: attempt.saturating_add(1),
            };
            finish(shared, spec, metrics, delivery, &invalid).await;
            return true;
        }
    };
    let message_ttl = shared.live.ttl(spec, &event.event_type);
    loop {
        let ctx = Context {
            queue: spec.name.clone(),
            attempt,
            redelivered: delivery.redelivered,
            returned_from: None,
            message_ttl,
            lane_generation: Some(generation),
        };
        let permit = tokio::select! {
            p = shared.permits.clone().acquire_owned() => p.ok(),
            _ = release.cancelled() => None,
        };
        let Some(held) = permit else {
            return false;
        };
        let Some(result) = call_handler(
            &*shared.handler,
            &event,
            &ctx,
            shared.handler_timeout,
            &shared.hard_stop,
            metrics,
        )
        .await
        else {
            return false;
        };
        drop(held);
        let wait = match decide(&result, attempt, spec, now_ms()) {
            Disposition::Retry {
                delay,
                attempt: next,
                not_before_ms,
                ..
            } => {
                attempt = next;
                let until = not_before_ms.map_or(Duration::ZERO, |nb| {
                    Duration::from_millis(nb.saturating_sub(now_ms()))
                });
                delay.max(until)
            }
            // Unavailable: wait without counting an attempt.
            Disposition::Defer { delay } => delay,
            Disposition::Requeue => Duration::from_secs(1),
            done => {
                finish(shared, spec, metrics, delivery, &done).await;
                return true;
            }
        };
        if let Err(HandlerError::Transient { reason, .. } | HandlerError::Unavailable(reason)) =
            &result
        {
            tracing::debug!(lane = %spec.name, event_id = %event.event_id, attempt, wait_ms = wait.as_millis() as u64, %reason, "Holding the lane for a retry.");
        }
        metrics.lane_waits.inc();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = release.cancelled() => return false,
        }
    }
}

async fn finish<H>(
    shared: &LaneShared<H>,
    spec: &QueueSpec,
    metrics: &QueueMetrics,
    delivery: &mut Inbound,
    disposition: &Disposition,
) {
    let settled = settle(
        delivery,
        disposition,
        spec,
        &shared.publisher,
        &shared.dead_letter_exchange,
    )
    .await;
    metrics.settled(settled);
}
