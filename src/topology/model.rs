//! The topology file's serde model (unknown fields rejected) and its deserialisation, whose
//! errors keep the key path (serde_path_to_error) and the span (toml).

use serde::Deserialize;

use super::QueueType;
use super::locate::{self, Problem, Seg};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileModel {
    pub(super) exchanges: ExchangesModel,
    #[serde(default)]
    pub(super) events: EventsModel,
    #[serde(default)]
    pub(super) defaults: QueueOptions,
    #[serde(default)]
    pub(super) queues: Vec<QueueModel>,
    pub(super) archive: Option<ArchiveModel>,
}

/// `[archive]`: a stream bound to the events exchange, holding a copy of every event (or of
/// the types `bind` lists) for reading, replay and backtests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArchiveModel {
    pub(super) name: String,
    /// Topic patterns; absent: every event, routed or not.
    pub(super) bind: Option<Vec<String>>,
    pub(super) max_age: Option<String>,
    pub(super) max_bytes: Option<u64>,
    pub(super) segment_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExchangesModel {
    pub(super) events: String,
    pub(super) dead_letter: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsModel {
    #[serde(default)]
    pub(super) live_only: Vec<String>,
    pub(super) live_ttl: Option<String>,
}

/// Fields allowed both in `[defaults]` and in each `[[queues]]` entry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueOptions {
    pub(super) queue_type: Option<QueueType>,
    pub(super) prefetch: Option<u16>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_delays: Option<Vec<String>>,
    pub(super) delivery_limit: Option<u32>,
    pub(super) message_ttl: Option<String>,
    pub(super) max_length: Option<u64>,
    pub(super) single_active_consumer: Option<bool>,
    pub(super) expires: Option<String>,
    pub(super) quorum_initial_group_size: Option<u32>,
}

/// A queue: its own fields and [`QueueOptions`]'s, spelled out rather than flattened so that
/// a bad value's error keeps its field and its line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueModel {
    pub(super) name: String,
    #[serde(default)]
    pub(super) bind: Vec<String>,
    /// Split into this many single-active-consumer lanes (queue only, not in defaults).
    pub(super) lanes: Option<i64>,
    /// The envelope path whose value picks a lane.
    pub(super) lane_key: Option<String>,
    pub(super) queue_type: Option<QueueType>,
    pub(super) prefetch: Option<u16>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_delays: Option<Vec<String>>,
    pub(super) delivery_limit: Option<u32>,
    pub(super) message_ttl: Option<String>,
    pub(super) max_length: Option<u64>,
    pub(super) single_active_consumer: Option<bool>,
    pub(super) expires: Option<String>,
    pub(super) quorum_initial_group_size: Option<u32>,
}

impl QueueModel {
    pub(super) fn options(&self) -> QueueOptions {
        QueueOptions {
            queue_type: self.queue_type,
            prefetch: self.prefetch,
            max_attempts: self.max_attempts,
            retry_delays: self.retry_delays.clone(),
            delivery_limit: self.delivery_limit,
            message_ttl: self.message_ttl.clone(),
            max_length: self.max_length,
            single_active_consumer: self.single_active_consumer,
            expires: self.expires.clone(),
            quorum_initial_group_size: self.quorum_initial_group_size,
        }
    }
}

/// The whole file through serde, keeping the key path (serde_path_to_error) and the span
/// (toml) of the first error; a queue's error is labelled with its name.
pub(super) fn deserialize(text: &str) -> Result<FileModel, Problem> {
    let syntax = |e: toml::de::Error| {
        let span = e.span();
        let offset = span.as_ref().map_or(0, |s| s.start);
        let mut message = quoted(e.message());
        if message == "duplicate key"
            && let Some(key) = span.as_ref().and_then(|s| text.get(s.clone()))
        {
            message = format!("duplicate key '{}'", key.trim());
        }
        Problem {
            at: locate::syntax_path(text, offset),
            message,
            span,
        }
    };
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = locate::segs_of(e.path());
        let mut message = quoted(e.inner().message());
        if let [Seg::Key(k), Seg::Index(i), ..] = at.as_slice()
            && k == "queues"
        {
            let label = locate::queue_name(text, *i)
                .map_or_else(|| format!("queue #{}", i + 1), |n| format!("queue '{n}'"));
            message = format!("{label}: {message}");
        }
        Problem {
            at,
            message,
            span: e.inner().span(),
        }
    })
}

/// toml and serde quote names with backticks; warren's messages use single quotes.
fn quoted(message: &str) -> String {
    message.replace('`', "'").trim().to_string()
}
