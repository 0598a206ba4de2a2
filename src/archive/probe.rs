//! The archive's two ends, found over AMQP 0-9-1 alone (no management API): a consumer at
//! `first` takes one message; a consumer at `last` takes the last chunk and keeps the highest
//! offset until the stream has been quiet for a moment. A walk runs the second in the
//! background ([`LastProbe`]) and waits for it only at the last chunk.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;

use super::spec;
use crate::amqp::{self, AmqpUrl, Connection, StreamOffset, stream_offset};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::status::{Management, QueueFigures};
use crate::topology::{ArchiveSpec, Topology};

/// How long the `last` consumer waits for one more message before the end is taken as found.
const QUIET: Duration = Duration::from_millis(300);
/// How long a probe may take in all (a stream that is written fast never goes quiet).
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// One end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct End {
    /// The offset.
    pub offset: u64,
    /// The event's time (`ts`, epoch ms), if the message is an envelope.
    pub ts: Option<u64>,
}

/// `warren archive info`, and the archive's part of `warren status`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveInfo {
    /// The stream.
    pub stream: String,
    /// Why the figures are missing (`status` only: the stream is not on the broker, or is not
    /// the topology's stream); `info` fails instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The oldest event held; `None` when empty.
    pub first: Option<End>,
    /// The newest event held.
    pub last: Option<End>,
    /// Messages held: `last - first + 1`.
    pub messages: u64,
    /// Bytes held, from the management API; `None` when it gives no figure.
    pub bytes: Option<u64>,
    /// Segment files on disk, from the management API.
    pub segments: Option<u64>,
    /// Where `bytes` comes from, or why it is unknown.
    pub bytes_source: String,
    /// `x-max-age`, in seconds.
    pub max_age_secs: u64,
    /// `x-max-length-bytes`.
    pub max_bytes: u64,
    /// `x-stream-max-segment-size-bytes`.
    pub segment_bytes: u64,
    /// Topic patterns bound; `None`: every event.
    pub bind: Option<Vec<String>>,
    /// What the retention settings promise.
    pub retention: String,
}

/// What the management API said of the stream: its figures, `Ok(None)` when it has none for
/// it, or why it could not be asked.
pub type SizeFigures = Result<Option<QueueFigures>, String>;

impl ArchiveInfo {
    /// The figures of `a`: its ends (from [`ends`]) and the management API's size.
    pub(crate) fn new(a: &ArchiveSpec, ends: Option<(End, End)>, size: SizeFigures) -> Self {
        let messages = ends.map_or(0, |(f, l)| l.offset.saturating_sub(f.offset) + 1);
        let figures = size.as_ref().ok().and_then(Option::as_ref);
        // A stream's byte figure is 0 on brokers that do not count them (3.10 among them).
        let bytes = figures
            .and_then(|f| f.bytes)
            .filter(|&b| b > 0 || messages == 0);
        let segments = figures.and_then(|f| f.segments);
        let bytes_source = match (&size, bytes) {
            (_, Some(_)) => "the management API".to_string(),
            (Err(why), None) => format!("unknown ({why})"),
            (Ok(_), None) => format!(
                "unknown (the management API gives no byte count for this stream{})",
                segments.map_or(String::new(), |n| format!(
                    "; {n} segment file(s) of at most {} bytes",
                    a.segment_bytes
                ))
            ),
        };
        ArchiveInfo {
            stream: a.name.clone(),
            problem: None,
            first: ends.map(|e| e.0),
            last: ends.map(|e| e.1),
            messages,
            bytes,
            segments,
            bytes_source,
            max_age_secs: a.max_age.as_secs(),
            max_bytes: a.max_bytes,
            segment_bytes: a.segment_bytes,
            bind: a.bind.clone(),
            retention: a.retention_note(),
        }
    }
}

impl ArchiveInfo {
    /// The size in bytes, or why it is unknown.
    pub fn size(&self) -> String {
        match self.bytes {
            Some(b) => format!("{b} bytes ({})", self.bytes_source),
            None => format!("bytes {}", self.bytes_source),
        }
    }

    /// One line: the stream, its ends, its size and its retention (`warren status`).
    pub fn summary(&self) -> String {
        let retention = format!(
            "max age {}, max {} bytes",
            humantime::format_duration(std::time::Duration::from_secs(self.max_age_secs)),
            self.max_bytes
        );
        if let Some(p) = &self.problem {
            return format!("{}: {p}", self.stream);
        }
        match (self.first, self.last) {
            (Some(f), Some(l)) => format!(
                "{}: {} messages, offsets {}–{} ({} to {}); {}; {retention}",
                self.stream,
                self.messages,
                f.offset,
                l.offset,
                event_time(f.ts),
                event_time(l.ts),
                self.size()
            ),
            _ => format!("{}: empty; {retention}", self.stream),
        }
    }
}

/// An event's time (epoch ms) in RFC 3339, for people.
pub fn event_time(ms: Option<u64>) -> String {
    ms.map_or("(not an envelope)".into(), |ms| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    })
}

