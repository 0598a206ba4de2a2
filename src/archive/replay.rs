//! `archive replay`: republishes a window of the archive into a work queue, with publisher
//! confirms and a progress record, so a replay killed at any moment and started again with
//! the same flags neither loses an event nor repeats more than its confirm window.
//!
//! Replayed events keep their eventId, so handlers derive the same idempotency keys as live:
//! re-processing a window after a bug fix is answered from the downstream's store for every
//! effect already done. (A backtest uses keys of its own: see `backtest`.)

use std::path::{Path, PathBuf};

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_PREFETCH, Walk, WalkStats, Window};
use crate::amqp::{
    self, AmqpUrl, ConfirmWindow, Headers, Message, Publisher, republish_properties, set_header,
};
use crate::error::Error;
use crate::topology::{Topology, lanes};

/// The header a replayed event carries: its offset in the archive.
pub const ARCHIVE_OFFSET_HEADER: &str = "x-warren-archive-offset";

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// The events.
    pub window: Window,
    /// The work queue (its name in the topology file, or its full name).
    pub into: String,
    /// Publishes awaiting their confirm at once: a kill repeats at most this many.
    pub confirm_window: usize,
    /// The progress record: the last offset whose publish (and every one before it) is confirmed.
    pub progress: PathBuf,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The queue.
    pub into: String,
    /// The window's flags.
    pub window: String,
    /// Events published and confirmed by this run.
    pub published: u64,
    /// The offset this run resumed after, from the progress record.
    pub resumed_after: Option<u64>,
    /// The last offset confirmed (over every run).
    pub confirmed_through: Option<u64>,
    /// What the walk saw.
    pub walk: WalkStats,
    /// Set when the run stopped early (a signal, a broker error): run it again to go on.
    pub interrupted: Option<String>,
}

/// The progress record, written (write, rename) after each batch of confirms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Progress {
    stream: String,
    into: String,
    window: String,
    confirmed_through: Option<u64>,
    published: u64,
    done: bool,
}

