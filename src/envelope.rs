//! The upstream event envelope (`{eventId, type, agentId, payload, ts}`) and its validation.
//!
//! The bridge validates every frame with [`Envelope::parse`]; the worker parses every delivery
//! body with it again, so a message published by something other than the bridge is still
//! checked. Errors name the field that is wrong.

use serde::Serialize;
use serde::de::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The largest envelope the bridge accepts (the WebSocket frame limit).
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// One upstream event. `payload` is kept as raw JSON so it is forwarded byte for byte; handlers
/// deserialize the part they need.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    /// ULID, globally unique and time-ordered.
    #[serde(rename = "eventId")]
    pub event_id: String,
    /// `domain.name`, also the routing key on the topic exchange.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The recipient agent.
    #[serde(rename = "agentId")]
    pub agent_id: String,
    /// The domain-specific body, verbatim.
    pub payload: Box<RawValue>,
    /// Unix epoch milliseconds.
    pub ts: u64,
}

/// Why a frame is not a valid envelope. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The frame is larger than [`MAX_ENVELOPE_BYTES`].
    #[error("frame of {0} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")]
    TooLarge(usize),
    /// The frame is not UTF-8.
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    /// The frame is not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// A required field is absent.
    #[error("field '{0}' is missing")]
    Missing(&'static str),
    /// A field is present but has the wrong type or shape.
    #[error("field '{field}': {reason}")]
    Invalid {
        /// The envelope field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The envelope's fields, each kept raw so a wrong type can be reported by field name.
#[derive(serde::Deserialize)]
struct RawFields<'a> {
    #[serde(rename = "eventId", borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    event_type: Option<&'a RawValue>,
    #[serde(rename = "agentId", borrow)]
    agent_id: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
}

impl Envelope {
    /// Parses and validates one frame.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| EnvelopeError::NotUtf8)?;
        // serde_json quotes a wrong-typed value whole (a 1 MiB string frame): keep its start.
        let raw: RawFields<'_> = serde_json::from_str(text)
            .map_err(|e| EnvelopeError::NotJson(clip_with_ellipsis(&e.to_string(), 160)))?;

        let event_id: String = field(raw.event_id, "eventId")?;
        if ulid::Ulid::from_string(&event_id).is_err() {
            return Err(invalid(
                "eventId",
                format!("'{}' is not a ULID", clip(&event_id)),
            ));
        }
        let event_type: String = field(raw.event_type, "type")?;
        if !is_event_type(&event_type) {
            return Err(invalid(
                "type",
                format!("'{}' is not of the form domain.name", clip(&event_type)),
            ));
        }
        let agent_id: String = field(raw.agent_id, "agentId")?;
        if agent_id.is_empty() || agent_id.len() > 255 {
            return Err(invalid("agentId", "must be 1 to 255 characters".into()));
        }
        let payload = raw.payload.ok_or(EnvelopeError::Missing("payload"))?;
        if !payload.get().starts_with('{') {
            return Err(invalid("payload", "must be a JSON object".into()));
        }
        let ts: u64 = field(raw.ts, "ts")?;
        if ts == 0 {
            return Err(invalid(
                "ts",
                "must be a positive epoch-milliseconds integer".into(),
            ));
        }
        Ok(Envelope {
            event_id,
            event_type,
            agent_id,
            payload: payload.to_owned(),
            ts,
        })
    }

    /// Deserializes the payload into a handler's own type, naming the field on failure.
    pub fn payload_as<'a, T: Deserialize<'a>>(&'a self) -> Result<T, EnvelopeError> {
        serde_json::from_str(self.payload.get()).map_err(|e| invalid("payload", e.to_string()))
    }

    /// Serializes the envelope back to JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The idempotency key for one effect of this event: deterministic in (eventId, handler,
    /// step), so a redelivered or replayed event repeats it.
    pub fn idempotency_key(&self, handler: &str, step: &str) -> String {
        idempotency_key(&self.event_id, handler, step)
    }
}

