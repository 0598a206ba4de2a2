//! `warren sim upstream`: a WebSocket event source that speaks the upstream's protocol (bearer
//! handshake, `subscribe` with topics and `resumeFrom`, a replay buffer) and injects faults.
//!
//! One generator puts events on the stream; each connection sends them from its own position
//! in the replay buffer, so a resume is a replay followed by live events. The generator starts
//! when the first client subscribes. With `rate` 0 it stays a few thousand events ahead of the
//! fastest subscriber, which is the sim's maximum rate.
//!
//! # The ledger
//! `--ledger FILE` gets one line `<eventId> <type>` per event, written and flushed when the
//! event is put on the stream, before any client can receive it; each distinct eventId once,
//! whatever duplicates and replays follow. Malformed frames are recorded as `# malformed <kind>`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes, http};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ulid::Ulid;

use super::catalog::{Catalog, SimEvent};
use subtle::ConstantTimeEq;

use crate::SimError;

/// Events the generator may run ahead of the fastest subscriber at `rate` 0.
const MAX_LEAD: u64 = 8192;
/// Events a connection takes from the buffer at a time.
const SEND_BATCH: usize = 256;
/// The size of an oversized frame: over the 1 MiB that upstream clients hold a frame to.
pub const OVERSIZED_FRAME_BYTES: usize = 1024 * 1024 + 1024;
/// How long a stalled connection is held open before it is dropped.
const STALL_HOLD: Duration = Duration::from_secs(600);

/// A kind of malformed frame the sim can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKind {
    /// A text frame that is not JSON.
    NotJson,
    /// An envelope without `eventId`.
    MissingField,
    /// An envelope whose `ts` is a string.
    WrongType,
    /// A binary frame (the upstream sends text).
    Binary,
    /// A text frame over the 1 MiB limit.
    Oversized,
    /// A text frame that is not UTF-8 (a protocol violation clients must fail on).
    InvalidUtf8,
}

impl MalformedKind {
    /// Every kind, in rotation order.
    pub const ALL: [MalformedKind; 6] = [
        MalformedKind::NotJson,
        MalformedKind::MissingField,
        MalformedKind::WrongType,
        MalformedKind::Binary,
        MalformedKind::Oversized,
        MalformedKind::InvalidUtf8,
    ];

    /// The name used on the command line and in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedKind::NotJson => "not-json",
            MalformedKind::MissingField => "missing-field",
            MalformedKind::WrongType => "wrong-type",
            MalformedKind::Binary => "binary",
            MalformedKind::Oversized => "oversized",
            MalformedKind::InvalidUtf8 => "invalid-utf8",
        }
    }

    /// The frame to send; `n` makes each one distinct.
    pub fn frame(self, n: u64) -> Message {
        let id = Ulid::from_parts(1, u128::from(n)).to_string();
        match self {
            MalformedKind::NotJson => Message::text(format!("not json #{n} {{")),
            MalformedKind::MissingField => Message::text(format!(
                r#"{{"type":"market.tick","agentId":"pf_agent_sim","payload":{{"n":{n}}},"ts":1}}"#
            )),
            MalformedKind::WrongType => Message::text(format!(
                r#"{{"eventId":"{id}","type":"market.tick","agentId":"pf_agent_sim","payload":{{"n":{n}}},"ts":"soon"}}"#
            )),
            MalformedKind::Binary => Message::binary(format!(
                r#"{{"eventId":"{id}","type":"market.tick","agentId":"pf_agent_sim","payload":{{"n":{n}}},"ts":1}}"#
            )),
            MalformedKind::Oversized => {
                let pad = "x".repeat(OVERSIZED_FRAME_BYTES);
                Message::text(format!(r#"{{"n":{n},"pad":"{pad}"}}"#))
            }
            MalformedKind::InvalidUtf8 => {
                let mut bytes = format!(r#"{{"eventId":"{id}","n":{n},"bad":""#).into_bytes();
                bytes.extend_from_slice(&[0xff, 0xfe, 0xc3, b'"', b'}']);
                Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
            }
        }
    }
}

/// Fault injection.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close each connection abruptly (no close frame) after it has sent this many events.
    pub drop_every: Option<u64>,
    /// Probability that an event is sent twice in a row.
    pub duplicate_rate: f64,
    /// Probability that a malformed frame precedes an event.
    pub malformed_rate: f64,
    /// The malformed kinds to rotate through (empty: all).
    pub malformed_kinds: Vec<MalformedKind>,
    /// Each connection stops sending and reading after this many events, keeping TCP open.
    pub stall_after: Option<u64>,
}

/// How the simulated upstream runs.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Seed of the event sequence and of the fault dice.
    pub seed: u64,
    /// Events per second; 0 is as fast as subscribers take them.
    pub rate: u32,
    /// Events to emit; then the stream stays open with nothing new.
    pub events: u64,
    /// `ts` (and eventId time) of the first event, in epoch milliseconds.
    pub start_ms: u64,
    /// `agentId` in every envelope.
    pub agent_id: String,
    /// The bearer key clients must present; `None` accepts any non-empty key.
    pub agent_key: Option<String>,
    /// How long events stay replayable.
    pub replay_window: Duration,
    /// At most this many events stay replayable.
    pub replay_capacity: usize,
    /// The ground-truth ledger file.
    pub ledger: Option<PathBuf>,
    /// Fault injection.
    pub faults: Faults,
    /// Generate every event at start, before any subscriber (benchmarks replay them at once).
    pub pregenerate: bool,
}

impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("seed", &self.seed)
            .field("rate", &self.rate)
            .field("events", &self.events)
            .field("agent_key", &self.agent_key.as_ref().map(|_| "***"))
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            seed: 1,
            rate: 100,
            events: 1000,
            start_ms: now_ms(),
            agent_id: "pf_agent_sim".into(),
            agent_key: None,
            replay_window: Duration::from_secs(300),
            replay_capacity: 1_000_000,
            ledger: None,
            faults: Faults::default(),
            pregenerate: false,
        }
    }
}

/// An event on the stream, its frame ready to send.
struct Queued {
    seq: u64,
    id: Ulid,
    event_type: &'static str,
    text: Utf8Bytes,
}

impl From<SimEvent> for Queued {
    fn from(e: SimEvent) -> Self {
        // The catalog serializes with serde_json, so the frame is UTF-8.
        let text = Utf8Bytes::try_from(Bytes::from(e.frame)).unwrap_or_default();
        Queued {
            seq: e.seq,
            id: e.id,
            event_type: e.event_type,
            text,
        }
    }
}

struct Buffer {
    /// Seq of the first buffered event.
    start: u64,
    events: VecDeque<(Instant, Arc<Queued>)>,
}

impl Buffer {
    fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    /// The position just after `id`, and whether events before it may have been evicted.
    fn position_after(&self, id: Ulid) -> (u64, bool) {
        let idx = self.events.partition_point(|(_, e)| e.id <= id);
        (self.start + idx as u64, idx == 0 && self.start > 0)
    }

    /// Up to `max` events from `from` (moved up to the buffer's start if evicted).
    fn take(&self, from: u64, max: usize) -> (u64, Vec<Arc<Queued>>) {
        let from = from.max(self.start);
        let skip = (from - self.start) as usize;
        let batch = self
            .events
            .iter()
            .skip(skip)
            .take(max)
            .map(|(_, e)| e.clone())
            .collect();
        (from, batch)
    }
}

struct Shared {
    settings: UpstreamSettings,
    buffer: Mutex<Buffer>,
    end: watch::Sender<u64>,
    subscribed: watch::Sender<bool>,
    sent_up_to: watch::Sender<u64>,
    ledger: Option<Mutex<BufWriter<File>>>,
    malformed_sent: AtomicU64,
    key_digest: Option<[u8; 32]>,
}

impl Shared {
    fn record(&self, lines: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) {
        if let Some(ledger) = &self.ledger {
            let mut w = ledger.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = lines(&mut w).and_then(|_| w.flush()) {
                tracing::error!(%error, "Cannot write the ledger.");
            }
        }
    }
}

