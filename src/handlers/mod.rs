//! The built-in handlers, selected by `warren worker --handler NAME`.

mod chaos;
mod log;

pub use chaos::ChaosHandler;
pub use log::LogHandler;

use crate::envelope::Envelope;
use crate::worker::{Context, Handler, HandlerResult};

/// One of the built-in handlers; dispatches statically to the chosen one.
#[derive(Debug)]
pub enum Builtin {
    /// Logs each event.
    Log(LogHandler),
    /// Test and demo handler driven by the event's payload.
    Chaos(ChaosHandler),
}

impl Handler for Builtin {
    fn name(&self) -> &str {
        match self {
            Builtin::Log(h) => h.name(),
            Builtin::Chaos(h) => h.name(),
        }
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        match self {
            Builtin::Log(h) => h.handle(event, ctx).await,
            Builtin::Chaos(h) => h.handle(event, ctx).await,
        }
    }
}
