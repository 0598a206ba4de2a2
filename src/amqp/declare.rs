//! Declaring, checking, binding and deleting exchanges and queues. Passive checks run on a
//! throwaway channel, because a 404 closes the channel it happens on.

use std::collections::BTreeMap;

use lapin::options::{
    BasicCancelOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::{AmqpError, timed};

/// An argument value for `x-*` queue arguments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Arg {
    /// A string.
    Str(String),
    /// A 64-bit integer (declared as AMQP `long`, as definitions import does).
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Str(s) => write!(f, "'{s}'"),
            Arg::Int(n) => write!(f, "{n}"),
            Arg::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Opens a channel.
pub async fn channel(conn: &Connection) -> Result<Channel, AmqpError> {
    timed(|| "open a channel", conn.create_channel()).await
}

/// Closes a channel if it is still open.
pub async fn close_channel(channel: &Channel) {
    if channel.status().connected() {
        let _ = timed(|| "close channel", channel.close(200, "ok".into())).await;
    }
}

/// Declares a durable exchange of `kind` (`topic`, `direct`, `fanout` or a plugin type).
pub async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: &str,
    arguments: &BTreeMap<&'static str, Arg>,
) -> Result<(), AmqpError> {
    timed(
        || format!("declare exchange '{name}'"),
        channel.exchange_declare(
            name.into(),
            exchange_kind(kind),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            field_table(arguments),
        ),
    )
    .await
}

/// Declares a durable queue with `arguments`.
pub async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: &BTreeMap<&'static str, Arg>,
) -> Result<(), AmqpError> {
    timed(
        || format!("declare queue '{name}'"),
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            field_table(arguments),
        ),
    )
    .await
    .map(|_| ())
}

/// Binds `queue` to `exchange` with `routing_key`.
pub async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), AmqpError> {
    timed(
        || format!("bind queue '{queue}' to '{exchange}' with '{routing_key}'"),
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// True if the exchange exists.
pub async fn exchange_exists(conn: &Connection, name: &str) -> Result<bool, AmqpError> {
    let ch = channel(conn).await?;
    let result = timed(
        || format!("check exchange '{name}'"),
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    close_channel(&ch).await;
    not_found_is_false(result)
}

/// The queue's (ready messages, consumers), or `None` if it does not exist.
pub async fn inspect_queue(conn: &Connection, name: &str) -> Result<Option<(u32, u32)>, AmqpError> {
    let ch = channel(conn).await?;
    let result = timed(
        || format!("inspect queue '{name}'"),
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    close_channel(&ch).await;
    match result {
        Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a queue with its messages; returns how many messages it held.
pub async fn delete_queue(channel: &Channel, name: &str) -> Result<u32, AmqpError> {
    timed(
        || format!("delete queue '{name}'"),
        channel.queue_delete(name.into(), QueueDeleteOptions::default()),
    )
    .await
}

/// Deletes an exchange.
pub async fn delete_exchange(channel: &Channel, name: &str) -> Result<(), AmqpError> {
    timed(
        || format!("delete exchange '{name}'"),
        channel.exchange_delete(name.into(), Default::default()),
    )
    .await
}

/// Cancels a consumer; deliveries it already received stay ackable on the channel.
pub async fn cancel(channel: &Channel, tag: &str) -> Result<(), AmqpError> {
    timed(
        || format!("cancel consumer {tag}"),
        channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
    )
    .await
}

fn not_found_is_false(result: Result<(), AmqpError>) -> Result<bool, AmqpError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

fn exchange_kind(k: &str) -> ExchangeKind {
    match k {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// Arguments as an AMQP table, integers as `long` like definitions import.
pub fn field_table<K: AsRef<str>>(args: &BTreeMap<K, Arg>) -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = args
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                Arg::Int(n) => AMQPValue::LongLongInt(*n),
                Arg::Bool(b) => AMQPValue::Boolean(*b),
            };
            (ShortString::from(k.as_ref()), v)
        })
        .collect();
    FieldTable::from(map)
}
