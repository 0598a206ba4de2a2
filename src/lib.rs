//! warren: a RabbitMQ task-queue worker fleet for event-driven trading agents.
//!
//! Upstream events arrive over a WebSocket; the bridge publishes each onto a topic exchange;
//! prefetch-limited workers consume durable queues, run handlers that call downstream APIs with
//! idempotency keys, and ack, retry through delay tiers, or dead-letter. The promise: no event
//! is lost and no side effect happens twice, whatever crashes.
//!
//! # Layout
//! - [`amqp`]: the only module touching lapin: connect, consume, publish with confirms, headers.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`cli`]: the command line (clap), dispatch only.
//! - [`envelope`]: the upstream event envelope and its validation.
//! - [`error`]: the crate's error type and exit codes.
//! - [`handlers`]: the built-in handlers (`log`, `chaos`, `http`, `trader`).
//! - [`http`]: downstream calls: idempotency keys, the error taxonomy, retries, status checks.
//! - [`output`]: tables and JSON on stdout.
//! - [`sim`]: simulated peers: the downstream trading API (`warren sim api`).
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.
//! - [`telemetry`]: logging to stderr.
//! - [`topology`]: topology as code: model, validation, plan, declare, export.
//! - [`worker`]: the consumer loop, the pure `decide()`, the single `settle()`.
//!
//! # Writing a handler
//! ```no_run
//! use warren::envelope::Envelope;
//! use warren::worker::{Context, Handler, HandlerError, HandlerResult};
//!
//! struct Notify;
//!
//! impl Handler for Notify {
//!     fn name(&self) -> &str { "notify" }
//!     async fn handle(&self, event: &Envelope, _ctx: &Context) -> HandlerResult {
//!         let key = event.idempotency_key(self.name(), "send");
//!         if key.is_empty() { return Err(HandlerError::permanent("no key")); }
//!         Ok(())
//!     }
//! }
//! ```
//! Then call [`worker::run`] with it.

pub mod amqp;
pub mod backoff;
pub mod cli;
pub mod envelope;
pub mod error;
pub mod handlers;
pub mod http;
pub mod output;
pub mod shutdown;
pub mod sim;
pub mod telemetry;
pub mod topology;
pub mod worker;
