//! warren: a RabbitMQ task-queue worker fleet for event-driven trading agents.
//!
//! Upstream events arrive over a WebSocket; the bridge publishes each onto a topic exchange;
//! prefetch-limited workers consume durable queues, run handlers that call downstream APIs with
//! idempotency keys, and ack, retry through delay tiers, or dead-letter. The promise: no event
//! is lost and no side effect happens twice, whatever crashes.
//!
//! # Layout
//! - [`amqp`]: the only module touching lapin: connect, consume, publish with confirms, headers.
//! - [`archive`]: the event archive (a stream): info, read a window, replay it, backtest it.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`bridge`]: upstream WebSocket and webhook ingress onto the events exchange, with confirms
//!   and a durable resume cursor.
//! - [`cli`]: the command line (clap), signals, and the `Outcome` that decides the exit code.
//! - [`console`]: `warren console`: the web console (overview, dead letters, canary replays).
//! - [`demo`]: `warren demo`: the whole pipeline under a unique prefix, with a reconciliation.
//! - [`dlq`]: dead-letter operations: list, show, stats, export, replay, purge.
//! - [`envelope`]: the upstream event envelope and its validation.
//! - [`error`]: the crate's error type.
//! - [`handlers`]: the built-in handlers (`log`, `chaos`, `http`, `trader`, `postgres`).
//! - [`http`]: downstream calls: idempotency keys, the error taxonomy, retries, status checks.
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz` for `--metrics-listen`.
//! - [`postgres`]: the PostgreSQL sink: schema as code, batches written exactly once (inbox).
//! - [`output`]: tables and JSON on stdout, through the one writer that a closed pipe ends quietly.
//! - [`status`]: queue depths, unacked and consumers for the whole topology.
//! - [`telemetry`]: logging to stderr.
//! - [`topology`]: topology as code: model, validation, plan, declare, export.
//! - [`worker`]: the consumer loop, the pure `decide()`, the single `settle()`.
//!
//! # Writing a handler
//! Implement [`worker::Handler`] and pass it to [`worker::run`] (`tests/it/custom_handler.rs` runs
//! one against a real broker):
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use tokio_util::sync::CancellationToken;
//! use warren::envelope::Envelope;
//! use warren::error::Error;
//! use warren::topology::Topology;
//! use warren::worker::{self, Context, Handler, HandlerError, HandlerResult, WorkerSettings};
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
//!
//! async fn serve(shutdown: CancellationToken) -> Result<(), Error> {
//!     let settings = WorkerSettings {
//!         url: warren::amqp::DEFAULT_AMQP_URL
//!             .parse()
//!             .map_err(|e: warren::amqp::AmqpUrlError| Error::Usage(e.to_string()))?,
//!         topology: Topology::load("topology/warren.toml".as_ref(), "")?,
//!         queues: vec!["pf.jobs".into()],
//!         prefetch: None,
//!         concurrency: 8,
//!         drain_timeout: Duration::from_secs(30),
//!         handler_timeout: Duration::from_secs(300),
//!     };
//!     let metrics = Arc::new(worker::WorkerMetrics::default());
//!     worker::run(settings, Notify, metrics, shutdown).await
//! }
//! ```

pub mod amqp;
pub mod archive;
pub mod backoff;
pub mod bridge;
pub mod cli;
pub mod console;
pub mod demo;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod output;
pub mod postgres;
pub mod status;
pub mod telemetry;
pub mod topology;
pub mod worker;
