//! `warren-bench`: throughput, latency, CPU and memory of warren's own code paths, each beside a
//! minimal lapin loop doing the same work (`--baseline raw`).
//!
//! Every measured run is its own child process (`warren-bench --child SPEC`), so CPU time
//! (`getrusage(RUSAGE_SELF)`) and peak RSS (`VmHWM`) belong to one side only. The parent declares
//! a throwaway topology per run (unique prefix, `x-expires`), fills backlogs and runs the
//! simulated upstream outside the measured process, and deletes everything afterwards. Rounds
//! interleave the sides (warren, raw, warren, raw…) so drift on a shared machine hits both.
//!
//! - [`scenarios`]: the warren side, through `amqp::Publisher`, `worker::run` and `bridge::run`.
//! - [`raw`]: the baseline, lapin's API and nothing else.
//! - [`stats`]: percentiles, CPU time, peak RSS.
//! - [`run`]: the orchestration and the report.
//! - [`bridge`]: sim → bridge process → broker against a raw publisher, and the bridge's RSS.
//! - [`lanes`]: a laned queue drained by 1, 2, 4, 8… `warren worker` processes, run by the
//!   parent itself.
//! - [`cluster`]: the same workload on a three-node cluster and on a single node, both
//!   throwaway nodes the bench starts and stops.
//! - [`cli`]: the `warren-bench` command line.

pub mod archive;
pub mod bridge;
pub mod cli;
pub mod cluster;
pub mod lanes;
mod parent;
pub mod postgres;
pub mod raw;
pub mod scenarios;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use parent::{BenchOptions, BenchReport, Row, run};
pub use stats::Percentiles;

use warren::error::Error;

/// The routing key (and event type) of bench messages.
pub const EVENT_TYPE: &str = "bench.tick";

/// Which code runs a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// warren's own code paths.
    Warren,
    /// A minimal lapin loop doing the same work.
    Raw,
    /// The aio-pika peer (`crates/warren-bench/peers/peer`), a separate program reading the same spec.
    Peer,
}

/// The queue type a scenario's queues are declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Classic queues.
    Classic,
    /// Quorum queues (Raft-replicated, fsync on every write).
    Quorum,
}

impl QueueType {
    /// The name the topology file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// One measured scenario, with its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Scenario {
    /// Publish with confirms, at most `window` unconfirmed.
    Publish {
        /// The confirm window.
        window: usize,
    },
    /// Consume and ack a backlog filled beforehand.
    Consume {
        /// Per-consumer prefetch.
        prefetch: u16,
    },
    /// Publish and consume at once, as fast as both go, with at most `max_in_flight` messages
    /// published and not yet handled (0: no bound).
    Saturation {
        /// The load generator's bound on published-but-unhandled messages; 0 for none. Without
        /// one, the queue grows for as long as publishing outruns consuming, and latency
        /// measures the run's length (it doubles with `--messages`).
        #[serde(default)]
        max_in_flight: u64,
    },
    /// Simulated upstream → bridge → queue → worker `log` handler.
    EndToEnd,
    /// Publish at a fixed share of the measured ceiling; latency from publish to handler.
    Latency {
        /// Percent of the ceiling.
        percent: u8,
    },
    /// Every message fails, waits in a retry tier, fails again and is dead-lettered.
    Retry {
        /// Per-consumer prefetch: how many deliveries may wait for their republish's confirm.
        prefetch: u16,
    },
    /// A laned queue drained by `workers` `warren worker` processes with the `http` handler
    /// against a downstream with a fixed latency (see [`lanes`]); run by the parent, which
    /// compares it with one worker in the same rounds.
    Lanes {
        /// Worker processes.
        workers: u16,
        /// Lanes of the queue.
        lanes: u16,
    },
}

/// The saturation scenario's default bound on messages published and not yet handled: ten
/// times the pipeline's prefetch, enough that the consumer never waits on the publisher.
pub const SATURATION_IN_FLIGHT: u64 = 1000;

/// Confirm window of the scenarios that publish without a `publish` parameter.
pub const PIPELINE_WINDOW: usize = 256;
/// Prefetch of the scenarios that consume without a `consume` parameter.
pub const PIPELINE_PREFETCH: u16 = 100;

