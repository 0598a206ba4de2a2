//! One client connection: the bearer handshake, the `subscribe` message with its topics and
//! `resumeFrom`, then events from the replay buffer, with the faults the settings ask for.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use super::{MalformedKind, Shared};

/// Events a connection takes from the buffer at a time.
const SEND_BATCH: usize = 256;
/// How long a stalled connection is held open before it is dropped.
const STALL_HOLD: Duration = Duration::from_secs(600);

/// The client's subscription.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subscribe {
    action: String,
    #[serde(default)]
    resume_from: String,
    topics: Vec<String>,
}

/// The upstream's subscription grammar: an event type (`domain.name`, lowercase, digits and `_`)
/// or a whole domain (`domain.*`).
fn topic_ok(t: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.as_bytes()[0].is_ascii_lowercase()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match t.split_once('.') {
        Some((domain, "*")) => part(domain),
        Some((domain, name)) => part(domain) && part(name),
        None => false,
    }
}

fn topic_matches(topics: &[String], event_type: &str) -> bool {
    topics.iter().any(|t| match t.strip_suffix(".*") {
        Some(domain) => event_type
            .strip_prefix(domain)
            .is_some_and(|r| r.starts_with('.')),
        None => t == event_type,
    })
}

type Ws = WebSocketStream<TcpStream>;

/// Why a connection ended, for the log.
enum End {
    Closed,
    Dropped,
    Stalled,
    Shutdown,
}

/// Serves one client until it leaves, a fault ends it, or shutdown.
pub(super) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    conn: u64,
    shutdown: CancellationToken,
) {
    let digest = shared.key_digest;
    let mut agent = String::new();
    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|k| !k.is_empty());
        let ok = match (presented, digest) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(k), Some(want)) => {
                bool::from(Sha256::digest(k.as_bytes()).as_slice().ct_eq(&want))
            }
        };
        if !ok {
            let mut r = ErrorResponse::new(Some("missing or wrong bearer key".into()));
            *r.status_mut() = http::StatusCode::UNAUTHORIZED;
            return Err(r);
        }
        agent = req
            .headers()
            .get("x-agent-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(tcp, check, Some(config)).await {
        Ok(ws) => ws,
        Err(error) => {
            tracing::info!(connection = conn, %error, "Handshake refused.");
            return;
        }
    };
    let end = match session(&shared, ws, conn, &agent, &shutdown).await {
        Ok(end) => end,
        Err(error) => {
            tracing::debug!(connection = conn, %error, "Connection failed.");
            return;
        }
    };
    let what = match end {
        End::Closed => "Client closed the connection.",
        End::Dropped => "Dropped the connection (fault injection).",
        End::Stalled => "Released a stalled connection.",
        End::Shutdown => "Closed the connection for shutdown.",
    };
    tracing::debug!(connection = conn, "{what}");
}

