//! The resolved plan: every exchange, queue and binding the topology implies, with the exact
//! arguments. `apply`, `show` and `export` all read this one structure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{QueueSpec, QueueType, Topology, lanes};
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
    /// One lane of a laned queue, consumed by its one owning worker at a time.
    Lane,
    /// The event archive: a stream holding a copy of the events, read by `warren archive`.
    Archive,
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
    /// Destination queue, or exchange when `to_exchange`.
    pub queue: String,
    /// Routing key or topic pattern.
    pub routing_key: String,
    /// The destination is an exchange (a laned queue's lanes exchange).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub to_exchange: bool,
    /// Binding arguments (a lane's header match).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, Arg>,
}

impl BindingPlan {
    pub(super) fn to_queue(exchange: &str, queue: &str, routing_key: &str) -> Self {
        BindingPlan {
            exchange: exchange.to_string(),
            queue: queue.to_string(),
            routing_key: routing_key.to_string(),
            to_exchange: false,
            arguments: BTreeMap::new(),
        }
    }
}

/// A laned queue and its lane count, which `apply` checks against the broker.
#[derive(Debug, Clone, Serialize)]
pub struct LanedPlan {
    /// The laned queue.
    pub queue: String,
    /// Its lanes.
    pub lanes: u16,
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
    /// The laned queues, for the lane-count check.
    pub laned: Vec<LanedPlan>,
}

impl Topology {
    /// Resolves the topology into the objects to declare.
    pub fn plan(&self) -> Plan {
        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        let mut exchanges = Vec::new();
        let mut laned = Vec::new();
        for q in &self.queues {
            if let Some(l) = &q.lanes {
                self.plan_lanes(q, l.count, &mut exchanges, &mut queues, &mut bindings);
                laned.push(LanedPlan {
                    queue: q.name.clone(),
                    lanes: l.count,
                });
                continue;
            }
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
                bindings.push(BindingPlan::to_queue(
                    &self.events_exchange,
                    &q.name,
                    pattern,
                ));
            }
            bindings.push(BindingPlan::to_queue(
                &self.dead_letter_exchange,
                &q.dlq(),
                &q.name,
            ));
        }
        let ingress_expires = self.queues.iter().filter_map(|q| q.expires).max();
        queues.push(QueuePlan {
            name: self.ingress_dlq(),
            role: QueueRole::DeadLetter,
            arguments: dlq_args(ingress_expires),
        });
        bindings.push(BindingPlan::to_queue(
            &self.dead_letter_exchange,
            &self.ingress_dlq(),
            &self.events_exchange,
        ));
        // An event type no queue binds is kept, not dropped: the events exchange's alternate
        // exchange routes it to `<events>.unrouted`, where `warren dlq` shows and replays it.
        let unrouted = self.unrouted_queue();
        queues.push(QueuePlan {
            name: unrouted.clone(),
            role: QueueRole::DeadLetter,
            arguments: dlq_args(ingress_expires),
        });
        bindings.push(BindingPlan::to_queue(&unrouted, &unrouted, ""));
        self.plan_archive(&mut queues, &mut bindings);
        let mut events_args = BTreeMap::new();
        events_args.insert("alternate-exchange", Arg::Str(unrouted.clone()));
        let mut all_exchanges = vec![
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
        ];
        all_exchanges.extend(exchanges);
        Plan {
            exchanges: all_exchanges,
            queues,
            bindings,
            laned,
        }
    }

    /// A laned queue: its lanes, the headers exchange that splits its events by the lane
    /// header the bridge sets, the fanout that gives an event without a key to every lane,
    /// the workers' roster exchange, and its DLQ (bound with every lane's name).
    fn plan_lanes(
        &self,
        q: &QueueSpec,
        count: u16,
        exchanges: &mut Vec<ExchangePlan>,
        queues: &mut Vec<QueuePlan>,
        bindings: &mut Vec<BindingPlan>,
    ) {
        let split = lanes::lanes_exchange(&q.name);
        let unkeyed = lanes::unkeyed_exchange(&q.name);
        let mut split_args = BTreeMap::new();
        split_args.insert("alternate-exchange", Arg::Str(unkeyed.clone()));
        exchanges.push(ExchangePlan {
            name: unkeyed.clone(),
            kind: "fanout",
            arguments: BTreeMap::new(),
        });
        exchanges.push(ExchangePlan {
            name: split.clone(),
            kind: "headers",
            arguments: split_args,
        });
        exchanges.push(ExchangePlan {
            name: lanes::roster_exchange(&q.name),
            kind: "fanout",
            arguments: BTreeMap::new(),
        });
        for pattern in &q.bind {
            bindings.push(BindingPlan {
                exchange: self.events_exchange.clone(),
                queue: split.clone(),
                routing_key: pattern.clone(),
                to_exchange: true,
                arguments: BTreeMap::new(),
            });
        }
        let header = lanes::lane_header(&q.name);
        for lane in 0..count {
            let spec = q.lane_spec(lane);
            queues.push(QueuePlan {
                name: spec.name.clone(),
                role: QueueRole::Lane,
                arguments: self.work_queue_args(&spec),
            });
            // The lane header starts with `x-`, which a headers exchange ignores under
            // `x-match = all` (every binding would match, and every event go to every lane):
            // `all-with-x` (RabbitMQ 3.10+) matches on it.
            let mut args = BTreeMap::new();
            args.insert("x-match".to_string(), Arg::Str("all-with-x".into()));
            args.insert(header.clone(), Arg::Str(lane.to_string()));
            bindings.push(BindingPlan {
                exchange: split.clone(),
                queue: spec.name.clone(),
                routing_key: String::new(),
                to_exchange: false,
                arguments: args,
            });
            bindings.push(BindingPlan::to_queue(&unkeyed, &spec.name, ""));
            bindings.push(BindingPlan::to_queue(
                &self.dead_letter_exchange,
                &q.dlq(),
                &spec.name,
            ));
        }
        queues.push(QueuePlan {
            name: q.dlq(),
            role: QueueRole::DeadLetter,
            arguments: dlq_args(q.expires),
        });
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
        if q.queue_type == QueueType::Quorum {
            group_size(q, &mut a);
        }
        a
    }
}

/// `x-quorum-initial-group-size` when the file sets one: a new quorum queue's members on that
/// many nodes. A work queue's retry tiers get the same, as they hold its messages too.
fn group_size(q: &QueueSpec, a: &mut BTreeMap<&'static str, Arg>) {
    if let Some(n) = q.quorum_initial_group_size {
        a.insert("x-quorum-initial-group-size", Arg::Int(n.into()));
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
    group_size(q, &mut a);
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
                "destination_type": if b.to_exchange { "exchange" } else { "queue" },
                "routing_key": b.routing_key, "arguments": b.arguments,
            })).collect::<Vec<_>>(),
        })
    }
}
