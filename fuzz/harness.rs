//! The fuzz harnesses: one function per parser of bytes from outside warren. The `cargo fuzz`
//! targets call them, and the test suite replays every saved corpus input through them
//! (`tests/it/fuzz_corpus.rs`), so a finding stays fixed without a nightly toolchain. Each one
//! panics only when an invariant breaks; errors are expected answers.

#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

use warren::amqp::{self, AmqpUrl, ErrorKind, FailureHeaders};
use warren::bridge::route::{self, BodyNote};
use warren::bridge::webhook::{self, Secret, SignedHeaders};
use warren::dlq::{self, Detail, Filter, StatsBuilder, render};
use warren::envelope::Envelope;
use warren::topology::Topology;

/// One harness: it panics only when an invariant breaks.
pub type Harness = fn(&[u8]);

/// Every harness by target name (the name of its `fuzz/fuzz_targets/*.rs` and corpus folder).
pub const TARGETS: &[(&str, Harness)] = &[
    ("envelope", envelope),
    ("webhook", webhook),
    ("dlq_headers", dlq_headers),
    ("topology", topology),
    ("amqp_url", amqp_url),
];

/// The longest error message a frame may cause: it goes into a log line, a dead letter's
/// `x-warren-error` and a webhook's 422 answer.
const MAX_ERROR_CHARS: usize = 512;

fn default_topology() -> &'static Topology {
    static T: OnceLock<Topology> = OnceLock::new();
    T.get_or_init(|| {
        let text = include_str!("../topology/warren.toml");
        Topology::parse(text, Path::new("warren.toml"), "").expect("the default topology parses")
    })
}

/// An upstream frame (or a webhook body, or a delivery body a worker parses): validation, and
/// for a valid event everything the bridge derives from it.
pub fn envelope(data: &[u8]) {
    let _ = route::frame_traceparent(data);
    match Envelope::parse(data) {
        Ok(e) => {
            // What the bridge publishes, the worker parses again: it must be the same event.
            let again = Envelope::parse(&e.to_json()).expect("a valid envelope re-parses");
            assert_eq!(again.event_id, e.event_id);
            assert_eq!(again.event_type, e.event_type);
            assert_eq!(again.agent_id, e.agent_id);
            assert_eq!(again.payload.get(), e.payload.get());
            assert_eq!(again.ts, e.ts);
            assert_eq!(e.idempotency_key("http", "post").len(), 64);
            let t = default_topology();
            let lanes = t.lane_headers(&e);
            let live = t
                .is_live_only(&e.event_type)
                .then_some(t.live_ttl)
                .flatten();
            let _ = route::event_properties(&e, live, &route::new_traceparent(), lanes);
            let _ = e.payload_as::<serde_json::Value>();
        }
        Err(err) => {
            let msg = err.to_string();
            assert!(
                msg.chars().count() <= MAX_ERROR_CHARS,
                "an error message of {} characters",
                msg.chars().count()
            );
            let _ = route::invalid_properties(&msg, "pf.events", BodyNote::Whole, 0);
        }
    }
}

const WEBHOOK_NOW: i64 = 1_614_265_330;

fn webhook_secrets() -> &'static [Secret] {
    static S: OnceLock<Vec<Secret>> = OnceLock::new();
    S.get_or_init(|| {
        webhook::parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\npf_webhook_secret\n")
            .expect("the test secrets parse")
    })
}

/// What an HTTP header value is once axum hands it over as text: visible ASCII only.
fn header_text(b: &[u8]) -> Option<&str> {
    b.iter()
        .all(|&c| c == b'\t' || (32..127).contains(&c))
        .then(|| std::str::from_utf8(b).ok())
        .flatten()
}

