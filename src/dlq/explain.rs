//! Why a message is dead: read warren's failure headers and the broker's `x-death` into one
//! record. Pure: no I/O, tested with hand-built properties.
//!
//! The worker strips `x-death` when it dead-letters a message itself, so a dead letter that
//! carries `x-death` was dead-lettered by the broker (delivery limit, TTL, length limit, reject);
//! any warren headers on it are history from earlier retries.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::amqp::{BasicProperties, XDeath, hdr, header_str, header_u32, x_death};

/// The `kind` column: why the message is in the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The worker: the handler said retrying cannot help.
    Permanent,
    /// The worker: every attempt failed.
    Exhausted,
    /// The worker or the bridge: not a valid envelope.
    Invalid,
    /// The worker dead-lettered it while still retrying (should not happen; shown as found).
    Transient,
    /// The broker: delivered too many times without an ack (the worker crashed or lost its
    /// connection while handling it).
    DeliveryLimit,
    /// The broker: its TTL ran out before a worker took it.
    Expired,
    /// The broker: the queue was over its length limit.
    Maxlen,
    /// The broker: a consumer rejected it without requeue.
    Rejected,
    /// The bridge published it and no queue binds its routing key: the events exchange's
    /// alternate exchange kept it in `<events>.unrouted`.
    Unroutable,
    /// Neither warren's headers nor `x-death` explain it.
    Unknown,
}

impl Kind {
    /// Every kind, in the order filters offer them.
    pub const ALL: [Kind; 10] = [
        Kind::Permanent,
        Kind::Exhausted,
        Kind::Invalid,
        Kind::Transient,
        Kind::DeliveryLimit,
        Kind::Expired,
        Kind::Maxlen,
        Kind::Rejected,
        Kind::Unroutable,
        Kind::Unknown,
    ];

