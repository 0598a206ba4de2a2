//! Reading a topology file: the TOML model (unknown fields rejected), defaults applied, and
//! validation whose errors name the file, the queue and the field.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{
    QueueSpec, QueueType, Topology, TopologyError, is_topic_pattern, lanes, topic_matches,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    exchanges: ExchangesModel,
    #[serde(default)]
    events: EventsModel,
    #[serde(default)]
    defaults: QueueOptions,
    #[serde(default)]
    queues: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangesModel {
    events: String,
    dead_letter: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsModel {
    #[serde(default)]
    live_only: Vec<String>,
    live_ttl: Option<String>,
}

/// Fields allowed both in `[defaults]` and in each `[[queues]]` entry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueOptions {
    queue_type: Option<QueueType>,
    prefetch: Option<u16>,
    max_attempts: Option<u32>,
    retry_delays: Option<Vec<String>>,
    delivery_limit: Option<u32>,
    message_ttl: Option<String>,
    max_length: Option<u64>,
    single_active_consumer: Option<bool>,
    expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueModel {
    name: String,
    #[serde(default)]
    bind: Vec<String>,
    /// Split into this many single-active-consumer lanes (queue only, not in defaults).
    lanes: Option<i64>,
    /// The envelope path whose value picks a lane.
    lane_key: Option<String>,
    #[serde(flatten)]
    options: QueueOptions,
}

impl Topology {
    /// Loads and validates a topology file, prefixing every AMQP name with `prefix`.
    pub fn load(path: &Path, prefix: &str) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path, prefix)
    }

    /// Parses and validates topology text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, prefix: &str) -> Result<Self, TopologyError> {
        let invalid = |message: String| TopologyError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let model: FileModel = toml::from_str(text).map_err(|e| invalid(toml_message(&e)))?;
        validate_options(&model.defaults, "[defaults]").map_err(invalid)?;
        check_delivery_limit(&model.defaults, model.defaults.queue_type, "[defaults]")
            .map_err(invalid)?;

        let mut queues = Vec::with_capacity(model.queues.len());
        for (i, raw) in model.queues.into_iter().enumerate() {
            let label = raw
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!("queue '{n}'"))
                .unwrap_or_else(|| format!("queue #{}", i + 1));
            let q: QueueModel = raw
                .try_into()
                .map_err(|e: toml::de::Error| invalid(format!("{label}: {}", toml_message(&e))))?;
            validate_options(&q.options, &label).map_err(invalid)?;
            let queue_type = q.options.queue_type.or(model.defaults.queue_type);
            check_delivery_limit(&q.options, queue_type, &label).map_err(invalid)?;
            queues.push(
                resolve_queue(q, &model.defaults, prefix)
                    .map_err(|m| invalid(format!("{label}: {m}")))?,
            );
        }
        if queues.is_empty() {
            return Err(invalid("no [[queues]] declared".into()));
        }

        let live_ttl = model
            .events
            .live_ttl
            .as_deref()
            .map(|s| parse_duration(s, "events.live_ttl"))
            .transpose()
            .map_err(invalid)?;
        for t in &model.events.live_only {
            if !crate::envelope::is_event_type(t) {
                return Err(invalid(format!(
                    "events.live_only: '{t}' is not an event type (domain.name)"
                )));
            }
            if !queues
                .iter()
                .any(|q| q.bind.iter().any(|p| topic_matches(p, t)))
            {
                return Err(invalid(format!(
                    "events.live_only: '{t}' is not bound to any queue"
                )));
            }
        }
        if !model.events.live_only.is_empty() && live_ttl.is_none() {
            return Err(invalid(
                "events.live_ttl: required when events.live_only lists types".into(),
            ));
        }
        // A queue TTL expires whatever the queue holds: only a queue of live-only events may
        // have one, or a wallet or escrow event could expire unseen.
        for q in &queues {
            if q.message_ttl.is_none() {
                continue;
            }
            let durable: Vec<&str> = q
                .bind
                .iter()
                .filter(|p| !model.events.live_only.contains(p))
                .map(String::as_str)
                .collect();
            if !durable.is_empty() {
                let name = q.name.strip_prefix(prefix).unwrap_or(&q.name);
                return Err(invalid(format!(
                    "queue '{name}': field 'message_ttl': the queue binds {}, which may carry \
                     event types that are not live-only and must never expire; remove \
                     message_ttl (live-only types expire on their own after events.live_ttl), \
                     or bind only types listed in events.live_only",
                    durable
                        .iter()
                        .map(|p| format!("'{p}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }

        let topology = Topology {
            source: path.to_path_buf(),
            prefix: prefix.to_string(),
            events_exchange: prefixed(prefix, &model.exchanges.events, "exchanges.events")
                .map_err(invalid)?,
            dead_letter_exchange: prefixed(
                prefix,
                &model.exchanges.dead_letter,
                "exchanges.dead_letter",
            )
            .map_err(invalid)?,
            live_only: model.events.live_only.into_iter().collect(),
            live_ttl,
            queues,
        };
        topology.check_unique_names().map_err(invalid)?;
        Ok(topology)
    }

    fn check_unique_names(&self) -> Result<(), String> {
        // Queues and exchanges are separate namespaces (`<events>.unrouted` is both).
        let plan = self.plan();
        let queues = plan.queues.iter().map(|q| &q.name);
        let exchanges = plan.exchanges.iter().map(|e| &e.name);
        for names in [queues.collect::<Vec<_>>(), exchanges.collect()] {
            let mut seen = BTreeSet::new();
            for name in names {
                if !seen.insert(name) {
                    return Err(format!("the name '{name}' is used twice"));
                }
            }
        }
        Ok(())
    }
}

fn resolve_queue(q: QueueModel, d: &QueueOptions, prefix: &str) -> Result<QueueSpec, String> {
    let o = &q.options;
    let name = prefixed(prefix, &q.name, "name")?;
    if q.bind.is_empty() {
        return Err("field 'bind': at least one routing pattern is required".into());
    }
    for p in &q.bind {
        if !is_topic_pattern(p) {
            return Err(format!(
                "field 'bind': '{p}' is not a topic pattern (dot-separated words, '*' or '#')"
            ));
        }
    }
    let delays: Vec<Duration> = o
        .retry_delays
        .clone()
        .or_else(|| d.retry_delays.clone())
        .unwrap_or_else(|| vec!["1s".into(), "10s".into(), "1m".into()])
        .iter()
        .map(|s| parse_duration(s, "retry_delays"))
        .collect::<Result<_, _>>()?;
    if delays.windows(2).any(|w| w[0] >= w[1]) {
        return Err("field 'retry_delays': delays must be strictly increasing".into());
    }
    let max_attempts = o.max_attempts.or(d.max_attempts).unwrap_or(5);
    if max_attempts > 1 && delays.is_empty() {
        return Err("field 'retry_delays': needed when max_attempts > 1".into());
    }
    let duration = |v: &Option<String>, dv: &Option<String>, field: &str| {
        v.as_ref()
            .or(dv.as_ref())
            .map(|s| parse_duration(s, field))
            .transpose()
    };
    let queue_type = o.queue_type.or(d.queue_type).unwrap_or(QueueType::Quorum);
    let lanes = resolve_lanes(&q, queue_type)?;
    Ok(QueueSpec {
        name,
        bind: q.bind,
        queue_type,
        prefetch: o.prefetch.or(d.prefetch).unwrap_or(100),
        max_attempts,
        retry_delays: delays,
        delivery_limit: o.delivery_limit.or(d.delivery_limit).unwrap_or(10),
        message_ttl: duration(&o.message_ttl, &d.message_ttl, "message_ttl")?,
        max_length: o.max_length.or(d.max_length),
        single_active_consumer: o
            .single_active_consumer
            .or(d.single_active_consumer)
            .unwrap_or(false),
        expires: duration(&o.expires, &d.expires, "expires")?,
        lanes,
        lane_of: None,
    })
}

/// `lanes` and `lane_key`: a count in 1..=1024 on a quorum queue, and a valid envelope path
/// (default `agentId`).
fn resolve_lanes(q: &QueueModel, queue_type: QueueType) -> Result<Option<lanes::Lanes>, String> {
    let Some(count) = q.lanes else {
        if q.lane_key.is_some() {
            return Err("field 'lane_key': only for a laned queue; add lanes = N".into());
        }
        return Ok(None);
    };
    if count < 1 {
        return Err(format!("field 'lanes': {count} lanes: at least 1"));
    }
    if count > i64::from(lanes::MAX_LANES) {
        return Err(format!(
            "field 'lanes': {count} lanes: at most {}",
            lanes::MAX_LANES
        ));
    }
    if queue_type != QueueType::Quorum {
        return Err(
            "field 'lanes': lanes are quorum queues with a single active consumer; a classic \
             queue cannot be laned (remove queue_type = \"classic\")"
                .into(),
        );
    }
    if q.options.single_active_consumer.is_some() {
        return Err(
            "field 'single_active_consumer': lanes always have a single active consumer; \
             remove the field"
                .into(),
        );
    }
    let key = match &q.lane_key {
        Some(path) => lanes::LaneKey::parse(path).map_err(|m| format!("field 'lane_key': {m}"))?,
        None => lanes::LaneKey::AgentId,
    };
    Ok(Some(lanes::Lanes {
        count: count as u16,
        key,
    }))
}

fn validate_options(o: &QueueOptions, label: &str) -> Result<(), String> {
    let bad = |field: &str, why: &str| Err(format!("{label}: field '{field}': {why}"));
    if o.prefetch == Some(0) {
        return bad("prefetch", "must be at least 1");
    }
    if o.max_attempts == Some(0) {
        return bad("max_attempts", "must be at least 1");
    }
    if o.delivery_limit == Some(0) {
        return bad("delivery_limit", "must be at least 1");
    }
    if o.max_length == Some(0) {
        return bad("max_length", "must be at least 1");
    }
    for (field, v) in [("message_ttl", &o.message_ttl), ("expires", &o.expires)] {
        if let Some(s) = v {
            parse_duration(s, field).map_err(|m| format!("{label}: {m}"))?;
        }
    }
    if let Some(delays) = &o.retry_delays {
        for s in delays {
            parse_duration(s, "retry_delays").map_err(|m| format!("{label}: {m}"))?;
        }
    }
    Ok(())
}

/// A delivery limit written for a classic queue would be dropped: RabbitMQ ignores
/// `x-delivery-limit` there, so the crash-loop backstop the file asks for would not exist.
fn check_delivery_limit(
    o: &QueueOptions,
    queue_type: Option<QueueType>,
    label: &str,
) -> Result<(), String> {
    if o.delivery_limit.is_some() && queue_type == Some(QueueType::Classic) {
        return Err(format!(
            "{label}: field 'delivery_limit': a classic queue has no delivery limit (RabbitMQ \
             ignores it, so a crash loop would never be stopped): remove the field, or make the \
             queue queue_type = \"quorum\""
        ));
    }
    Ok(())
}

fn parse_duration(s: &str, field: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("field '{field}': '{s}' is not a duration like 500ms, 10s or 1m ({e})")
    })?;
    if d < Duration::from_millis(1) {
        return Err(format!("field '{field}': must be at least 1ms"));
    }
    if d.as_millis() > u32::MAX as u128 {
        return Err(format!("field '{field}': '{s}' is too long"));
    }
    Ok(d)
}

fn prefixed(prefix: &str, name: &str, field: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(format!("field '{field}': must not be empty"));
    }
    let full = format!("{prefix}{name}");
    // Leave room for the longest derived suffix (".retry.<delay>", ".dlq").
    if full.len() > 200 {
        return Err(format!(
            "field '{field}': '{full}' is longer than 200 bytes"
        ));
    }
    if name.starts_with("amq.") {
        return Err(format!(
            "field '{field}': names starting with 'amq.' are reserved by RabbitMQ"
        ));
    }
    Ok(full)
}

/// toml's messages quote fields with backticks and add a source excerpt; keep the first line
/// and use the quoting of the rest of warren's messages.
fn toml_message(e: &toml::de::Error) -> String {
    let msg = e.message().replace('`', "'");
    match e.span() {
        Some(_) => msg.trim().to_string(),
        None => msg,
    }
}
