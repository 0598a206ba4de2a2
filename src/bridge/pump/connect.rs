//! Connections: the broker (with republish of everything unconfirmed after a reconnect) and
//! the upstream (subscribe with the cursor), their failures, backoff, pings and the idle deadline.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage};

use super::{Broker, CONFIRM_TIMEOUT, Pump, Ws};
use crate::amqp::{self, ConfirmWindow, Publisher};
use crate::bridge::Stats;
use crate::bridge::upstream;

impl Pump {
    /// Checked on the tick: a per-frame timer would cost more than the frame.
    pub(super) fn check_idle(&mut self) {
        if self
            .ws
            .as_ref()
            .is_some_and(|w| w.last_frame.elapsed() > self.idle_timeout)
        {
            let secs = self.idle_timeout.as_secs_f32();
            self.upstream_failed(&format!("no frame for {secs}s (idle deadline)"));
        }
    }

    /// Pongs keep the idle deadline at bay but not this one: a producer stuck behind a live
    /// socket sends pongs and no events. Resubscribing from the cursor asks for a fresh session.
    pub(super) fn check_silence(&mut self) {
        if self.silence_timeout.is_zero() {
            return;
        }
        let Some(ws) = &self.ws else { return };
        if ws.last_event.elapsed() <= self.silence_timeout {
            return;
        }
        let first = self.silent_since.is_none();
        let since = *self.silent_since.get_or_insert(ws.last_event);
        self.ws = None;
        // At once: the deadline itself paces resubscribes to a silent upstream.
        self.ws_retry_at = Instant::now();
        let silences = self.stats.upstream_silences.fetch_add(1, Ordering::Relaxed) + 1;
        let silent_secs = format!("{:.1}", since.elapsed().as_secs_f64());
        let resume_from = self
            .cursor
            .map(|c| c.to_string())
            .unwrap_or_else(|| "latest".into());
        if first {
            tracing::warn!(
                %silent_secs,
                deadline_secs = self.silence_timeout.as_secs_f64(),
                silences,
                %resume_from,
                "Upstream silent past the deadline (pings answered, no events); resubscribing from the cursor."
            );
        } else {
            tracing::warn!(%silent_secs, silences, %resume_from, "Upstream still silent; resubscribing again.");
        }
    }

    pub(super) async fn ensure_broker(&mut self) {
        if self.broker.is_some() || Instant::now() < self.broker_retry_at {
            return;
        }
        let attempt = async {
            let conn = amqp::connect(&self.url, "bridge", "publish").await?;
            match Publisher::open(&conn).await {
                Ok(p) => Ok(Broker {
                    publisher: p.with_confirm_timeout(CONFIRM_TIMEOUT),
                    conn,
                }),
                Err(e) => {
                    amqp::close(&conn).await;
                    Err(e)
                }
            }
        };
        let result = tokio::select! {
            _ = self.stop.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(broker) => {
                Stats::add(&self.stats.broker_connects, 1);
                self.broker_backoff.connected();
                let pending = self.outbox.len();
                tracing::info!(pending, "Broker connected; publishing.");
                self.broker = Some(broker);
                self.window = ConfirmWindow::new(self.window_size);
                self.outbox.resend_all();
                self.dirty = true;
                self.publish_due().await;
            }
            Err(error) => {
                let delay = self.broker_backoff.next_delay();
                self.broker_retry_at = Instant::now() + delay;
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Cannot reach the broker.");
            }
        }
    }

    pub(super) async fn ensure_upstream(&mut self) {
        let Some(settings) = &self.upstream else {
            return;
        };
        if self.ws.is_some() || self.broker.is_none() || Instant::now() < self.ws_retry_at {
            return;
        }
        let resume = self.cursor;
        let result = tokio::select! {
            _ = self.stop.cancelled() => return,
            r = upstream::connect(settings, resume, self.connect_timeout) => r,
        };
        match result {
            Ok(stream) => {
                Stats::add(&self.stats.upstream_connects, 1);
                self.ws_backoff.connected();
                tracing::info!(
                    resume_from = %resume.map(|c| c.to_string()).unwrap_or_else(|| "latest".into()),
                    "Upstream subscribed."
                );
                let now = Instant::now();
                self.ws = Some(Ws {
                    stream,
                    last_frame: now,
                    last_event: now,
                });
                let _ = self.stats.last_event_ms.compare_exchange(
                    0,
                    super::now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Err(error) => {
                let delay = self.ws_backoff.next_delay();
                self.ws_retry_at = Instant::now() + delay;
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Cannot reach the upstream.");
            }
        }
    }

    pub(super) fn upstream_failed(&mut self, reason: &str) {
        if self.ws.take().is_none() {
            return;
        }
        let delay = self.ws_backoff.next_delay();
        self.ws_retry_at = Instant::now() + delay;
        tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "Upstream connection lost; reconnecting.");
    }

    pub(super) fn broker_failed(&mut self, reason: &str) {
        let Some(broker) = self.broker.take() else {
            return;
        };
        tokio::spawn(async move { amqp::close(&broker.conn).await });
        self.window = ConfirmWindow::new(self.window_size);
        self.outbox.resend_all();
        self.dirty = true;
        let delay = self.broker_backoff.next_delay();
        self.broker_retry_at = Instant::now() + delay;
        tracing::warn!(
            %reason,
            unconfirmed = self.outbox.len(),
            retry_in_ms = delay.as_millis() as u64,
            "Broker connection lost; will republish everything unconfirmed."
        );
    }

    pub(super) fn check_broker(&mut self) {
        if self
            .broker
            .as_ref()
            .is_some_and(|b| !b.conn.status().connected())
        {
            self.broker_failed("the connection is closed");
        }
    }

    pub(super) async fn ping(&mut self) {
        let Some(ws) = &mut self.ws else { return };
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            ws.stream.send(WsMessage::Ping(Bytes::new())),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.upstream_failed(&format!("ping: {e}")),
            Err(_) => self.upstream_failed("ping: the socket accepts no data"),
        }
    }
}
