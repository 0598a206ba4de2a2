//! How an event becomes an AMQP message: routing key = event type, the wire contract's
//! properties and headers, and the dead-letter form of a frame that is not an envelope.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::amqp::{BasicProperties, ErrorKind, Headers, hdr, set_header};
use crate::envelope::Envelope;

/// `app_id` of everything the bridge publishes.
pub const APP_ID: &str = "warren-bridge";

/// Header on a dead-lettered frame that was cut: its size before truncation, in bytes.
pub const ORIGINAL_SIZE: &str = "x-warren-original-size";

/// How many bytes of an oversized frame are kept in its dead letter.
pub const TRUNCATED_BYTES: usize = 64 * 1024;

/// Header on a dead letter whose body is empty because the frame's bytes never reached the
/// bridge: why, as one of the `ABSENT_*` values.
pub const BODY_ABSENT: &str = "x-warren-body-absent";

/// [`BODY_ABSENT`]: a text frame that is not UTF-8. tungstenite fails the connection on it
/// (RFC 6455 §8.1) and its error carries no bytes.
pub const ABSENT_INVALID_UTF8: &str = "invalid-utf8-text-frame";

/// [`BODY_ABSENT`]: a frame or message over the WebSocket layer's hard limit
/// ([`crate::bridge::upstream::HARD_FRAME_LIMIT`]), refused from its header, never read.
pub const ABSENT_OVER_HARD_LIMIT: &str = "frame-over-hard-limit";

/// Properties of an event: persistent, or transient with `live_ttl` as expiration when the
/// topology marks its type live-only; with its lane header for each laned queue it goes to.
pub fn event_properties(
    event: &Envelope,
    live_ttl: Option<Duration>,
    traceparent: &str,
    lanes: Vec<(String, String)>,
) -> BasicProperties {
    let mut headers = BTreeMap::new();
    set_header(&mut headers, hdr::AGENT_ID, event.agent_id.as_str());
    set_header(&mut headers, hdr::TRACEPARENT, traceparent);
    for (header, lane) in lanes {
        set_header(&mut headers, &header, lane);
    }
    let props = BasicProperties::default()
        .with_message_id(event.event_id.as_str().into())
        .with_type(event.event_type.as_str().into())
        .with_timestamp(event.ts / 1000)
        .with_content_type("application/json".into())
        .with_app_id(APP_ID.into())
        .with_headers(Headers::from(headers));
    match live_ttl {
        Some(ttl) => props
            .with_delivery_mode(1)
            .with_expiration(ttl.as_millis().max(1).to_string().into()),
        None => props.with_delivery_mode(2),
    }
}

/// Why a dead letter's body is cut or missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNote {
    /// The body is the whole frame.
    Whole,
    /// The body is the frame's first [`TRUNCATED_BYTES`]; the frame had this many bytes.
    Truncated(usize),
    /// The body is empty: the frame's bytes never reached the bridge, for this reason (one of
    /// the `ABSENT_*` values, sent as [`BODY_ABSENT`]).
    Absent(&'static str),
}

/// Properties of a frame dead-lettered as `invalid`: the error, the events exchange as origin,
/// raw bytes as the body, the original size when the body was cut, and why when it is absent.
pub fn invalid_properties(
    error: &str,
    events_exchange: &str,
    body: BodyNote,
    now_secs: u64,
) -> BasicProperties {
    let mut headers = BTreeMap::new();
    set_header(&mut headers, hdr::ERROR_KIND, ErrorKind::Invalid.as_str());
    set_header(
        &mut headers,
        hdr::ERROR,
        crate::amqp::truncate(error, crate::amqp::MAX_ERROR_BYTES),
    );
    set_header(&mut headers, hdr::ORIGIN_QUEUE, events_exchange);
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    set_header(&mut headers, hdr::FIRST_FAILED_AT, now.as_str());
    set_header(&mut headers, hdr::LAST_FAILED_AT, now);
    set_header(&mut headers, hdr::WORKER, crate::amqp::identity());
    match body {
        BodyNote::Whole => {}
        BodyNote::Truncated(size) => set_header(&mut headers, ORIGINAL_SIZE, size as u64),
        BodyNote::Absent(why) => set_header(&mut headers, BODY_ABSENT, why),
    }
    BasicProperties::default()
        .with_message_id(ulid::Ulid::generate().to_string().into())
        .with_timestamp(now_secs)
        .with_content_type("application/octet-stream".into())
        .with_app_id(APP_ID.into())
        .with_delivery_mode(2)
        .with_headers(Headers::from(headers))
}

