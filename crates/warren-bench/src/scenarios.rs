//! The warren side of each scenario, through warren's real code: [`Publisher`] with its
//! [`ConfirmWindow`], [`worker::run`] with the `log` handler, and [`bridge::run`] reading the
//! simulated upstream.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{RUN_LIMIT, RunSpec, Scenario, Side, SideResult, Stamp, Tally, message_body, stats};
use warren::amqp::{self, AmqpUrl, BasicProperties, ConfirmWindow, Message, Publisher};
use warren::bridge::{self, BridgeSettings, UpstreamSettings};
use warren::envelope::Envelope;
use warren::error::Error;
use warren::handlers::LogHandler;
use warren::topology::Topology;
use warren::worker::{self, Context, Handler, HandlerError, HandlerResult, WorkerMetrics};

/// Handler concurrency of the bench worker: `warren worker`'s default.
const CONCURRENCY: usize = 16;

/// Runs the warren side of `spec`.
pub async fn run(spec: &RunSpec, url: &AmqpUrl) -> Result<SideResult, Error> {
    let t = Topology::load(&spec.topology_file, &spec.prefix)?;
    let scenario = spec.scenario;
    let tally = Tally::new(spec.messages, scenario.has_latency());
    let cpu_before = stats::cpu_time();
    match scenario {
        Scenario::Publish { window } => {
            let conn = amqp::connect(url, "bench", "publish").await?;
            let publisher = Publisher::open(&conn).await?;
            let cpu_before = stats::cpu_time();
            tally.start();
            let sent = publish_all(
                &publisher,
                &t.events_exchange,
                spec,
                window,
                Some(&tally),
                None,
            )
            .await;
            amqp::close(&conn).await;
            sent?;
            Ok(tally.result(Side::Warren, cpu_before))
        }
        Scenario::Consume { .. } => {
            with_worker(
                url,
                &t,
                spec,
                tally.clone(),
                false,
                tally.wait(RUN_LIMIT, "consume"),
            )
            .await?;
            Ok(tally.result(Side::Warren, cpu_before))
        }
        Scenario::Saturation { .. } | Scenario::Latency { .. } => {
            let label = scenario.label();
            let driver = async {
                let conn = amqp::connect(url, "bench", "publish").await?;
                let publisher = Publisher::open(&conn).await?;
                tally.start();
                let sent = publish_all(
                    &publisher,
                    &t.events_exchange,
                    spec,
                    scenario.window(),
                    None,
                    Some(&tally),
                )
                .await;
                let waited = match sent {
                    Ok(()) => {
                        tally.published();
                        tally.wait(RUN_LIMIT, &label).await
                    }
                    Err(e) => Err(e),
                };
                amqp::close(&conn).await;
                waited
            };
            with_worker(url, &t, spec, tally.clone(), false, driver).await?;
            Ok(tally.result(Side::Warren, cpu_before))
        }
        Scenario::Retry { .. } => {
            let driver = async {
                let conn = amqp::connect(url, "bench", "publish").await?;
                let publisher = Publisher::open(&conn).await?;
                tally.start();
                let dlq = t.queues[0].dlq();
                let sent = publish_all(
                    &publisher,
                    &t.events_exchange,
                    spec,
                    scenario.window(),
                    None,
                    None,
                )
                .await;
                let waited = match sent {
                    Ok(()) => count_depth(&conn, &dlq, &tally).await,
                    Err(e) => Err(e),
                };
                amqp::close(&conn).await;
                waited
            };
            with_worker(url, &t, spec, tally.clone(), true, driver).await?;
            Ok(tally.result(Side::Warren, cpu_before))
        }
        Scenario::EndToEnd => end_to_end(spec, url, &t, tally, cpu_before).await,
        Scenario::Lanes { .. } => Err(crate::lanes_in_parent()),
    }
}

