//! Topology as code: the resolved model and the derived names every component agrees on. The
//! file is read and validated in `parse`, turned into broker objects in `plan`, declared in
//! `declare`; `leaders` says where the declared quorum queues' leaders are.

pub mod archive;
mod declare;
pub mod lanes;
mod leaders;
mod locate;
mod model;
mod parse;
mod plan;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use archive::ArchiveSpec;
pub use declare::{ApplyItem, ApplyReport, ItemStatus, apply, delete};
pub use leaders::locate_leaders;
pub use plan::{Arg, BindingPlan, ExchangePlan, Plan, QueuePlan, QueueRole};

/// The default topology file, relative to the working directory.
pub const DEFAULT_TOPOLOGY_FILE: &str = "topology/warren.toml";

/// A topology problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid: the message names the file, line and column, the key path and
    /// the queue.
    #[error("{path}:{line}:{column}: {key}{}{message}", if key.is_empty() { "" } else { ": " })]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// The key path, e.g. `queues[1].prefetch`.
        key: String,
        /// What is wrong, naming the queue and field.
        message: String,
    },
    /// The broker holds an object whose arguments differ from the file.
    #[error("{0}")]
    Mismatch(String),
    /// The broker lacks objects the topology declares.
    #[error(
        "{missing} not found on the broker: run `warren topology apply -f {path}` first (with the same --prefix)"
    )]
    NotDeclared {
        /// What is missing.
        missing: String,
        /// The topology file.
        path: String,
    },
    /// A queue name given on the command line is not in the topology.
    #[error("queue '{name}' is not in {path} (known queues: {known})")]
    UnknownQueue {
        /// The name given.
        name: String,
        /// The topology file.
        path: String,
        /// The queues it declares.
        known: String,
    },
}

/// `quorum` (replicated, delivery limit, at-least-once dead-lettering) or `classic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated Raft queue; the default for work queues.
    Quorum,
    /// Single-node queue; no delivery limit, so no crash-loop backstop.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// The resolved topology: defaults applied, names prefixed, everything validated.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The file it came from.
    pub source: PathBuf,
    /// The prefix applied to every AMQP name.
    pub prefix: String,
    /// The topic exchange events are published to (routing key = event type).
    pub events_exchange: String,
    /// The direct exchange dead letters go to (routing key = origin queue).
    pub dead_letter_exchange: String,
    /// Event types published transient with an expiration.
    pub live_only: BTreeSet<String>,
    /// The expiration of live-only events.
    pub live_ttl: Option<Duration>,
    /// Work queues.
    pub queues: Vec<QueueSpec>,
    /// The event archive (a stream), if the file has an `[archive]`.
    pub archive: Option<ArchiveSpec>,
}

/// One work queue with its retry tiers and DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The full (prefixed) name.
    pub name: String,
    /// Topic patterns bound on the events exchange.
    pub bind: Vec<String>,
    /// Quorum or classic.
    pub queue_type: QueueType,
    /// Default per-consumer prefetch for workers.
    pub prefetch: u16,
    /// Handler attempts before a message is dead-lettered as `exhausted`.
    pub max_attempts: u32,
    /// Retry tier delays, ascending.
    pub retry_delays: Vec<Duration>,
    /// Broker delivery limit (quorum only): the crash-loop backstop.
    pub delivery_limit: u32,
    /// Message TTL for live-only queues.
    pub message_ttl: Option<Duration>,
    /// Length limit; publishers get a nack past it (`reject-publish`).
    pub max_length: Option<u64>,
    /// One consumer at a time, in order, with standbys.
    pub single_active_consumer: bool,
    /// Delete the queue (and its tiers and DLQ) after this long unused.
    pub expires: Option<Duration>,
    /// Quorum only: on how many nodes a new queue (and each retry tier) gets members
    /// (`x-quorum-initial-group-size`); `None`: the broker's default, every node up to its
    /// limit.
    pub quorum_initial_group_size: Option<u32>,
    /// Split into lanes by a key: the queue is then its lanes (`<queue>.lane.<i>`).
    pub lanes: Option<lanes::Lanes>,
    /// For one lane of a laned queue: the laned queue's name (its DLQ is the laned queue's).
    pub lane_of: Option<String>,
}

