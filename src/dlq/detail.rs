//! Everything about one dead letter, decoded for `show` and `export`: properties, headers as
//! JSON, and the body as JSON, text, or base64 for binary frames.

use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::effect::EffectCheck;
use super::explain::DeadLetter;
use crate::amqp::{AMQPValue, BasicProperties, Delivery, Headers, XDeath, x_death};

/// The body, decoded as far as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "encoding", content = "value", rename_all = "snake_case")]
pub enum Body {
    /// Valid JSON.
    Json(Value),
    /// UTF-8 text that is not JSON.
    Utf8(String),
    /// Anything else, base64 (standard alphabet).
    Base64(String),
}

/// One dead letter with its properties, headers and body.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// The explanation (kind, origin, error…).
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Whether the broker had delivered it before (earlier listings set this).
    pub redelivered: bool,
    /// AMQP properties that are set.
    pub properties: Map<String, Value>,
    /// Every header, AMQP values decoded to JSON.
    pub headers: Map<String, Value>,
    /// The broker's `x-death` entries, most recent first.
    #[serde(skip)]
    pub x_death: Vec<XDeath>,
    /// The body.
    pub body: Body,
    /// What a status check found about its effect (`show --check-status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectCheck>,
}

/// Decodes `delivery`, explained as `letter`.
pub fn detail(delivery: &Delivery, letter: DeadLetter) -> Detail {
    Detail::decode(
        letter,
        &delivery.properties,
        &delivery.data,
        delivery.redelivered,
    )
}

impl Detail {
    /// Decodes a dead letter's properties and body, explained as `letter` (what [`detail`]
    /// does for a delivery; the fuzz targets call it with decoded frames).
    pub fn decode(
        letter: DeadLetter,
        props: &BasicProperties,
        data: &[u8],
        redelivered: bool,
    ) -> Detail {
        Detail {
            letter,
            redelivered,
            properties: properties(props),
            headers: props.headers().as_ref().map(table).unwrap_or_default(),
            x_death: x_death(props),
            body: body(data),
            effect: None,
        }
    }
}

fn body(data: &[u8]) -> Body {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        return Body::Json(v);
    }
    match std::str::from_utf8(data) {
        Ok(s) => Body::Utf8(s.to_string()),
        Err(_) => Body::Base64(base64::engine::general_purpose::STANDARD.encode(data)),
    }
}

fn properties(p: &BasicProperties) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let s = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| json!(s.as_str()));
    put("message_id", s(p.message_id()));
    put("type", s(p.kind()));
    put("timestamp", p.timestamp().map(|t| json!(t)));
    put("content_type", s(p.content_type()));
    put("content_encoding", s(p.content_encoding()));
    put("delivery_mode", p.delivery_mode().map(|v| json!(v)));
    put("priority", p.priority().map(|v| json!(v)));
    put("correlation_id", s(p.correlation_id()));
    put("reply_to", s(p.reply_to()));
    put("expiration", s(p.expiration()));
    put("user_id", s(p.user_id()));
    put("app_id", s(p.app_id()));
    put("cluster_id", s(p.cluster_id()));
    m
}

fn table(t: &Headers) -> Map<String, Value> {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value(v)))
        .collect()
}

/// An AMQP field value as JSON: strings as strings (lossy UTF-8), integers as numbers,
/// timestamps as epoch seconds, byte arrays as base64.
pub fn value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(d.scale.into())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => Value::Object(table(t)),
        AMQPValue::ByteArray(b) => {
            json!(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_as_far_as_they_go() {
        assert!(matches!(body(br#"{"a":1}"#), Body::Json(_)));
        assert!(matches!(body(b"not json"), Body::Utf8(s) if s == "not json"));
        assert!(matches!(body(b"\xff\xfe\x00"), Body::Base64(s) if s == "//4A"));
        let v = serde_json::to_value(body(b"\xff")).unwrap();
        assert_eq!(v, json!({"encoding": "base64", "value": "/w=="}));
    }
}
