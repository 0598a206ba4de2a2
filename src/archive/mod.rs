//! The event archive: a RabbitMQ stream bound to the events exchange (`[archive]` in the
//! topology), read over AMQP 0-9-1. `info` probes its ends, [`read`] walks a window of it in
//! order and each event once, `replay` republishes a window into a work queue, `backtest` runs
//! the trader over one. The reader keeps its own offsets ([`StreamReader`]).

mod backtest;
mod probe;
mod reader;
mod replay;
mod window;

use std::collections::HashSet;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use backtest::{BacktestReport, BacktestSettings, OpenPosition, backtest};
pub use probe::{ArchiveInfo, End, SizeFigures, event_time, info};
pub use reader::{Record, StreamReader};
pub use replay::{ARCHIVE_OFFSET_HEADER, ReplayReport, ReplaySettings, replay};
pub use window::{Bound, Window};

use crate::amqp::{self, AmqpUrl, BasicProperties, Connection, StreamOffset};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::topology::{ArchiveSpec, Topology};

/// Credit for archive readers: how many messages the broker sends ahead of the acks.
pub const DEFAULT_PREFETCH: u16 = 500;

/// A walk whose first message does not come within this long has nothing to read.
const IDLE_START: std::time::Duration = std::time::Duration::from_secs(10);

/// The topology's archive, or a usage error saying the file has none.
pub fn spec(topology: &Topology) -> Result<&ArchiveSpec, Error> {
    topology.archive.as_ref().ok_or_else(|| {
        Error::Usage(format!(
            "{}: no [archive] section: add one (docs/archive.md), then `warren topology apply`",
            topology.source.display()
        ))
    })
}

/// Checks that the archive is on the broker as the stream the topology declares; never
/// creates it. A queue of that name that is not the same stream is an error: consuming a
/// classic queue with acks would empty it.
pub async fn check_declared(conn: &Connection, topology: &Topology) -> Result<(), Error> {
    let a = spec(topology)?;
    if amqp::inspect_queue(conn, &a.name).await?.is_none() {
        return Err(Error::Usage(format!(
            "archive '{}' not found on the broker: run `warren topology apply -f {}{}` first",
            a.name,
            topology.source.display(),
            if topology.prefix.is_empty() {
                String::new()
            } else {
                format!(" --prefix {}", topology.prefix)
            }
        )));
    }
    let channel = amqp::channel(conn).await?;
    let same = amqp::declare_queue(&channel, &a.name, &a.arguments()).await;
    amqp::close_channel(&channel).await;
    same.map_err(|e| {
        Error::Other(format!(
            "archive '{}' exists on the broker with other settings than the topology's stream \
             ({}): fix the file or migrate the queue",
            a.name,
            e.reply_text().unwrap_or_else(|| e.to_string())
        ))
    })
}

/// The archive's part of `warren status`, on the status's connection; `None` without an
/// `[archive]` section. A stream that is missing, or is not the topology's stream, is reported
/// in `problem` and not probed (consuming a classic queue with acks would empty it).
pub async fn status(
    conn: &Connection,
    topology: &Topology,
    size: SizeFigures,
) -> Result<Option<ArchiveInfo>, Error> {
    let Some(a) = &topology.archive else {
        return Ok(None);
    };
    if let Err(e) = check_declared(conn, topology).await {
        let (Error::Usage(why) | Error::Other(why)) = e else {
            return Err(e);
        };
        let mut info = ArchiveInfo::new(a, None, size);
        info.problem = Some(why);
        return Ok(Some(info));
    }
    let ends = probe::ends(conn, &a.name).await?;
    Ok(Some(ArchiveInfo::new(a, ends, size)))
}

/// One archived event, as `read` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedEvent {
    /// Its offset in the stream.
    pub offset: u64,
    /// The envelope.
    pub event: Envelope,
    /// The message's properties and headers, as archived.
    #[serde(skip)]
    pub properties: BasicProperties,
    /// The body, byte for byte.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// What a walk over a window saw besides the events it returned.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalkStats {
    /// Messages read from the stream (in the window's offset range).
    pub scanned: u64,
    /// Events in the window and the filters.
    pub matched: u64,
    /// Second copies of an event already returned (the bridge republishes an overlap).
    pub duplicates: u64,
    /// Messages whose body is not a valid envelope; skipped.
    pub unreadable: u64,
    /// Times the reader lost its connection and subscribed again.
    pub resubscribed: u32,
    /// The first and last offsets returned.
    pub first_offset: Option<u64>,
    /// See `first_offset`.
    pub last_offset: Option<u64>,
}

/// A window being walked: the reader, where to stop, and the ids already returned.
pub struct Walk {
    reader: StreamReader,
    window: Window,
    /// Offsets below this are before the stream's end for sure (the last chunk's first).
    below_end: u64,
    /// The stream's last offset when the walk opened, once the background probe knows it.
    end: Option<u64>,
    last: probe::LastProbe,
    seen: HashSet<String>,
    done: bool,
    /// What the walk saw so far.
    pub stats: WalkStats,
}

