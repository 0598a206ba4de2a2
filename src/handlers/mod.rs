//! The built-in handlers, selected by `warren worker --handler NAME`.

mod chaos;
pub mod http;
mod log;
pub mod postgres;
pub mod trader;

pub use chaos::ChaosHandler;
pub use http::HttpHandler;
pub use log::LogHandler;
pub use postgres::PostgresHandler;
pub use trader::TraderHandler;

use crate::envelope::Envelope;
use crate::worker::{Context, EffectStatus, Handler, HandlerResult};

/// One of the built-in handlers; dispatches statically to the chosen one.
// One per process, behind an Arc: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Builtin {
    /// Logs each event.
    Log(LogHandler),
    /// Test and demo handler driven by the event's payload.
    Chaos(ChaosHandler),
    /// Forwards each event to a URL with an idempotency key.
    Http(HttpHandler),
    /// The momentum trader.
    Trader(TraderHandler),
    /// Writes each event exactly once into PostgreSQL.
    Postgres(PostgresHandler),
}

impl Handler for Builtin {
    fn name(&self) -> &str {
        match self {
            Builtin::Log(h) => h.name(),
            Builtin::Chaos(h) => h.name(),
            Builtin::Http(h) => h.name(),
            Builtin::Trader(h) => h.name(),
            Builtin::Postgres(h) => h.name(),
        }
    }

    async fn handle(&self, event: &Envelope, ctx: &Context) -> HandlerResult {
        match self {
            Builtin::Log(h) => h.handle(event, ctx).await,
            Builtin::Chaos(h) => h.handle(event, ctx).await,
            Builtin::Http(h) => h.handle(event, ctx).await,
            Builtin::Trader(h) => h.handle(event, ctx).await,
            Builtin::Postgres(h) => h.handle(event, ctx).await,
        }
    }

    async fn effect_status(&self, event: &Envelope) -> EffectStatus {
        match self {
            Builtin::Log(h) => h.effect_status(event).await,
            Builtin::Chaos(h) => h.effect_status(event).await,
            Builtin::Http(h) => h.effect_status(event).await,
            Builtin::Trader(h) => h.effect_status(event).await,
            Builtin::Postgres(h) => h.effect_status(event).await,
        }
    }
}
