//! Publishing with publisher confirms, for one pipelining caller. A publish is only done when
//! its confirm says so: a nack, a returned (unroutable) message or a missing confirm is an error.
//!
//! lapin hands a returned message to whichever confirm of the same ack frame completes first,
//! not to the publish it belongs to, so [`AmqpError::Returned`] names the returned message's id,
//! which the caller must check. Many callers each waiting for their own confirm use
//! [`super::BatchPublisher`] instead, which does that matching for them.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::Mutex;
use tokio::time::{Instant, Sleep};

use super::{AmqpError, timed};

/// How long a confirm may take before the publish counts as failed. A blocked connection (memory
/// alarm) makes confirms stall; the caller then keeps the message and tries again.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// A confirm-mode channel. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Publisher {
    channel: Arc<Mutex<Channel>>,
    confirm_timeout: Duration,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The exchange (`""` for the default exchange, routing straight to a queue).
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The body, verbatim.
    pub body: &'a [u8],
    /// Properties and headers.
    pub properties: BasicProperties,
    /// Return the message if no queue matches, instead of dropping it.
    pub mandatory: bool,
}

impl Publisher {
    /// Opens a confirm-mode channel on `conn`.
    pub async fn open(conn: &Connection) -> Result<Self, AmqpError> {
        Ok(Self {
            channel: Arc::new(Mutex::new(confirm_channel(conn).await?)),
            confirm_timeout: CONFIRM_TIMEOUT,
        })
    }

    /// Shortens or lengthens the confirm deadline.
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sends and returns the pending confirm without waiting, for a single pipelining caller
    /// (with [`ConfirmWindow`]).
    pub async fn send(&self, msg: Message<'_>) -> Result<Confirm, AmqpError> {
        let channel = self.channel.lock().await;
        send_on(&channel, msg, self.confirm_timeout).await
    }

    /// True while the channel can publish.
    pub fn is_open(&self) -> bool {
        self.channel
            .try_lock()
            .map(|c| c.status().connected())
            .unwrap_or(true)
    }
}

/// A new channel on `conn` with publisher confirms on.
pub(super) async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let channel = timed(|| "open a publishing channel", conn.create_channel()).await?;
    timed(
        || "enable publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(channel)
}

async fn send_on(
    channel: &Channel,
    msg: Message<'_>,
    timeout: Duration,
) -> Result<Confirm, AmqpError> {
    let confirm = timed(
        || format!("publish to {}", target(msg.exchange, msg.routing_key)),
        channel.basic_publish(
            msg.exchange.into(),
            msg.routing_key.into(),
            BasicPublishOptions {
                mandatory: msg.mandatory,
                immediate: false,
            },
            msg.body,
            msg.properties,
        ),
    )
    .await?;
    Ok(Confirm {
        inner: confirm,
        exchange: msg.exchange.to_string(),
        routing_key: msg.routing_key.to_string(),
        timeout,
        deadline: Instant::now() + timeout,
    })
}

pub(super) fn target(exchange: &str, routing_key: &str) -> String {
    let exchange = if exchange.is_empty() {
        "(default exchange)"
    } else {
        exchange
    };
    format!("'{exchange}' with routing key '{routing_key}'")
}

/// A sent message whose confirm has not been checked yet.
pub struct Confirm {
    inner: PublisherConfirm,
    exchange: String,
    routing_key: String,
    timeout: Duration,
    /// When the confirm is overdue: `timeout` after the send.
    deadline: Instant,
}

impl Confirm {
    /// Waits for the broker's confirm. Only a plain ack of a routed message is `Ok`.
    pub async fn wait(mut self) -> Result<(), AmqpError> {
        match tokio::time::timeout_at(self.deadline, &mut self.inner).await {
            Ok(r) => self.outcome(r),
            Err(_) => Err(self.overdue()),
        }
    }

    fn overdue(&self) -> AmqpError {
        AmqpError::Timeout {
            op: format!(
                "confirm of publish to {}",
                target(&self.exchange, &self.routing_key)
            ),
            after: self.timeout,
        }
    }

    /// What the broker's answer means for this publish.
    fn outcome(&self, answer: lapin::Result<Confirmation>) -> Result<(), AmqpError> {
        let target = || target(&self.exchange, &self.routing_key);
        let confirmation = match answer {
            Ok(c) => c,
            Err(source) => {
                return Err(AmqpError::Broker {
                    op: format!("confirm of publish to {}", target()),
                    source,
                });
            }
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(AmqpError::Returned {
                target: target(),
                reply: format!("{} {}", returned.reply_code, returned.reply_text),
                message_id: returned_id(&returned),
            }),
            Confirmation::Nack(returned) => Err(AmqpError::Nacked {
                target: target(),
                returned: returned.map(|r| returned_id(&r)),
            }),
            Confirmation::NotRequested => Err(AmqpError::NotConfirmed { target: target() }),
        }
    }
}

/// The `message_id` of a message the broker returned.
fn returned_id(returned: &lapin::message::BasicReturnMessage) -> Option<String> {
    returned
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
}

/// At most `capacity` confirms outstanding, yielded in publish order. A caller that publishes
/// while [`ConfirmWindow::is_full`] is false and drains with [`ConfirmWindow::next`] otherwise
/// never waits for one confirm per message, and never holds more than `capacity` unconfirmed.
///
/// Only the oldest confirm is polled and timed, by one timer reset as the head moves: the broker
/// confirms in publish order, and a per-confirm timer would cost a timer-wheel entry for every
/// message in flight.
pub struct ConfirmWindow<T> {
    pending: VecDeque<(T, Confirm)>,
    capacity: usize,
    /// The head's deadline (made on first use, so a window can be built outside a runtime).
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T: Send + 'static> ConfirmWindow<T> {
    /// A window of `capacity` (at least 1) outstanding confirms.
    pub fn new(capacity: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            capacity: capacity.max(1),
            timer: None,
        }
    }

    /// True when no more publishes may go out before a confirm is taken.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// Confirms outstanding.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Tracks a confirm, tagged with whatever the caller needs back (an event id, a delivery).
    pub fn push(&mut self, tag: T, confirm: Confirm) {
        self.pending.push_back((tag, confirm));
    }

    /// The oldest outstanding confirm, once it has resolved or is overdue. Cancel-safe: a
    /// confirm leaves the window only when it is returned.
    pub async fn next(&mut self) -> Option<(T, Result<(), AmqpError>)> {
        std::future::poll_fn(|cx| self.poll_head(cx)).await
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Option<(T, Result<(), AmqpError>)>> {
        let Some((_, head)) = self.pending.front_mut() else {
            return Poll::Ready(None);
        };
        let result = match Pin::new(&mut head.inner).poll(cx) {
            Poll::Ready(answer) => head.outcome(answer),
            Poll::Pending => {
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(head.deadline)));
                if timer.deadline() != head.deadline {
                    timer.as_mut().reset(head.deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Err(head.overdue())
            }
        };
        self.pending
            .pop_front()
            .map_or(Poll::Ready(None), |(tag, _)| {
                Poll::Ready(Some((tag, result)))
            })
    }
}
