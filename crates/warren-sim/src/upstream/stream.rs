//! The stream: events generated at the configured pace into the replay buffer every
//! connection sends from.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::Shared;
use crate::catalog::{Catalog, SimEvent};

/// Events the generator may run ahead of the fastest subscriber at `rate` 0.
const MAX_LEAD: u64 = 8192;

/// An event on the stream, its frame ready to send.
pub(super) struct Queued {
    pub(super) seq: u64,
    pub(super) id: Ulid,
    pub(super) event_type: &'static str,
    pub(super) text: Utf8Bytes,
}

impl From<SimEvent> for Queued {
    fn from(e: SimEvent) -> Self {
        // The catalog serializes with serde_json, so the frame is UTF-8.
        let text = Utf8Bytes::try_from(Bytes::from(e.frame)).unwrap_or_default();
        Queued {
            seq: e.seq,
            id: e.id,
            event_type: e.event_type,
            text,
        }
    }
}

pub(super) struct Buffer {
    /// Seq of the first buffered event.
    pub(super) start: u64,
    pub(super) events: VecDeque<(Instant, Arc<Queued>)>,
}

impl Buffer {
    pub(super) fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    /// The position just after `id`, and whether events before it may have been evicted.
    pub(super) fn position_after(&self, id: Ulid) -> (u64, bool) {
        let idx = self.events.partition_point(|(_, e)| e.id <= id);
        (self.start + idx as u64, idx == 0 && self.start > 0)
    }

    /// Up to `max` events from `from` (moved up to the buffer's start if evicted).
    pub(super) fn take(&self, from: u64, max: usize) -> (u64, Vec<Arc<Queued>>) {
        let from = from.max(self.start);
        let skip = (from - self.start) as usize;
        let batch = self
            .events
            .iter()
            .skip(skip)
            .take(max)
            .map(|(_, e)| e.clone())
            .collect();
        (from, batch)
    }
}

/// Puts events on the stream at the configured pace.
pub(super) async fn generate(shared: Arc<Shared>, shutdown: CancellationToken) {
    let s = &shared.settings;
    let mut subscribed = shared.subscribed.subscribe();
    if !s.pregenerate {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = subscribed.wait_for(|s| *s) => if r.is_err() { return },
        }
    }
    let mut catalog = Catalog::new(s.seed, s.start_ms, s.rate, &s.agent_id);
    let mut sent_up_to = shared.sent_up_to.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    tracing::info!(events = s.events, rate = s.rate, "Emitting events.");
    while catalog.generated() < s.events {
        let generated = catalog.generated();
        let due = if s.pregenerate {
            (s.events - generated).min(1024)
        } else if s.rate > 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let target = (started.elapsed().as_secs_f64() * f64::from(s.rate)) as u64 + 1;
            target.min(s.events).saturating_sub(generated).min(50_000)
        } else {
            let ready = sent_up_to.wait_for(|&sent| generated.saturating_sub(sent) < MAX_LEAD);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = ready => if r.is_err() { return },
            }
            (s.events - generated).min(1024)
        };
        if due == 0 {
            continue;
        }
        let batch: Vec<Arc<Queued>> = (0..due)
            .map(|_| Arc::new(catalog.next_event().into()))
            .collect();
        shared.record(|w| {
            for e in &batch {
                writeln!(w, "{} {}", e.id, e.event_type)?;
            }
            Ok(())
        });
        let end = {
            let mut buf = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            buf.events.extend(batch.into_iter().map(|e| (now, e)));
            while buf.events.len() > s.replay_capacity
                || buf
                    .events
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > s.replay_window)
            {
                buf.events.pop_front();
                buf.start += 1;
            }
            buf.end()
        };
        shared.end.send_replace(end);
    }
    tracing::info!(
        events = s.events,
        "Every event emitted; still serving replays."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_position_is_just_after_the_id() {
        let mut cat = Catalog::new(1, 1000, 0, "a");
        let events: Vec<Arc<Queued>> = (0..10).map(|_| Arc::new(cat.next_event().into())).collect();
        let now = Instant::now();
        let mut buf = Buffer {
            start: 0,
            events: events.iter().map(|e| (now, e.clone())).collect(),
        };
        assert_eq!(buf.position_after(events[3].id), (4, false));
        assert_eq!(buf.position_after(events[9].id), (10, false));
        buf.events.drain(..5);
        buf.start = 5;
        assert_eq!(buf.position_after(events[2].id), (5, true));
        let (from, batch) = buf.take(2, 3);
        assert_eq!((from, batch.len(), batch[0].seq), (5, 3, 5));
    }
}
