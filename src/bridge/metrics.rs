//! The bridge's Prometheus metrics. Counters and gauges are read from [`Stats`]' atomics at
//! scrape time, so the per-event path pays one relaxed add per counter and nothing else;
//! only the two latency histograms are observed per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Stats;

/// The histograms the bridge observes per publish and per confirm.
#[derive(Debug)]
pub struct Latencies {
    /// Publish sent to confirm received, in seconds.
    pub confirm: Histogram,
    /// Now minus the event's `ts` when it is first published, in seconds.
    pub event_lag: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            // 100 µs … ~3.3 s.
            confirm: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 5 ms … ~164 s, the same buckets as the worker's event lag.
            event_lag: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
        }
    }
}

/// Exposes a running bridge's [`Stats`] under the `warren_bridge_` prefix.
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    stats: Arc<Stats>,
}

impl BridgeMetrics {
    /// Metrics reading `stats`.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self { stats }
    }

    /// Registers the histograms and a collector for everything else.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("warren_bridge");
        r.register(
            "publish_confirm_seconds",
            "Publish sent to broker confirm received",
            self.stats.latency.confirm.clone(),
        );
        r.register(
            "event_lag_seconds",
            "Now minus the event's ts when the bridge first publishes it",
            self.stats.latency.event_lag.clone(),
        );
        r.register_collector(Box::new(self.clone()));
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Seconds from `then_ms` (epoch ms) to `now_ms`; `None` when `then_ms` is unset.
fn age_secs(now_ms: u64, then_ms: u64) -> Option<f64> {
    (then_ms > 0).then(|| now_ms.saturating_sub(then_ms) as f64 / 1000.0)
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels (`counters` would render an empty `{}`).
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<f64>,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    match value {
        Some(v) => ConstGauge::new(v).encode(metric),
        None => Ok(()),
    }
}

impl Collector for BridgeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let (ws, hook) = (("source", "ws"), ("source", "webhook"));
        counters(
            &mut encoder,
            "events_received",
            "Events received by source (ws, webhook) and outcome (published, duplicate, invalid)",
            &[
                (&[ws, ("outcome", "published")], load(&s.accepted)),
                (&[ws, ("outcome", "duplicate")], load(&s.duplicates)),
                (&[ws, ("outcome", "invalid")], load(&s.invalid)),
                (
                    &[hook, ("outcome", "published")],
                    load(&s.webhooks_published),
                ),
                (
                    &[hook, ("outcome", "duplicate")],
                    load(&s.webhooks_duplicate),
                ),
                (&[hook, ("outcome", "invalid")], load(&s.webhooks_rejected)),
            ],
        )?;
        let returned = load(&s.unroutable);
        counters(
            &mut encoder,
            "publishes",
            "Publishes by broker answer: confirmed (routed), returned (unroutable), nacked (retried)",
            &[
                (
                    &[("outcome", "confirmed")],
                    load(&s.confirmed).saturating_sub(returned),
                ),
                (&[("outcome", "returned")], returned),
                (&[("outcome", "nacked")], load(&s.nacked)),
            ],
        )?;
        counters(
            &mut encoder,
            "publishes_sent",
            "Publishes sent to the broker, republishes after a reconnect or nack included",
            &[(&[], load(&s.published))],
        )?;
        counters(
            &mut encoder,
            "reconnects",
            "Connections re-established after the first, by peer (upstream, broker)",
            &[
                (
                    &[("peer", "upstream")],
                    load(&s.upstream_connects).saturating_sub(1),
                ),
                (
                    &[("peer", "broker")],
                    load(&s.broker_connects).saturating_sub(1),
                ),
            ],
        )?;
        counter(
            &mut encoder,
            "upstream_silences",
            "Times the upstream sent no event within --silence-timeout (each one a resubscribe)",
            load(&s.upstream_silences),
        )?;
        gauge(
            &mut encoder,
            "in_flight",
            "Publishes not yet confirmed (the outbox length)",
            Some(load(&s.in_flight) as f64),
        )?;
        let now = now_ms();
        gauge(
            &mut encoder,
            "cursor_age_seconds",
            "Now minus the time of the cursor's eventId (absent before the first cursor)",
            age_secs(now, load(&s.cursor_ms)),
        )?;
        gauge(
            &mut encoder,
            "seconds_since_last_event",
            "Time since the upstream's last event, or since the first subscribe before any (absent without an upstream)",
            age_secs(now, load(&s.last_event_ms)),
        )?;
        gauge(
            &mut encoder,
            "cursor_persisted_age_seconds",
            "Time since the cursor file was last written (absent before the first write)",
            age_secs(now, load(&s.cursor_persisted_at_ms)),
        )?;
        gauge(
            &mut encoder,
            "ready",
            "1 when the broker is connected and the upstream subscribed, as /readyz reports",
            Some(if s.ready.get() { 1.0 } else { 0.0 }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(stats: &Arc<Stats>) -> String {
        let mut registry = Registry::default();
        BridgeMetrics::new(stats.clone()).register(&mut registry);
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
        body
    }

    #[test]
    fn counters_read_the_stats_and_are_named_with_the_prefix() {
        let stats = Arc::new(Stats::default());
        stats.accepted.store(7, Ordering::Relaxed);
        stats.confirmed.store(10, Ordering::Relaxed);
        stats.unroutable.store(3, Ordering::Relaxed);
        stats.broker_connects.store(3, Ordering::Relaxed);
        stats.upstream_silences.store(2, Ordering::Relaxed);
        stats.latency.confirm.observe(0.002);
        let body = scrape(&stats);
        for line in [
            "warren_bridge_events_received_total{source=\"ws\",outcome=\"published\"} 7",
            "warren_bridge_publishes_total{outcome=\"confirmed\"} 7",
            "warren_bridge_publishes_total{outcome=\"returned\"} 3",
            "warren_bridge_reconnects_total{peer=\"broker\"} 2",
            "warren_bridge_reconnects_total{peer=\"upstream\"} 0",
            "warren_bridge_upstream_silences_total 2",
            "warren_bridge_publish_confirm_seconds_count 1",
            "warren_bridge_ready 0.0",
        ] {
            assert!(body.lines().any(|l| l == line), "{line} missing:\n{body}");
        }
        assert!(body.contains("warren_bridge_publish_confirm_seconds_bucket{le="));
        assert!(
            !body
                .lines()
                .any(|l| l.starts_with("warren_bridge_cursor_age_seconds ")),
            "no cursor, no age:\n{body}"
        );
        assert!(
            !body
                .lines()
                .any(|l| l.starts_with("warren_bridge_seconds_since_last_event ")),
            "never subscribed, no silence gauge:\n{body}"
        );
    }

    #[test]
    fn ages_are_measured_from_epoch_ms_and_absent_when_unset() {
        assert_eq!(age_secs(10_500, 0), None);
        assert_eq!(age_secs(10_500, 10_000), Some(0.5));
        assert_eq!(
            age_secs(9_000, 10_000),
            Some(0.0),
            "clock skew is not negative"
        );
    }
}
