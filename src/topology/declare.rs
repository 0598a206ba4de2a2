//! Declares a [`Plan`] on the broker idempotently, and turns the broker's bare
//! `PRECONDITION_FAILED` into a message naming the queue, the argument, both values and the way
//! to migrate.

use std::collections::BTreeMap;

use serde::Serialize;

use super::TopologyError;
use super::plan::{Arg, Plan};
use crate::amqp::{self, AmqpError, Connection};
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
    /// Quorum queues and streams, once [`locate_leaders`](super::locate_leaders) ran: the
    /// leader's node, or `null` when it is unknown (an election, or no management API; see
    /// [`ApplyReport::leaders_unknown`]). Absent for other objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<Option<String>>,
}

/// The outcome of `apply`, item by item.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Every object, in declaration order.
    pub items: Vec<ApplyItem>,
    /// Why no leader is known, when the management API did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaders_unknown: Option<String>,
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
    let lane_changes = lane_count_changes(conn, plan).await?;
    if !lane_changes.is_empty() {
        return Err(TopologyError::Mismatch(lane_changes.join("\n")).into());
    }
    let mut mismatches = Vec::new();
    let mut channel = amqp::channel(conn).await?;

    for e in &plan.exchanges {
        let existed = amqp::exchange_exists(conn, &e.name).await?;
        match amqp::declare_exchange(&channel, &e.name, e.kind, &e.arguments).await {
            Ok(()) => report.items.push(item("exchange", &e.name, existed)),
            Err(err) => {
                let text = precondition_failed(err)?;
                mismatches.push(format!(
                    "exchange '{}' exists with different settings ({}); it must be a durable {} exchange{}. \
                     Delete it (management UI or `rabbitmqadmin delete exchange name={}`) after moving its bindings, then apply again.",
                    e.name,
                    strip_code(&text),
                    e.kind,
                    e.arguments
                        .iter()
                        .map(|(k, v)| format!(" with {k} = {v:?}"))
                        .collect::<String>(),
                    e.name
                ));
                channel = amqp::channel(conn).await?;
            }
        }
    }

    for q in &plan.queues {
        let existed = amqp::inspect_queue(conn, &q.name).await?.is_some();
        match amqp::declare_queue(&channel, &q.name, &q.arguments).await {
            Ok(()) => report.items.push(item("queue", &q.name, existed)),
            Err(err) => {
                let text = precondition_failed(err)?;
                mismatches.push(describe_mismatch(&q.name, &q.arguments, &text));
                channel = amqp::channel(conn).await?;
            }
        }
    }

    if !mismatches.is_empty() {
        amqp::close_channel(&channel).await;
        return Err(TopologyError::Mismatch(mismatches.join("\n")).into());
    }

    for b in &plan.bindings {
        if b.to_exchange {
            amqp::bind_exchange(&channel, &b.queue, &b.exchange, &b.routing_key).await?;
        } else if b.arguments.is_empty() {
            amqp::bind(&channel, &b.queue, &b.exchange, &b.routing_key).await?;
        } else {
            amqp::bind_with(
                &channel,
                &b.queue,
                &b.exchange,
                &b.routing_key,
                &b.arguments,
            )
            .await?;
        }
        report.items.push(ApplyItem {
            kind: "binding",
            name: format!("{} -> {} ({})", b.exchange, b.queue, b.routing_key),
            status: ItemStatus::Bound,
            leader: None,
        });
    }
    amqp::close_channel(&channel).await;
    Ok(report)
}

/// Deletes every queue and exchange of `plan`, messages included. Missing objects are fine.
pub async fn delete(conn: &Connection, plan: &Plan) -> Result<usize, AmqpError> {
    let mut channel = amqp::channel(conn).await?;
    let mut deleted = 0;
    for q in &plan.queues {
        match amqp::delete_queue(&channel, &q.name).await {
            Ok(_) => deleted += 1,
            Err(_) => channel = amqp::channel(conn).await?,
        }
    }
    for e in &plan.exchanges {
        match amqp::delete_exchange(&channel, &e.name).await {
            Ok(()) => deleted += 1,
            Err(_) => channel = amqp::channel(conn).await?,
        }
    }
    amqp::close_channel(&channel).await;
    Ok(deleted)
}