    /// The kind named `s` (as [`Kind::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The name shown and accepted by `--kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Permanent => "permanent",
            Kind::Exhausted => "exhausted",
            Kind::Invalid => "invalid",
            Kind::Transient => "transient",
            Kind::DeliveryLimit => "delivery_limit",
            Kind::Expired => "expired",
            Kind::Maxlen => "maxlen",
            Kind::Rejected => "rejected",
            Kind::Unroutable => "unroutable",
            Kind::Unknown => "unknown",
        }
    }

    /// True when the broker, not warren, dead-lettered the message.
    pub fn by_broker(self) -> bool {
        matches!(
            self,
            Kind::DeliveryLimit | Kind::Expired | Kind::Maxlen | Kind::Rejected
        )
    }

    fn from_warren(s: &str) -> Kind {
        match s {
            "permanent" => Kind::Permanent,
            "exhausted" => Kind::Exhausted,
            "invalid" => Kind::Invalid,
            "transient" => Kind::Transient,
            _ => Kind::Unknown,
        }
    }

    fn from_broker(reason: &str) -> Kind {
        match reason {
            "delivery_limit" => Kind::DeliveryLimit,
            "expired" => Kind::Expired,
            "maxlen" => Kind::Maxlen,
            "rejected" => Kind::Rejected,
            _ => Kind::Unknown,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point in time, kept as epoch milliseconds; serialized as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub u64);

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

impl Time {
    /// As a `SystemTime`.
    pub fn system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Now.
    pub fn now() -> Time {
        Time(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    fn parse_rfc3339(s: &str) -> Option<Time> {
        let t = humantime::parse_rfc3339_weak(s).ok()?;
        Some(Time(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64))
    }

    /// An AMQP timestamp: seconds by the spec, but some publishers write milliseconds. A
    /// value past the year 9999 (nanoseconds, garbage) is no time at all.
    fn from_amqp(v: u64) -> Option<Time> {
        if v > 100_000_000_000 {
            Some(Time(v)).filter(|t| t.0 <= MAX_RFC3339_MS)
        } else {
            Some(Time(v * 1000))
        }
    }

    /// Seconds since the epoch (an `x-death` time), if before the year 10000.
    pub fn from_secs(secs: u64) -> Option<Time> {
        secs.checked_mul(1000)
            .filter(|&ms| ms <= MAX_RFC3339_MS)
            .map(Time)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime fails past the year 9999, and a failing Display panics in `to_string()`.
        if self.0 > MAX_RFC3339_MS {
            return write!(f, "{} ms after the epoch", self.0);
        }
        write!(f, "{}", humantime::format_rfc3339_seconds(self.system()))
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 > MAX_RFC3339_MS {
            return s.collect_str(self);
        }
        s.collect_str(&humantime::format_rfc3339_millis(self.system()))
    }
}

/// One dead letter, explained.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The DLQ it sits in.
    pub dlq: String,
    /// 1-based position in the DLQ when it was read.
    pub position: u32,
    /// `message_id` (the eventId), or the envelope's `eventId`.
    pub id: Option<String>,
    /// The event type (`type` property or envelope `type`).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// `x-agent-id` or the envelope's `agentId`.
    pub agent: Option<String>,
    /// Why it is dead; see [`Kind`].
    pub kind: Kind,
    /// `x-warren-error-kind` as found, also when the broker had the last word.
    pub warren_kind: Option<String>,
    /// `x-warren-attempt`: handler attempts warren counted.
    pub attempts: u32,
    /// `x-warren-replayed`: times replayed from a DLQ.
    pub replayed: u32,
    /// First failure (warren header, else the broker's dead-lettering time).
    pub first_failed: Option<Time>,
    /// Last failure (the broker's dead-lettering time, else warren's header, else the
    /// message timestamp).
    pub last_failed: Option<Time>,
    /// The queue it failed in, where `replay` sends it.
    pub origin: Option<String>,
    /// The reason in words.
    pub error: String,
    /// Body size.
    pub bytes: usize,
}

#[derive(Deserialize)]
struct EnvelopeIds {
    #[serde(rename = "eventId")]
    event_id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(rename = "agentId")]
    agent_id: Option<String>,
}

/// The broker's most recent dead-lettering: `x-last-death-*` (RabbitMQ 3.13+) or the first
/// `x-death` entry (most recent first in every version).
pub fn last_death(props: &BasicProperties) -> Option<XDeath> {
    let mut deaths = x_death(props);
    if let (Some(queue), Some(reason)) = (
        header_str(props, "x-last-death-queue"),
        header_str(props, "x-last-death-reason"),
    ) && let Some(i) = deaths
        .iter()
        .position(|d| d.queue == queue && d.reason == reason)
    {
        return Some(deaths.swap_remove(i));
    }
    if deaths.is_empty() {
        None
    } else {
        Some(deaths.swap_remove(0))
    }
}

/// Explains the message at `position` of `dlq`. `fallback_origin` is the queue the DLQ
/// collects from, used when no header names one.
pub fn explain(
    dlq: &str,
    position: u32,
    props: &BasicProperties,
    body: &[u8],
    fallback_origin: Option<&str>,
) -> DeadLetter {
    let warren_kind = header_str(props, hdr::ERROR_KIND).map(str::to_string);
    let warren_error = header_str(props, hdr::ERROR);
    let warren_origin = header_str(props, hdr::ORIGIN_QUEUE).filter(|q| !q.is_empty());
    let warren_first = header_str(props, hdr::FIRST_FAILED_AT).and_then(Time::parse_rfc3339);
    let warren_last = header_str(props, hdr::LAST_FAILED_AT).and_then(Time::parse_rfc3339);
    let stamped = props.timestamp().and_then(Time::from_amqp);

    let (kind, origin, error, first_failed, last_failed) = match last_death(props) {
        Some(death) => {
            let kind = Kind::from_broker(&death.reason);
            let at = death.time.and_then(Time::from_secs);
            let mut error = broker_reason(kind, &death);
            if let Some(e) = warren_error {
                let by = warren_kind.as_deref().unwrap_or("unknown");
                error.push_str(&format!("; last handler error ({by}): {e}"));
            }
            (
                kind,
                Some(death.queue),
                error,
                warren_first.or(at),
                at.or(warren_last),
            )
        }
        None => {
            let kind = warren_kind
                .as_deref()
                .map_or(Kind::Unknown, Kind::from_warren);
            let error = match (warren_error, kind) {
                (Some(e), _) => e.to_string(),
                (None, Kind::Unknown) => "no x-warren-error-kind and no x-death header: not dead-lettered by warren or the broker".into(),
                (None, _) => String::new(),
            };
            let origin = warren_origin.or(fallback_origin).map(str::to_string);
            (kind, origin, error, warren_first, warren_last)
        }
    };

    let mut id = props.message_id().as_ref().map(|s| s.as_str().to_string());
    let mut event_type = props.kind().as_ref().map(|s| s.as_str().to_string());
    let mut agent = header_str(props, hdr::AGENT_ID).map(str::to_string);
    if (id.is_none() || event_type.is_none() || agent.is_none())
        && let Ok(env) = serde_json::from_slice::<EnvelopeIds>(body)
    {
        id = id.or(env.event_id);
        event_type = event_type.or(env.event_type);
        agent = agent.or(env.agent_id);
    }

    DeadLetter {
        dlq: dlq.to_string(),
        position,
        id,
        event_type,
        agent,
        kind,
        warren_kind,
        attempts: header_u32(props, hdr::ATTEMPT),
        replayed: header_u32(props, hdr::REPLAYED),
        first_failed: first_failed.or(last_failed).or(stamped),
        last_failed: last_failed.or(stamped),
        origin,
        error,
        bytes: body.len(),
    }
}

/// The broker's reason in words; the queue is in the origin column.
fn broker_reason(kind: Kind, death: &XDeath) -> String {
    match kind {
        Kind::DeliveryLimit => {
            "broker: delivery limit reached (workers crashed or disconnected before acking it)"
                .into()
        }
        Kind::Expired => "broker: message TTL expired before a worker took it".into(),
        Kind::Maxlen => "broker: dropped by the queue's length limit".into(),
        Kind::Rejected => "broker: rejected without requeue by a consumer".into(),
        _ => format!("broker: dead-lettered (reason '{}')", death.reason),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

    use super::*;
    use crate::amqp::set_header;

    fn death(queue: &str, reason: &str, time: u64) -> AMQPValue {
        let mut m = BTreeMap::new();
        m.insert(
            ShortString::from("queue"),
            AMQPValue::LongString(LongString::from(queue)),
        );
        m.insert(
            ShortString::from("reason"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        m.insert(ShortString::from("count"), AMQPValue::LongLongInt(1));
        m.insert(
            ShortString::from("exchange"),
            AMQPValue::LongString(LongString::from("")),
        );
        m.insert(ShortString::from("time"), AMQPValue::Timestamp(time));
        AMQPValue::FieldTable(FieldTable::from(m))
    }

    fn props(map: BTreeMap<ShortString, AMQPValue>) -> BasicProperties {
        BasicProperties::default()
            .with_message_id("01J0000000000000000000000A".into())
            .with_headers(FieldTable::from(map))
    }

    #[test]
    fn warren_headers_explain_a_worker_dead_letter() {
        let mut m = BTreeMap::new();
        set_header(&mut m, hdr::ERROR_KIND, "permanent");
        set_header(&mut m, hdr::ERROR, "HTTP 422: bad order");
        set_header(&mut m, hdr::ORIGIN_QUEUE, "pf.payments");
        set_header(&mut m, hdr::ATTEMPT, 1u32);
        set_header(&mut m, hdr::LAST_FAILED_AT, "2026-01-02T03:04:05.000Z");
        let body = br#"{"eventId":"x","type":"escrow.released","agentId":"pf_agent_1","payload":{},"ts":1}"#;
        let d = explain("pf.payments.dlq", 1, &props(m), body, None);
        assert_eq!(d.kind, Kind::Permanent);
        assert_eq!(d.origin.as_deref(), Some("pf.payments"));
        assert_eq!(d.error, "HTTP 422: bad order");
        assert_eq!(
            d.id.as_deref(),
            Some("01J0000000000000000000000A"),
            "message_id wins over the body"
        );
        assert_eq!(d.event_type.as_deref(), Some("escrow.released"));
        assert_eq!(d.agent.as_deref(), Some("pf_agent_1"));
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_failed.unwrap().to_string(), "2026-01-02T03:04:05Z");
        assert_eq!(d.first_failed, d.last_failed);
    }

    #[test]
    fn x_death_wins_and_warren_headers_become_history() {
        let mut m = BTreeMap::new();
        set_header(&mut m, hdr::ERROR_KIND, "transient");
        set_header(&mut m, hdr::ERROR, "timeout");
        set_header(&mut m, hdr::ORIGIN_QUEUE, "pf.jobs");
        let deaths = vec![
            death("pf.jobs", "delivery_limit", 200),
            death("pf.jobs.retry.1s", "expired", 100),
        ];
        m.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        let d = explain("pf.jobs.dlq", 3, &props(m), b"", None);
        assert_eq!(d.kind, Kind::DeliveryLimit);
        assert_eq!(d.warren_kind.as_deref(), Some("transient"));
        assert_eq!(d.origin.as_deref(), Some("pf.jobs"));
        assert!(
            d.error.starts_with("broker: delivery limit reached"),
            "{}",
            d.error
        );
        assert!(
            d.error.ends_with("last handler error (transient): timeout"),
            "{}",
            d.error
        );
        assert_eq!(d.last_failed, Some(Time(200_000)));
    }

    #[test]
    fn x_last_death_headers_pick_the_entry() {
        let mut m = BTreeMap::new();
        let deaths = vec![death("a", "expired", 1), death("b", "maxlen", 2)];
        m.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        set_header(&mut m, "x-last-death-queue", "b");
        set_header(&mut m, "x-last-death-reason", "maxlen");
        let d = explain("b.dlq", 1, &props(m), b"", None);
        assert_eq!(d.kind, Kind::Maxlen);
        assert_eq!(d.origin.as_deref(), Some("b"));
    }

    #[test]
    fn an_unexplained_message_says_so_and_uses_the_fallback_origin() {
        let d = explain(
            "q.dlq",
            1,
            &BasicProperties::default(),
            b"\xff\x00garbage",
            Some("q"),
        );
        assert_eq!(d.kind, Kind::Unknown);
        assert_eq!(d.origin.as_deref(), Some("q"));
        assert!(d.id.is_none());
        assert!(
            d.error
                .contains("not dead-lettered by warren or the broker")
        );
    }

    #[test]
    fn times_past_the_year_9999_are_no_times_and_render() {
        let mut m = BTreeMap::new();
        m.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death("q", "expired", u64::MAX)])),
        );
        // A publisher writing nanoseconds as the AMQP timestamp.
        let p = props(m).with_timestamp(1_741_344_000_000_000_000);
        let d = explain("q.dlq", 1, &p, b"", None);
        assert_eq!((d.first_failed, d.last_failed), (None, None));
        let table = crate::dlq::render::list(std::slice::from_ref(&d), None);
        assert!(table.contains("expired"), "{table}");
        let detail = crate::dlq::Detail::decode(d, &p, b"", false);
        assert!(crate::dlq::render::detail(&detail).contains("expired"));
        assert_eq!(
            Time(u64::MAX).to_string(),
            format!("{} ms after the epoch", u64::MAX)
        );
        assert!(serde_json::to_string(&Time(u64::MAX)).is_ok());
    }

    #[test]
    fn amqp_timestamps_in_seconds_or_millis_read_the_same() {
        assert_eq!(
            Time::from_amqp(1_700_000_000),
            Some(Time(1_700_000_000_000))
        );
        assert_eq!(
            Time::from_amqp(1_700_000_000_123),
            Some(Time(1_700_000_000_123))
        );
    }
}