impl Scenario {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            Scenario::Publish { window } => format!("publish window={window}"),
            Scenario::Consume { prefetch } => format!("consume prefetch={prefetch}"),
            Scenario::Saturation { max_in_flight: 0 } => "saturation unbounded".into(),
            Scenario::Saturation { max_in_flight } => {
                format!("saturation in-flight≤{max_in_flight}")
            }
            Scenario::EndToEnd => "e2e bridge+worker".into(),
            Scenario::Latency { percent } => format!("latency at {percent}%"),
            Scenario::Retry { prefetch } => format!("retry+dead-letter prefetch={prefetch}"),
            Scenario::Lanes { workers: 1, lanes } => format!("lanes={lanes}, 1 worker"),
            Scenario::Lanes { workers, lanes } => format!("lanes={lanes}, {workers} workers"),
        }
    }

    /// The prefetch the consumer side uses.
    pub fn prefetch(&self) -> u16 {
        match self {
            Scenario::Consume { prefetch } | Scenario::Retry { prefetch } => *prefetch,
            _ => PIPELINE_PREFETCH,
        }
    }

    /// The confirm window the publishing side uses.
    pub fn window(&self) -> usize {
        match self {
            Scenario::Publish { window } => *window,
            _ => PIPELINE_WINDOW,
        }
    }

    /// True when the aio-pika peer has this scenario. Its failure path is the seed's
    /// `message.process(requeue=True)`, a requeue loop with no retry tiers, so it has no retry
    /// scenario to compare.
    pub fn peer_applies(&self) -> bool {
        !matches!(self, Scenario::Retry { .. } | Scenario::Lanes { .. })
    }

    /// True when per-message latency means something here (a backlog's wait does not).
    pub fn has_latency(&self) -> bool {
        matches!(
            self,
            Scenario::Publish { .. } | Scenario::Saturation { .. } | Scenario::Latency { .. }
        )
    }

    /// The load generator's bound on messages published and not yet handled, if any.
    pub fn max_in_flight(&self) -> Option<u64> {
        match self {
            Scenario::Saturation { max_in_flight } if *max_in_flight > 0 => Some(*max_in_flight),
            _ => None,
        }
    }
}

/// What a child process is told to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// The side.
    pub side: Side,
    /// The scenario.
    pub scenario: Scenario,
    /// The queue type.
    pub queue_type: QueueType,
    /// Messages to count.
    pub messages: u64,
    /// Body size, bytes.
    pub size: usize,
    /// The throwaway topology file.
    pub topology_file: PathBuf,
    /// Its prefix.
    pub prefix: String,
    /// The events exchange, prefixed (for the peer, which reads no topology file).
    #[serde(default)]
    pub exchange: String,
    /// The dead-letter exchange, prefixed.
    #[serde(default)]
    pub dead_letter_exchange: String,
    /// The work queue, prefixed.
    #[serde(default)]
    pub queue: String,
    /// Offered rate, messages per second (latency scenarios).
    pub rate: Option<f64>,
    /// The simulated upstream's WebSocket URL (end-to-end).
    pub upstream: Option<String>,
    /// The cursor to resume from, a ULID just before the first simulated event (end-to-end).
    pub resume_from: Option<String>,
}

/// What one side measured about itself in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideResult {
    /// The side.
    pub side: Side,
    /// Messages counted (published and confirmed, or handled and acked, or dead-lettered).
    pub messages: u64,
    /// Seconds from the first message to the last.
    pub secs: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Publish → confirm, or publish → handler, where meaningful.
    pub latency: Option<Percentiles>,
    /// User + system CPU of the side's process per message, µs.
    pub cpu_us_per_msg: f64,
    /// The side's process's peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// Retry scenario: mean ms from a handler's failure to its delivery's ack (republish,
    /// confirm, ack). With at most `prefetch` deliveries unacked, throughput can be no more
    /// than prefetch ÷ this, per consume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_ms: Option<f64>,
    /// Saturation and latency: the load generator's own rate, messages ÷ seconds from the
    /// first message to its last confirm. Above `msgs_per_sec`, the queue grew, and latency
    /// with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_msgs_per_sec: Option<f64>,
    /// Saturation and latency: the most messages published and not yet handled, as the load
    /// generator saw them at each publish, counting the one it was about to send (a backlog's
    /// high-water mark; at most the scenario's `max_in_flight` when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_in_flight: Option<u64>,
    /// The run's topology prefix (set by the parent, which deleted everything under it).
    #[serde(default)]
    pub prefix: String,
    /// The lanes scenario's own figures: convergence, what was left out of the timing, the
    /// machine's load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<lanes::LaneRun>,
}

