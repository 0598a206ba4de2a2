//! Shutdown: stop reading, wait for outstanding confirms up to the deadline, persist the
//! cursor; and the background task that persists the cursor while running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::{Pump, TICK, Wake, now_ms};
use crate::amqp;
use crate::bridge::Stats;
use crate::bridge::cursor::CursorFile;
use crate::error::Error;

impl Pump {
    /// Stops reading, waits for outstanding confirms up to the deadline, persists the cursor.
    pub(super) async fn finish(mut self) -> Result<(), Error> {
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.stream.close(None)).await;
        }
        self.ingress_stop.cancel();
        // Jobs not taken yet are dropped; their requests are answered 503 and retried later.
        self.jobs = None;
        self.stop = CancellationToken::new();
        let stop = self.stop.clone();
        let deadline = self.shutdown_timeout;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            stop.cancel();
        });
        let mut tick = tokio::time::interval(TICK);
        while !self.outbox.is_empty() && !self.stop.is_cancelled() {
            self.ensure_broker().await;
            if self.dirty {
                self.publish_due().await;
            }
            let wake = {
                let window = &mut self.window;
                tokio::select! {
                    _ = self.stop.cancelled() => Wake::Stop,
                    Some((tag, r)) = window.next(), if !window.is_empty() => Wake::Confirm(tag, r),
                    _ = tick.tick() => Wake::Tick,
                }
            };
            match wake {
                Wake::Confirm(tag, r) => self.on_confirm(tag, r),
                Wake::Tick => self.check_broker(),
                _ => {}
            }
            self.advance_cursor();
            let in_flight = self.outbox.len() as u64;
            self.stats.in_flight.store(in_flight, Ordering::Relaxed);
        }
        timer.abort();
        if !self.outbox.is_empty() {
            tracing::warn!(
                unconfirmed = self.outbox.len(),
                "Shutdown deadline passed; unconfirmed events will be replayed from the cursor."
            );
        }
        let persisted = self.persist_final().await;
        if let Some(broker) = self.broker.take() {
            amqp::close(&broker.conn).await;
        }
        if let Some(ingress) = self.ingress.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), ingress).await;
        }
        persisted?;
        tracing::info!(
            cursor = %self.cursor.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
            "Bridge stopped cleanly."
        );
        Ok(())
    }

    async fn persist_final(&mut self) -> Result<(), Error> {
        drop(self.cursor_tx.take());
        if let Some(writer) = self.cursor_writer.take() {
            let _ = writer.await;
        }
        let (Some(file), Some(id)) = (self.cursor_file.clone(), self.cursor) else {
            return Ok(());
        };
        let path = file.path().to_path_buf();
        match tokio::task::spawn_blocking(move || file.store(id)).await {
            Ok(Ok(())) => {
                self.stats
                    .cursor_persisted_at_ms
                    .store(now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(source)) => Err(Error::Io { path, source }),
            Err(e) => Err(Error::Other(format!(
                "{}: cursor write failed: {e}",
                path.display()
            ))),
        }
    }
}

/// Persists each cursor it is handed, coalescing while a write is in progress.
pub(super) async fn write_cursor(
    file: CursorFile,
    mut rx: watch::Receiver<Option<Ulid>>,
    stats: Arc<Stats>,
) {
    rx.mark_unchanged();
    while rx.changed().await.is_ok() {
        let Some(id) = *rx.borrow_and_update() else {
            continue;
        };
        let f = file.clone();
        match tokio::task::spawn_blocking(move || f.store(id)).await {
            Ok(Ok(())) => stats
                .cursor_persisted_at_ms
                .store(now_ms(), Ordering::Relaxed),
            Ok(Err(error)) => {
                tracing::error!(path = %file.path().display(), %error, "Cannot persist the cursor.");
            }
            Err(_) => return,
        }
    }
}
