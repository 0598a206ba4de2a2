//! The worker: consume one or more work queues with a bounded prefetch, run the handler, and
//! settle every delivery through [`decide`] and [`settle`]. Reconnects with backoff, re-subscribes
//! consumers the broker cancels, runs repeatedly redelivered messages alone, and drains on shutdown.
//!
//! # Careful mode: why a redelivered message never runs beside others
//! A message that crashes the process (abort, OOM kill) is redelivered. Every message unacked at
//! the moment of a crash is charged a delivery towards the quorum queue's delivery limit, so a
//! poison message running beside innocent ones would drag them into the DLQ with it. So a
//! session starts *careful*: prefetch 1 per queue and one handler at a time, until the first
//! fresh (never redelivered) message shows the backlog of returned messages is through; then it
//! switches to the normal prefetch. A redelivered message seen in normal mode pauses the
//! consumers, lets everything else settle, runs the redelivered ones one by one and goes back to
//! careful mode. A crash in careful mode charges only the message that caused it.

mod decide;
pub mod handler;
mod job;
pub mod lanes;
mod metrics;
mod session;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use decide::{Disposition, decide, defer};
pub use handler::{Context, EffectStatus, Handler, HandlerError, HandlerResult};
pub use metrics::{QueueMetrics, WorkerMetrics};
pub use settle::{Settled, settle};

use crate::amqp::{self, AmqpUrl};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::topology::{QueueSpec, Topology, TopologyError};

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
    /// Handlers running at once, across all queues and lanes.
    pub concurrency: usize,
    /// How long in-flight handlers may run after a shutdown signal.
    pub drain_timeout: Duration,
    /// How long one handler call may take before it counts as a transient failure.
    pub handler_timeout: Duration,
}

/// Runs a worker until `shutdown` is cancelled, then drains and returns.
pub async fn run<H: Handler>(
    settings: WorkerSettings,
    handler: H,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if settings.queues.is_empty() {
        return Err(Error::Usage(
            "worker: give at least one queue with -q".into(),
        ));
    }
    let specs = settings
        .queues
        .iter()
        .map(|q| settings.topology.queue(q).map(|s| Arc::new(s.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    check_declared(&settings, &specs).await?;
    let worker = Worker {
        handler: Arc::new(handler),
        queue_metrics: specs.iter().map(|q| metrics.for_queue(&q.name)).collect(),
        specs,
        metrics,
        dead_letter_exchange: Arc::from(settings.topology.dead_letter_exchange.as_str()),
        permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1))),
        live: Arc::new(job::LiveOnly {
            types: settings.topology.live_only.clone(),
            ttl: settings.topology.live_ttl,
        }),
        settings,
        shutdown,
    };
    // The sessions run as a task of their own, on the runtime's workers: called from
    // `block_on`, they would run on the caller's thread, and each job they spawn would have to
    // wake a parked worker. Dropping this future aborts the task, as dropping the loop would.
    let sessions = AbortOnDropHandle::new(tokio::spawn(async move { run_all(worker).await }));
    match sessions.await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(Error::Other(format!("the worker's task ended: {error}"))),
    }
}

/// Runs the plain queues' sessions and each laned queue's lanes side by side; the first error
/// ends them all.
async fn run_all<H: Handler>(worker: Worker<H>) -> Result<(), Error> {
    let (laned, plain): (Vec<usize>, Vec<usize>) =
        (0..worker.specs.len()).partition(|&i| worker.specs[i].lanes.is_some());
    let laned_specs: Vec<Arc<QueueSpec>> = laned.iter().map(|&i| worker.specs[i].clone()).collect();
    let worker = Worker {
        queue_metrics: plain
            .iter()
            .map(|&i| worker.queue_metrics[i].clone())
            .collect(),
        specs: plain.iter().map(|&i| worker.specs[i].clone()).collect(),
        ..worker
    };
    let plain_sessions = async {
        if worker.specs.is_empty() {
            worker.shutdown.cancelled().await;
            Ok(())
        } else {
            run_sessions(&worker).await
        }
    };
    let lanes = futures_util::future::try_join_all(
        laned_specs
            .into_iter()
            .map(|spec| lanes::run(&worker, spec)),
    );
    tokio::try_join!(plain_sessions, lanes).map(|_| ())
}

/// Opens sessions, one after the other, until shutdown.
async fn run_sessions<H: Handler>(worker: &Worker<H>) -> Result<(), Error> {
    let mut backoff = Backoff::reconnect();
    loop {
        let result = match session::Session::open(worker).await {
            Ok(session) => {
                if worker.metrics.sessions.inc() > 0 {
                    worker.metrics.reconnects.inc();
                }
                worker.metrics.ready.set(true);
                backoff.connected();
                tracing::info!(
                    queues = ?worker.specs.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
                    concurrency = worker.settings.concurrency,
                    "Worker consuming."
                );
                session.run().await
            }
            Err(error) => Err(error),
        };
        match result {
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

/// Fails fast, naming what is missing, when the topology was never applied: every republish
/// would otherwise be unroutable and loop through requeues.
async fn check_declared(settings: &WorkerSettings, specs: &[Arc<QueueSpec>]) -> Result<(), Error> {
    let conn = amqp::connect(&settings.url, "worker", "check").await?;
    let mut missing = Vec::new();
    let dlx = &settings.topology.dead_letter_exchange;
    let result: Result<(), Error> = async {
        if !amqp::exchange_exists(&conn, dlx).await? {
            missing.push(format!("exchange '{dlx}'"));
        }
        for spec in specs {
            if let Some(lanes) = &spec.lanes {
                for exchange in [
                    crate::topology::lanes::lanes_exchange(&spec.name),
                    crate::topology::lanes::roster_exchange(&spec.name),
                ] {
                    if !amqp::exchange_exists(&conn, &exchange).await? {
                        missing.push(format!("exchange '{exchange}'"));
                    }
                }
                for queue in (0..lanes.count)
                    .map(|l| crate::topology::lanes::lane_queue(&spec.name, l))
                    .chain([spec.dlq()])
                {
                    if amqp::inspect_queue(&conn, &queue).await?.is_none() {
                        missing.push(format!("queue '{queue}'"));
                    }
                }
                continue;
            }
            let tiers = spec.retry_delays.iter().map(|d| spec.retry_queue(*d));
            for queue in std::iter::once(spec.name.clone())
                .chain(tiers)
                .chain([spec.dlq()])
            {
                if amqp::inspect_queue(&conn, &queue).await?.is_none() {
                    missing.push(format!("queue '{queue}'"));
                }
            }
        }
        Ok(())
    }
    .await;
    amqp::close(&conn).await;
    result?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(TopologyError::NotDeclared {
        missing: missing.join(", "),
        path: settings.topology.source.display().to_string(),
    }
    .into())
}

/// What a worker shares with its sessions.
pub(crate) struct Worker<H> {
    handler: Arc<H>,
    specs: Vec<Arc<QueueSpec>>,
    queue_metrics: Vec<QueueMetrics>,
    metrics: Arc<WorkerMetrics>,
    dead_letter_exchange: Arc<str>,
    /// `--concurrency`: handlers running at once, across every queue and lane.
    permits: Arc<tokio::sync::Semaphore>,
    /// Live-only event types and their TTL, for stale checks.
    live: Arc<job::LiveOnly>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
}
