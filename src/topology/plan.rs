//! The resolved plan: every exchange, queue and binding the topology implies, with the exact
//! arguments. `apply`, `show` and `export` all read this one structure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{QueueSpec, QueueType, Topology};
pub use crate::amqp::Arg;

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueRole {
    /// Consumed by workers.
    Work,
    /// Holds retries for a delay, then dead-letters them back to the work queue.
    Retry,
    /// Holds dead letters for inspection and replay.
    DeadLetter,
}

/// One exchange to declare.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangePlan {
    /// Name.
    pub name: String,
    /// `topic`, `direct` or `fanout`.
    pub kind: &'static str,
    /// Arguments (the events exchange's `alternate-exchange`).
    pub arguments: BTreeMap<&'static str, Arg>,
}

/// One queue to declare.
#[derive(Debug, Clone, Serialize)]
pub struct QueuePlan {
    /// Name.
    pub name: String,
    /// Work, retry tier or DLQ.
    pub role: QueueRole,
    /// `x-*` arguments.
    pub arguments: BTreeMap<&'static str, Arg>,
}

/// One binding to declare.
#[derive(Debug, Clone, Serialize)]
pub struct BindingPlan {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Routing key or topic pattern.
    pub routing_key: String,
}

/// Everything `apply` declares, in declaration order.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Exchanges first.
    pub exchanges: Vec<ExchangePlan>,
    /// Then queues: each work queue, its retry tiers, its DLQ; then the ingress DLQ and the
    /// unrouted queue.
    pub queues: Vec<QueuePlan>,
    /// Then bindings.
    pub bindings: Vec<BindingPlan>,
}

impl Topology {
    /// Resolves the topology into the objects to declare.
    pub fn plan(&self) -> Plan {
        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        for q in &self.queues {
            queues.push(QueuePlan {
                name: q.name.clone(),
                role: QueueRole::Work,
                arguments: self.work_queue_args(q),
            });
            for &delay in &q.retry_delays {
                queues.push(QueuePlan {
                    name: q.retry_queue(delay),
                    role: QueueRole::Retry,
                    arguments: retry_tier_args(q, delay),
                });
            }
            queues.push(QueuePlan {
                name: q.dlq(),
                role: QueueRole::DeadLetter,
                arguments: dlq_args(q.expires),
            });
            for pattern in &q.bind {
                bindings.push(BindingPlan {
                    exchange: self.events_exchange.clone(),
                    queue: q.name.clone(),
                    routing_key: pattern.clone(),
                });
            }
            bindings.push(BindingPlan {
                exchange: self.dead_letter_exchange.clone(),
                queue: q.dlq(),
                routing_key: q.name.clone(),
            });
        }
        let ingress_expires = self.queues.iter().filter_map(|q| q.expires).max();
        queues.push(QueuePlan {
            name: self.ingress_dlq(),
            role: QueueRole::DeadLetter,
            arguments: dlq_args(ingress_expires),
        });
        bindings.push(BindingPlan {
            exchange: self.dead_letter_exchange.clone(),
            queue: self.ingress_dlq(),
            routing_key: self.events_exchange.clone(),
        });
        // An event type no queue binds is kept, not dropped: the events exchange's alternate
        // exchange routes it to `<events>.unrouted`, where `warren dlq` shows and replays it.
        let unrouted = self.unrouted_queue();
        queues.push(QueuePlan {
            name: unrouted.clone(),
            role: QueueRole::DeadLetter,
            arguments: dlq_args(ingress_expires),
        });
        bindings.push(BindingPlan {
            exchange: unrouted.clone(),
            queue: unrouted.clone(),
            routing_key: String::new(),
        });
        let mut events_args = BTreeMap::new();
        events_args.insert("alternate-exchange", Arg::Str(unrouted.clone()));
        Plan {
            exchanges: vec![
                ExchangePlan {
                    name: self.events_exchange.clone(),
                    kind: "topic",
                    arguments: events_args,
                },
                ExchangePlan {
                    name: self.dead_letter_exchange.clone(),
                    kind: "direct",
                    arguments: BTreeMap::new(),
                },
                ExchangePlan {
                    name: unrouted,
                    kind: "fanout",
                    arguments: BTreeMap::new(),
                },
            ],
            queues,
            bindings,
        }
    }