/// Reads the archive's ends and retention, and its size in bytes from `management` when given.
pub async fn info(
    url: &AmqpUrl,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<ArchiveInfo, Error> {
    let a = spec(topology)?;
    let conn = amqp::connect(url, "archive", "info").await?;
    let ends = async {
        super::check_declared(&conn, topology).await?;
        ends(&conn, &a.name).await
    }
    .await;
    amqp::close(&conn).await;
    let ends = ends?;
    let size = match management {
        Some(m) => m.figures(&a.name).await.map_err(|e| e.to_string()),
        None => Err("no management API given".into()),
    };
    Ok(ArchiveInfo::new(a, ends, size))
}

/// The first and last messages of `stream`; `None` when it holds none.
pub(crate) async fn ends(conn: &Connection, stream: &str) -> Result<Option<(End, End)>, Error> {
    let Some(last) = probe(conn, stream, StreamOffset::Last).await? else {
        return Ok(None);
    };
    let first = probe(conn, stream, StreamOffset::First)
        .await?
        .unwrap_or(last);
    Ok(Some((first, last)))
}

/// What the background probe of the last chunk knows so far.
#[derive(Debug, Clone, Default)]
struct LastState {
    /// The first message of the last chunk, once it came: the end is at or after it.
    lower: Option<End>,
    /// The end, once the chunk stayed quiet (`Ok(None)`: the stream is empty).
    exact: Option<Result<Option<End>, String>>,
}

/// The stream's last offset, found in a task of its own while a walk starts reading: a walk
/// needs the exact end only when it reaches the last chunk, so the [`QUIET`] wait overlaps
/// the read instead of preceding it.
pub(super) struct LastProbe {
    rx: watch::Receiver<LastState>,
}

impl LastProbe {
    /// Probes `stream` on `conn`, which the task closes when done.
    pub(super) fn spawn(conn: Connection, stream: String) -> Self {
        let (tx, rx) = watch::channel(LastState::default());
        tokio::spawn(async move {
            let result = probe_with(&conn, &stream, StreamOffset::Last, |end| {
                tx.send_modify(|s| {
                    s.lower.get_or_insert(end);
                });
            })
            .await;
            tx.send_modify(|s| s.exact = Some(result.map_err(|e| e.to_string())));
            amqp::close(&conn).await;
        });
        Self { rx }
    }

    /// A lower bound of the end as soon as the last chunk's first message comes (or the exact
    /// end if it is known first); `Ok(None)`: the stream is empty.
    pub(super) async fn lower(&mut self) -> Result<Option<End>, Error> {
        let s = self
            .rx
            .wait_for(|s| s.lower.is_some() || s.exact.is_some())
            .await
            .map_err(|_| stopped())?
            .clone();
        match s.exact {
            Some(r) => r.map_err(Error::Other),
            None => Ok(s.lower),
        }
    }

    /// The end.
    pub(super) async fn exact(&mut self) -> Result<Option<End>, Error> {
        let s = self
            .rx
            .wait_for(|s| s.exact.is_some())
            .await
            .map_err(|_| stopped())?
            .clone();
        s.exact.unwrap_or(Ok(None)).map_err(Error::Other)
    }
}

fn stopped() -> Error {
    Error::Other("the probe of the archive's end stopped".into())
}

/// At `First`: the first message. At `Last`: the highest offset seen before [`QUIET`].
async fn probe(conn: &Connection, stream: &str, at: StreamOffset) -> Result<Option<End>, Error> {
    probe_with(conn, stream, at, |_| {}).await
}

/// [`probe`], calling `first_seen` with the first message it takes.
async fn probe_with(
    conn: &Connection,
    stream: &str,
    at: StreamOffset,
    mut first_seen: impl FnMut(End),
) -> Result<Option<End>, Error> {
    let channel = amqp::channel(conn).await?;
    let result = async {
        let mut consumer = amqp::consume_stream(&channel, stream, at, 1000, "warren-probe").await?;
        let started = tokio::time::Instant::now();
        let mut found: Option<End> = None;
        loop {
            // The first message of a non-empty stream may take a while to be read from disk.
            let wait = if found.is_none() && at == StreamOffset::First {
                PROBE_LIMIT
            } else {
                QUIET
            };
            let next = tokio::time::timeout(wait, consumer.next()).await;
            let delivery = match next {
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => {
                    return Err(Error::Other(format!("probe of archive '{stream}': {e}")));
                }
                Ok(None) | Err(_) => break,
            };
            let _ = amqp::ack(&delivery).await;
            if let Some(offset) = stream_offset(&delivery.properties)
                && found.is_none_or(|f| offset > f.offset)
            {
                let end = End {
                    offset,
                    ts: Envelope::parse(&delivery.data).ok().map(|e| e.ts),
                };
                if found.is_none() {
                    first_seen(end);
                }
                found = Some(end);
            }
            if at == StreamOffset::First || started.elapsed() > PROBE_LIMIT {
                break;
            }
        }
        Ok(found)
    }
    .await;
    amqp::close_channel(&channel).await;
    result
}