/// A laned queue whose lane count differs from the broker's, or a plain queue that became
/// laned (or the reverse): keys would move to other lanes with messages still in the old ones,
/// so `apply` refuses and says how to migrate.
async fn lane_count_changes(conn: &Connection, plan: &Plan) -> Result<Vec<String>, Error> {
    use super::lanes::lane_queue;
    let exists =
        |name: String| async move { amqp::inspect_queue(conn, &name).await.map(|q| q.is_some()) };
    let recipe = |q: &str| {
        format!(
            "To change it: stop the bridge, let the workers empty the lanes (`warren status`), \
             delete them (`warren topology delete` removes the whole topology, or \
             `rabbitmqctl delete_queue {q}.lane.<i>` each), then apply again; dead letters in \
             '{q}.dlq' stay and replay into the new lanes by key."
        )
    };
    // The lanes on the broker: lane 0, 1, … up to the first one missing.
    let broker_lanes = |q: String| async move {
        let mut n = 0u16;
        while n < super::lanes::MAX_LANES && exists(lane_queue(&q, n)).await? {
            n += 1;
        }
        Ok::<u16, Error>(n)
    };
    let mut problems = Vec::new();
    for l in &plan.laned {
        let q = &l.queue;
        if exists(lane_queue(q, l.lanes)).await?
            || (exists(lane_queue(q, 0)).await? && !exists(lane_queue(q, l.lanes - 1)).await?)
        {
            let have = broker_lanes(q.clone()).await?;
            problems.push(format!(
                "queue '{q}' has {have} lanes on the broker and the topology file asks for {}: \
                 its keys would move to other lanes while messages wait in the old ones. {}",
                l.lanes,
                recipe(q)
            ));
        } else if exists(q.clone()).await? {
            problems.push(format!(
                "queue '{q}' exists on the broker as a plain queue, and the topology now splits it \
                 into {} lanes. Drain it (stop the bridge, let the workers empty it), delete it \
                 (`rabbitmqctl delete_queue {q}`), then apply again.",
                l.lanes
            ));
        }
    }
    for queue in plan
        .queues
        .iter()
        .filter(|q| q.role == super::plan::QueueRole::Work)
    {
        if exists(lane_queue(&queue.name, 0)).await? {
            problems.push(format!(
                "queue '{}' has lanes on the broker ('{}' exists), and the topology no longer \
                 splits it. {}",
                queue.name,
                lane_queue(&queue.name, 0),
                recipe(&queue.name)
            ));
        }
    }
    Ok(problems)
}

/// The broker's reply text when it refused a declare with PRECONDITION_FAILED; other errors pass.
fn precondition_failed(err: AmqpError) -> Result<String, Error> {
    match err.reply_text() {
        Some(text) if text.contains("PRECONDITION_FAILED") => Ok(text),
        _ => Err(err.into()),
    }
}

fn item(kind: &'static str, name: &str, existed: bool) -> ApplyItem {
    ApplyItem {
        kind,
        name: name.to_string(),
        status: if existed {
            ItemStatus::Unchanged
        } else {
            ItemStatus::Created
        },
        leader: None,
    }
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
        "x-message-ttl"
            | "x-max-length"
            | "x-delivery-limit"
            | "x-expires"
            | "x-overflow"
            | "x-dead-letter-exchange"
            | "x-dead-letter-routing-key"
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
    if arg == "x-quorum-initial-group-size" {
        msg.push_str(&format!(
            " It only places a new queue's members: an existing queue's members change in place, without \
             recreating it, with `rabbitmq-queues add_member {queue} <node>` or `delete_member`."
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
    between(v, "'", "'")
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
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
        assert!(
            m.contains("'x-delivery-limit' is 5 in the topology file but 10 on the broker"),
            "{m}"
        );
        assert!(m.contains("rabbitmqctl delete_queue pf.trading"), "{m}");
        assert!(!m.contains("PRECONDITION_FAILED"), "{m}");
    }

    #[test]
    fn a_missing_current_value_reads_not_set() {
        let mut wanted = BTreeMap::new();
        wanted.insert("x-max-length", Arg::Int(7));
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received the value '7' of type 'long' but current is none";
        let m = describe_mismatch("q", &wanted, reply);
        assert!(
            m.contains("is 7 in the topology file but not set on the broker"),
            "{m}"
        );
    }
}
