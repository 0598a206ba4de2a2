//! `postgres`: writes each event exactly once into PostgreSQL (see [`crate::postgres`]).
//!
//! Handlers running at once hand their events to one batcher, which gathers consecutive events
//! into a batch (up to `batch_size`, waiting at most `linger` for more) and writes it in one
//! transaction; each handler returns only once its event's batch has committed, so no event is
//! acked before its rows are durable. Up to `parallel` batches are written at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::envelope::Envelope;
use crate::postgres::{DbError, EventRow, Fault, Sink, sink::Written};
use crate::worker::{Context, EffectStatus, Handler, HandlerError, HandlerResult};

/// The handler's name: the inbox's `handler` column and the metrics' prefix.
pub const NAME: &str = "postgres";

/// How events are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Events per transaction at most.
    pub batch_size: usize,
    /// How long the first event of a batch waits for more.
    pub linger: Duration,
    /// Batches written at once (each holds one pooled connection).
    pub parallel: usize,
}

/// The sink's counters, as `warren_db_*`.
#[derive(Debug)]
pub struct SinkMetrics {
    /// Events committed now.
    pub inserted: Counter,
    /// Events skipped because their inbox row existed (redeliveries, replays, duplicates).
    pub duplicates: Counter,
    /// Events rejected for their data (dead-lettered as permanent).
    pub rejected: Counter,
    /// Domain rows skipped because a row with the same natural key existed.
    pub rows_skipped: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Batches that failed as a whole (the database unavailable, a deadlock, …).
    pub batch_failures: Counter,
    /// Events per committed batch.
    pub batch_size: Histogram,
    /// Seconds to write and commit one batch.
    pub commit_seconds: Histogram,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        Self {
            inserted: Counter::default(),
            duplicates: Counter::default(),
            rejected: Counter::default(),
            rows_skipped: Counter::default(),
            batches: Counter::default(),
            batch_failures: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        }
    }
}

impl SinkMetrics {
    /// Registers every metric under `warren_db_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("warren_db");
        r.register(
            "events_inserted",
            "Events whose rows were committed",
            self.inserted.clone(),
        );
        r.register(
            "events_duplicate",
            "Events skipped because they were committed before (inbox)",
            self.duplicates.clone(),
        );
        r.register(
            "events_rejected",
            "Events rejected for their data (dead-lettered as permanent)",
            self.rejected.clone(),
        );
        r.register(
            "rows_skipped",
            "Domain rows skipped because their natural key existed",
            self.rows_skipped.clone(),
        );
        r.register("batches", "Batches committed", self.batches.clone());
        r.register(
            "batch_failures",
            "Batches that failed as a whole and were retried",
            self.batch_failures.clone(),
        );
        r.register(
            "batch_size",
            "Events per committed batch",
            self.batch_size.clone(),
        );
        r.register(
            "commit_seconds",
            "Seconds to write and commit one batch",
            self.commit_seconds.clone(),
        );
    }
}

struct Job {
    row: EventRow,
    reply: oneshot::Sender<HandlerResult>,
}

/// Hands events to the batcher and waits for their batch to commit.
#[derive(Debug)]
pub struct PostgresHandler {
    jobs: mpsc::Sender<Job>,
    sink: Arc<Sink>,
    metrics: Arc<SinkMetrics>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("event_id", &self.row.event_id)
            .finish()
    }
}

impl PostgresHandler {
    /// Starts the batcher on the current runtime.
    pub fn start(sink: Sink, settings: BatchSettings) -> Self {
        let metrics = Arc::new(SinkMetrics::default());
        let (jobs, rx) = mpsc::channel(settings.batch_size.max(1) * 4);
        let sink = Arc::new(sink);
        tokio::spawn(batcher(rx, sink.clone(), settings, metrics.clone()));
        Self {
            jobs,
            sink,
            metrics,
        }
    }