async fn session(
    shared: &Shared,
    mut ws: Ws,
    conn: u64,
    agent: &str,
    shutdown: &CancellationToken,
) -> Result<End, tokio_tungstenite::tungstenite::Error> {
    let sub = tokio::select! {
        _ = shutdown.cancelled() => return Ok(End::Shutdown),
        sub = tokio::time::timeout(Duration::from_secs(30), read_subscribe(&mut ws)) => sub,
    };
    let sub = match sub {
        Ok(Ok(Some(sub))) => sub,
        Ok(Ok(None)) => return Ok(End::Closed),
        Ok(Err(reason)) => {
            tracing::info!(connection = conn, %reason, "Bad subscribe.");
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: reason.into(),
                }))
                .await;
            return Ok(End::Closed);
        }
        Err(_) => return Ok(End::Closed),
    };
    let mut pos = {
        let buf = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if sub.resume_from.is_empty() {
            buf.end()
        } else {
            let Ok(id) = Ulid::from_string(&sub.resume_from) else {
                drop(buf);
                let reason = format!("resumeFrom '{}' is not an eventId", sub.resume_from);
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: reason.into(),
                    }))
                    .await;
                return Ok(End::Closed);
            };
            let (pos, gap) = buf.position_after(id);
            if gap {
                tracing::warn!(connection = conn, resume_from = %id, "resumeFrom is older than the replay buffer; replaying what is left.");
            }
            pos
        }
    };
    tracing::info!(connection = conn, agent_id = agent, resume_from = %sub.resume_from, topics = ?sub.topics, "Client subscribed.");
    shared.subscribed.send_replace(true);

    let s = &shared.settings;
    let f = &s.faults;
    let kinds: &[MalformedKind] = if f.malformed_kinds.is_empty() {
        &MalformedKind::ALL
    } else {
        &f.malformed_kinds
    };
    let mut rng = StdRng::seed_from_u64(s.seed ^ conn.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut end_rx = shared.end.subscribe();
    let mut sent = 0u64;
    loop {
        let (from, batch) = shared
            .buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(pos, SEND_BATCH);
        if from > pos {
            tracing::warn!(
                connection = conn,
                missed = from - pos,
                "Client fell behind the replay buffer."
            );
        }
        pos = from;
        if batch.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = ws.close(None).await;
                    return Ok(End::Shutdown);
                }
                r = end_rx.changed() => if r.is_err() { return Ok(End::Shutdown) },
                msg = ws.next() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(End::Closed),
                    Some(Ok(_)) => {}
                },
            }
            continue;
        }
        for event in batch {
            pos = event.seq + 1;
            if !topic_matches(&sub.topics, event.event_type) {
                continue;
            }
            if f.malformed_rate > 0.0 && rng.random_bool(f.malformed_rate.min(1.0)) {
                let n = shared.malformed_sent.fetch_add(1, Ordering::Relaxed);
                let kind = kinds[(n as usize) % kinds.len()];
                ws.feed(kind.frame(n)).await?;
                shared.record(|w| writeln!(w, "# malformed {}", kind.as_str()));
                if kind == MalformedKind::InvalidUtf8 {
                    // A conforming client fails the connection now; give it the chance.
                    ws.flush().await?;
                    let closed = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    if closed.is_ok() {
                        return Ok(End::Closed);
                    }
                }
            }
            ws.feed(Message::Text(event.text.clone())).await?;
            if f.duplicate_rate > 0.0 && rng.random_bool(f.duplicate_rate.min(1.0)) {
                ws.feed(Message::Text(event.text.clone())).await?;
            }
            sent += 1;
            if f.stall_after.is_some_and(|n| sent >= n) {
                ws.flush().await?;
                tracing::info!(
                    connection = conn,
                    sent,
                    "Stalling: no more frames, socket left open."
                );
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(STALL_HOLD) => {}
                }
                return Ok(End::Stalled);
            }
            if f.silent_after.is_some_and(|n| sent >= n) {
                ws.flush().await?;
                shared.sent_up_to.send_if_modified(|v| bump(v, pos));
                tracing::info!(
                    connection = conn,
                    sent,
                    "Silent: no more events, pings still answered."
                );
                return Ok(silent(&mut ws, shutdown).await);
            }
            if f.drop_every.is_some_and(|n| sent >= n) {
                ws.flush().await?;
                shared.sent_up_to.send_if_modified(|v| bump(v, pos));
                return Ok(End::Dropped);
            }
        }
        ws.flush().await?;
        shared.sent_up_to.send_if_modified(|v| bump(v, pos));
    }
}

/// Keeps reading (tungstenite answers each ping as it reads) and sends nothing, until the
/// client leaves, shutdown, or [`STALL_HOLD`].
async fn silent(ws: &mut Ws, shutdown: &CancellationToken) -> End {
    let hold = tokio::time::sleep(STALL_HOLD);
    tokio::pin!(hold);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return End::Shutdown;
            }
            _ = &mut hold => return End::Stalled,
            msg = ws.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Closed,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn bump(v: &mut u64, pos: u64) -> bool {
    if pos > *v {
        *v = pos;
        true
    } else {
        false
    }
}

/// Reads frames until the subscribe message; `Ok(None)` if the client left first.
async fn read_subscribe(ws: &mut Ws) -> Result<Option<Subscribe>, String> {
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => return Ok(None),
            Ok(_) => continue,
        };
        let sub: Subscribe =
            serde_json::from_str(&text).map_err(|e| format!("subscribe message: {e}"))?;
        if sub.action != "subscribe" {
            return Err(format!("unknown action '{}'", sub.action));
        }
        if sub.topics.is_empty() {
            return Err("field 'topics': at least one topic is required".into());
        }
        if let Some(bad) = sub.topics.iter().find(|t| !topic_ok(t)) {
            return Err(format!(
                "field 'topics': '{bad}' is neither an event type nor 'domain.*'"
            ));
        }
        return Ok(Some(sub));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_exact_types_or_domain_wildcards() {
        for ok in ["market.*", "market.tick", "job.failed"] {
            assert!(topic_ok(ok), "{ok}");
        }
        for bad in ["*", "market", "market.#", "Market.*", ""] {
            assert!(!topic_ok(bad), "{bad}");
        }
        let topics = vec!["market.*".to_string(), "job.failed".to_string()];
        assert!(topic_matches(&topics, "market.candle"));
        assert!(topic_matches(&topics, "job.failed"));
        assert!(!topic_matches(&topics, "job.completed"));
        assert!(!topic_matches(&topics, "marketing.x"));
    }
}
