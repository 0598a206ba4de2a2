//! Reading a topology file: the TOML model (unknown fields rejected), defaults applied, and
//! validation whose errors name the file, the queue and the field.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::locate::{self, KeyPath, Problem, Seg};
use super::model::{QueueModel, QueueOptions, deserialize};
use super::{
    QueueSpec, QueueType, Topology, TopologyError, is_topic_pattern, lanes, topic_matches,
};

impl Topology {
    /// Loads and validates a topology file, prefixing every AMQP name with `prefix`.
    pub fn load(path: &Path, prefix: &str) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path, prefix)
    }

    /// Parses and validates topology text; `path` is only used in messages, which name the
    /// file, the line and column, and the key path.
    pub fn parse(text: &str, path: &Path, prefix: &str) -> Result<Self, TopologyError> {
        Self::parse_model(text, path, prefix).map_err(|p| {
            let span = p.span.clone().or_else(|| locate::span_of(text, &p.at));
            let (line, column) = locate::line_col(text, span.map_or(0, |s| s.start));
            TopologyError::Invalid {
                path: path.display().to_string(),
                line,
                column,
                key: KeyPath(&p.at).to_string(),
                message: p.message,
            }
        })
    }

    fn parse_model(text: &str, path: &Path, prefix: &str) -> Result<Self, Problem> {
        let model = deserialize(text)?;
        let defaults = [Seg::Key("defaults".into())];
        validate_options(&model.defaults)
            .and_then(|()| check_quorum_only(&model.defaults, model.defaults.queue_type))
            .map_err(|p| p.under(&defaults).labelled("[defaults]"))?;

        let mut queues = Vec::with_capacity(model.queues.len());
        for (i, q) in model.queues.into_iter().enumerate() {
            let at = [Seg::Key("queues".into()), Seg::Index(i)];
            let label = format!("queue '{}'", q.name);
            let options = q.options();
            let queue_type = options.queue_type.or(model.defaults.queue_type);
            validate_options(&options)
                .and_then(|()| check_quorum_only(&options, queue_type))
                .and_then(|()| resolve_queue(q, &options, &model.defaults, prefix))
                .map(|spec| queues.push(spec))
                .map_err(|p| p.under(&at).labelled(&label))?;
        }
        if queues.is_empty() {
            return Err(Problem::at("queues", "no [[queues]] declared"));
        }

        let events = [Seg::Key("events".into())];
        let live_ttl = model
            .events
            .live_ttl
            .as_deref()
            .map(|s| parse_duration(s, "events.live_ttl"))
            .transpose()
            .map_err(|m| Problem::at("live_ttl", m).under(&events))?;
        for (i, t) in model.events.live_only.iter().enumerate() {
            let at = [
                Seg::Key("events".into()),
                Seg::Key("live_only".into()),
                Seg::Index(i),
            ];
            if !crate::envelope::is_event_type(t) {
                return Err(Problem::here(format!(
                    "events.live_only: '{t}' is not an event type (domain.name)"
                ))
                .under(&at));
            }
            if !queues
                .iter()
                .any(|q| q.bind.iter().any(|p| topic_matches(p, t)))
            {
                return Err(Problem::here(format!(
                    "events.live_only: '{t}' is not bound to any queue"
                ))
                .under(&at));
            }
        }
        if !model.events.live_only.is_empty() && live_ttl.is_none() {
            return Err(Problem::at(
                "live_only",
                "events.live_ttl: required when events.live_only lists types",
            )
            .under(&events));
        }
        // A queue TTL expires whatever the queue holds: only a queue of live-only events may
        // have one, or a wallet or escrow event could expire unseen.
        for (i, q) in queues.iter().enumerate() {
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
                return Err(Problem::at(
                    "message_ttl",
                    format!(
                        "queue '{name}': field 'message_ttl': the queue binds {}, which may \
                         carry event types that are not live-only and must never expire; remove \
                         message_ttl (live-only types expire on their own after \
                         events.live_ttl), or bind only types listed in events.live_only",
                        durable
                            .iter()
                            .map(|p| format!("'{p}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .under(&[Seg::Key("queues".into()), Seg::Index(i)]));
            }
        }

        let exchanges = [Seg::Key("exchanges".into())];
        let exchange = |name: &str, field: &str| {
            prefixed(prefix, name, &format!("exchanges.{field}"))
                .map_err(|m| Problem::at(field, m).under(&exchanges))
        };
        let topology = Topology {
            source: path.to_path_buf(),
            prefix: prefix.to_string(),
            events_exchange: exchange(&model.exchanges.events, "events")?,
            dead_letter_exchange: exchange(&model.exchanges.dead_letter, "dead_letter")?,
            live_only: model.events.live_only.into_iter().collect(),
            live_ttl,
            queues,
            archive: model
                .archive
                .map(|a| super::archive::resolve(a, prefix))
                .transpose()?,
        };
        topology.check_unique_names()?;
        Ok(topology)
    }

    /// Every derived name once; the error points at the first queue that repeats one.
    fn check_unique_names(&self) -> Result<(), Problem> {
        let Err(message) = self.unique_names() else {
            return Ok(());
        };
        let culprit = (0..self.queues.len()).find(|&n| {
            let head = Topology {
                queues: self.queues[..=n].to_vec(),
                ..self.clone()
            };
            head.unique_names().is_err()
        });
        Err(match culprit {
            Some(i) => {
                Problem::at("name", message).under(&[Seg::Key("queues".into()), Seg::Index(i)])
            }
            None => Problem::at("exchanges", message),
        })
    }

    fn unique_names(&self) -> Result<(), String> {
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

fn resolve_queue(
    q: QueueModel,
    o: &QueueOptions,
    d: &QueueOptions,
    prefix: &str,
) -> Result<QueueSpec, Problem> {
    let name = prefixed(prefix, &q.name, "name").map_err(|m| Problem::at("name", m))?;
    let bad = |field: &str, m: String| Problem::at(field, format!("field '{field}': {m}"));
    if q.bind.is_empty() {
        return Err(bad(
            "bind",
            "at least one routing pattern is required".into(),
        ));
    }
    if let Some((i, p)) = q
        .bind
        .iter()
        .enumerate()
        .find(|(_, p)| !is_topic_pattern(p))
    {
        return Err(bad(
            "bind",
            format!("'{p}' is not a topic pattern (dot-separated words, '*' or '#')"),
        )
        .at_index(i));
    }
    let delays: Vec<Duration> = o
        .retry_delays
        .clone()
        .or_else(|| d.retry_delays.clone())
        .unwrap_or_else(|| vec!["1s".into(), "10s".into(), "1m".into()])
        .iter()
        .map(|s| parse_duration(s, "retry_delays"))
        .collect::<Result<_, _>>()
        .map_err(|m| Problem::at("retry_delays", m))?;
    if delays.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad(
            "retry_delays",
            "delays must be strictly increasing".into(),
        ));
    }
    let max_attempts = o.max_attempts.or(d.max_attempts).unwrap_or(5);
    if max_attempts > 1 && delays.is_empty() {
        return Err(bad("retry_delays", "needed when max_attempts > 1".into()));
    }
    let duration = |v: &Option<String>, dv: &Option<String>, field: &str| {
        v.as_ref()
            .or(dv.as_ref())
            .map(|s| parse_duration(s, field))
            .transpose()
            .map_err(|m| Problem::at(field, m))
    };
    let queue_type = o.queue_type.or(d.queue_type).unwrap_or(QueueType::Quorum);
    let lanes = resolve_lanes(&q, queue_type)?;
    Ok(QueueSpec {
        name,
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
        quorum_initial_group_size: o.quorum_initial_group_size.or(d.quorum_initial_group_size),
        bind: q.bind,
        lanes,
        lane_of: None,
    })
}

/// `lanes` and `lane_key`: a count in 1..=1024 on a quorum queue, and a valid envelope path
/// (default `agentId`).
fn resolve_lanes(q: &QueueModel, queue_type: QueueType) -> Result<Option<lanes::Lanes>, Problem> {
    let bad = |field: &str, m: String| Problem::at(field, format!("field '{field}': {m}"));
    let Some(count) = q.lanes else {
        if q.lane_key.is_some() {
            return Err(bad(
                "lane_key",
                "only for a laned queue; add lanes = N".into(),
            ));
        }
        return Ok(None);
    };
    if count < 1 {
        return Err(bad("lanes", format!("{count} lanes: at least 1")));
    }
    if count > i64::from(lanes::MAX_LANES) {
        return Err(bad(
            "lanes",
            format!("{count} lanes: at most {}", lanes::MAX_LANES),
        ));
    }
    if queue_type != QueueType::Quorum {
        return Err(bad(
            "lanes",
            "lanes are quorum queues with a single active consumer; a classic queue cannot be \
             laned (remove queue_type = \"classic\")"
                .into(),
        ));
    }
    if q.single_active_consumer.is_some() {
        return Err(bad(
            "single_active_consumer",
            "lanes always have a single active consumer; remove the field".into(),
        ));
    }
    let key = match &q.lane_key {
        Some(path) => lanes::LaneKey::parse(path).map_err(|m| bad("lane_key", m))?,
        None => lanes::LaneKey::AgentId,
    };
    Ok(Some(lanes::Lanes {
        count: count as u16,
        key,
    }))
}

fn validate_options(o: &QueueOptions) -> Result<(), Problem> {
    let bad = |field: &str, why: &str| Err(Problem::at(field, format!("field '{field}': {why}")));
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
    if o.quorum_initial_group_size == Some(0) {
        return bad(
            "quorum_initial_group_size",
            "must be at least 1 (members on this many nodes)",
        );
    }
    for (field, v) in [("message_ttl", &o.message_ttl), ("expires", &o.expires)] {
        if let Some(s) = v {
            parse_duration(s, field).map_err(|m| Problem::at(field, m))?;
        }
    }
    if let Some(delays) = &o.retry_delays {
        for (i, s) in delays.iter().enumerate() {
            parse_duration(s, "retry_delays")
                .map_err(|m| Problem::at("retry_delays", m).at_index(i))?;
        }
    }
    Ok(())
}

/// Quorum-only fields written for a classic queue would be dropped: RabbitMQ ignores
/// `x-delivery-limit` there, so the crash-loop backstop the file asks for would not exist, and
/// a classic queue has no replicas to place.
fn check_quorum_only(o: &QueueOptions, queue_type: Option<QueueType>) -> Result<(), Problem> {
    if queue_type != Some(QueueType::Classic) {
        return Ok(());
    }
    if o.delivery_limit.is_some() {
        return Err(Problem::at(
            "delivery_limit",
            "field 'delivery_limit': a classic queue has no delivery limit (RabbitMQ ignores \
             it, so a crash loop would never be stopped): remove the field, or make the queue \
             queue_type = \"quorum\"",
        ));
    }
    if o.quorum_initial_group_size.is_some() {
        return Err(Problem::at(
            "quorum_initial_group_size",
            "field 'quorum_initial_group_size': a classic queue lives on one node and has no \
             replicas: remove the field, or make the queue queue_type = \"quorum\"",
        ));
    }
    Ok(())
}

pub(super) fn parse_duration(s: &str, field: &str) -> Result<Duration, String> {
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

pub(super) fn prefixed(prefix: &str, name: &str, field: &str) -> Result<String, String> {
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
