//! Declares a [`Plan`] on the broker idempotently, and turns the broker's bare
//! `PRECONDITION_FAILED` into a message naming the queue, the argument, both values and the way
//! to migrate.

use std::collections::BTreeMap;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use serde::Serialize;

use super::plan::{Arg, Plan};
use super::TopologyError;
use crate::amqp::{AmqpError, timed};
use crate::error::Error;

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// It did not exist and was declared.
    Created,
    /// It existed with the same arguments; nothing changed.
    Unchanged,
    /// The binding was (re)asserted; bindings are idempotent.
    Bound,
}

/// One line of the apply report.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyItem {
    /// `exchange`, `queue` or `binding`.
    pub kind: &'static str,
    /// Name, or `exchange -> queue (key)` for bindings.
    pub name: String,
    /// What happened.
    pub status: ItemStatus,
}

/// The outcome of `apply`, item by item.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Every object, in declaration order.
    pub items: Vec<ApplyItem>,
}

impl ApplyReport {
    /// How many objects were created (0 on a second run).
    pub fn created(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.status == ItemStatus::Created)
            .count()
    }
}

/// Declares every exchange, queue and binding of `plan`. Safe to run any number of times.
/// Every argument mismatch is collected and reported together, before any binding is made.
pub async fn apply(conn: &Connection, plan: &Plan) -> Result<ApplyReport, Error> {
    let mut report = ApplyReport::default();
    let mut mismatches = Vec::new();
    let mut channel = open(conn).await?;

    for e in &plan.exchanges {
        let existed = exists(conn, |ch| async move {
            ch.exchange_declare(
                e.name.as_str().into(),
                kind(e.kind),
                ExchangeDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
        })
        .await?;
        let result = timed(
            || format!("declare exchange '{}'", e.name),
            channel.exchange_declare(
                e.name.as_str().into(),
                kind(e.kind),
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            ),
        )
        .await;
        match result {
            Ok(()) => report.items.push(item("exchange", &e.name, existed)),
            Err(err) => {
                let text = err.reply_text().unwrap_or_default();
                if !text.contains("PRECONDITION_FAILED") {
                    return Err(err.into());
                }
                mismatches.push(format!(
                    "exchange '{}' exists with different settings ({}); it must be a durable {} exchange. \
                     Delete it (`rabbitmqctl eval` or the management UI) after moving its bindings, then apply again.",
                    e.name,
                    strip_code(&text),
                    e.kind
                ));
                channel = open(conn).await?;
            }
        }
    }

    for q in &plan.queues {
        let existed = exists(conn, |ch| async move {
            ch.queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map(|_| ())
        })
        .await?;
        let result = timed(
            || format!("declare queue '{}'", q.name),
            channel.queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                field_table(&q.arguments),
            ),
        )
        .await;
        match result {
            Ok(_) => report.items.push(item("queue", &q.name, existed)),
            Err(err) => {
                let text = err.reply_text().unwrap_or_default();
                if !text.contains("PRECONDITION_FAILED") {
                    return Err(err.into());
                }
                mismatches.push(describe_mismatch(&q.name, &q.arguments, &text));
                channel = open(conn).await?;
            }
        }
    }

    if !mismatches.is_empty() {
        return Err(TopologyError::Mismatch(mismatches.join("\n")).into());
    }

    for b in &plan.bindings {
        timed(
            || format!("bind queue '{}' to '{}' with '{}'", b.queue, b.exchange, b.routing_key),
            channel.queue_bind(
                b.queue.as_str().into(),
                b.exchange.as_str().into(),
                b.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        report.items.push(ApplyItem {
            kind: "binding",
            name: format!("{} -> {} ({})", b.exchange, b.queue, b.routing_key),
            status: ItemStatus::Bound,
        });
    }
    close(&channel).await;
    Ok(report)
}

/// Deletes every queue and exchange of `plan`, messages included. Missing objects are fine.
pub async fn delete(conn: &Connection, plan: &Plan) -> Result<usize, AmqpError> {
    let mut channel = open(conn).await?;
    let mut deleted = 0;
    for q in &plan.queues {
        match timed(
            || format!("delete queue '{}'", q.name),
            channel.queue_delete(q.name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
        {
            Ok(_) => deleted += 1,
            Err(_) => channel = open(conn).await?,
        }
    }
    for e in &plan.exchanges {
        match timed(
            || format!("delete exchange '{}'", e.name),
            channel.exchange_delete(e.name.as_str().into(), Default::default()),
        )
        .await
        {
            Ok(()) => deleted += 1,
            Err(_) => channel = open(conn).await?,
        }
    }
    close(&channel).await;
    Ok(deleted)
}

async fn open(conn: &Connection) -> Result<Channel, AmqpError> {
    timed(|| "open a channel", conn.create_channel()).await
}

async fn close(channel: &Channel) {
    if channel.status().connected() {
        let _ = timed(|| "close channel", channel.close(200, "ok".into())).await;
    }
}

/// Runs a passive declare on a throwaway channel (a 404 closes the channel it ran on).
async fn exists<F, Fut>(conn: &Connection, check: F) -> Result<bool, AmqpError>
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<()>>,
{
    let ch = open(conn).await?;
    let result = timed(|| "check existence", check(ch.clone())).await;
    close(&ch).await;
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

fn item(kind: &'static str, name: &str, existed: bool) -> ApplyItem {
    ApplyItem {
        kind,
        name: name.to_string(),
        status: if existed { ItemStatus::Unchanged } else { ItemStatus::Created },
    }
}

fn kind(k: &str) -> ExchangeKind {
    match k {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// Plan arguments as an AMQP table, integers as `long` like definitions import.
pub(crate) fn field_table(args: &BTreeMap<&'static str, Arg>) -> FieldTable {
    let map: BTreeMap<ShortString, AMQPValue> = args
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                Arg::Int(n) => AMQPValue::LongLongInt(*n),
                Arg::Bool(b) => AMQPValue::Boolean(*b),
            };
            (ShortString::from(*k), v)
        })
        .collect();
    FieldTable::from(map)
}

fn strip_code(text: &str) -> &str {
    text.split_once(" - ").map(|(_, rest)| rest).unwrap_or(text)
}

/// Turns `PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/':
/// received the value '5' of type 'long' but current is the value '10' of type 'long'` into the
/// operator's message.
fn describe_mismatch(queue: &str, wanted: &BTreeMap<&'static str, Arg>, reply: &str) -> String {
    let arg = between(reply, "inequivalent arg '", "'");
    let current = reply
        .split_once("but current is ")
        .map(|(_, c)| humanize_value(c.trim()))
        .unwrap_or_else(|| "unknown".into());
    let Some(arg) = arg else {
        return format!(
            "queue '{queue}' exists with different settings: {}. \
             To migrate: drain it, delete it (`rabbitmqctl delete_queue {queue}`), then run `warren topology apply` again.",
            strip_code(reply)
        );
    };
    let in_file = wanted
        .get(arg)
        .map(|v| v.to_string())
        .unwrap_or_else(|| "not set".into());
    let via_policy = matches!(
        arg,
        "x-message-ttl" | "x-max-length" | "x-delivery-limit" | "x-expires" | "x-overflow" | "x-dead-letter-exchange" | "x-dead-letter-routing-key"
    );
    let mut msg = format!(
        "queue '{queue}': argument '{arg}' is {in_file} in the topology file but {current} on the broker. \
         RabbitMQ cannot change a queue's arguments in place. To migrate: stop its consumers, move or drain its \
         messages, delete it (`rabbitmqctl delete_queue {queue}`), then run `warren topology apply` again; \
         or set the file back to {current}."
    );
    if via_policy {
        msg.push_str(&format!(
            " '{arg}' can also be overridden without recreating the queue with a policy (`rabbitmqctl set_policy`)."
        ));
    }
    msg
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// `the value '10' of type 'long'` -> `10`; `none` -> `not set`.
fn humanize_value(v: &str) -> String {
    if v.starts_with("none") {
        return "not set".into();
    }
    between(v, "'", "'").map(str::to_string).unwrap_or_else(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_message_names_queue_argument_and_both_values() {
        let mut wanted = BTreeMap::new();
        wanted.insert("x-delivery-limit", Arg::Int(5));
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'pf.trading' in vhost '/': received the value '5' of type 'long' but current is the value '10' of type 'long'";
        let m = describe_mismatch("pf.trading", &wanted, reply);
        assert!(m.contains("queue 'pf.trading'"), "{m}");
        assert!(m.contains("'x-delivery-limit' is 5 in the topology file but 10 on the broker"), "{m}");
        assert!(m.contains("rabbitmqctl delete_queue pf.trading"), "{m}");
        assert!(!m.contains("PRECONDITION_FAILED"), "{m}");
    }

    #[test]
    fn a_missing_current_value_reads_not_set() {
        let mut wanted = BTreeMap::new();
        wanted.insert("x-max-length", Arg::Int(7));
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received the value '7' of type 'long' but current is none";
        let m = describe_mismatch("q", &wanted, reply);
        assert!(m.contains("is 7 in the topology file but not set on the broker"), "{m}");
    }
}
