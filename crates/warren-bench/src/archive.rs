//! `--scenario archive-read` and `archive-replay`: the event archive (a stream) read whole by
//! `warren::archive::read` against a raw lapin stream consumer, and replayed into a queue by
//! `warren::archive::replay` against a raw lapin consumer + republisher with the same confirm
//! window. Both sides parse every body as an envelope with the same credit (prefetch 500) and
//! ack a quarter of the credit at a time (one `multiple` ack). warren's
//! figures include what the command does first: it checks the stream and probes its end (in
//! the background, while it reads).
//!
//! One stream holds the backlog for every round; sides alternate which goes first; the ratio
//! is the median of per-round ratios.

use std::time::Instant;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, QueuePurgeOptions};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::stats::median_of;
use warren::amqp::{self, AmqpUrl, ConfirmWindow, Message, Publisher, StreamOffset};
use warren::archive::{self, Bound, ReplaySettings, Window};
use warren::envelope::Envelope;
use warren::error::{Error, Result};
use warren::topology::Topology;

/// Read or replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveScenario {
    /// Read the whole stream.
    ArchiveRead,
    /// Replay the whole stream into a queue.
    ArchiveReplay,
}

/// One round's rates.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ArchiveRound {
    /// warren, events per second.
    pub warren: f64,
    /// The raw loop, events per second.
    pub raw: f64,
}

/// The scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    /// Which.
    pub scenario: ArchiveScenario,
    /// Events in the stream.
    pub events: usize,
    /// Replay's confirm window (both sides).
    pub confirm_window: usize,
    /// Every round.
    pub rounds: Vec<ArchiveRound>,
    /// Median of warren's rates.
    pub warren_median: f64,
    /// Median of the raw loop's rates.
    pub raw_median: f64,
    /// Median of the per-round ratios warren ÷ raw.
    pub ratio_median: f64,
}

const PREFETCH: u16 = archive::DEFAULT_PREFETCH;

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 1
retry_delays = []
expires = "10m"

[[queues]]
name = "into"
bind = ["bench.none"]

[archive]
name = "archive"
bind = ["market.*", "wallet.*", "escrow.*", "job.*"]
max_bytes = 10_000_000_000
segment_bytes = 50_000_000
"#;

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("bench archive: {e}"))
}

/// Runs the rounds of `scenario` over a fresh stream of `events` catalog events.
pub async fn run(
    url: &AmqpUrl,
    scenario: ArchiveScenario,
    events: usize,
    rounds: usize,
    confirm_window: usize,
) -> Result<ArchiveReport> {
    let id = ulid::Ulid::generate().to_string().to_lowercase();
    let dir = std::env::temp_dir().join(format!("warren-bench-archive-{id}"));
    std::fs::create_dir_all(&dir).map_err(other)?;
    let path = dir.join("topology.toml");
    std::fs::write(&path, TOPOLOGY).map_err(other)?;
    let topology = Topology::load(&path, &format!("bench-archive-{id}."))?;
    let conn = amqp::connect(url, "bench", "archive").await?;
    let plan = topology.plan();
    warren::topology::apply(&conn, &plan).await?;
    let result = async {
        publish(&conn, &topology, events).await?;
        let mut out = Vec::new();
        for round in 0..rounds.max(1) {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            let (mut warren, mut raw) = (0.0, 0.0);
            for is_warren in order {
                let rate = match scenario {
                    ArchiveScenario::ArchiveRead => {
                        read_side(url, &topology, events, is_warren).await?
                    }
                    ArchiveScenario::ArchiveReplay => {
                        let progress = dir.join(format!("progress-{round}.json"));
                        let rate = replay_side(
                            url,
                            &conn,
                            &topology,
                            events,
                            confirm_window,
                            &progress,
                            is_warren,
                        )
                        .await?;
                        let _ = std::fs::remove_file(&progress);
                        rate
                    }
                };
                if is_warren {
                    warren = rate;
                } else {
                    raw = rate;
                }
            }
            eprintln!(
                "{scenario:?} round {}: warren {warren:.0}/s, raw {raw:.0}/s, ratio {:.3}",
                round + 1,
                warren / raw
            );
            out.push(ArchiveRound { warren, raw });
        }
        Ok::<_, Error>(out)
    }
    .await;
    let _ = warren::topology::delete(&conn, &plan).await;
    amqp::close(&conn).await;
    let _ = std::fs::remove_dir_all(&dir);
    let rounds = result?;
    Ok(ArchiveReport {
        scenario,
        events,
        confirm_window,
        warren_median: median_of(rounds.iter().map(|r| r.warren)),
        raw_median: median_of(rounds.iter().map(|r| r.raw)),
        ratio_median: median_of(rounds.iter().map(|r| r.warren / r.raw)),
        rounds,
    })
}

