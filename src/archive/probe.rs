//! The archive's two ends, found over AMQP 0-9-1 alone (no management API): a consumer at
//! `first` takes one message; a consumer at `last` takes the last chunk and keeps the highest
//! offset until the stream has been quiet for a moment.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::spec;
use crate::amqp::{self, AmqpUrl, Connection, StreamOffset, stream_offset};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::topology::Topology;

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

/// `warren archive info`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveInfo {
    /// The stream.
    pub stream: String,
    /// The oldest event held; `None` when empty.
    pub first: Option<End>,
    /// The newest event held.
    pub last: Option<End>,
    /// Messages held: `last - first + 1`.
    pub messages: u64,
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

/// Reads the archive's ends and retention.
pub async fn info(url: &AmqpUrl, topology: &Topology) -> Result<ArchiveInfo, Error> {
    let a = spec(topology)?;
    let conn = amqp::connect(url, "archive", "info").await?;
    let ends = async {
        super::check_declared(&conn, topology).await?;
        ends(&conn, &a.name).await
    }
    .await;
    amqp::close(&conn).await;
    let ends = ends?;
    Ok(ArchiveInfo {
        stream: a.name.clone(),
        first: ends.map(|e| e.0),
        last: ends.map(|e| e.1),
        messages: ends.map_or(0, |(f, l)| l.offset.saturating_sub(f.offset) + 1),
        max_age_secs: a.max_age.as_secs(),
        max_bytes: a.max_bytes,
        segment_bytes: a.segment_bytes,
        bind: a.bind.clone(),
        retention: a.retention_note(),
    })
}

/// The first and last messages of `stream`; `None` when it holds none.
pub(super) async fn ends(conn: &Connection, stream: &str) -> Result<Option<(End, End)>, Error> {
    let Some(last) = probe(conn, stream, StreamOffset::Last).await? else {
        return Ok(None);
    };
    let first = probe(conn, stream, StreamOffset::First)
        .await?
        .unwrap_or(last);
    Ok(Some((first, last)))
}

/// At `First`: the first message. At `Last`: the highest offset seen before [`QUIET`].
async fn probe(conn: &Connection, stream: &str, at: StreamOffset) -> Result<Option<End>, Error> {
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
                found = Some(End {
                    offset,
                    ts: Envelope::parse(&delivery.data).ok().map(|e| e.ts),
                });
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