/// sha256 over (eventId, handler, step), hex encoded (64 characters).
pub fn idempotency_key(event_id: &str, handler: &str, step: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [event_id, handler, step] {
        // Length-prefix each part so ("ab","c") and ("a","bc") never collide.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// `domain.name`: lowercase ASCII letters, digits and `_`, exactly one dot, no empty side.
pub fn is_event_type(s: &str) -> bool {
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.as_bytes()[0].is_ascii_lowercase()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    matches!(s.split_once('.'), Some((d, n)) if valid_part(d) && valid_part(n))
}

fn field<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    name: &'static str,
) -> Result<T, EnvelopeError> {
    let raw = raw.ok_or(EnvelopeError::Missing(name))?;
    serde_json::from_str(raw.get())
        .map_err(|_| invalid(name, format!("unexpected value {}", clip(raw.get()))))
}

fn invalid(field: &'static str, reason: String) -> EnvelopeError {
    EnvelopeError::Invalid { field, reason }
}

/// `s` cut to `max` characters, the cut marked with `…`.
fn clip_with_ellipsis(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Keeps error messages short when a field holds a huge value.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"market.tick","agentId":"pf_agent_abc123","payload":{"pair":"BTC-USD","price":1.5},"ts":1741344000000}"#;

    #[test]
    fn parses_a_valid_envelope_and_keeps_payload_verbatim() {
        let e = Envelope::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(e.event_id, "01HZ9K3M2Q7WB5VN8PXCT4YRDJ");
        assert_eq!(e.event_type, "market.tick");
        assert_eq!(e.payload.get(), r#"{"pair":"BTC-USD","price":1.5}"#);
        assert_eq!(e.ts, 1741344000000);
    }

    #[test]
    fn each_defect_names_its_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"type":"a.b","agentId":"x","payload":{},"ts":1}"#,
                "eventId",
            ),
            (
                r#"{"eventId":"nope","type":"a.b","agentId":"x","payload":{},"ts":1}"#,
                "eventId",
            ),
            (
                r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"tick","agentId":"x","payload":{},"ts":1}"#,
                "type",
            ),
            (
                r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"a.b","agentId":7,"payload":{},"ts":1}"#,
                "agentId",
            ),
            (
                r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"a.b","agentId":"x","payload":[],"ts":1}"#,
                "payload",
            ),
            (
                r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"a.b","agentId":"x","payload":{},"ts":"1"}"#,
                "ts",
            ),
            (
                r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"a.b","agentId":"x","payload":{}}"#,
                "ts",
            ),
        ];
        for (frame, field) in cases {
            let err = Envelope::parse(frame.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(&format!("'{field}'")), "{frame} -> {err}");
        }
    }

    #[test]
    fn rejects_non_json_non_utf8_and_oversized_frames() {
        assert!(matches!(
            Envelope::parse(b"hello"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert_eq!(
            Envelope::parse(&[0xff, 0xfe]).unwrap_err(),
            EnvelopeError::NotUtf8
        );
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::parse(&big),
            Err(EnvelopeError::TooLarge(_))
        ));
    }

    #[test]
    fn an_error_never_quotes_a_whole_frame() {
        let frame = format!("\"{}\"", "a".repeat(100_000));
        let err = Envelope::parse(frame.as_bytes()).unwrap_err().to_string();
        assert!(
            err.chars().count() < 256,
            "{} characters",
            err.chars().count()
        );
        assert!(
            err.starts_with("frame is not a JSON object: invalid type: string"),
            "{err}"
        );
    }

    #[test]
    fn idempotency_keys_are_deterministic_and_distinct() {
        let k = idempotency_key("01HZ9K3M2Q7WB5VN8PXCT4YRDJ", "http", "post");
        assert_eq!(
            k,
            idempotency_key("01HZ9K3M2Q7WB5VN8PXCT4YRDJ", "http", "post")
        );
        assert_eq!(k.len(), 64);
        assert_ne!(
            k,
            idempotency_key("01HZ9K3M2Q7WB5VN8PXCT4YRDJ", "http", "close")
        );
        assert_ne!(
            idempotency_key("ab", "c", ""),
            idempotency_key("a", "bc", "")
        );
    }

    #[test]
    fn event_type_shape() {
        for ok in ["market.tick", "wallet.low_balance", "job.failed2"] {
            assert!(is_event_type(ok), "{ok}");
        }
        for bad in [
            "market",
            "market.",
            ".tick",
            "Market.tick",
            "a.b.c",
            "a.b c",
            "",
        ] {
            assert!(!is_event_type(bad), "{bad}");
        }
    }
}