/// A frame's own top-level `traceparent`, if it carries a valid one.
pub fn frame_traceparent(frame: &[u8]) -> Option<String> {
    // Most frames carry none: skip the second parse unless the key is there at all. memchr's
    // search, not `windows().any()`, which cost 1.9K instructions per 256-byte frame.
    memchr::memmem::find(frame, b"\"traceparent\"")?;
    #[derive(serde::Deserialize)]
    struct Trace<'a> {
        #[serde(borrow)]
        traceparent: Option<&'a str>,
    }
    let t: Trace<'_> = serde_json::from_slice(frame).ok()?;
    t.traceparent
        .filter(|t| is_traceparent(t))
        .map(str::to_string)
}

/// W3C trace context version 00: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
/// neither id all zeros.
pub fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// A fresh sampled traceparent with random ids.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::header_str;

    const FRAME: &str = r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"market.tick","agentId":"pf_agent_abc123","payload":{"pair":"BTC-USD","price":1.5},"ts":1741344000123}"#;

    #[test]
    fn events_carry_the_wire_contract() {
        let e = Envelope::parse(FRAME.as_bytes()).unwrap();
        let tp = new_traceparent();
        let p = event_properties(&e, None, &tp, Vec::new());
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            "01HZ9K3M2Q7WB5VN8PXCT4YRDJ"
        );
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "market.tick");
        assert_eq!(*p.timestamp(), Some(1_741_344_000));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), APP_ID);
        assert_eq!(*p.delivery_mode(), Some(2));
        assert!(p.expiration().is_none());
        assert_eq!(header_str(&p, hdr::AGENT_ID), Some("pf_agent_abc123"));
        assert_eq!(header_str(&p, hdr::TRACEPARENT), Some(tp.as_str()));

        let live = event_properties(&e, Some(Duration::from_secs(30)), &tp, Vec::new());
        assert_eq!(*live.delivery_mode(), Some(1));
        assert_eq!(live.expiration().as_ref().unwrap().as_str(), "30000");
    }

    #[test]
    fn invalid_frames_carry_the_error_and_their_origin() {
        let p = invalid_properties(
            "field 'ts' is missing",
            "pf.events",
            BodyNote::Truncated(2_000_000),
            5,
        );
        assert_eq!(header_str(&p, hdr::ERROR_KIND), Some("invalid"));
        assert_eq!(header_str(&p, hdr::ERROR), Some("field 'ts' is missing"));
        assert_eq!(header_str(&p, hdr::ORIGIN_QUEUE), Some("pf.events"));
        assert_eq!(crate::amqp::header_u64(&p, ORIGINAL_SIZE), Some(2_000_000));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/octet-stream"
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(header_str(&p, BODY_ABSENT), None);

        let p = invalid_properties(
            "UTF-8 encoding error",
            "pf.events",
            BodyNote::Absent(ABSENT_INVALID_UTF8),
            5,
        );
        assert_eq!(header_str(&p, BODY_ABSENT), Some(ABSENT_INVALID_UTF8));
        assert_eq!(crate::amqp::header_u64(&p, ORIGINAL_SIZE), None);
    }

    #[test]
    fn traceparents_are_kept_when_valid_and_made_otherwise() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let frame = format!(r#"{{"eventId":"x","traceparent":"{tp}"}}"#);
        assert_eq!(frame_traceparent(frame.as_bytes()).as_deref(), Some(tp));
        assert_eq!(frame_traceparent(FRAME.as_bytes()), None);
        assert_eq!(frame_traceparent(br#"{"traceparent":"00-bogus"}"#), None);
        for _ in 0..100 {
            assert!(is_traceparent(&new_traceparent()));
        }
        assert!(!is_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
    }
}
