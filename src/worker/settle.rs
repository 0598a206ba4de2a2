//! The one place that acks, nacks or republishes a delivery. A message leaves its queue only
//! after its replacement (retry tier or dead-letter exchange) is confirmed; if that publish
//! fails, the delivery is requeued instead, so nothing is lost.

use std::time::SystemTime;

use lapin::types::FieldTable;

use super::decide::Disposition;
use crate::amqp::{self, BatchPublisher, ErrorKind, FailureHeaders, Inbound, Message};
use crate::topology::QueueSpec;

/// The pause before requeueing a message whose republish failed.
const REQUEUE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// What settling did, for counters and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acked.
    Acked,
    /// Republished to a retry tier (confirmed), then acked.
    Retried,
    /// Republished to a retry tier unchanged (not-before still in the future), then acked.
    Deferred,
    /// Republished to the dead-letter exchange (confirmed), then acked.
    DeadLettered,
    /// Nacked with requeue, by decision or because a republish failed.
    Requeued,
    /// The ack or nack could not be sent (channel gone); the broker will redeliver.
    Lost,
}

/// Settles `delivery` from `queue` according to `disposition`. A republished delivery's
/// properties are dropped once its replacement's are built.
pub async fn settle(
    delivery: &mut Inbound,
    disposition: &Disposition,
    queue: &QueueSpec,
    publisher: &BatchPublisher,
    dead_letter_exchange: &str,
) -> Settled {
    let republished = match disposition {
        Disposition::Ack => return ack(delivery, Settled::Acked).await,
        Disposition::Requeue => return requeue(delivery).await,
        Disposition::Retry {
            delay,
            attempt,
            not_before_ms,
            reason,
        } => {
            let headers = FailureHeaders {
                kind: ErrorKind::Transient,
                error: reason,
                origin_queue: &queue.name,
                attempt: *attempt,
                not_before_ms: *not_before_ms,
            }
            .apply(delivery.properties.headers().as_ref(), SystemTime::now());
            republish(delivery, publisher, "", &queue.retry_queue(*delay), headers)
                .await
                .map(|()| Settled::Retried)
        }
        Disposition::Defer { delay } => {
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            republish(delivery, publisher, "", &queue.retry_queue(*delay), headers)
                .await
                .map(|()| Settled::Deferred)
        }
        Disposition::DeadLetter {
            kind,
            reason,
            attempt,
        } => {
            let headers = FailureHeaders {
                kind: *kind,
                error: reason,
                origin_queue: &queue.name,
                attempt: *attempt,
                not_before_ms: None,
            }
            .apply(delivery.properties.headers().as_ref(), SystemTime::now());
            republish(
                delivery,
                publisher,
                dead_letter_exchange,
                &queue.name,
                headers,
            )
            .await
            .map(|()| Settled::DeadLettered)
        }
    };
    match republished {
        Ok(done) => ack(delivery, done).await,
        Err(error) => {
            tracing::warn!(queue = %queue.name, %error, "Republish failed; requeueing the message instead.");
            // Not at once: a broker that cannot take the republish now will not a moment later.
            tokio::time::sleep(REQUEUE_BACKOFF).await;
            requeue(delivery).await
        }
    }
}

/// Publishes a copy of the delivery with new headers; the future waits for its confirm. The
/// delivery's own properties are dropped first: only its tag and body are needed from here,
/// and a worker at a high prefetch can hold hundreds of deliveries waiting for confirms.
/// Not `async`: the properties and headers are handed to the publisher before it returns, so
/// the job's future keeps no room for them while it waits.
fn republish(
    delivery: &mut Inbound,
    publisher: &BatchPublisher,
    exchange: &str,
    routing_key: &str,
    headers: FieldTable,
) -> impl Future<Output = Result<(), amqp::AmqpError>> + use<> {
    let properties = amqp::republish_properties(&delivery.properties).with_headers(headers);
    delivery.shed_properties();
    publisher.publish(Message {
        exchange,
        routing_key,
        body: &delivery.data,
        properties,
        mandatory: true,
    })
}

async fn ack(delivery: &Inbound, done: Settled) -> Settled {
    match delivery.ack().await {
        Ok(true) => done,
        Ok(false) => {
            tracing::warn!(
                delivery_tag = delivery.delivery_tag,
                "Ack not sent (channel closed); the broker will redeliver."
            );
            Settled::Lost
        }
        Err(error) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, %error, "Ack failed; the broker will redeliver.");
            Settled::Lost
        }
    }
}

/// Nacks with requeue; the only other place a delivery is settled.
pub(crate) async fn requeue(delivery: &Inbound) -> Settled {
    match delivery.requeue().await {
        Ok(true) => Settled::Requeued,
        Ok(false) => {
            tracing::warn!(
                delivery_tag = delivery.delivery_tag,
                "Nack not sent (channel closed); the broker will redeliver."
            );
            Settled::Lost
        }
        Err(error) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, %error, "Nack failed; the broker will redeliver.");
            Settled::Lost
        }
    }
}