/// The properties of every bench publish, the same on both sides.
pub fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Sleeps until message `i` is due at `rate` per second from `start`.
pub async fn pace(start: Instant, i: u64, rate: Option<f64>) {
    if let Some(rate) = rate.filter(|r| *r > 0.0) {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Publishes `spec.messages` bench messages through the publisher's confirm window; confirms
/// are counted into `confirms` (publish → confirm latency) when given. With `handled`, each
/// publish first waits for the scenario's in-flight bound ([`Tally::admit`]).
async fn publish_all(
    publisher: &Publisher,
    exchange: &str,
    spec: &RunSpec,
    window: usize,
    confirms: Option<&Tally>,
    handled: Option<&Tally>,
) -> Result<(), Error> {
    let mut pending = ConfirmWindow::<u64>::new(window);
    let settle = |(sent, r): (u64, Result<(), amqp::AmqpError>)| -> Result<(), Error> {
        r?;
        if let Some(t) = confirms {
            t.hit(sent);
        }
        Ok(())
    };
    let start = Instant::now();
    let max_in_flight = spec.scenario.max_in_flight();
    for i in 0..spec.messages {
        pace(start, i, spec.rate).await;
        if let Some(t) = handled {
            t.admit(i, max_in_flight).await;
        }
        while let Some(Some(done)) = pending.next().now_or_never() {
            settle(done)?;
        }
        if pending.is_full()
            && let Some(done) = pending.next().await
        {
            settle(done)?;
        }
        let sent = stats::now_us();
        let body = message_body(spec.size, sent);
        let confirm = publisher
            .send(Message {
                exchange,
                routing_key: super::EVENT_TYPE,
                body: &body,
                properties: properties(),
                mandatory: true,
            })
            .await?;
        pending.push(sent, confirm);
    }
    while let Some(done) = pending.next().await {
        settle(done)?;
    }
    Ok(())
}

/// Counts a queue's depth into `tally` until it reaches the target.
pub async fn count_depth(conn: &amqp::Connection, queue: &str, tally: &Tally) -> Result<(), Error> {
    let deadline = Instant::now() + RUN_LIMIT;
    let mut seen = 0u64;
    while !tally.done.is_cancelled() {
        let (depth, _) = amqp::inspect_queue(conn, queue).await?.unwrap_or((0, 0));
        for _ in seen..u64::from(depth) {
            tally.hit(0);
        }
        seen = seen.max(u64::from(depth));
        if Instant::now() > deadline {
            return Err(Error::Other(format!(
                "bench: {queue}: {seen} messages dead-lettered in {}s",
                RUN_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The `log` handler, counted: the bench learns when the target is reached and each message's
/// publish → handler latency. With `fail`, every call fails transiently after logging.
struct Counted {
    inner: LogHandler,
    tally: Arc<Tally>,
    fail: bool,
}

impl Handler for Counted {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        self.inner.handle(event, ctx).await?;
        if self.fail {
            return Err(HandlerError::transient(
                "bench: this scenario fails every call",
            ));
        }
        let sent = event.payload_as::<Stamp>().map(|s| s.sent_us).unwrap_or(0);
        self.tally.hit(sent);
        Ok(())
    }
}

/// Runs `driver` beside a `worker::run` with the counted `log` handler, once the worker is
/// consuming; stops the worker when the driver is done. Both run in this task, as in
/// `warren worker`.
async fn with_worker<D>(
    url: &AmqpUrl,
    t: &Topology,
    spec: &RunSpec,
    tally: Arc<Tally>,
    fail: bool,
    driver: D,
) -> Result<(), Error>
where
    D: Future<Output = Result<(), Error>>,
{
    let settings = worker::WorkerSettings {
        url: url.clone(),
        topology: t.clone(),
        queues: vec![t.queues[0].name.clone()],
        prefetch: Some(spec.scenario.prefetch()),
        concurrency: CONCURRENCY,
        drain_timeout: Duration::from_secs(10),
        handler_timeout: Duration::from_secs(30),
    };
    let metrics = Arc::new(WorkerMetrics::default());
    let stop = CancellationToken::new();
    let exited = CancellationToken::new();
    let handler = Counted {
        inner: LogHandler,
        tally: tally.clone(),
        fail,
    };
    let worker = async {
        let r = worker::run(settings, handler, metrics.clone(), stop.clone()).await;
        exited.cancel();
        r
    };
    let drive = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !metrics.ready.get() {
            if exited.is_cancelled() || Instant::now() > deadline {
                stop.cancel();
                return Err(Error::Other(
                    "bench: the worker did not start consuming".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A worker that stops on its own (its connection died) ends the run at once: the
        // driver may be waiting for messages it will never handle.
        let r = tokio::select! {
            r = driver => r,
            _ = exited.cancelled() => Err(Error::Other(
                "bench: the worker stopped before the run was done".into(),
            )),
        };
        stop.cancel();
        r
    };
    let (worked, driven) = tokio::join!(worker, drive);
    if fail && let Some((sum, count)) = settle_totals(&metrics) {
        tally.settled(Duration::from_secs_f64(sum), count);
    }
    worked?;
    driven
}

/// The worker's settle-time sum (seconds) and count, read from its Prometheus exposition as an
/// operator's scrape would (the bench queue is the only one).
fn settle_totals(metrics: &WorkerMetrics) -> Option<(f64, u64)> {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()
    };
    Some((
        value("warren_worker_settle_duration_seconds_sum{")?,
        value("warren_worker_settle_duration_seconds_count{")? as u64,
    ))
}

/// Bridge and worker in this process, reading the parent's simulated upstream.
async fn end_to_end(
    spec: &RunSpec,
    url: &AmqpUrl,
    t: &Topology,
    tally: Arc<Tally>,
    cpu_before: Duration,
) -> Result<SideResult, Error> {
    let (Some(ws), Some(resume)) = (&spec.upstream, &spec.resume_from) else {
        return Err(Error::Usage("bench e2e: no upstream given".into()));
    };
    let cursor = std::env::temp_dir().join(format!("warren-{}cursor", spec.prefix));
    std::fs::write(&cursor, format!("{resume}\n")).map_err(|source| Error::Io {
        path: cursor.clone(),
        source,
    })?;
    let mut settings = BridgeSettings::new(url.clone(), t.clone());
    settings.upstream = Some(upstream_settings(ws));
    settings.cursor_file = Some(cursor.clone());
    settings.confirm_window = super::PIPELINE_WINDOW;
    let driver = async {
        let stop = CancellationToken::new();
        tally.start();
        let bridge = bridge::run(settings, Arc::new(bridge::Stats::default()), stop.clone());
        let waited = async {
            let r = tally.wait(RUN_LIMIT, "e2e").await;
            stop.cancel();
            r
        };
        let (bridged, waited) = tokio::join!(bridge, waited);
        waited?;
        bridged
    };
    let outcome = with_worker(url, t, spec, tally.clone(), false, driver).await;
    let _ = std::fs::remove_file(&cursor);
    outcome?;
    Ok(tally.result(Side::Warren, cpu_before))
}

/// How both sides connect to the simulated upstream.
pub fn upstream_settings(ws: &str) -> UpstreamSettings {
    UpstreamSettings {
        url: ws.to_string(),
        topics: bridge::upstream::DEFAULT_TOPICS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        agent_key: "bench".into(),
        agent_id: "bench".into(),
    }
}
