//! One delivery's life: parse, check staleness and not-before, run the handler (panics and
//! timeouts become transient failures), decide, settle.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::decide::{Disposition, decide, defer};
use super::handler::{Context, EffectStatus, Handler, HandlerError, HandlerResult};
use super::metrics::QueueMetrics;
use super::settle::settle;
use crate::amqp::{self, BatchPublisher, ErrorKind, Inbound, hdr};
use crate::envelope::Envelope;
use crate::topology::QueueSpec;

/// Everything one delivery's task needs.
pub(super) struct Job<H> {
    pub handler: Arc<H>,
    pub spec: Arc<QueueSpec>,
    pub publisher: BatchPublisher,
    pub dead_letter_exchange: Arc<str>,
    pub metrics: QueueMetrics,
    pub handler_timeout: Duration,
    pub hard_stop: CancellationToken,
    pub in_flight: Arc<InFlight>,
    /// The topology's live-only event types and their TTL.
    pub live: Arc<LiveOnly>,
}

/// Event types that expire on their own, and after how long: on a queue without a
/// `message_ttl`, such an event older than its TTL is stale all the same.
#[derive(Debug, Default)]
pub(super) struct LiveOnly {
    pub types: std::collections::BTreeSet<String>,
    pub ttl: Option<Duration>,
}

impl LiveOnly {
    /// The age past which `event_type` is stale on `spec`: the queue's TTL, else the event's.
    pub fn ttl(&self, spec: &QueueSpec, event_type: &str) -> Option<Duration> {
        spec.message_ttl.or_else(|| {
            self.types
                .contains(event_type)
                .then_some(self.ttl)
                .flatten()
        })
    }
}

impl<H> Clone for Job<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            spec: self.spec.clone(),
            publisher: self.publisher.clone(),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            metrics: self.metrics.clone(),
            handler_timeout: self.handler_timeout,
            hard_stop: self.hard_stop.clone(),
            in_flight: self.in_flight.clone(),
            live: self.live.clone(),
        }
    }
}

impl<H: Handler> Job<H> {
    /// Handles and settles one delivery. Never leaves it unsettled: if the drain deadline
    /// stops the handler, the delivery is requeued.
    ///
    /// Not an `async fn`: one keeps its arguments twice in its future (rust-lang/rust#62958),
    /// and a worker holds up to prefetch of these futures, each with a delivery in it.
    #[allow(clippy::manual_async_fn)]
    pub fn run(
        self,
        mut delivery: Inbound,
        permit: Option<OwnedSemaphorePermit>,
    ) -> impl Future<Output = ()> + Send + use<H> {
        async move {
            let _running = self.in_flight.enter();
            // Boxed: the handler's future is large and lives only while the handler runs (at
            // most `--concurrency` at once), while a job waiting for its republish's confirm
            // (up to prefetch of them) would otherwise keep room for it.
            let disposition = Box::pin(self.disposition(&delivery)).await;
            // The permit bounds handlers, not settles: a republish waiting for its confirm
            // must not keep the next handler from starting. Deliveries in flight stay bounded
            // by prefetch, and `_running` keeps the drain waiting for the settle.
            drop(permit);
            let started = Instant::now();
            let settled = settle(
                &mut delivery,
                &disposition,
                &self.spec,
                &self.publisher,
                &self.dead_letter_exchange,
            )
            .await;
            self.metrics
                .settle_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics.settled(settled);
        }
    }

