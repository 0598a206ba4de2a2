//! The worker's counters and histograms, registered for Prometheus and readable by tests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::settle::Settled;

/// `{queue, outcome}` of a settled delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The work queue.
    pub queue: String,
    /// `ack`, `retry`, `dead`, `requeue` or `lost` (ack not sent; the broker redelivers).
    pub outcome: &'static str,
}

/// `{queue}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The work queue.
    pub queue: String,
}

/// Everything the worker counts. Cheap to update from many tasks.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Settled deliveries by queue and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Handler run time in seconds, by queue.
    pub handler_duration: Family<QueueLabels, Histogram>,
    /// Seconds from a handler's outcome to its delivery settled (a republish and its confirm,
    /// then the ack), by queue.
    pub settle_duration: Family<QueueLabels, Histogram>,
    /// Handlers running now.
    pub in_flight: Gauge,
    /// Now minus the event's `ts`, in seconds, when its handler starts, by queue.
    pub event_lag: Family<QueueLabels, Histogram>,
    /// Broker sessions established after the first one.
    pub reconnects: Counter,
    /// Broker sessions established.
    pub sessions: Counter,
    /// Connected and consuming: what `/readyz` reports.
    pub ready: std::sync::Arc<crate::metrics::Readiness>,
    /// In-process retry waits that held a lane, by lane queue.
    pub lane_waits: Family<QueueLabels, Counter>,
    /// 1 for each lane this worker owns now, by lane queue.
    pub lanes_owned: Family<QueueLabels, Gauge>,
    /// Lanes this worker took over or released, by lane queue.
    pub lane_handovers: Family<QueueLabels, Counter>,
    /// Stale redeliveries acked because the handler's status check found their effect done.
    pub stale_done: Family<QueueLabels, Counter>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            deliveries: Family::default(),
            handler_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            settle_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            in_flight: Gauge::default(),
            event_lag: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 16))
            }),
            reconnects: Counter::default(),
            sessions: Counter::default(),
            ready: Default::default(),
            lane_waits: Family::default(),
            lanes_owned: Family::default(),
            lane_handovers: Family::default(),
            stale_done: Family::default(),
        }
    }
}

impl WorkerMetrics {
    /// Registers every metric under the `warren_worker_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("warren_worker");
        r.register(
            "deliveries",
            "Settled deliveries by queue and outcome (ack, retry, dead, requeue, lost: the ack \
             could not be sent, the broker redelivers)",
            self.deliveries.clone(),
        );
        r.register(
            "handler_duration_seconds",
            "Handler run time",
            self.handler_duration.clone(),
        );
        r.register(
            "settle_duration_seconds",
            "Time from a handler's outcome to its delivery settled: a retry or dead letter's \
             republish and confirm, then the ack",
            self.settle_duration.clone(),
        );
        r.register("in_flight", "Handlers running now", self.in_flight.clone());
        r.register(
            "event_lag_seconds",
            "Now minus the event's ts when its handler starts, by queue",
            self.event_lag.clone(),
        );
        r.register(
            "reconnects",
            "Broker sessions re-established after a loss",
            self.reconnects.clone(),
        );
        r.register(
            "lane_waits",
            "In-process retry waits that held a lane (laned queues), by lane queue",
            self.lane_waits.clone(),
        );
        r.register(
            "lane_owned",
            "1 for each lane this worker owns now, by lane queue",
            self.lanes_owned.clone(),
        );
        r.register(
            "lane_handovers",
            "Lanes this worker took over or released, by lane queue",
            self.lane_handovers.clone(),
        );
        r.register(
            "stale_done",
            "Stale redeliveries acked (counted as ack deliveries too) because the handler's \
             status check found their effect done, by queue",
            self.stale_done.clone(),
        );
    }

    /// Handles on one queue's series, resolved once so the per-message path does not allocate.
    pub fn for_queue(&self, queue: &str) -> QueueMetrics {
        let outcome = |outcome| {
            self.deliveries
                .get_or_create(&DeliveryLabels {
                    queue: queue.to_string(),
                    outcome,
                })
                .clone()
        };
        QueueMetrics {
            ack: outcome("ack"),
            retry: outcome("retry"),
            dead: outcome("dead"),
            requeue: outcome("requeue"),
            lost: outcome("lost"),
            handler_duration: self
                .handler_duration
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                })
                .clone(),
            settle_duration: self
                .settle_duration
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                })
                .clone(),
            in_flight: self.in_flight.clone(),
            event_lag: self
                .event_lag
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                })
                .clone(),
            lane_waits: self
                .lane_waits
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                })
                .clone(),
            stale_done: self
                .stale_done
                .get_or_create(&QueueLabels {
                    queue: queue.to_string(),
                })
                .clone(),
        }
    }

    /// Deliveries of `queue` settled with `outcome` so far.
    pub fn count(&self, queue: &str, outcome: &'static str) -> u64 {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                queue: queue.to_string(),
                outcome,
            })
            .get()
    }
}

/// One queue's series.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    ack: Counter,
    retry: Counter,
    dead: Counter,
    requeue: Counter,
    lost: Counter,
    /// Handler run time.
    pub handler_duration: Histogram,
    /// Outcome → settled time.
    pub settle_duration: Histogram,
    /// Handlers running now (shared by all queues).
    pub in_flight: Gauge,
    /// Event lag.
    pub event_lag: Histogram,
    /// In-process retry waits (laned queues).
    pub lane_waits: Counter,
    /// Stale redeliveries acked after a status check.
    pub stale_done: Counter,
}

impl QueueMetrics {
    pub(crate) fn settled(&self, settled: Settled) {
        match settled {
            Settled::Acked => &self.ack,
            Settled::Retried | Settled::Deferred => &self.retry,
            Settled::DeadLettered => &self.dead,
            Settled::Requeued => &self.requeue,
            Settled::Lost => &self.lost,
        }
        .inc();
    }
}
