//! The upstream WebSocket: connect with a deadline, the bearer handshake, and the `subscribe`
//! message with `resumeFrom`. The key only ever goes into the `Authorization` header.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use ulid::Ulid;

/// The upstream connection.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The largest frame (and message) the WebSocket layer reads at all: 16 MiB, deliberately
/// above the 1 MiB envelope limit ([`crate::envelope::MAX_ENVELOPE_BYTES`]).
///
/// Why not 1 MiB at the socket: a frame over the socket limit fails the connection before its
/// bytes reach us, so the bridge cannot know its eventId, cannot move the cursor past it, and
/// resumes from the cursor before it. An upstream that replays that frame (an oversized event
/// carries an eventId, so it is replayed) would then be re-read, fail the connection again,
/// and loop forever. Reading it instead lets the bridge dead-letter it (first 64 KiB and its
/// size) and carry on; the eventId window and cursor then treat it like any other frame.
/// A frame over this hard limit still fails the connection (with a record in the DLQ and no
/// body); that is the one case that can repeat after a resume, at the reconnect backoff pace.
///
/// Memory per upstream connection stays bounded: tungstenite checks a frame's length in its
/// header before reading the payload and caps a fragmented message's total at this size, so
/// the socket holds at most one frame or message of this size plus its read buffer (128 KiB).
/// A frame over 1 MiB is cut to 64 KiB before it is held for publishing, so the outbox holds at
/// most `--confirm-window` bodies of 1 MiB each.
pub const HARD_FRAME_LIMIT: usize = 16 * 1024 * 1024;

/// Where and how to subscribe.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// `ws://` or `wss://` URL of the stream.
    pub url: String,
    /// Topics: event types or `domain.*`.
    pub topics: Vec<String>,
    /// The agent key (`PF_AGENT_KEY`), sent as a bearer token.
    pub agent_key: String,
    /// The agent id (`PF_AGENT_ID`), sent as `X-Agent-Id`.
    pub agent_id: String,
}

impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("url", &self.url)
            .field("topics", &self.topics)
            .field("agent_key", &"***")
            .field("agent_id", &"***")
            .finish()
    }
}

/// The default topics: the whole catalog.
pub const DEFAULT_TOPICS: [&str; 4] = ["market.*", "wallet.*", "escrow.*", "job.*"];

/// A topic the upstream takes: an exact event type (`domain.name`) or a domain (`domain.*`).
pub fn is_topic(t: &str) -> bool {
    match t.strip_suffix(".*") {
        Some(domain) => crate::envelope::is_event_type(&format!("{domain}.x")),
        None => crate::envelope::is_event_type(t),
    }
}

/// Checks `--topics` before anything connects: a bad one would otherwise be refused by the
/// upstream on every subscribe, a reconnect loop with nothing to show for it.
pub fn check_topics(topics: &[String]) -> Result<(), String> {
    if topics.is_empty() {
        return Err("--topics: give at least one topic".into());
    }
    match topics.iter().find(|t| !is_topic(t)) {
        Some(bad) => Err(format!(
            "--topics: '{bad}' is neither an event type ('domain.name') nor a domain ('domain.*')"
        )),
        None => Ok(()),
    }
}

/// Connects, authenticates and subscribes, resuming after `resume_from` when given.
pub async fn connect(
    s: &UpstreamSettings,
    resume_from: Option<Ulid>,
    timeout: Duration,
) -> Result<WsStream, String> {
    let mut request = s
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("--url: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", s.agent_key))
        .map_err(|_| "PF_AGENT_KEY holds characters not allowed in a header".to_string())?;
    let agent = HeaderValue::from_str(&s.agent_id)
        .map_err(|_| "PF_AGENT_ID holds characters not allowed in a header".to_string())?;
    request.headers_mut().insert("authorization", bearer);
    request.headers_mut().insert("x-agent-id", agent);
    let config = WebSocketConfig::default()
        .max_frame_size(Some(HARD_FRAME_LIMIT))
        .max_message_size(Some(HARD_FRAME_LIMIT));
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, None);
    let (mut ws, _) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(format!("no connection within {}s", timeout.as_secs_f32())),
        Ok(Err(WsError::Http(resp))) if resp.status() == StatusCode::UNAUTHORIZED => {
            return Err("the upstream refused the agent key (401)".into());
        }
        Ok(Err(WsError::Http(resp))) => {
            return Err(format!("the upstream answered HTTP {}", resp.status()));
        }
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(pair)) => pair,
    };
    let subscribe = serde_json::json!({
        "action": "subscribe",
        "resumeFrom": resume_from.map(|id| id.to_string()).unwrap_or_default(),
        "topics": s.topics,
    });
    tokio::time::timeout(timeout, ws.send(Message::text(subscribe.to_string())))
        .await
        .map_err(|_| "subscribe: no progress writing to the socket".to_string())?
        .map_err(|e| format!("subscribe: {e}"))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked_and_the_bad_one_is_named() {
        let ok: Vec<String> = ["market.*", "job.failed", "wallet.low_balance"]
            .map(String::from)
            .to_vec();
        assert_eq!(check_topics(&ok), Ok(()));
        let all: Vec<String> = DEFAULT_TOPICS.map(String::from).to_vec();
        assert_eq!(check_topics(&all), Ok(()));
        for bad in [
            "market",
            "market.#",
            "*",
            "Market.*",
            "market.tick.*",
            "",
            "market.*.x",
        ] {
            let topics = vec!["job.*".to_string(), bad.to_string()];
            let err = check_topics(&topics).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
        }
        assert!(check_topics(&[]).unwrap_err().contains("at least one"));
    }
}
