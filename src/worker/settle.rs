//! The one place that acks, nacks or republishes a delivery. A message leaves its queue only
//! after its replacement (retry tier or dead-letter exchange) is confirmed; if that publish
//! fails, the delivery is requeued instead, so nothing is lost.

use std::time::SystemTime;

use lapin::types::FieldTable;

use super::decide::Disposition;
use crate::amqp::{self, Delivery, ErrorKind, FailureHeaders, Message, Publisher};
use crate::topology::QueueSpec;

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

/// Settles `delivery` from `queue` according to `disposition`.
pub async fn settle(
    delivery: &Delivery,
    disposition: &Disposition,
    queue: &QueueSpec,
    publisher: &Publisher,
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
            republish(delivery, publisher, dead_letter_exchange, &queue.name, headers)
                .await
                .map(|()| Settled::DeadLettered)
        }
    };
    match republished {
        Ok(done) => ack(delivery, done).await,
        Err(error) => {
            tracing::warn!(queue = %queue.name, %error, "Republish failed; requeueing the message instead.");
            requeue(delivery).await
        }
    }
}

/// Publishes a copy of the delivery with new headers and waits for its confirm. The
/// `expiration` property is dropped: a live-only event must not vanish from a retry tier or DLQ.
async fn republish(
    delivery: &Delivery,
    publisher: &Publisher,
    exchange: &str,
    routing_key: &str,
    headers: FieldTable,
) -> Result<(), amqp::AmqpError> {
    let mut properties = delivery.properties.clone().with_headers(headers);
    if properties.expiration().is_some() {
        properties = strip_expiration(properties);
    }
    publisher
        .publish(Message {
            exchange,
            routing_key,
            body: &delivery.data,
            properties: properties.with_delivery_mode(2),
            mandatory: true,
        })
        .await
}

fn strip_expiration(p: amqp::BasicProperties) -> amqp::BasicProperties {
    let mut out = amqp::BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    out
}

async fn ack(delivery: &Delivery, done: Settled) -> Settled {
    match amqp::ack(delivery).await {
        Ok(true) => done,
        Ok(false) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, "Ack not sent (channel closed); the broker will redeliver.");
            Settled::Lost
        }
        Err(error) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, %error, "Ack failed; the broker will redeliver.");
            Settled::Lost
        }
    }
}

/// Nacks with requeue; the only other place a delivery is settled.
pub(crate) async fn requeue(delivery: &Delivery) -> Settled {
    match amqp::requeue(delivery).await {
        Ok(true) => Settled::Requeued,
        Ok(false) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, "Nack not sent (channel closed); the broker will redeliver.");
            Settled::Lost
        }
        Err(error) => {
            tracing::warn!(delivery_tag = delivery.delivery_tag, %error, "Nack failed; the broker will redeliver.");
            Settled::Lost
        }
    }
}