/// `events` catalog events onto the events exchange, routed to the archive.
async fn publish(conn: &lapin::Connection, topology: &Topology, events: usize) -> Result<()> {
    let mut c = warren_sim::catalog::Catalog::new(7, 1_760_000_000_000, 1000, "pf_agent_bench");
    let publisher = Publisher::open(conn).await?;
    let mut window: ConfirmWindow<()> = ConfirmWindow::new(512);
    for _ in 0..events {
        let e = c.next_event();
        let ty = Envelope::parse(&e.frame).map_err(other)?.event_type;
        let confirm = publisher
            .send(Message {
                exchange: &topology.events_exchange,
                routing_key: &ty,
                body: &e.frame,
                properties: lapin::BasicProperties::default()
                    .with_message_id(e.id.to_string().into())
                    .with_delivery_mode(2),
                mandatory: true,
            })
            .await?;
        if window.is_full()
            && let Some((_, r)) = window.next().await
        {
            r?;
        }
        window.push((), confirm);
    }
    while let Some((_, r)) = window.next().await {
        r?;
    }
    Ok(())
}

fn window(topology: &Topology) -> Result<Window> {
    Window::new(Bound::First, None, vec![], vec![], archive::spec(topology)?)
}

async fn read_side(
    url: &AmqpUrl,
    topology: &Topology,
    events: usize,
    is_warren: bool,
) -> Result<f64> {
    let stream = archive::spec(topology)?.name.clone();
    let start = Instant::now();
    let n = if is_warren {
        let mut n = 0usize;
        archive::read(
            url,
            topology,
            window(topology)?,
            &CancellationToken::new(),
            |_| {
                n += 1;
                Ok(())
            },
        )
        .await?;
        n
    } else {
        raw_stream(url, &stream, events, |_, _| async { Ok(()) }).await?
    };
    if n != events {
        return Err(other(format!("read {n} events of {events}")));
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

async fn replay_side(
    url: &AmqpUrl,
    conn: &lapin::Connection,
    topology: &Topology,
    events: usize,
    confirm_window: usize,
    progress: &std::path::Path,
    is_warren: bool,
) -> Result<f64> {
    let queue = topology.queue("into")?.name.clone();
    let stream = archive::spec(topology)?.name.clone();
    let start = Instant::now();
    if is_warren {
        let settings = ReplaySettings {
            window: window(topology)?,
            into: "into".into(),
            confirm_window,
            progress: progress.to_path_buf(),
        };
        let r = archive::replay(url, topology, &settings, &CancellationToken::new()).await?;
        if r.published != events as u64 {
            return Err(other(format!("replayed {} of {events}", r.published)));
        }
    } else {
        let pub_conn = amqp::connect(url, "bench", "raw-replay").await?;
        let channel = pub_conn.create_channel().await.map_err(other)?;
        channel
            .confirm_select(Default::default())
            .await
            .map_err(other)?;
        let window = std::cell::RefCell::new(std::collections::VecDeque::new());
        raw_stream(
            url,
            &stream,
            events,
            |body: Vec<u8>, props: lapin::BasicProperties| {
                let channel = &channel;
                let queue = &queue;
                let window = &window;
                async move {
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                immediate: false,
                            },
                            &body,
                            props.with_delivery_mode(2),
                        )
                        .await
                        .map_err(other)?;
                    let full = {
                        let mut w = window.borrow_mut();
                        w.push_back(confirm);
                        w.len() >= confirm_window
                    };
                    if full {
                        let head = window.borrow_mut().pop_front();
                        if let Some(c) = head {
                            let c = c.await.map_err(other)?;
                            if !c.is_ack() {
                                return Err(other("nacked"));
                            }
                        }
                    }
                    Ok(())
                }
            },
        )
        .await?;
        let rest: Vec<_> = window.borrow_mut().drain(..).collect();
        for c in rest {
            if !c.await.map_err(other)?.is_ack() {
                return Err(other("nacked"));
            }
        }
        amqp::close(&pub_conn).await;
    }
    let rate = events as f64 / start.elapsed().as_secs_f64();
    let ch = conn.create_channel().await.map_err(other)?;
    let purged = ch
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .map_err(other)?;
    let _ = ch.close(200, "ok".into()).await;
    if purged as usize != events {
        return Err(other(format!(
            "{purged} messages in the queue, {events} expected"
        )));
    }
    Ok(rate)
}

/// The raw loop: consume the stream from `first` with the same credit, ack a quarter of it at
/// a time, parse each body as an envelope, hand it on, stop after `events`.
async fn raw_stream<F, Fut>(
    url: &AmqpUrl,
    stream: &str,
    events: usize,
    mut each: F,
) -> Result<usize>
where
    F: FnMut(Vec<u8>, lapin::BasicProperties) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let conn = amqp::connect(url, "bench", "raw-read").await?;
    let channel = conn.create_channel().await.map_err(other)?;
    let mut consumer =
        amqp::consume_stream(&channel, stream, StreamOffset::First, PREFETCH, "raw").await?;
    let mut n = 0;
    while n < events {
        let Some(d) = consumer.next().await else {
            return Err(other("the raw consumer ended"));
        };
        let d = d.map_err(other)?;
        n += 1;
        // A stream's ack only returns credit: one `multiple` ack per quarter of it, as warren.
        if n % usize::from(PREFETCH / 4) == 0 || n == events {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(other)?;
        }
        Envelope::parse(&d.data).map_err(other)?;
        each(d.data, d.properties).await?;
    }
    amqp::close(&conn).await;
    Ok(n)
}
