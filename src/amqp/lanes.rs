//! The broker operations laned queues need beyond plain queues: bindings with arguments (a
//! lane's header match), exchange-to-exchange bindings, and the workers' roster of heartbeats
//! (transient notices on a fanout exchange, read from a private queue).

use std::collections::BTreeMap;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeBindOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};

use super::declare::{Arg, field_table};
use super::{AmqpError, timed};

/// Binds `queue` to `exchange` with `routing_key` and binding `arguments` (a headers match).
pub async fn bind_with(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    arguments: &BTreeMap<String, Arg>,
) -> Result<(), AmqpError> {
    timed(
        || format!("bind queue '{queue}' to '{exchange}'"),
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            field_table(arguments),
        ),
    )
    .await
}

/// Binds exchange `destination` to exchange `source` with `routing_key`.
pub async fn bind_exchange(
    channel: &Channel,
    destination: &str,
    source: &str,
    routing_key: &str,
) -> Result<(), AmqpError> {
    timed(
        || format!("bind exchange '{destination}' to '{source}' with '{routing_key}'"),
        channel.exchange_bind(
            destination.into(),
            source.into(),
            routing_key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// A server-named, exclusive queue bound to the fanout `exchange`: this connection's view of
/// the notices published there, gone with the connection.
pub async fn private_queue(channel: &Channel, exchange: &str) -> Result<String, AmqpError> {
    let queue = timed(
        || format!("declare a private queue for '{exchange}'"),
        channel.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let name = queue.name().to_string();
    timed(
        || format!("bind a private queue to '{exchange}'"),
        channel.queue_bind(
            name.as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(name)
}

/// Consumes notices from `queue` with automatic acks: they are heartbeats, never work.
pub async fn consume_notices(channel: &Channel, queue: &str) -> Result<Consumer, AmqpError> {
    timed(
        || format!("consume notices from '{queue}'"),
        channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// Publishes a transient notice on `exchange`, without a confirm: a lost heartbeat is
/// replaced by the next one.
pub async fn notify(channel: &Channel, exchange: &str, body: &[u8]) -> Result<(), AmqpError> {
    timed(
        || format!("publish a notice on '{exchange}'"),
        channel.basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(1),
        ),
    )
    .await
    .map(|_| ())
}