/// A webhook request: a flags byte (bit i: header i is sent), then `webhook-id`,
/// `webhook-timestamp`, `webhook-signature` and `X-PF-Signature` on a line each, then the body.
pub fn webhook(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(5, |&b| b == b'\n');
    let mut fields = [None; 4];
    for (i, f) in fields.iter_mut().enumerate() {
        let part = parts.next().unwrap_or_default();
        *f = (flags & (1 << i) != 0).then(|| header_text(part)).flatten();
    }
    let body = parts.next().unwrap_or_default();
    let [id, timestamp, signature, pf_signature] = fields;
    let h = SignedHeaders {
        id,
        timestamp,
        signature,
        pf_signature,
    };
    let secrets = webhook_secrets();
    let _ = webhook::verify(secrets, &h, body, WEBHOOK_NOW, webhook::DEFAULT_TOLERANCE)
        .map_err(|e| e.to_string());

    // Whatever the id, timestamp and body, a request signed right verifies, and one signed
    // with another key does not.
    let ts = timestamp.and_then(|t| t.trim().parse::<i64>().ok());
    if let (Some(id), Some(ts)) = (id, ts) {
        let ts_text = ts.to_string();
        let good = webhook::sign(&secrets[0], id, ts, body);
        let signed = SignedHeaders {
            id: Some(id),
            timestamp: Some(&ts_text),
            signature: Some(&good),
            pf_signature: None,
        };
        let got = webhook::verify(
            secrets,
            &signed,
            body,
            WEBHOOK_NOW,
            webhook::DEFAULT_TOLERANCE,
        );
        let fresh = WEBHOOK_NOW.saturating_sub(ts).unsigned_abs() <= 300;
        let id_ok = !id.is_empty() && id.len() <= 255;
        assert_eq!(got.is_ok(), fresh && id_ok, "{got:?}");
        let other = Secret::parse("whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==").expect("key");
        let forged = webhook::sign(&other, id, ts, body);
        let signed = SignedHeaders {
            signature: Some(&forged),
            ..signed
        };
        assert!(
            webhook::verify(
                secrets,
                &signed,
                body,
                WEBHOOK_NOW,
                webhook::DEFAULT_TOLERANCE
            )
            .is_err()
        );
    }
    let pf = webhook::sign_pf(&secrets[1], body);
    let signed = SignedHeaders {
        pf_signature: Some(&pf),
        ..Default::default()
    };
    assert_eq!(
        webhook::verify(secrets, &signed, body, 0, webhook::DEFAULT_TOLERANCE),
        Ok(webhook::Scheme::Pf)
    );
    // A secrets file: its errors name the line, never its content.
    if let Ok(text) = std::str::from_utf8(body)
        && let Err(e) = webhook::parse_secrets(text)
    {
        assert!(
            e.starts_with("line ") || e == "no secret in the file",
            "{e}"
        );
    }
    envelope(body);
}

/// A dead letter written by any program: its AMQP content header (properties, headers,
/// `x-death`) as the broker sends it, then its body. Everything `warren dlq` and a worker read
/// from it.
pub fn dlq_headers(data: &[u8]) {
    let Ok((body, props)) = lapin::protocol::basic::parse_properties(data) else {
        return;
    };
    let letter = dlq::explain("pf.jobs.dlq", 1, &props, body, Some("pf.jobs"));
    let _ = dlq::last_death(&props);
    let filter = Filter {
        types: vec!["job.#".into(), "wallet.*".into()],
        grep: Some("error".into()),
        ..Filter::default()
    };
    let _ = filter.matches(&letter, body);
    let _ = dlq::fingerprint(&letter.error);
    let _ = serde_json::to_string(&letter);
    let mut stats = StatsBuilder::default();
    stats.add(&letter);
    stats.add(&letter);
    let stats = stats.finish(vec![]);
    let _ = render::stats(&stats);
    let _ = serde_json::to_string(&stats);
    let _ = render::list(std::slice::from_ref(&letter), None);
    let _ = render::list(std::slice::from_ref(&letter), Some(60));
    let detail = Detail::decode(letter, &props, body, true);
    let _ = render::detail(&detail);
    let _ = serde_json::to_string(&detail);

    // What a worker and `dlq replay` do with the headers of a message they republish.
    let _ = amqp::header_u32(&props, amqp::hdr::ATTEMPT);
    let _ = amqp::header_u64(&props, amqp::hdr::NOT_BEFORE);
    let replayed = dlq::replay_properties(&props);
    assert!(amqp::x_death(&replayed).is_empty());
    let failed = FailureHeaders {
        kind: ErrorKind::Transient,
        error: "boom",
        origin_queue: "pf.jobs",
        attempt: amqp::header_u32(&props, amqp::hdr::ATTEMPT).saturating_add(1),
        not_before_ms: None,
    }
    .apply(props.headers().as_ref(), SystemTime::UNIX_EPOCH);
    assert!(!failed.inner().contains_key(amqp::hdr::X_DEATH));
}

