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

/// The largest frame the WebSocket layer reads at all. Frames between the envelope limit and
/// this are dead-lettered truncated; larger ones fail the connection.
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
