//! The one abstraction users implement: an async function from an event and its context to an
//! outcome. Retry semantics live in the error type, never in strings parsed later.

use std::future::Future;
use std::time::Duration;

use crate::envelope::Envelope;

/// What a handler returns: `Ok(())` means the effect is done and the message can be acked.
pub type HandlerResult = Result<(), HandlerError>;

/// Why a handler did not finish. The variant decides what happens to the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying later (5xx, timeouts, a 409 for an operation still in flight). With
    /// `retry_after`, the next attempt must not come earlier than that (a 429's `Retry-After`).
    #[error("{reason}")]
    Transient {
        /// What went wrong, for the dead-letter headers and logs.
        reason: String,
        /// The earliest the next attempt may run, relative to now.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (400, 422, a payload the handler cannot use): dead-letter now.
    #[error("{0}")]
    Permanent(String),
    /// The downstream cannot take work right now (circuit open): park the message in the
    /// shortest retry tier untouched, without counting an attempt.
    #[error("{0}")]
    Unavailable(String),
}

impl HandlerError {
    /// A transient failure with the default backoff.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A transient failure that must not be retried before `delay` has passed.
    pub fn retry_after(delay: Duration, reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: Some(delay),
        }
    }

    /// A failure that no retry can fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }
}

/// Facts about the delivery that a handler may need besides the event itself.
#[derive(Debug, Clone)]
pub struct Context {
    /// The queue the message was consumed from (its full, prefixed name).
    pub queue: String,
    /// Failed attempts so far (`x-warren-attempt`, absent = 0).
    pub attempt: u32,
    /// The broker's redelivered flag: a previous delivery may have run the handler already.
    pub redelivered: bool,
    /// The queue that dead-lettered this message back here, from the broker's latest `x-death`
    /// entry: the retry tier it waited in (`<queue>.retry.<delay>`); `None` on a first delivery.
    pub returned_from: Option<String>,
    /// The queue's message TTL, if it is a live-only queue: events older than this are stale.
    /// On a laned queue, the events' own TTL (`events.live_ttl`) for live-only types.
    pub message_ttl: Option<Duration>,
    /// On a laned queue: how many lanes this worker had taken over when this one became its.
    /// It changes when the worker takes a lane over, so a handler with per-key state (the
    /// trader's positions) knows to reload it. `None` on other queues.
    pub lane_generation: Option<u64>,
}

/// What a handler's status check found about an event's effect downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectStatus {
    /// The effect is committed: the event needs nothing more.
    Done,
    /// The downstream holds no committed effect for the event's key (the reason says what it
    /// answered).
    NotDone(String),
    /// The handler cannot tell: no status check, or the check failed (the reason says why).
    Unknown(String),
}

/// An event handler. Implement it for your own type and pass it to [`crate::worker::run`].
///
/// A handler must be safe to run more than once for the same event: derive idempotency keys
/// with [`Envelope::idempotency_key`] so a redelivery repeats the same downstream request.
pub trait Handler: Send + Sync + 'static {
    /// The handler's name, used in idempotency keys and logs.
    fn name(&self) -> &str;

    /// Handles one event.
    fn handle(&self, event: &Envelope, ctx: &Context)
    -> impl Future<Output = HandlerResult> + Send;

    /// Whether `event`'s effect is already done downstream, by its idempotency key. The worker
    /// asks before it dead-letters as stale a message that may have run before (redelivered,
    /// back from a retry tier, replayed): its effect may have committed while the ack was lost.
    /// The default cannot tell, so such a message is dead-lettered as before.
    fn effect_status(&self, event: &Envelope) -> impl Future<Output = EffectStatus> + Send {
        let _ = event;
        async { EffectStatus::Unknown("the handler has no status check".into()) }
    }
}