/// A topology file: load and validate, and for a valid one everything derived from it.
pub fn topology(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in ["", "t."] {
        match Topology::parse(text, Path::new("fuzz.toml"), prefix) {
            Ok(t) => {
                let plan = t.plan();
                let _ = plan.definitions("/");
                let _ = serde_json::to_string(&plan);
                let _ = t.dlqs();
                for q in &t.queues {
                    let _ = q.dlq();
                    for d in &q.retry_delays {
                        let _ = q.retry_queue(*d);
                    }
                    if let Some(l) = &q.lanes {
                        let _ = q.lane_spec(l.count.saturating_sub(1));
                    }
                }
                let event = Envelope::parse(SAMPLE_EVENT.as_bytes()).expect("sample parses");
                let _ = t.lane_headers(&event);
                let _ = t.is_live_only(&event.event_type);
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("fuzz.toml:"), "{msg}");
            }
        }
    }
}

const SAMPLE_EVENT: &str = r#"{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"market.tick","agentId":"pf_agent_abc123","payload":{"pair":"BTC-USD","price":1.5},"ts":1741344000000}"#;

/// A broker URL (flag or `AMQP_URL`, one node or a comma-separated list): parse, defaults, and
/// redaction of every password.
pub fn amqp_url(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let original = url::Url::parse(s).ok();
    // Every entry shown that parses with a password shows `***`.
    let masked = |shown: &str| {
        for part in shown.split(',') {
            if let Some(pw) = url::Url::parse(part)
                .ok()
                .and_then(|u| u.password().map(String::from))
            {
                assert_eq!(pw, "***", "{shown}");
            }
        }
    };
    let shown = amqp::redact(s);
    masked(&shown);
    if !s.contains(',') && original.as_ref().is_some_and(|u| u.password().is_some()) {
        // One URL with a password: shown, masked (not hidden whole).
        let password = url::Url::parse(&shown)
            .ok()
            .and_then(|u| u.password().map(String::from));
        assert_eq!(password.as_deref(), Some("***"), "{shown}");
    }
    match s.parse::<AmqpUrl>() {
        Ok(url) => {
            masked(&url.to_string());
            masked(url.redacted());
            let debug = format!("{url:?}");
            assert!(debug.starts_with("AmqpUrl("), "{debug}");
            masked(&debug);
            assert!(url.heartbeat_secs() > 0);
            let _ = url.connect_timeout();
            let _ = url.vhost();
            assert!(!url.nodes().is_empty());
            // lapin connects to this host: it must be the one the URL names.
            let uri = url.uri();
            let named = original
                .as_ref()
                .filter(|_| !s.contains(','))
                .and_then(|u| u.host());
            match named {
                Some(url::Host::Ipv4(a)) => assert_eq!(uri.authority.host, a.to_string()),
                Some(url::Host::Ipv6(a)) => assert_eq!(uri.authority.host, a.to_string()),
                Some(url::Host::Domain(d)) if !d.contains('%') => {
                    assert_eq!(uri.authority.host, d)
                }
                _ => {}
            }
            for node in url.nodes() {
                let _ = node.host_port();
                masked(node.redacted());
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("invalid AMQP URL "), "{msg}");
            masked(&msg);
        }
    }
}
