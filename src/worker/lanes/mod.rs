//! Laned queues: the workers of a fleet share a queue's N lanes, each lane owned by one worker
//! at a time, so the queue scales out while every key keeps its order.
//!
//! Each worker heartbeats on the queue's roster exchange ([`roster`]); all of them agree on the
//! sorted list of live workers and each owns the lanes `assign` gives it (⌊N/W⌋ or ⌈N/W⌉). A
//! worker consumes only the lanes it owns ([`lane`]); the lanes are single-active-consumer
//! queues, so while two workers disagree for a moment the broker still lets only one of them
//! have a lane. A lane changes hands only between messages: the old owner finishes the message
//! in hand and closes the lane's channel, and the broker gives what it had not started, in
//! order, to the new owner.

mod lane;
pub mod roster;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::lane::{LaneEnd, LaneShared};
use self::roster::{EXPIRY, HEARTBEAT, LISTEN_FIRST, Notice, Roster};
use super::Worker;
use super::handler::Handler;
use super::metrics::QueueLabels;
use crate::amqp::{self, BatchPublisher, Connection};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::topology::QueueSpec;
use crate::topology::lanes::{assign, roster_exchange};

/// Runs the lanes of the laned queue `spec` until shutdown, reconnecting as needed.
pub(super) async fn run<H: Handler>(w: &Worker<H>, spec: Arc<QueueSpec>) -> Result<(), Error> {
    let me = format!("{}:{}", amqp::identity(), ulid::Ulid::generate());
    let mut backoff = Backoff::reconnect();
    // Kept across reconnects: a worker back after a dropped connection knows the fleet
    // already and takes its lanes at once, instead of listening first.
    let mut roster = Roster::new(me.clone());
    let mut listen_first = true;
    loop {
        let result = session(w, &spec, &mut roster, listen_first, &mut backoff).await;
        listen_first = false;
        match result {
            Ok(()) => return Ok(()),
            Err(error) if w.shutdown.is_cancelled() => {
                tracing::warn!(queue = %spec.name, %error, "Broker error during shutdown.");
                return Ok(());
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(queue = %spec.name, %error, retry_in_ms = delay.as_millis() as u64, "Lane session ended; reconnecting.");
                tokio::select! {
                    _ = w.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A lane this worker runs, with the token that releases it.
struct Owned {
    release: CancellationToken,
}

/// One connection's worth of lane work: the roster, and a task per owned lane.
async fn session<H: Handler>(
    w: &Worker<H>,
    spec: &Arc<QueueSpec>,
    roster: &mut Roster,
    listen_first: bool,
    backoff: &mut Backoff,
) -> Result<(), Error> {
    let lanes = spec
        .lanes
        .as_ref()
        .map(|l| l.count)
        .ok_or_else(|| Error::Usage(format!("queue '{}' has no lanes", spec.name)))?;
    let conn = amqp::connect(&w.settings.url, "worker", "lanes").await?;
    let publish_conn = amqp::connect(&w.settings.url, "worker", "lanes-publish").await?;
    // A session that stays up long enough resets the backoff: the next loss reconnects fast.
    backoff.connected();
    let result = run_session(w, spec, roster, listen_first, lanes, &conn, &publish_conn).await;
    let close = async move {
        amqp::close(&conn).await;
        amqp::close(&publish_conn).await;
    };
    if result.is_ok() {
        close.await;
    } else {
        // A connection is known dead; the other may be half-open: never wait on it.
        tokio::spawn(close);
    }
    result
}

async fn run_session<H: Handler>(
    w: &Worker<H>,
    spec: &Arc<QueueSpec>,
    roster: &mut Roster,
    listen_first: bool,
    lanes: u16,
    conn: &Connection,
    publish_conn: &Connection,
) -> Result<(), Error> {
    let exchange = roster_exchange(&spec.name);
    let roster_channel = amqp::channel(conn).await?;
    let private = amqp::private_queue(&roster_channel, &exchange).await?;
    let mut notices = amqp::consume_notices(&roster_channel, &private).await?;
    let shared = Arc::new(LaneShared {
        handler: w.handler.clone(),
        publisher: BatchPublisher::open(publish_conn, 1).await?,
        dead_letter_exchange: w.dead_letter_exchange.clone(),
        handler_timeout: w.settings.handler_timeout,
        live: w.live.clone(),
        hard_stop: CancellationToken::new(),
        permits: w.permits.clone(),
    });
    let me = roster.me().to_string();
    let me = me.as_str();
    let mut owned: BTreeMap<u16, Owned> = BTreeMap::new();
    let mut tasks: JoinSet<(u16, Result<LaneEnd, Error>)> = JoinSet::new();
    let mut last_members: Vec<String> = Vec::new();
    let mut generation = 0u64;
    let started = Instant::now();
    let mut tick = tokio::time::interval(HEARTBEAT);
    w.metrics.ready.set(true);
    tracing::info!(queue = %spec.name, lanes, worker = me, "Lane worker joining.");
    let outcome: Result<(), Error> = 'session: loop {
        tokio::select! {
            biased;
            _ = w.shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {
                if !conn.status().connected() || !publish_conn.status().connected() {
                    break Err(Error::Other("the lanes' connection was lost".into()));
                }
                if let Err(error) = amqp::notify(&roster_channel, &exchange, &Notice::Alive(me.to_string()).encode()).await {
                    break Err(error.into());
                }
            }
            notice = notices.next() => match notice {
                Some(Ok(d)) => {
                    if let Some(n) = Notice::decode(&d.data) {
                        roster.hear(n, Instant::now());
                    }
                }
                Some(Err(error)) => break Err(Error::Other(format!("the roster consumer failed: {error}"))),
                None => break Err(Error::Other("the roster consumer was cancelled".into())),
            },
            Some(ended) = tasks.join_next() => {
                match ended {
                    Ok((lane, Ok(LaneEnd::Released))) => {
                        tracing::debug!(queue = %spec.name, lane, "Lane task ended.");
                    }
                    Ok((lane, Ok(LaneEnd::Lost(why)))) => {
                        tracing::warn!(queue = %spec.name, lane, reason = %why, "Lane consumer ended; taking it again.");
                        owned.remove(&lane);
                        owned_gauge(w, spec, lane, false);
                    }
                    Ok((lane, Err(error))) => {
                        tracing::warn!(queue = %spec.name, lane, %error, "Lane failed; taking it again.");
                        owned.remove(&lane);
                        owned_gauge(w, spec, lane, false);
                    }
                    Err(error) => break Err(Error::Other(format!("a lane task failed: {error}"))),
                }
                continue;
            }
        }
        if listen_first && started.elapsed() < LISTEN_FIRST {
            continue;
        }
        let (members, place) = roster.members(Instant::now());
        let mine: Vec<u16> = assign(lanes, &members, place);
        if members != last_members {
            // Joining: the lanes were the others' before this worker came.
            let before: Vec<String> = if last_members.is_empty() {
                members
                    .iter()
                    .filter(|m| m.as_str() != me)
                    .cloned()
                    .collect()
            } else {
                last_members
            };
            log_handovers(spec, lanes, &before, &members, me);
            last_members = members;
        }
        // Release what is no longer ours, then take what is.
        let releasing: Vec<u16> = owned
            .keys()
            .copied()
            .filter(|l| !mine.contains(l))
            .collect();
        for lane in releasing {
            if let Some(o) = owned.remove(&lane) {
                o.release.cancel();
                set_owned(w, spec, lane, false);
            }
        }
        for lane in mine {
            if owned.contains_key(&lane) {
                continue;
            }
            generation += 1;
            let release = w.shutdown.child_token();
            let lane_spec = Arc::new(spec.lane_spec(lane));
            let metrics = w.metrics.for_queue(&lane_spec.name);
            let channel = match amqp::channel(conn).await {
                Ok(c) => c,
                Err(error) => break 'session Err(error.into()),
            };
            tasks.spawn({
                let (shared, release) = (shared.clone(), release.clone());
                async move {
                    (
                        lane,
                        lane::run(shared, channel, lane_spec, metrics, release, generation).await,
                    )
                }
            });
            owned.insert(lane, Owned { release });
            set_owned(w, spec, lane, true);
        }
    };
    w.metrics.ready.set(false);
    // Leaving: say so, let each lane finish its message in hand, then close.
    let _ = amqp::notify(
        &roster_channel,
        &exchange,
        &Notice::Leaving(me.to_string()).encode(),
    )
    .await;
    for (lane, o) in std::mem::take(&mut owned) {
        o.release.cancel();
        set_owned(w, spec, lane, false);
    }
    let drained = tokio::time::timeout(w.settings.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(queue = %spec.name, "Drain deadline passed; abandoning the handlers still running.");
        shared.hard_stop.cancel();
        while tasks.join_next().await.is_some() {}
    }
    if outcome.is_ok() {
        amqp::close_channel(&roster_channel).await;
    } else {
        tokio::spawn(async move { amqp::close_channel(&roster_channel).await });
    }
    outcome
}

/// A lane taken or given up: the ownership gauge, and one handover counted.
fn set_owned<H>(w: &Worker<H>, spec: &QueueSpec, lane: u16, owned: bool) {
    owned_gauge(w, spec, lane, owned);
    w.metrics
        .lane_handovers
        .get_or_create(&QueueLabels {
            queue: crate::topology::lanes::lane_queue(&spec.name, lane),
        })
        .inc();
}

fn owned_gauge<H>(w: &Worker<H>, spec: &QueueSpec, lane: u16, owned: bool) {
    w.metrics
        .lanes_owned
        .get_or_create(&QueueLabels {
            queue: crate::topology::lanes::lane_queue(&spec.name, lane),
        })
        .set(i64::from(owned));
}

/// Logs, for every lane this worker gains or loses, its old and new owner.
fn log_handovers(spec: &QueueSpec, lanes: u16, before: &[String], after: &[String], me: &str) {
    let owners = |members: &[String]| -> Vec<Option<String>> {
        let mut owner = vec![None; usize::from(lanes)];
        for (i, m) in members.iter().enumerate() {
            for l in assign(lanes, members, i) {
                owner[usize::from(l)] = Some(m.clone());
            }
        }
        owner
    };
    tracing::info!(queue = %spec.name, workers = after.len(), "Lane workers changed.");
    let (old, new) = (owners(before), owners(after));
    for lane in 0..lanes {
        let (old, new) = (&old[usize::from(lane)], &new[usize::from(lane)]);
        if old == new || (old.as_deref() != Some(me) && new.as_deref() != Some(me)) {
            continue;
        }
        tracing::info!(
            queue = %spec.name,
            lane,
            from = old.as_deref().unwrap_or("-"),
            to = new.as_deref().unwrap_or("-"),
            "Lane handover."
        );
    }
}

/// How long a fleet takes to agree on lanes after a worker joins or leaves, at most.
pub const CONVERGENCE: Duration = Duration::from_millis(
    (EXPIRY.as_millis() + HEARTBEAT.as_millis() + LISTEN_FIRST.as_millis()) as u64,
);
