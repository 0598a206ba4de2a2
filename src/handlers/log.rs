//! `log`: logs each event (target `warren::handler::log`) and acks it.

use crate::envelope::Envelope;
use crate::worker::{Context, Handler, HandlerResult};

/// Logs one line per event at info level.
#[derive(Debug, Default)]
pub struct LogHandler;

impl Handler for LogHandler {
    fn name(&self) -> &str {
        "log"
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        tracing::info!(
            target: "warren::handler::log",
            event_id = %event.event_id,
            event_type = %event.event_type,
            agent_id = %event.agent_id,
            queue = %ctx.queue,
            attempt = ctx.attempt,
            payload = %event.payload.get(),
            "Event."
        );
        Ok(())
    }
}
