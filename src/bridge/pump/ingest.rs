//! Frames in: upstream WebSocket frames and webhook jobs become outbox slots, events for the
//! events exchange or invalid frames for the dead-letter exchange.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use ulid::Ulid;

use super::{Pump, now_ms};
use crate::bridge::ingress::WebhookJob;
use crate::bridge::outbox::{Origin, Outgoing};
use crate::bridge::{Stats, route};
use crate::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE_BYTES};

impl Pump {
    pub(super) async fn on_frame(&mut self, frame: Option<Result<WsMessage, WsError>>) {
        let msg = match frame {
            None => return self.upstream_failed("the upstream closed the connection"),
            Some(Err(e)) => {
                // tungstenite fails the connection on these before handing over any bytes:
                // a text frame that is not UTF-8 (its error holds only a lossy rendering of
                // the bad sequence), or a frame over HARD_FRAME_LIMIT (refused from its
                // header, never read). Record it, say why the body is empty, resume.
                let absent = match e {
                    WsError::Utf8(_) => Some(route::ABSENT_INVALID_UTF8),
                    WsError::Capacity(_) => Some(route::ABSENT_OVER_HARD_LIMIT),
                    _ => None,
                };
                if let Some(why) = absent {
                    Stats::add(&self.stats.received, 1);
                    let error =
                        format!("frame rejected by the WebSocket layer, bytes unavailable: {e}");
                    self.dead_letter(Vec::new(), &error, route::BodyNote::Absent(why))
                        .await;
                }
                return self.upstream_failed(&e.to_string());
            }
            Some(Ok(msg)) => msg,
        };
        let now = Instant::now();
        if let Some(ws) = &mut self.ws {
            ws.last_frame = now;
            if matches!(msg, WsMessage::Text(_) | WsMessage::Binary(_)) {
                ws.last_event = now;
                self.stats.last_event_ms.store(now_ms(), Ordering::Relaxed);
                if let Some(since) = self.silent_since.take() {
                    tracing::info!(
                        silent_secs = format!("{:.1}", since.elapsed().as_secs_f64()),
                        "Upstream events flowing again."
                    );
                }
            }
        }
        match msg {
            WsMessage::Text(text) => self.on_text(text.as_bytes()).await,
            WsMessage::Binary(bytes) => {
                Stats::add(&self.stats.received, 1);
                self.dead_letter(
                    bytes.to_vec(),
                    "binary frame; the upstream sends JSON text frames",
                    route::BodyNote::Whole,
                )
                .await;
            }
            WsMessage::Close(frame) => {
                let reason = self.close_reason(frame.as_ref());
                self.upstream_failed(&reason);
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }

    /// The upstream's close code and reason, for the log: a refused subscribe (a bad topic, a
    /// revoked key) says why here. The agent key never appears, even if the reason echoes it.
    pub(super) fn close_reason(&self, frame: Option<&CloseFrame>) -> String {
        let Some(f) = frame else {
            return "the upstream closed the connection (no close code)".into();
        };
        let mut reason: String = f.reason.as_str().chars().take(200).collect();
        if let Some(key) = self.upstream.as_ref().map(|u| u.agent_key.as_str())
            && !key.is_empty()
        {
            reason = reason.replace(key, "***");
        }
        format!(
            "the upstream closed the connection: code {} ({:?}), reason {reason:?}",
            f.code, f.code
        )
    }

    pub(super) async fn on_text(&mut self, frame: &[u8]) {
        Stats::add(&self.stats.received, 1);
        if frame.len() > MAX_ENVELOPE_BYTES {
            let error = EnvelopeError::TooLarge(frame.len()).to_string();
            let kept = frame[..route::TRUNCATED_BYTES].to_vec();
            let note = route::BodyNote::Truncated(frame.len());
            return self.dead_letter(kept, &error, note).await;
        }
        let event = match Envelope::parse(frame) {
            Ok(e) => e,
            Err(error) => {
                let error = error.to_string();
                return self
                    .dead_letter(frame.to_vec(), &error, route::BodyNote::Whole)
                    .await;
            }
        };
        let Ok(id) = Ulid::from_string(&event.event_id) else {
            let error = "field 'eventId': not a ULID";
            return self
                .dead_letter(frame.to_vec(), error, route::BodyNote::Whole)
                .await;
        };
        if !self.dedup.accept(id) {
            Stats::add(&self.stats.duplicates, 1);
            return;
        }
        Stats::add(&self.stats.accepted, 1);
        self.observe_lag(event.ts);
        let traceparent = route::frame_traceparent(frame).unwrap_or_else(route::new_traceparent);
        let out = self.event_message(&event, frame.to_vec(), &traceparent);
        let seq = self.outbox.push(out, Origin::Stream(id));
        self.publish(seq).await;
    }

    pub(super) async fn on_job(&mut self, job: WebhookJob) {
        self.observe_lag(job.event.ts);
        let traceparent = job
            .traceparent
            .clone()
            .unwrap_or_else(route::new_traceparent);
        let out = self.event_message(&job.event, job.body, &traceparent);
        let seq = self.outbox.push(out, Origin::Webhook(Some(job.reply)));
        self.publish(seq).await;
    }

    pub(super) fn event_message(
        &self,
        event: &Envelope,
        body: Vec<u8>,
        traceparent: &str,
    ) -> Outgoing {
        let live_ttl = if self.topology.is_live_only(&event.event_type) {
            self.topology.live_ttl
        } else {
            None
        };
        Outgoing {
            exchange: self.events_exchange.clone(),
            routing_key: event.event_type.clone(),
            properties: route::event_properties(
                event,
                live_ttl,
                traceparent,
                self.topology.lane_headers(event),
            ),
            body,
        }
    }

    pub(super) async fn dead_letter(&mut self, body: Vec<u8>, error: &str, note: route::BodyNote) {
        let n = self.stats.invalid.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn_invalid.ready() {
            tracing::warn!(%error, invalid_total = n, "Invalid frame; dead-lettering it.");
        }
        let now_secs = now_ms() / 1000;
        let out = Outgoing {
            exchange: self.dead_letter_exchange.clone(),
            routing_key: self.events_exchange.to_string(),
            properties: route::invalid_properties(error, &self.events_exchange, note, now_secs),
            body,
        };
        let seq = self.outbox.push(out, Origin::Invalid);
        self.publish(seq).await;
    }

    /// Now minus the event's own timestamp, at its first publish.
    pub(super) fn observe_lag(&self, ts_ms: u64) {
        let lag = now_ms().saturating_sub(ts_ms) as f64 / 1000.0;
        self.stats.latency.event_lag.observe(lag);
    }
}