    /// The sink's metrics.
    pub fn metrics(&self) -> &Arc<SinkMetrics> {
        &self.metrics
    }
}

impl Handler for PostgresHandler {
    fn name(&self) -> &str {
        NAME
    }

    async fn handle(&self, event: &Envelope, _ctx: &Context) -> HandlerResult {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            row: EventRow::from(event),
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(HandlerError::Unavailable(
                "the database writer stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            // The batch was dropped before it answered (shutdown): nothing is known committed,
            // and a retry is safe (the inbox skips a committed event).
            Err(HandlerError::transient(
                "the database write was interrupted",
            ))
        })
    }

    /// The inbox answers exactly: a row for the event means its rows were committed.
    async fn effect_status(&self, event: &Envelope) -> EffectStatus {
        match self.sink.is_done(&event.event_id).await {
            Ok(true) => EffectStatus::Done,
            Ok(false) => EffectStatus::NotDone("no inbox row for the event".into()),
            Err(e) => EffectStatus::Unknown(e.to_string()),
        }
    }
}

/// Gathers jobs into batches and writes up to `parallel` of them at once.
async fn batcher(
    mut rx: mpsc::Receiver<Job>,
    sink: Arc<Sink>,
    settings: BatchSettings,
    metrics: Arc<SinkMetrics>,
) {
    let slots = Arc::new(Semaphore::new(settings.parallel.max(1)));
    let size = settings.batch_size.max(1);
    while let Some(first) = rx.recv().await {
        // Wait for a free connection before gathering: while every slot is busy, events pile
        // up in the channel and the next batch is fuller.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.linger;
        while batch.len() < size {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(job)) => batch.push(job),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let sink = sink.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            write_batch(&sink, batch, &metrics).await;
            drop(slot);
        });
    }
}

async fn write_batch(sink: &Sink, batch: Vec<Job>, metrics: &SinkMetrics) {
    // The same event twice in one batch (two deliveries at once): write it once, answer both.
    let mut rows: Vec<EventRow> = Vec::with_capacity(batch.len());
    let mut index: Vec<usize> = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashMap::with_capacity(batch.len());
    for job in &batch {
        let i = *seen.entry(job.row.event_id.clone()).or_insert_with(|| {
            rows.push(job.row.clone());
            rows.len() - 1
        });
        index.push(i);
    }
    let started = Instant::now();
    match sink.write(&rows).await {
        Ok(out) => {
            metrics.batches.inc();
            metrics.batch_size.observe(rows.len() as f64);
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.inserted.inc_by(out.inserted() as u64);
            metrics.duplicates.inc_by(out.duplicates() as u64);
            metrics.rejected.inc_by(out.rejected() as u64);
            metrics.rows_skipped.inc_by(out.rows_skipped);
            tracing::debug!(
                events = rows.len(),
                inserted = out.inserted(),
                skipped = out.duplicates(),
                rejected = out.rejected(),
                rows_inserted = out.rows_inserted,
                rows_skipped = out.rows_skipped,
                ms = started.elapsed().as_millis() as u64,
                "Batch committed."
            );
            for (job, i) in batch.into_iter().zip(index) {
                let result = match &out.events[i] {
                    Written::Inserted | Written::Duplicate => Ok(()),
                    Written::Rejected(why) => Err(HandlerError::permanent(why.clone())),
                };
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            metrics.batch_failures.inc();
            let error = to_handler_error(&e);
            tracing::warn!(events = rows.len(), error = %e, "Batch not committed; its events will be retried.");
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

fn to_handler_error(e: &DbError) -> HandlerError {
    let reason = e.to_string();
    match e.fault() {
        Fault::Unavailable => HandlerError::Unavailable(reason),
        Fault::Transient => HandlerError::transient(reason),
        // A whole batch is never rejected for one event's data (the sink writes it event by
        // event); one event alone rejected as a batch is that event's data.
        Fault::Permanent => HandlerError::permanent(e.sql_message()),
    }
}