impl QueueSpec {
    /// One lane of this laned queue, as a queue of its own: single active consumer, retries
    /// in process, dead letters to this queue's DLQ.
    pub fn lane_spec(&self, lane: u16) -> QueueSpec {
        QueueSpec {
            name: lanes::lane_queue(&self.name, lane),
            single_active_consumer: true,
            lanes: None,
            lane_of: Some(self.name.clone()),
            ..self.clone()
        }
    }

    /// `<queue>.retry.<delay>`.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.name, delay_label(delay))
    }

    /// `<queue>.dlq` (a lane's is its laned queue's).
    pub fn dlq(&self) -> String {
        dlq_name(self.lane_of.as_deref().unwrap_or(&self.name))
    }

    /// The smallest tier whose delay is at least `wanted`, or the longest tier.
    pub fn tier_for(&self, wanted: Duration) -> Option<Duration> {
        self.retry_delays
            .iter()
            .copied()
            .find(|d| *d >= wanted)
            .or_else(|| self.retry_delays.last().copied())
    }
}

/// `<origin>.dlq`, the dead-letter queue for messages that failed in `origin`.
pub fn dlq_name(origin: &str) -> String {
    format!("{origin}.dlq")
}

/// `1m30s`-style label for a delay, used in retry-tier names.
pub fn delay_label(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

impl Topology {
    /// The work queue called `name`: its name in the file, or its full prefixed name.
    pub fn queue(&self, name: &str) -> Result<&QueueSpec, TopologyError> {
        let full = format!("{}{name}", self.prefix);
        self.queues
            .iter()
            .find(|q| q.name == full || q.name == name)
            .ok_or_else(|| TopologyError::UnknownQueue {
                name: name.to_string(),
                path: self.source.display().to_string(),
                known: self
                    .queues
                    .iter()
                    .map(|q| q.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The DLQ for frames the bridge could not parse: `<events exchange>.dlq`.
    pub fn ingress_dlq(&self) -> String {
        dlq_name(&self.events_exchange)
    }

    /// Where events no queue binds go: `<events exchange>.unrouted`, the name of both the
    /// fanout exchange set as the events exchange's `alternate-exchange` and its one queue.
    pub fn unrouted_queue(&self) -> String {
        format!("{}.unrouted", self.events_exchange)
    }

    /// The lane headers an event is published with: for each laned queue that binds its type
    /// and finds its key in it, the queue's lane header and the lane. An event without the key
    /// gets none, and its laned queues give it to every lane.
    pub fn lane_headers(&self, event: &crate::envelope::Envelope) -> Vec<(String, String)> {
        self.queues
            .iter()
            .filter_map(|q| {
                let l = q.lanes.as_ref()?;
                if !q.bind.iter().any(|p| topic_matches(p, &event.event_type)) {
                    return None;
                }
                let lane = l.lane(event)?;
                Some((lanes::lane_header(&q.name), lane.to_string()))
            })
            .collect()
    }

    /// True if `event_type` is published transient with an expiration.
    pub fn is_live_only(&self, event_type: &str) -> bool {
        self.live_only.contains(event_type)
    }

    /// Every DLQ in the topology, with the origin it collects from.
    pub fn dlqs(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .queues
            .iter()
            .map(|q| (q.name.clone(), q.dlq()))
            .collect();
        v.push((self.events_exchange.clone(), self.ingress_dlq()));
        v.push((self.events_exchange.clone(), self.unrouted_queue()));
        v
    }
}

/// A topic-exchange binding pattern: dot-separated words, each a literal, `*` or `#`.
pub fn is_topic_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty() && !w.contains(['*', '#']) && !w.contains(char::is_whitespace))
        })
}

/// Topic-exchange matching of a routing key against a binding pattern.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(w), Some(kw)) if w == kw => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests;
