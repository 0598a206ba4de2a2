//! `dlq replay`: each matching dead letter goes back to the queue it failed in (default
//! exchange, routing key = that queue), with its attempts reset and `x-warren-replayed` + 1. The
//! DLQ copy is acked only after the republish is confirmed, so a kill at any moment loses
//! nothing and duplicates at most `window` messages (1 by default), which idempotency keys absorb.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{DeadLetter, DlqRef, Filter, Item, Outcome, Report, Walk};
use crate::amqp::{
    self, AmqpError, AmqpUrl, BasicProperties, ConfirmWindow, Delivery, Headers, Message,
    Publisher, hdr, header_u32, is_broker_death_header, republish_properties, set_header,
};
use crate::error::Error;
use crate::topology::Topology;

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Which dead letters.
    pub filter: Filter,
    /// Report what would be replayed; change nothing.
    pub dry_run: bool,
    /// At most this many messages per second.
    pub rate: Option<f64>,
    /// Republishes awaiting their confirm at once; a kill may duplicate up to this many.
    pub window: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Replays the matching dead letters of `dlqs`. Broker errors after the start end the replay
/// early with `aborted` set in the report; what was not replayed stays in its DLQ.
pub async fn replay(
    url: &AmqpUrl,
    topology: &Topology,
    dlqs: &[DlqRef],
    opts: &ReplayOptions,
    shutdown: &CancellationToken,
) -> Result<Report, Error> {
    let read_conn = super::connect(url, "replay-read").await?;
    let publish_conn = super::connect(url, "replay-publish").await?;
    let result = async {
        let publisher = Publisher::open(&publish_conn).await?;
        let mut run = Run {
            topology,
            opts,
            publisher,
            report: Report::new("replay", opts.dry_run),
            matched: 0,
            pacer: opts.rate.map(pacer),
            bar: progress_bar(opts.progress),
        };
        for dlq in dlqs {
            if run.report.aborted.is_some() {
                break;
            }
            // A DLQ that cannot be read ends the replay; what was done so far is reported.
            match Walk::open(&read_conn, dlq).await {
                Ok(walk) => run.dlq(walk, shutdown).await,
                Err(e) if run.report.scans.is_empty() => return Err(e),
                Err(e) => run.report.aborted = Some(e.to_string()),
            }
        }
        run.bar.finish_and_clear();
        Ok::<_, Error>(run.report)
    }
    .await;
    amqp::close(&publish_conn).await;
    amqp::close(&read_conn).await;
    result
}

/// A replayed message whose DLQ copy could not be removed.
const DUPLICATE: &str = "replayed, but the DLQ copy could not be acked: it stays in the DLQ too";

struct Run<'a> {
    topology: &'a Topology,
    opts: &'a ReplayOptions,
    publisher: Publisher,
    report: Report,
    matched: usize,
    pacer: Option<Interval>,
    bar: ProgressBar,
}

