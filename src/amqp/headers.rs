//! warren's wire-contract headers (`x-warren-*`) and the broker's `x-death`: names, the error
//! kinds, typed reads, and the failure headers a worker stamps on a message it gives up on.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Header names from DESIGN.md's wire contract.
pub mod hdr {
    /// Envelope `agentId`.
    pub const AGENT_ID: &str = "x-agent-id";
    /// W3C trace context, kept on every republish.
    pub const TRACEPARENT: &str = "traceparent";
    /// Attempts so far (absent = 0).
    pub const ATTEMPT: &str = "x-warren-attempt";
    /// The queue the message failed in.
    pub const ORIGIN_QUEUE: &str = "x-warren-origin-queue";
    /// `transient`, `permanent`, `exhausted` or `invalid`.
    pub const ERROR_KIND: &str = "x-warren-error-kind";
    /// The last error, truncated to 1 KiB.
    pub const ERROR: &str = "x-warren-error";
    /// RFC 3339 time of the first failure.
    pub const FIRST_FAILED_AT: &str = "x-warren-first-failed-at";
    /// RFC 3339 time of the last failure.
    pub const LAST_FAILED_AT: &str = "x-warren-last-failed-at";
    /// `host:pid` of the worker that failed it.
    pub const WORKER: &str = "x-warren-worker";
    /// Times replayed from a DLQ.
    pub const REPLAYED: &str = "x-warren-replayed";
    /// Epoch milliseconds before which the handler must not run again (a 429's
    /// `Retry-After` longer than the retry tier it was parked in).
    pub const NOT_BEFORE: &str = "x-warren-not-before";
    /// Set by the broker when it dead-letters a message.
    pub const X_DEATH: &str = "x-death";
}

/// The longest `x-warren-error` value, in bytes.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Why a message left the normal path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A failure worth retrying; on a dead letter it means the broker dead-lettered a message
    /// warren was still retrying (delivery limit, TTL, length limit).
    Transient,
    /// Retrying cannot help.
    Permanent,
    /// Every attempt failed.
    Exhausted,
    /// The message is not a valid envelope.
    Invalid,
}

impl ErrorKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::Invalid => "invalid",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transient" => Ok(ErrorKind::Transient),
            "permanent" => Ok(ErrorKind::Permanent),
            "exhausted" => Ok(ErrorKind::Exhausted),
            "invalid" => Ok(ErrorKind::Invalid),
            other => Err(format!(
                "unknown error kind '{other}' (expected transient, permanent, exhausted or invalid)"
            )),
        }
    }
}

/// Reads a string header (long or short string).
pub fn header_str<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a str> {
    value_str(props.headers().as_ref()?.inner().get(name)?)
}

/// Reads an integer header, whatever integer width the publisher chose.
pub fn header_u64(props: &BasicProperties, name: &str) -> Option<u64> {
    value_u64(props.headers().as_ref()?.inner().get(name)?)
}

/// Reads a small counter header such as `x-warren-attempt`; absent or malformed is 0.
pub fn header_u32(props: &BasicProperties, name: &str) -> u32 {
    header_u64(props, name)
        .map(|v| v.min(u32::MAX as u64) as u32)
        .unwrap_or(0)
}

fn value_str(v: &AMQPValue) -> Option<&str> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn value_u64(v: &AMQPValue) -> Option<u64> {
    match *v {
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::Timestamp(n) => Some(n),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        _ => None,
    }
}

/// Sets one header in a map, as a long string or a 64-bit integer.
pub fn set_header(map: &mut BTreeMap<ShortString, AMQPValue>, name: &str, value: impl Into<HeaderValue>) {
    let v = match value.into() {
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s)),
        HeaderValue::Int(n) => AMQPValue::LongLongInt(n),
    };
    map.insert(name.into(), v);
}

/// A header value warren writes.
#[derive(Debug, Clone)]
pub enum HeaderValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        HeaderValue::Str(s.to_string())
    }
}
impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        HeaderValue::Str(s)
    }
}
impl From<u32> for HeaderValue {
    fn from(n: u32) -> Self {
        HeaderValue::Int(n.into())
    }
}
impl From<u64> for HeaderValue {
    fn from(n: u64) -> Self {
        HeaderValue::Int(n.min(i64::MAX as u64) as i64)
    }
}

/// The failure headers a worker stamps on a message it retries or dead-letters.
#[derive(Debug, Clone)]
pub struct FailureHeaders<'a> {
    /// Why.
    pub kind: ErrorKind,
    /// The error text (truncated to [`MAX_ERROR_BYTES`] when written).
    pub error: &'a str,
    /// The queue it failed in.
    pub origin_queue: &'a str,
    /// Attempts so far, including this one.
    pub attempt: u32,
    /// Epoch ms before which the next attempt must not run.
    pub not_before_ms: Option<u64>,
}

