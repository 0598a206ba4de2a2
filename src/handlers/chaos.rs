//! `chaos`: a handler whose behaviour the event itself dictates, for tests, demos and fault
//! drills. Never point it at production traffic: an event can make it abort the process.
//!
//! The payload may carry `"chaos": {"sleep_ms": 500, "action": "transient", "until_attempt": 2,
//! "retry_after_ms": 3000}`. Actions: `ok` (default), `transient`, `permanent`, `unavailable`,
//! `retry_after`, `panic`, `abort`. With `until_attempt: N` the action applies only while fewer
//! than N attempts have failed; after that the handler succeeds.
//!
//! With a record file, every call appends a `start` line when it begins and one with its outcome
//! when it ends, each `<eventId> <attempt> <start|outcome> <epoch_ms> <returned_from|->` (the
//! retry tier the delivery came back from, `-` for a first delivery), in a single `write` so
//! several worker processes can share the file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::envelope::Envelope;
use crate::worker::{Context, Handler, HandlerError, HandlerResult};

/// The payload-driven test handler.
#[derive(Debug, Default)]
pub struct ChaosHandler {
    record: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct Payload {
    #[serde(default)]
    chaos: Directive,
}

#[derive(Debug, Default, Deserialize)]
struct Directive {
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    until_attempt: Option<u32>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl ChaosHandler {
    /// A chaos handler that appends each call to `record`, if given.
    pub fn new(record: Option<PathBuf>) -> Self {
        Self { record }
    }

    fn record(&self, event: &Envelope, ctx: &Context, outcome: &str) {
        let Some(path) = &self.record else { return };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let line = format!(
            "{} {} {} {now_ms} {}\n",
            event.event_id,
            ctx.attempt,
            outcome,
            ctx.returned_from.as_deref().unwrap_or("-")
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(error) = written {
            tracing::error!(path = %path.display(), %error, "Cannot append to the chaos record file.");
        }
    }
}

impl Handler for ChaosHandler {
    fn name(&self) -> &str {
        "chaos"
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        let directive = event
            .payload_as::<Payload>()
            .map(|p| p.chaos)
            .unwrap_or_default();
        self.record(event, ctx, "start");
        if directive.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(directive.sleep_ms)).await;
        }
        let active = directive.until_attempt.is_none_or(|n| ctx.attempt < n);
        let action = if active {
            directive.action.as_deref().unwrap_or("ok")
        } else {
            "ok"
        };
        self.record(event, ctx, action);
        match action {
            "ok" => Ok(()),
            "transient" => Err(HandlerError::transient("chaos: transient failure")),
            "permanent" => Err(HandlerError::permanent("chaos: permanent failure")),
            "unavailable" => Err(HandlerError::Unavailable(
                "chaos: downstream unavailable".into(),
            )),
            "retry_after" => Err(HandlerError::retry_after(
                Duration::from_millis(directive.retry_after_ms.unwrap_or(1000)),
                "chaos: throttled",
            )),
            "panic" => panic!("chaos: handler panic for {}", event.event_id),
            "abort" => std::process::abort(),
            other => Err(HandlerError::permanent(format!(
                "chaos: unknown action '{other}'"
            ))),
        }
    }
}