    fn work_queue_args(&self, q: &QueueSpec) -> BTreeMap<&'static str, Arg> {
        let mut a = BTreeMap::new();
        a.insert("x-queue-type", Arg::Str(q.queue_type.as_str().into()));
        a.insert(
            "x-dead-letter-exchange",
            Arg::Str(self.dead_letter_exchange.clone()),
        );
        a.insert("x-dead-letter-routing-key", Arg::Str(q.name.clone()));
        if q.queue_type == QueueType::Quorum {
            a.insert("x-delivery-limit", Arg::Int(q.delivery_limit.into()));
            a.insert("x-dead-letter-strategy", Arg::Str("at-least-once".into()));
            a.insert("x-overflow", Arg::Str("reject-publish".into()));
        } else if q.max_length.is_some() {
            a.insert("x-overflow", Arg::Str("reject-publish".into()));
        }
        if let Some(ttl) = q.message_ttl {
            a.insert("x-message-ttl", Arg::Int(millis(ttl)));
        }
        if let Some(n) = q.max_length {
            a.insert("x-max-length", Arg::Int(n.min(i64::MAX as u64) as i64));
        }
        if q.single_active_consumer {
            a.insert("x-single-active-consumer", Arg::Bool(true));
        }
        if let Some(e) = q.expires {
            a.insert("x-expires", Arg::Int(millis(e)));
        }
        a
    }
}

/// Retry tiers are always quorum queues with at-least-once dead-lettering, whatever the work
/// queue's type: a classic queue dead-letters at most once, and a tier's only job is to hand
/// every message back.
fn retry_tier_args(q: &QueueSpec, delay: std::time::Duration) -> BTreeMap<&'static str, Arg> {
    let mut a = BTreeMap::new();
    a.insert("x-queue-type", Arg::Str("quorum".into()));
    a.insert("x-message-ttl", Arg::Int(millis(delay)));
    // Back to the queue that failed, by the default exchange: never through the topic exchange.
    a.insert("x-dead-letter-exchange", Arg::Str(String::new()));
    a.insert("x-dead-letter-routing-key", Arg::Str(q.name.clone()));
    a.insert("x-dead-letter-strategy", Arg::Str("at-least-once".into()));
    a.insert("x-overflow", Arg::Str("reject-publish".into()));
    if let Some(e) = q.expires {
        a.insert("x-expires", Arg::Int(millis(e)));
    }
    a
}

/// DLQs are classic durable queues: browsable in order without burning a delivery limit.
fn dlq_args(expires: Option<std::time::Duration>) -> BTreeMap<&'static str, Arg> {
    let mut a = BTreeMap::new();
    a.insert("x-queue-type", Arg::Str("classic".into()));
    if let Some(e) = expires {
        a.insert("x-expires", Arg::Int(millis(e)));
    }
    a
}

fn millis(d: std::time::Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Plan {
    /// RabbitMQ `definitions.json` for `vhost`, loadable at boot (`load_definitions`).
    pub fn definitions(&self, vhost: &str) -> serde_json::Value {
        use serde_json::json;
        json!({
            "rabbitmq_version": "3.13.0",
            "exchanges": self.exchanges.iter().map(|e| json!({
                "name": e.name, "vhost": vhost, "type": e.kind,
                "durable": true, "auto_delete": false, "internal": false, "arguments": e.arguments,
            })).collect::<Vec<_>>(),
            "queues": self.queues.iter().map(|q| json!({
                "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                "arguments": q.arguments,
            })).collect::<Vec<_>>(),
            "bindings": self.bindings.iter().map(|b| json!({
                "source": b.exchange, "vhost": vhost, "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {},
            })).collect::<Vec<_>>(),
        })
    }
}