/// The body of a bench message: an envelope with a send stamp, padded to about `size` bytes.
pub fn message_body(size: usize, sent_us: u64) -> Vec<u8> {
    let id = ulid::Ulid::generate();
    let head = format!(
        r#"{{"eventId":"{id}","type":"{EVENT_TYPE}","agentId":"bench","ts":{},"payload":{{"sent_us":{sent_us},"pad":""#,
        (sent_us / 1000).max(1)
    );
    let pad = size.saturating_sub(head.len() + 3);
    let mut body = Vec::with_capacity(head.len() + pad + 3);
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + pad, b'x');
    body.extend_from_slice(b"\"}}");
    body
}

/// The payload's send stamp.
#[derive(Debug, Deserialize)]
pub struct Stamp {
    /// Microseconds since the epoch at publish time.
    #[serde(default)]
    pub sent_us: u64,
}

/// Counts handled messages and their latencies; fires `done` at the target. Shared by both
/// sides so that they stop and time the same way.
#[derive(Debug)]
pub struct Tally {
    target: u64,
    count: AtomicU64,
    first: std::sync::OnceLock<Instant>,
    last: std::sync::Mutex<Option<Instant>>,
    /// When the load generator had every message confirmed.
    published: std::sync::OnceLock<Instant>,
    latencies: std::sync::Mutex<Vec<u64>>,
    record_latency: bool,
    /// Outcome → ack times of the retry scenario: total µs and how many.
    settle_us: AtomicU64,
    settles: AtomicU64,
    /// Cancelled when `target` messages have been counted.
    pub done: CancellationToken,
    /// Signalled at every count, for a load generator waiting on [`Tally::admit`].
    progress: tokio::sync::Notify,
    /// The most messages [`Tally::admit`] saw in flight; at least 1 once it has run, as it
    /// counts the message it admits.
    peak_in_flight: AtomicU64,
}

impl Tally {
    /// A tally that is done after `target` messages.
    pub fn new(target: u64, record_latency: bool) -> Arc<Self> {
        Arc::new(Self {
            target,
            count: AtomicU64::new(0),
            first: std::sync::OnceLock::new(),
            last: std::sync::Mutex::new(None),
            published: std::sync::OnceLock::new(),
            latencies: std::sync::Mutex::new(Vec::with_capacity(if record_latency {
                target as usize
            } else {
                0
            })),
            record_latency,
            settle_us: AtomicU64::new(0),
            settles: AtomicU64::new(0),
            done: CancellationToken::new(),
            progress: tokio::sync::Notify::new(),
            peak_in_flight: AtomicU64::new(0),
        })
    }

    /// Waits until message `i` may be published: until fewer than `max_in_flight` of the `i`
    /// before it are still to be counted, so that with it at most `max_in_flight` are in
    /// flight. No bound, no wait. Either way, notes the most messages in flight, message `i`
    /// included. It waits for as long as the consumer takes: each side stops its run when its
    /// consumer does, and the parent's child timeout ends a broker that delivers nothing.
    pub async fn admit(&self, i: u64, max_in_flight: Option<u64>) {
        if let Some(cap) = max_in_flight {
            // `notify_one` leaves a permit when nobody waits, so a count between the check
            // and the wait is not missed; a stale permit costs one more check.
            while i.saturating_sub(self.count()) >= cap {
                self.progress.notified().await;
            }
        }
        // Only the load generator writes this: a load and a store, not a read-modify-write.
        let in_flight = (i + 1).saturating_sub(self.count());
        if in_flight > self.peak_in_flight.load(Ordering::Relaxed) {
            self.peak_in_flight.store(in_flight, Ordering::Relaxed);
        }
    }

    /// Marks the start of the measured interval, if nothing has yet.
    pub fn start(&self) {
        let _ = self.first.get_or_init(Instant::now);
    }

    /// Notes that the load generator has every message confirmed.
    pub fn published(&self) {
        let _ = self.published.get_or_init(Instant::now);
    }

    /// Counts one message; `sent_us` is its send stamp (0: none).
    pub fn hit(&self, sent_us: u64) {
        let now = Instant::now();
        self.start();
        if self.record_latency && sent_us > 0 {
            let lat = stats::now_us().saturating_sub(sent_us);
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(lat);
        }
        let n = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        self.progress.notify_one();
        if n == self.target {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            self.done.cancel();
        }
    }