impl Walk {
    /// Opens `window` of the archive, or resumes it after offset `resume_after` (a replay's
    /// progress record). The stream's end is taken now: events written after this call are
    /// not part of the walk. An empty stream, or a window past its end, is a usage error
    /// naming the flag. The reader subscribes while the end is still being probed.
    pub async fn open(
        url: &AmqpUrl,
        topology: &Topology,
        window: Window,
        resume_after: Option<u64>,
        prefetch: u16,
    ) -> Result<Self, Error> {
        let a = spec(topology)?;
        let conn = amqp::connect(url, "archive", "probe").await?;
        if let Err(e) = check_declared(&conn, topology).await {
            amqp::close(&conn).await;
            return Err(e);
        }
        let mut last = probe::LastProbe::spawn(conn, a.name.clone());
        let start = match resume_after
            .map(|n| Bound::Offset(n + 1))
            .unwrap_or(window.from)
        {
            Bound::Offset(n) => StreamOffset::At(n),
            Bound::Time(ms) => {
                StreamOffset::Since((ms / 1000).saturating_sub(window::SKEW.as_secs()))
            }
            Bound::First => StreamOffset::First,
        };
        let (reader, lower) = tokio::join!(
            StreamReader::open(url, &a.name, start, prefetch),
            last.lower()
        );
        let reader = reader?.with_idle_start(IDLE_START);
        let checked = async {
            let Some(lower) = lower? else {
                return Err(Error::Usage(format!(
                    "--from/--to: archive '{}' holds no events yet",
                    a.name
                )));
            };
            // The checks below pass on the lower bound in the usual case; only a window at
            // the last chunk waits for the exact end.
            let past = |last: End| match window.from {
                _ if resume_after.is_some() => false,
                Bound::Time(ms) => last
                    .ts
                    .is_some_and(|ts| ms > ts.saturating_add(window::SKEW.as_millis() as u64)),
                Bound::Offset(n) => n > last.offset,
                Bound::First => false,
            };
            let at_end = |last: End| resume_after.is_some_and(|r| r >= last.offset);
            let mut end = None;
            if past(lower) || at_end(lower) {
                let exact = last.exact().await?.unwrap_or(lower);
                end = Some(exact.offset);
                if past(exact) {
                    return Err(match window.from {
                        Bound::Offset(n) => Error::Usage(format!(
                            "--from {n}: past the archive's last offset {}",
                            exact.offset
                        )),
                        _ => Error::Usage(format!(
                            "{}: after the archive's last event",
                            window.describe()
                        )),
                    });
                }
            }
            Ok((lower.offset, end))
        }
        .await;
        let (below_end, end) = match checked {
            Ok(c) => c,
            Err(e) => {
                reader.close().await;
                return Err(e);
            }
        };
        Ok(Self {
            reader,
            window,
            below_end,
            end,
            last,
            seen: HashSet::new(),
            done: match (resume_after, end) {
                (Some(r), Some(end)) => r >= end,
                _ => false,
            },
            stats: WalkStats::default(),
        })
    }

    /// The next event of the window, once per eventId, in stream order; `None` at its end or
    /// when `shutdown` is cancelled (check the token to tell which).
    pub async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<ArchivedEvent>, Error> {
        while !self.done {
            let Some(record) = self.reader.next(shutdown).await? else {
                return Ok(None);
            };
            self.stats.resubscribed = self.reader.resubscribed();
            if self.end.is_none() && record.offset >= self.below_end {
                let exact = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    exact = self.last.exact() => exact?,
                };
                self.end = Some(exact.map_or(self.below_end, |e| e.offset));
            }
            // Below `below_end` the end is not needed: it is further on.
            let end = self.end.unwrap_or(u64::MAX);
            if record.offset >= end {
                self.done = true;
            }
            if record.offset > end {
                break;
            }
            self.stats.scanned += 1;
            let Ok(event) = Envelope::parse(&record.body) else {
                self.stats.unreadable += 1;
                continue;
            };
            match self.window.place(record.offset, &event) {
                window::Place::Before => continue,
                window::Place::After => {
                    self.done = true;
                    break;
                }
                window::Place::Beyond => continue,
                window::Place::In => {}
            }
            if !self.window.matches(&event) {
                continue;
            }
            if !self.seen.insert(event.event_id.clone()) {
                self.stats.duplicates += 1;
                continue;
            }
            self.stats.matched += 1;
            self.stats.first_offset.get_or_insert(record.offset);
            self.stats.last_offset = Some(record.offset);
            return Ok(Some(ArchivedEvent {
                offset: record.offset,
                event,
                properties: record.properties,
                body: record.body,
            }));
        }
        Ok(None)
    }

    /// Closes the reader.
    pub async fn close(self) -> WalkStats {
        let mut stats = self.stats;
        stats.resubscribed = self.reader.resubscribed();
        self.reader.close().await;
        stats
    }
}

/// Reads `window` and hands each event to `each`, in order, once per eventId. An empty result
/// is a usage error naming the window's flags.
pub async fn read(
    url: &AmqpUrl,
    topology: &Topology,
    window: Window,
    shutdown: &CancellationToken,
    mut each: impl FnMut(&ArchivedEvent) -> Result<(), Error>,
) -> Result<WalkStats, Error> {
    let described = window.describe();
    let mut walk = Walk::open(url, topology, window, None, DEFAULT_PREFETCH).await?;
    let result = async {
        while let Some(e) = walk.next(shutdown).await? {
            each(&e)?;
        }
        Ok::<_, Error>(())
    }
    .await;
    let stats = walk.close().await;
    result?;
    if stats.matched == 0 && !shutdown.is_cancelled() {
        return Err(Error::Usage(format!(
            "{described}: no events in this window"
        )));
    }
    Ok(stats)
}