impl Run<'_> {
    /// Replays one DLQ's snapshot; whatever goes wrong lands in the report.
    async fn dlq(&mut self, mut walk: Walk, shutdown: &CancellationToken) {
        self.bar.inc_length(walk.total().into());
        let mut window: ConfirmWindow<(Delivery, usize)> = ConfirmWindow::new(self.opts.window);
        let mut read = 0u32;
        while self.report.aborted.is_none() && !self.opts.filter.full(self.matched) {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.report.aborted = Some("interrupted by a signal".into());
                    break;
                }
                next = walk.next_match(&self.opts.filter) => next,
            };
            let (delivery, letter) = match next {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => {
                    self.report.aborted = Some(format!("reading {}: {e}", walk.dlq().name));
                    break;
                }
            };
            self.bar.inc((letter.position - read).into());
            read = letter.position;
            self.matched += 1;
            let idx = self.report.items.len();
            self.report.items.push(item(&letter));
            let target = match target(self.topology, &letter, walk.dlq(), &delivery) {
                Ok(t) => t,
                Err(why) => {
                    self.fail(idx, why);
                    continue;
                }
            };
            if self.opts.dry_run {
                self.report.items[idx].outcome = Outcome::WouldReplay;
                continue;
            }
            if let Some(p) = self.pacer.as_mut() {
                p.tick().await;
            }
            let sent = self
                .publisher
                .send(Message {
                    exchange: &target.0,
                    routing_key: &target.1,
                    body: &delivery.data,
                    properties: replay_properties(&delivery.properties),
                    mandatory: true,
                })
                .await;
            match sent {
                Ok(confirm) => window.push((delivery, idx), confirm),
                Err(e) => {
                    self.fail(idx, e.to_string());
                    self.report.aborted = Some(format!("publishing: {e}"));
                }
            }
            if window.is_full() {
                self.settle_window(&walk, &mut window).await;
            }
        }
        // Settle every outstanding confirm, even after an abort: a confirmed copy must not
        // also stay in the DLQ when its ack can still be sent.
        self.settle_window(&walk, &mut window).await;
        self.bar.inc(walk.total().saturating_sub(read).into());
        match walk.finish().await {
            Ok(scan) => self.report.scans.push(scan),
            Err(e) if self.report.aborted.is_none() => self.report.aborted = Some(e.to_string()),
            Err(_) => {}
        }
    }

    /// Waits for every confirm in the window, then acks the DLQ copy of each message the
    /// broker took. The whole window is settled together because lapin may attach a returned
    /// (unroutable) message to any confirm resolved by the same multiple-ack: returns are
    /// matched to messages by `message_id` instead, and without an id nothing in the window
    /// counts as routed. A copy left in the DLQ is at worst a duplicate; one acked wrongly
    /// would be lost.
    async fn settle_window(&mut self, walk: &Walk, window: &mut ConfirmWindow<(Delivery, usize)>) {
        let mut settled = Vec::with_capacity(window.len());
        while let Some(entry) = window.next().await {
            settled.push(entry);
        }
        let mut returned: Vec<Option<String>> = vec![];
        for (_, result) in &settled {
            match result {
                Err(AmqpError::Returned { message_id, .. }) => returned.push(message_id.clone()),
                Err(AmqpError::Nacked {
                    returned: Some(message_id),
                    ..
                }) => returned.push(message_id.clone()),
                _ => {}
            }
        }
        let unattributed = returned.iter().any(Option::is_none);
        for ((delivery, idx), result) in settled {
            let id = self.report.items[idx].id.clone();
            let was_returned =
                unattributed || id.is_none() && !returned.is_empty() || returned.contains(&id);
            let error = match result {
                Err(e @ AmqpError::Returned { .. }) if was_returned => Some((e.to_string(), false)),
                _ if was_returned => Some((
                    "unroutable: the broker returned a message of this window that cannot be told apart from this one".into(),
                    false,
                )),
                Ok(()) | Err(AmqpError::Returned { .. }) => None,
                Err(e @ AmqpError::Nacked { .. }) => Some((e.to_string(), false)),
                Err(e) => Some((e.to_string(), true)),
            };
            match error {
                Some((why, fatal)) => {
                    if fatal {
                        self.report
                            .aborted
                            .get_or_insert(format!("publishing: {why}"));
                    }
                    self.fail(idx, why);
                }
                None => self.remove(walk, &delivery, idx).await,
            }
        }
    }

    /// Acks the DLQ copy of a confirmed republish.
    async fn remove(&mut self, walk: &Walk, delivery: &Delivery, idx: usize) {
        self.report.items[idx].outcome = Outcome::Replayed;
        if self.report.aborted.is_some() && !walk.can_remove() {
            self.report.items[idx].error = Some(DUPLICATE.into());
            return;
        }
        match walk.remove(delivery).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                self.report.items[idx].error = Some(DUPLICATE.into());
                let dlq = &self.report.items[idx].dlq;
                self.report
                    .aborted
                    .get_or_insert(format!("the channel reading {dlq} closed"));
            }
        }
    }

    fn fail(&mut self, idx: usize, why: String) {
        let item = &mut self.report.items[idx];
        item.outcome = Outcome::Failed;
        item.error = Some(why);
    }
}

fn item(letter: &DeadLetter) -> Item {
    Item {
        dlq: letter.dlq.clone(),
        position: letter.position,
        id: letter.id.clone(),
        event_type: letter.event_type.clone(),
        origin: letter.origin.clone(),
        outcome: Outcome::Failed,
        error: None,
    }
}

/// Where a dead letter goes back to, as (exchange, routing key): its origin queue by the
/// default exchange, which must be a work queue of the topology or one of its lanes (the
/// lane a key hashes to, so the key's events stay in one lane); a stale or foreign header
/// must not route a message anywhere else); an unrouted event goes through the events exchange
/// with its own routing key, to whatever binds it now.
fn target(
    topology: &Topology,
    letter: &DeadLetter,
    dlq: &DlqRef,
    delivery: &Delivery,
) -> Result<(String, String), String> {
    if dlq.unrouted {
        return Ok((
            topology.events_exchange.clone(),
            delivery.routing_key.to_string(),
        ));
    }
    match letter.origin.as_deref() {
        None => Err("no origin queue: a frame the bridge could not parse has nowhere to go back to; fix the producer and export it instead".into()),
        Some(q) if is_work_queue(topology, q) => Ok((String::new(), q.to_string())),
        Some(q) => Err(format!(
            "origin queue '{q}' is not a work queue of {} (check -f/--prefix)",
            topology.source.display()
        )),
    }
}

