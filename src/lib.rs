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
//! - [`bench`]: `warren bench`: throughput, latency, CPU and memory against a raw lapin baseline.
//! - [`bridge`]: upstream WebSocket and webhook ingress onto the events exchange, with confirms
//!   and a durable resume cursor.
//! - [`cli`]: the command line (clap), dispatch only.
//! - [`demo`]: `warren demo`: the whole pipeline under a unique prefix, with a reconciliation.
//! - [`dlq`]: dead-letter operations: list, show, stats, export, replay, purge.
//! - [`envelope`]: the upstream event envelope and its validation.
//! - [`error`]: the crate's error type and exit codes.
//! - [`handlers`]: the built-in handlers (`log`, `chaos`, `http`, `trader`).
//! - [`http`]: downstream calls: idempotency keys, the error taxonomy, retries, status checks.
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz` for `--metrics-listen`.
//! - [`output`]: tables and JSON on stdout.
//! - [`shutdown`]: SIGINT/SIGTERM to a cancellation token.
//! - [`sim`]: simulators for tests and demos: the upstream event stream and the downstream API.
//! - [`status`]: queue depths, unacked and consumers for the whole topology.
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
pub mod bench;
pub mod bridge;
pub mod cli;
pub mod demo;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod output;
pub mod shutdown;
pub mod sim;
pub mod status;
pub mod telemetry;
pub mod topology;
pub mod worker;