impl Progress {
    fn load(path: &Path) -> Result<Option<Progress>, Error> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Usage(format!(
                    "--progress {}: not a replay progress record ({e})",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Write to a temporary file, then rename: a kill leaves the old record or the new one.
    fn save(&self, path: &Path, sync: bool) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            if sync {
                f.sync_all().map_err(io)?;
            }
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Where an event for `into` is published: the default exchange with the queue's name, or a
/// laned queue's lanes exchange with the lane header its key picks.
struct Target {
    exchange: String,
    routing_key: String,
    lane_header: Option<String>,
}

/// Replays the window into the queue. A progress record from an earlier run of the same
/// replay is resumed; one from another replay is a usage error naming `--progress`.
pub async fn replay(
    url: &AmqpUrl,
    topology: &Topology,
    settings: &ReplaySettings,
    shutdown: &CancellationToken,
) -> Result<ReplayReport, Error> {
    let archive = super::spec(topology)?;
    let queue = topology.queue(&settings.into)?.clone();
    let target = match &queue.lanes {
        Some(_) => Target {
            exchange: lanes::lanes_exchange(&queue.name),
            routing_key: String::new(),
            lane_header: Some(lanes::lane_header(&queue.name)),
        },
        None => Target {
            exchange: String::new(),
            routing_key: queue.name.clone(),
            lane_header: None,
        },
    };
    let described = settings.window.describe();
    let mut progress = Progress {
        stream: archive.name.clone(),
        into: queue.name.clone(),
        window: described.clone(),
        confirmed_through: None,
        published: 0,
        done: false,
    };
    if let Some(saved) = Progress::load(&settings.progress)? {
        let same = saved.stream == progress.stream
            && saved.into == progress.into
            && saved.window == progress.window;
        if !same && !saved.done {
            return Err(Error::Usage(format!(
                "--progress {}: records another replay (into {}, {}); give another file, or \
                 delete it to start this one",
                settings.progress.display(),
                saved.into,
                saved.window
            )));
        }
        if same {
            progress = saved;
        }
    }
    let resumed_after = progress.confirmed_through;
    let mut report = ReplayReport {
        into: queue.name.clone(),
        window: described,
        published: 0,
        resumed_after,
        confirmed_through: progress.confirmed_through,
        walk: WalkStats::default(),
        interrupted: None,
    };
    if progress.done {
        tracing::info!(progress = %settings.progress.display(), "This replay is already complete; nothing to do.");
        return Ok(report);
    }
    let conn = amqp::connect(url, "archive", "replay").await?;
    let result = async {
        let probe = match queue.lanes {
            Some(_) => lanes::lane_queue(&queue.name, 0),
            None => queue.name.clone(),
        };
        if amqp::inspect_queue(&conn, &probe).await?.is_none() {
            return Err(Error::Usage(format!(
                "--into {}: queue '{}' not found on the broker: run `warren topology apply` first",
                settings.into, queue.name
            )));
        }
        let publisher = Publisher::open(&conn).await?;
        let mut walk = Walk::open(
            url,
            topology,
            settings.window.clone(),
            resumed_after,
            DEFAULT_PREFETCH,
        )
        .await?;
        let run = Run {
            publisher: &publisher,
            target: &target,
            topology,
            settings,
        };
        let outcome = run
            .go(&mut walk, &mut progress, &mut report, shutdown)
            .await;
        report.walk = walk.close().await;
        outcome
    }
    .await;
    amqp::close(&conn).await;
    if let Err(e) = result {
        // Nothing confirmed and nothing read: the replay never started.
        if report.published == 0 && report.walk.scanned == 0 {
            return Err(e);
        }
        report.interrupted = Some(e.to_string());
    }
    report.confirmed_through = progress.confirmed_through;
    Ok(report)
}

struct Run<'a> {
    publisher: &'a Publisher,
    target: &'a Target,
    topology: &'a Topology,
    settings: &'a ReplaySettings,
}

impl Run<'_> {
    async fn go(
        &self,
        walk: &mut Walk,
        progress: &mut Progress,
        report: &mut ReplayReport,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let path = &self.settings.progress;
        let mut window: ConfirmWindow<u64> = ConfirmWindow::new(self.settings.confirm_window);
        loop {
            if window.is_full() {
                self.settle(&mut window, progress, report, path).await?;
                continue;
            }
            let Some(event) = walk.next(shutdown).await? else {
                break;
            };
            let mut headers = event
                .properties
                .headers()
                .as_ref()
                .map(|h| h.inner().clone())
                .unwrap_or_default();
            set_header(
                &mut headers,
                ARCHIVE_OFFSET_HEADER,
                event.offset.to_string(),
            );
            if let Some(header) = &self.target.lane_header {
                // The lane the key picks now, under this topology.
                headers.remove(header.as_str());
                if let Some((_, lane)) = self
                    .topology
                    .lane_headers(&event.event)
                    .into_iter()
                    .find(|(h, _)| h == header)
                {
                    set_header(&mut headers, header, lane);
                }
            }
            let confirm = self
                .publisher
                .send(Message {
                    exchange: &self.target.exchange,
                    routing_key: &self.target.routing_key,
                    body: &event.body,
                    properties: republish_properties(&event.properties)
                        .with_headers(Headers::from(headers)),
                    mandatory: true,
                })
                .await?;
            window.push(event.offset, confirm);
        }
        while !window.is_empty() {
            self.settle(&mut window, progress, report, path).await?;
        }
        if shutdown.is_cancelled() {
            return Err(Error::Other("interrupted by a signal".into()));
        }
        progress.done = true;
        progress.save(path, true)
    }

    /// Takes the oldest confirm and every one already resolved, then saves the progress once.
    async fn settle(
        &self,
        window: &mut ConfirmWindow<u64>,
        progress: &mut Progress,
        report: &mut ReplayReport,
        path: &Path,
    ) -> Result<(), Error> {
        let mut take = |offset: u64, result: Result<(), amqp::AmqpError>| {
            result?;
            progress.confirmed_through = Some(offset);
            progress.published += 1;
            report.published += 1;
            Ok::<_, Error>(())
        };
        if let Some((offset, result)) = window.next().await {
            take(offset, result)?;
        }
        while let Some(Some((offset, result))) = window.next().now_or_never() {
            take(offset, result)?;
        }
        progress.save(path, false)
    }
}