/// `q` is a work queue of `topology` or a lane of one.
fn is_work_queue(topology: &Topology, q: &str) -> bool {
    topology.queues.iter().any(|s| {
        s.name == q
            || s.lanes.as_ref().is_some_and(|l| {
                (0..l.count).any(|lane| crate::topology::lanes::lane_queue(&s.name, lane) == q)
            })
    })
}

/// The replayed copy's properties: persistent, no expiration, the broker's dead-lettering
/// headers and warren's attempt and not-before removed, `x-warren-replayed` + 1; everything
/// else (trace context, failure history, message id) kept.
pub fn replay_properties(original: &BasicProperties) -> BasicProperties {
    let replayed = header_u32(original, hdr::REPLAYED).saturating_add(1);
    let mut map: BTreeMap<_, _> = original
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| {
                    let k = k.as_str();
                    !is_broker_death_header(k)
                        && k != "x-delivery-count"
                        && k != hdr::ATTEMPT
                        && k != hdr::NOT_BEFORE
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    set_header(&mut map, hdr::REPLAYED, replayed);
    republish_properties(original).with_headers(Headers::from(map))
}

fn pacer(per_second: f64) -> Interval {
    let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

fn progress_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} replaying [{bar:30}] {pos}/{len} read {per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldArray};

    use super::*;
    use crate::amqp::header_str;

    #[test]
    fn a_lane_of_a_work_queue_is_a_replay_target() {
        let t = Topology::parse(
            crate::demo::DEFAULT_TOPOLOGY,
            std::path::Path::new("t.toml"),
            "d.",
        )
        .unwrap();
        let laned = t
            .queues
            .iter()
            .find(|q| q.lanes.is_some())
            .expect("a laned queue");
        let count = laned.lanes.as_ref().unwrap().count;
        assert!(is_work_queue(&t, &laned.name));
        let lane = |i| crate::topology::lanes::lane_queue(&laned.name, i);
        assert!(is_work_queue(&t, &lane(0)));
        assert!(is_work_queue(&t, &lane(count - 1)));
        assert!(!is_work_queue(&t, &lane(count)), "no such lane");
        assert!(!is_work_queue(&t, "d.elsewhere"));
    }

    #[test]
    fn replayed_copy_resets_attempts_and_counts_the_replay() {
        let mut m = BTreeMap::new();
        set_header(&mut m, hdr::ATTEMPT, 5u32);
        set_header(&mut m, hdr::REPLAYED, 2u32);
        set_header(&mut m, hdr::NOT_BEFORE, 99u64);
        set_header(&mut m, hdr::TRACEPARENT, "00-abc-def-01");
        set_header(&mut m, hdr::ERROR, "boom");
        set_header(&mut m, "x-first-death-queue", "q");
        set_header(&mut m, "x-delivery-count", 4u32);
        m.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        let original = BasicProperties::default()
            .with_message_id("01ABC".into())
            .with_expiration("1000".into())
            .with_delivery_mode(1)
            .with_headers(Headers::from(m));
        let p = replay_properties(&original);
        assert_eq!(header_u32(&p, hdr::ATTEMPT), 0);
        assert!(
            header_str(&p, hdr::ATTEMPT).is_none() && amqp::header_u64(&p, hdr::ATTEMPT).is_none()
        );
        assert_eq!(header_u32(&p, hdr::REPLAYED), 3);
        assert!(amqp::header_u64(&p, hdr::NOT_BEFORE).is_none());
        assert_eq!(header_str(&p, hdr::TRACEPARENT), Some("00-abc-def-01"));
        assert_eq!(
            header_str(&p, hdr::ERROR),
            Some("boom"),
            "failure history is kept"
        );
        assert!(amqp::x_death(&p).is_empty());
        assert!(header_str(&p, "x-first-death-queue").is_none());
        assert!(amqp::header_u64(&p, "x-delivery-count").is_none());
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("01ABC"));
        assert!(p.expiration().is_none());
        assert_eq!(*p.delivery_mode(), Some(2));
    }
}