impl FailureHeaders<'_> {
    /// The message's headers with the failure stamped on: warren's history is kept
    /// (first-failed-at survives), the broker's own `x-death` family is dropped, since RabbitMQ
    /// 3.13+ ignores client-sent `x-death` and a stale copy would mislead `dlq list`.
    pub fn apply(&self, existing: Option<&FieldTable>, now: SystemTime) -> FieldTable {
        let mut map: BTreeMap<ShortString, AMQPValue> = existing
            .map(|t| {
                t.inner()
                    .iter()
                    .filter(|(k, _)| !is_broker_death_header(k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let now = humantime::format_rfc3339_millis(now).to_string();
        if !map.contains_key(hdr::FIRST_FAILED_AT) {
            set_header(&mut map, hdr::FIRST_FAILED_AT, now.as_str());
        }
        set_header(&mut map, hdr::LAST_FAILED_AT, now);
        set_header(&mut map, hdr::ATTEMPT, self.attempt);
        set_header(&mut map, hdr::ORIGIN_QUEUE, self.origin_queue);
        set_header(&mut map, hdr::ERROR_KIND, self.kind.as_str());
        set_header(&mut map, hdr::ERROR, truncate(self.error, MAX_ERROR_BYTES));
        set_header(&mut map, hdr::WORKER, super::identity());
        match self.not_before_ms {
            Some(ms) => set_header(&mut map, hdr::NOT_BEFORE, ms),
            None => {
                map.remove(hdr::NOT_BEFORE);
            }
        }
        FieldTable::from(map)
    }
}

fn is_broker_death_header(name: &str) -> bool {
    name == hdr::X_DEATH || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One entry of the broker's `x-death` header: a queue the message was dead-lettered from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct XDeath {
    /// The queue it was dead-lettered from.
    pub queue: String,
    /// `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: String,
    /// How many times this (queue, reason) happened.
    pub count: u64,
    /// The exchange it had been published to.
    pub exchange: String,
    /// Seconds since the epoch of the most recent death.
    pub time: Option<u64>,
}

/// The `x-death` entries, most recent first (the broker's order).
pub fn x_death(props: &BasicProperties) -> Vec<XDeath> {
    let Some(AMQPValue::FieldArray(entries)) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(hdr::X_DEATH))
    else {
        return vec![];
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(t) => {
                let m = t.inner();
                let s = |k: &str| m.get(k).and_then(value_str).unwrap_or("").to_string();
                Some(XDeath {
                    queue: s("queue"),
                    reason: s("reason"),
                    count: m.get("count").and_then(value_u64).unwrap_or(1),
                    exchange: s("exchange"),
                    time: m.get("time").and_then(value_u64),
                })
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failure_headers_keep_history_and_drop_broker_death_headers() {
        let mut map = BTreeMap::new();
        set_header(&mut map, hdr::TRACEPARENT, "00-abc-def-01");
        set_header(&mut map, hdr::FIRST_FAILED_AT, "2026-01-01T00:00:00.000Z");
        map.insert(hdr::X_DEATH.into(), AMQPValue::FieldArray(Default::default()));
        set_header(&mut map, "x-first-death-queue", "q");
        let existing = FieldTable::from(map);

        let long_error = "é".repeat(2000);
        let out = FailureHeaders {
            kind: ErrorKind::Transient,
            error: &long_error,
            origin_queue: "pf.trading",
            attempt: 2,
            not_before_ms: None,
        }
        .apply(Some(&existing), SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        let props = BasicProperties::default().with_headers(out);

        assert_eq!(header_str(&props, hdr::TRACEPARENT), Some("00-abc-def-01"));
        assert_eq!(header_str(&props, hdr::FIRST_FAILED_AT), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(header_str(&props, hdr::LAST_FAILED_AT), Some("1970-01-01T00:00:01.000Z"));
        assert_eq!(header_u32(&props, hdr::ATTEMPT), 2);
        assert_eq!(header_str(&props, hdr::ERROR_KIND), Some("transient"));
        assert_eq!(header_str(&props, hdr::ORIGIN_QUEUE), Some("pf.trading"));
        assert!(header_str(&props, hdr::ERROR).unwrap().len() <= MAX_ERROR_BYTES);
        assert!(header_str(&props, hdr::WORKER).unwrap().contains(':'));
        assert!(x_death(&props).is_empty());
        assert!(header_str(&props, "x-first-death-queue").is_none());
    }

    #[test]
    fn integer_headers_of_any_width_read_back() {
        for v in [
            AMQPValue::ShortShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
        ] {
            let mut map = BTreeMap::new();
            map.insert(ShortString::from(hdr::ATTEMPT), v);
            let props = BasicProperties::default().with_headers(FieldTable::from(map));
            assert_eq!(header_u32(&props, hdr::ATTEMPT), 3);
        }
        assert_eq!(header_u32(&BasicProperties::default(), hdr::ATTEMPT), 0);
    }

    #[test]
    fn error_kinds_round_trip() {
        for k in [ErrorKind::Transient, ErrorKind::Permanent, ErrorKind::Exhausted, ErrorKind::Invalid] {
            assert_eq!(k.as_str().parse::<ErrorKind>().unwrap(), k);
        }
        assert!("bogus".parse::<ErrorKind>().unwrap_err().contains("bogus"));
    }
}
