//! Out to the broker: publishes outbox slots, takes their confirms back, and moves the cursor
//! past what the broker confirmed.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Pump;
use crate::amqp::{AmqpError, Message};
use crate::bridge::Stats;

impl Pump {
    /// Publishes slot `seq` if the broker is up; otherwise it waits for the reconnect.
    pub(super) async fn publish(&mut self, seq: u64) {
        let Some(broker) = &self.broker else {
            self.dirty = true;
            return;
        };
        let Some(out) = self.outbox.mark_sent(seq) else {
            return;
        };
        let sent = broker
            .publisher
            .send(Message {
                exchange: &out.exchange,
                routing_key: &out.routing_key,
                body: &out.body,
                properties: out.properties.clone(),
                mandatory: true,
            })
            .await;
        match sent {
            Ok(confirm) => {
                Stats::add(&self.stats.published, 1);
                self.window.push((seq, Instant::now()), confirm);
            }
            Err(error) => self.broker_failed(&error.to_string()),
        }
    }

    pub(super) async fn publish_due(&mut self) {
        self.dirty = false;
        for seq in self.outbox.due(Instant::now()) {
            // A blocked connection (memory or disk alarm) takes no publishes: writing would
            // park this loop on the socket, and with it confirms, acks and shutdown.
            if self
                .broker
                .as_ref()
                .is_none_or(|b| b.conn.status().blocked())
            {
                self.dirty = true;
                return;
            }
            self.publish(seq).await;
        }
        self.dirty |= self.outbox.has_waiting();
    }

    pub(super) fn on_confirm(
        &mut self,
        (seq, sent): (u64, Instant),
        result: Result<(), AmqpError>,
    ) {
        if matches!(
            result,
            Ok(()) | Err(AmqpError::Returned { .. } | AmqpError::Nacked { .. })
        ) {
            let latency = &self.stats.latency.confirm;
            latency.observe(sent.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => {
                if self.outbox.confirm(seq) {
                    Stats::add(&self.stats.confirmed, 1);
                    self.since_flush += 1;
                }
            }
            Err(error @ AmqpError::Returned { .. }) => {
                let n = self.stats.unroutable.fetch_add(1, Ordering::Relaxed) + 1;
                if self.warn_unroutable.ready() {
                    // The topology's alternate exchange keeps unbound event types in
                    // `<events>.unrouted`; a return means it is missing or routes nowhere
                    // (its queue deleted or expired), or the ingress DLQ is gone.
                    tracing::warn!(%error, unroutable_total = n, "Publish matched no queue, not even the alternate exchange's <events>.unrouted (apply the topology again); dropped by the broker.");
                }
                if self.outbox.confirm(seq) {
                    Stats::add(&self.stats.confirmed, 1);
                    self.since_flush += 1;
                }
            }
            Err(error @ AmqpError::Nacked { .. }) => {
                let n = self.stats.nacked.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(delay) = self.outbox.nack(seq, Instant::now())
                    && self.warn_nacked.ready()
                {
                    tracing::warn!(
                        %error,
                        nacked_total = n,
                        retry_in_ms = delay.as_millis() as u64,
                        "Publish nacked; retrying in order."
                    );
                }
                self.dirty = true;
            }
            Err(error) => self.broker_failed(&error.to_string()),
        }
    }

    /// Publishes the loop's state for `/metrics` and `/readyz`: two relaxed stores.
    pub(super) fn report_state(&self) {
        let stats = &self.stats;
        stats
            .in_flight
            .store(self.outbox.len() as u64, Ordering::Relaxed);
        let subscribed = self.upstream.is_none() || self.ws.is_some();
        let silent = self.silent_since.is_some();
        stats
            .ready
            .set(self.broker.is_some() && subscribed && !silent);
    }

    pub(super) fn advance_cursor(&mut self) {
        if let Some(id) = self.outbox.pop_confirmed() {
            self.cursor = Some(id);
            self.dedup.raise_floor(id);
            self.stats.set_cursor(id);
            self.flush_cursor(false);
        }
    }

    /// Hands the cursor to the writer: on the timer, or once a window's worth has moved, so a
    /// crash replays at most about two windows.
    pub(super) fn flush_cursor(&mut self, timer: bool) {
        if self.cursor == self.cursor_queued || !(timer || self.since_flush >= self.window_size) {
            return;
        }
        if let Some(tx) = &self.cursor_tx {
            tx.send_replace(self.cursor);
        }
        self.cursor_queued = self.cursor;
        self.since_flush = 0;
    }
}