    async fn disposition(&self, delivery: &Inbound) -> Disposition {
        let attempt = amqp::header_u32(&delivery.properties, hdr::ATTEMPT);
        let event = match Envelope::parse(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                return Disposition::DeadLetter {
                    kind: ErrorKind::Invalid,
                    reason: error.to_string(),
                    attempt: attempt.saturating_add(1),
                };
            }
        };
        let now = now_ms();
        if let Some(ttl) = self.live.ttl(&self.spec, &event.event_type) {
            // A live-only event back from a retry tier has a fresh TTL clock; its age does not.
            let age = now.saturating_sub(event.ts);
            if age > ttl.as_millis() as u64 {
                let reason = format!(
                    "stale: the event is {} old, older than its time to live of {}",
                    humantime::format_duration(Duration::from_millis(age / 1000 * 1000)),
                    humantime::format_duration(ttl)
                );
                return self.stale(&event, delivery, attempt, reason).await;
            }
        }
        let not_before = amqp::header_u64(&delivery.properties, hdr::NOT_BEFORE);
        if let Some(d) = defer(not_before, &self.spec, now) {
            return d;
        }
        match self.call(&event, delivery, attempt).await {
            Some(result) => decide(&result, attempt, &self.spec, now_ms()),
            None => Disposition::Requeue,
        }
    }

    /// A stale event is dead-lettered, unless it may have run before (its ack lost to a
    /// connection reset, a crash, a retry) and the handler's status check finds its effect
    /// done: then it is acked, or `warren dlq` would list as failed an event whose effect
    /// happened. The dead letter's error says what the check found.
    async fn stale(
        &self,
        event: &Envelope,
        delivery: &Inbound,
        attempt: u32,
        mut reason: String,
    ) -> Disposition {
        if may_have_run(delivery, attempt) {
            let check = tokio::select! {
                r = tokio::time::timeout(self.handler_timeout, self.handler.effect_status(event)) => r,
                _ = self.hard_stop.cancelled() => return Disposition::Requeue,
            };
            match check {
                Ok(EffectStatus::Done) => {
                    tracing::info!(queue = %self.spec.name, event_id = %event.event_id, "Stale redelivery whose effect is done; acking it.");
                    self.metrics.stale_done.inc();
                    return Disposition::Ack;
                }
                Ok(EffectStatus::NotDone(why)) => {
                    reason.push_str(&format!("; status check: effect not done ({why})"))
                }
                Ok(EffectStatus::Unknown(why)) => {
                    reason.push_str(&format!("; status check: unknown ({why})"))
                }
                Err(_) => reason.push_str(&format!(
                    "; status check: unknown (no answer within {})",
                    humantime::format_duration(self.handler_timeout)
                )),
            }
        }
        Disposition::DeadLetter {
            kind: ErrorKind::Permanent,
            reason,
            attempt: attempt.saturating_add(1),
        }
    }

    /// Runs the handler with its deadline. `None` when the drain deadline stopped it.
    async fn call(
        &self,
        event: &Envelope,
        delivery: &Inbound,
        attempt: u32,
    ) -> Option<HandlerResult> {
        let ctx = Context {
            queue: self.spec.name.clone(),
            attempt,
            redelivered: delivery.redelivered,
            returned_from: amqp::x_death(&delivery.properties)
                .into_iter()
                .next()
                .map(|d| d.queue),
            message_ttl: self.live.ttl(&self.spec, &event.event_type),
            lane_generation: None,
        };
        call_handler(
            &*self.handler,
            event,
            &ctx,
            self.handler_timeout,
            &self.hard_stop,
            &self.metrics,
        )
        .await
    }
}

/// Runs `handler` on `event` with its deadline, turning a panic or a timeout into a transient
/// failure. `None` when `hard_stop` (the drain deadline) stopped it.
pub(super) async fn call_handler<H: Handler>(
    handler: &H,
    event: &Envelope,
    ctx: &Context,
    timeout: Duration,
    hard_stop: &CancellationToken,
    metrics: &QueueMetrics,
) -> Option<HandlerResult> {
    metrics
        .event_lag
        .observe(now_ms().saturating_sub(event.ts) as f64 / 1000.0);
    metrics.in_flight.inc();
    let started = Instant::now();
    let handled = AssertUnwindSafe(handler.handle(event, ctx)).catch_unwind();
    // Biased: a handler that is done at once (most are, or fail at once) never registers
    // a waiter on the shared stop token, which random order would do half the time.
    let result = tokio::select! {
        biased;
        r = tokio::time::timeout(timeout, handled) => Some(match r {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(queue = %ctx.queue, event_id = %event.event_id, panic = %what, "Handler panicked.");
                Err(HandlerError::transient(format!("handler panicked: {what}")))
            }
            Err(_) => Err(HandlerError::transient(format!(
                "handler timed out after {}",
                humantime::format_duration(timeout)
            ))),
        }),
        _ = hard_stop.cancelled() => None,
    };
    metrics
        .handler_duration
        .observe(started.elapsed().as_secs_f64());
    metrics.in_flight.dec();
    result
}

/// How many jobs are running, with a way to wait until none is.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Returns once no job is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(super) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Whether a handler may have run on this message before: the broker redelivered it, it came
/// back from a retry tier, or an operator replayed it.
fn may_have_run(delivery: &Inbound, attempt: u32) -> bool {
    delivery.redelivered
        || attempt > 0
        || amqp::header_u32(&delivery.properties, hdr::REPLAYED) > 0
        || delivery
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(hdr::X_DEATH))
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::Builtin;

    /// The size of what `f` returns, without calling it.
    fn returned<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        size_of::<R>()
    }

    /// A worker keeps a job's future for each delivery it holds: up to prefetch of them, each
    /// waiting for its republish's confirm when every message fails. The handler's future is
    /// boxed and the republish hands its properties over before waiting, so what is left is
    /// the delivery, the job's handles and the wait for the answer.
    #[test]
    fn a_job_future_keeps_little_beyond_its_delivery() {
        let job = returned(Job::<Builtin>::run);
        let delivery = size_of::<Inbound>();
        assert!(job <= delivery + 1024, "a job's future is {job} bytes");
    }
}