    /// Adds `n` settles that took `total` together (retry scenario).
    pub fn settled(&self, total: Duration, n: u64) {
        self.settle_us
            .fetch_add(total.as_micros() as u64, Ordering::Relaxed);
        self.settles.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages counted.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits for the target, or fails after `limit` naming how far it got.
    pub async fn wait(&self, limit: Duration, what: &str) -> Result<(), Error> {
        tokio::select! {
            _ = self.done.cancelled() => Ok(()),
            _ = tokio::time::sleep(limit) => Err(Error::Other(format!(
                "bench: {what}: {} of {} messages in {}s",
                self.count(), self.target, limit.as_secs()
            ))),
        }
    }

    /// The figures, with the CPU time used since `cpu_before`.
    pub fn result(&self, side: Side, cpu_before: Duration) -> SideResult {
        let cpu = stats::cpu_time().saturating_sub(cpu_before);
        let first = self.first.get().copied().unwrap_or_else(Instant::now);
        let last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Instant::now);
        let secs = last.duration_since(first).as_secs_f64().max(1e-6);
        let messages = self.count();
        let mut lat =
            std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()));
        SideResult {
            side,
            messages,
            secs,
            msgs_per_sec: messages as f64 / secs,
            latency: Percentiles::of(&mut lat),
            cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / messages.max(1) as f64,
            peak_rss_kib: stats::peak_rss_kib(),
            settle_ms: match self.settles.load(Ordering::Relaxed) {
                0 => None,
                n => Some(self.settle_us.load(Ordering::Relaxed) as f64 / 1000.0 / n as f64),
            },
            publish_msgs_per_sec: self
                .published
                .get()
                .map(|p| self.target as f64 / p.duration_since(first).as_secs_f64().max(1e-6)),
            peak_in_flight: match self.peak_in_flight.load(Ordering::Relaxed) {
                0 => None,
                n => Some(n),
            },
            prefix: String::new(),
            lanes: None,
        }
    }
}

/// The time limit of one measured run.
pub const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The lanes scenario has no child side: the parent runs its worker processes.
pub(crate) fn lanes_in_parent() -> Error {
    Error::Usage("bench --child: the lanes scenario runs `warren worker` processes from the parent, not in a child".into())
}

/// Runs one side of one scenario in this process (the `--child` mode) and returns its figures.
pub async fn run_child(spec: &RunSpec, url: &warren::amqp::AmqpUrl) -> Result<SideResult, Error> {
    match spec.side {
        Side::Warren => scenarios::run(spec, url).await,
        Side::Raw => raw::run(spec, url).await,
        Side::Peer => Err(Error::Usage(
            "bench --child: the peer side is bench/peers/peer, not this binary".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admit_holds_the_publisher_at_the_bound_until_messages_are_counted() {
        let tally = Tally::new(10, false);
        // Nothing in flight yet, just below the bound, and no bound: all go at once.
        tally.admit(0, Some(3)).await;
        tally.admit(2, Some(3)).await;
        tally.admit(7, None).await;
        // Message 3 with 3 published and none counted waits for one count.
        let waiting = tokio::spawn({
            let tally = tally.clone();
            async move { tally.admit(3, Some(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "admitted past the bound");
        tally.hit(0);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a count let the publisher go")
            .unwrap();
        let r = tally.result(Side::Raw, Duration::ZERO);
        // The high-water mark, the message being admitted included: 8 at the unbounded call.
        assert_eq!(r.peak_in_flight, Some(8));
        assert_eq!(
            Tally::new(1, false)
                .result(Side::Raw, Duration::ZERO)
                .peak_in_flight,
            None
        );
    }

    #[test]
    fn bodies_are_envelopes_of_the_asked_size() {
        for size in [0, 64, 256, 4096] {
            let body = message_body(size, 1_700_000_000_000_000);
            let env = warren::envelope::Envelope::parse(&body).unwrap();
            assert_eq!(env.event_type, EVENT_TYPE);
            let stamp: Stamp = env.payload_as().unwrap();
            assert_eq!(stamp.sent_us, 1_700_000_000_000_000);
            if size >= 200 {
                assert_eq!(body.len(), size);
            }
        }
    }
}