/// Serves the simulated upstream on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    settings: UpstreamSettings,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let ledger = match &settings.ledger {
        Some(path) => Some(Mutex::new(BufWriter::new(File::create(path).map_err(
            |source| SimError::Io {
                path: path.clone(),
                source,
            },
        )?))),
        None => None,
    };
    let shared = Arc::new(Shared {
        key_digest: settings
            .agent_key
            .as_deref()
            .map(|k| Sha256::digest(k.as_bytes()).into()),
        settings,
        buffer: Mutex::new(Buffer {
            start: 0,
            events: VecDeque::new(),
        }),
        end: watch::Sender::new(0),
        subscribed: watch::Sender::new(false),
        sent_up_to: watch::Sender::new(0),
        ledger,
        malformed_sent: AtomicU64::new(0),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(generate(shared.clone(), shutdown.clone()));
    let mut connections = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections += 1;
                    let _ = tcp.set_nodelay(true);
                    tracing::debug!(%peer, connection = connections, "Client connected.");
                    tracker.spawn(serve(shared.clone(), tcp, connections, shutdown.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    shared.record(|_| Ok(()));
    Ok(())
}

/// Puts events on the stream at the configured pace.
async fn generate(shared: Arc<Shared>, shutdown: CancellationToken) {
    let s = &shared.settings;
    let mut subscribed = shared.subscribed.subscribe();
    if !s.pregenerate {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = subscribed.wait_for(|s| *s) => if r.is_err() { return },
        }
    }
    let mut catalog = Catalog::new(s.seed, s.start_ms, s.rate, &s.agent_id);
    let mut sent_up_to = shared.sent_up_to.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    tracing::info!(events = s.events, rate = s.rate, "Emitting events.");
    while catalog.generated() < s.events {
        let generated = catalog.generated();
        let due = if s.pregenerate {
            (s.events - generated).min(1024)
        } else if s.rate > 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let target = (started.elapsed().as_secs_f64() * f64::from(s.rate)) as u64 + 1;
            target.min(s.events).saturating_sub(generated).min(50_000)
        } else {
            let ready = sent_up_to.wait_for(|&sent| generated.saturating_sub(sent) < MAX_LEAD);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = ready => if r.is_err() { return },
            }
            (s.events - generated).min(1024)
        };
        if due == 0 {
            continue;
        }
        let batch: Vec<Arc<Queued>> = (0..due)
            .map(|_| Arc::new(catalog.next_event().into()))
            .collect();
        shared.record(|w| {
            for e in &batch {
                writeln!(w, "{} {}", e.id, e.event_type)?;
            }
            Ok(())
        });
        let end = {
            let mut buf = shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            buf.events.extend(batch.into_iter().map(|e| (now, e)));
            while buf.events.len() > s.replay_capacity
                || buf
                    .events
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > s.replay_window)
            {
                buf.events.pop_front();
                buf.start += 1;
            }
            buf.end()
        };
        shared.end.send_replace(end);
    }
    tracing::info!(
        events = s.events,
        "Every event emitted; still serving replays."
    );
}

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

async fn serve(shared: Arc<Shared>, tcp: TcpStream, conn: u64, shutdown: CancellationToken) {
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

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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

    #[test]
    fn resume_position_is_just_after_the_id() {
        let mut cat = Catalog::new(1, 1000, 0, "a");
        let events: Vec<Arc<Queued>> = (0..10).map(|_| Arc::new(cat.next_event().into())).collect();
        let now = Instant::now();
        let mut buf = Buffer {
            start: 0,
            events: events.iter().map(|e| (now, e.clone())).collect(),
        };
        assert_eq!(buf.position_after(events[3].id), (4, false));
        assert_eq!(buf.position_after(events[9].id), (10, false));
        buf.events.drain(..5);
        buf.start = 5;
        assert_eq!(buf.position_after(events[2].id), (5, true));
        let (from, batch) = buf.take(2, 3);
        assert_eq!((from, batch.len(), batch[0].seq), (5, 3, 5));
    }
}
