//! The simulated upstream's settings: pace, replay, the bearer key, the ledger, and the faults
//! it injects (malformed frames among them).

use std::path::PathBuf;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use ulid::Ulid;

use super::now_ms;

/// The size of an oversized frame: over the 1 MiB that upstream clients hold a frame to.
pub const OVERSIZED_FRAME_BYTES: usize = 1024 * 1024 + 1024;

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
    /// Each connection stops sending events after this many but keeps reading, so it answers
    /// pings: a producer stuck behind a live socket.
    pub silent_after: Option<u64>,
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
