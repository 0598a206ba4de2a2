//! Publishing for many concurrent callers, each waiting for its own confirm: the worker's
//! retry and dead-letter republishes. Publishes are pipelined on a few confirm-mode channels
//! ("lanes"), and a caller is answered once its own confirm and those of the publishes sent
//! before it on its lane are in, without waiting for any sent after it. Which callers can be
//! answered, given how lapin hands out returned messages, is [`flight`]'s part.
//!
//! Requests that arrive while a lane is writing go out together as the next group, so frames
//! are written in runs under load.
//!
//! Deadlines. A caller keeps no timer: the lane answers every request by its deadline. It wakes
//! for the oldest publish in flight, whose overdue confirm closes the channel and fails all it
//! holds, and for requests held back past theirs. A publish sent after the oldest can wait
//! past its own deadline until the oldest's, as it waits for the oldest's answer anyway. One
//! timer per lane, not one per publish: a worker retrying at prefetch 1000 has as many
//! republishes waiting.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foldhash::HashSet;
use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::publish::{CONFIRM_TIMEOUT, confirm_channel, target};
use super::{AmqpError, Message};

mod flight;
mod request;

use flight::Flight;
use request::{Queued, Request, identity, overdue};

/// The most requests a lane takes off its queue for one group of writes. A group's publishes
/// wait in lapin's frame queue, as frames, until they are written; 64 rather than 256 takes
/// about 1 MiB off the peak of a worker republishing at prefetch 1000, at no cost in CPU
/// that 3 pairs of runs could see.
const MAX_GROUP: usize = 64;

/// Confirm-mode channels, each fed by its own task. Cheap to clone; clones share the tasks,
/// which end once every clone is dropped and their last confirms are in.
#[derive(Clone)]
pub struct BatchPublisher {
    lanes: Arc<[Lane]>,
    confirm_timeout: Duration,
    stats: Arc<BatchStats>,
}

/// How many groups of writes went out, and how many publishes they held.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Groups written.
    pub batches: AtomicU64,
    /// Publishes sent in them.
    pub messages: AtomicU64,
}

struct Lane {
    requests: mpsc::UnboundedSender<Queued>,
    channel: Channel,
}

impl BatchPublisher {
    /// Opens `channels` (at least one) confirm-mode channels on `conn`, each with the task
    /// that publishes onto it.
    pub async fn open(conn: &Connection, channels: usize) -> Result<Self, AmqpError> {
        let stats = Arc::new(BatchStats::default());
        let mut lanes = Vec::with_capacity(channels.max(1));
        for _ in 0..channels.max(1) {
            let channel = confirm_channel(conn).await?;
            let (requests, queue) = mpsc::unbounded_channel();
            tokio::spawn(run_lane(channel.clone(), queue, stats.clone()));
            lanes.push(Lane { requests, channel });
        }
        Ok(Self {
            lanes: lanes.into(),
            confirm_timeout: CONFIRM_TIMEOUT,
            stats,
        })
    }

    /// Shortens or lengthens how long a caller waits for its confirm.
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Publishes and waits for this message's own confirm. Only a plain ack of a routed
    /// message is `Ok`. After the deadline the caller gets [`AmqpError::Timeout`], and a
    /// message not yet sent by then is never sent.
    ///
    /// The message goes to its lane before this returns; the future only waits for the
    /// answer, and holds nothing but its receiver (a worker has up to prefetch of them
    /// waiting). The lane answers every request by the deadline of the oldest publish it
    /// holds (see [`run_lane`]), so the caller keeps no timer of its own.
    pub fn publish(
        &self,
        msg: Message<'_>,
    ) -> impl Future<Output = Result<(), AmqpError>> + Send + use<> {
        let answer = self.enqueue(msg);
        async move {
            answer?.await.unwrap_or_else(|_| {
                Err(AmqpError::Closed {
                    op: "publish (the publishing task ended without an answer)".into(),
                })
            })
        }
    }

    /// Hands `msg` to its lane; the receiver gets the answer.
    fn enqueue(
        &self,
        msg: Message<'_>,
    ) -> Result<oneshot::Receiver<Result<(), AmqpError>>, AmqpError> {
        let key = identity(
            msg.exchange,
            msg.routing_key,
            msg.properties.message_id().as_ref().map(|id| id.as_str()),
            msg.body,
        );
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key,
            exchange: msg.exchange.to_string(),
            routing_key: msg.routing_key.to_string(),
            body: msg.body.to_vec(),
            message_id: msg.properties.message_id().clone(),
            mandatory: msg.mandatory,
            deadline: Instant::now() + self.confirm_timeout,
            timeout: self.confirm_timeout,
            reply,
        };
        // Look-alikes share a lane, which keeps them apart (see `Flight::admits`).
        let lane = &self.lanes[(key % self.lanes.len() as u64) as usize];
        lane.requests
            .send((request, msg.properties))
            .map_err(|_| AmqpError::Closed {
                op: format!("publish to {}", target(msg.exchange, msg.routing_key)),
            })?;
        Ok(answer)
    }

    /// True while every channel can publish. A channel that owes confirms past the deadline
    /// is closed, so this turns false: the owner should replace the publisher.
    pub fn is_open(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| !l.requests.is_closed() && l.channel.status().connected())
    }

    /// Groups and publishes sent so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

/// A lane's task: writes requests in groups, answers each caller when its confirm is in, and
/// closes the channel when a confirm is overdue or a write fails. Ends when every sender is
/// gone and nothing is left in flight, or when it closed its channel.
async fn run_lane(
    channel: Channel,
    mut requests: mpsc::UnboundedReceiver<Queued>,
    stats: Arc<BatchStats>,
) {
    let mut flight = Flight::default();
    // Requests held back while a look-alike is in flight, in arrival order.
    let mut held: VecDeque<Queued> = VecDeque::new();
    let mut arrived = Vec::new();
    let mut open = true;
    let mut keys = HashSet::default();
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        let mut group = Vec::new();
        let mut later = VecDeque::new();
        keys.clear();
        let now = Instant::now();
        for q in held.drain(..).chain(arrived.drain(..)) {
            let r = &q.0;
            if r.reply.is_closed() {
                // The caller stopped waiting: never send it.
            } else if now >= r.deadline {
                let error = overdue(&r.exchange, &r.routing_key, r.timeout);
                let _ = q.0.reply.send(Err(error));
            } else if flight.admits(r) && keys.insert(r.key) {
                group.push(q);
            } else {
                later.push_back(q);
            }
        }
        held = later;
        if !group.is_empty()
            && let Err(unsent) = send_group(&channel, group, &mut flight, &stats).await
        {
            let held = unsent.into_iter().chain(held.into_iter().map(|q| q.0));
            close(
                &channel,
                "publishes could not be written",
                flight,
                held,
                &mut requests,
            )
            .await;
            return;
        }
        if !open && flight.is_empty() && held.is_empty() {
            return;
        }
        // Callers keep no timers: the lane wakes for the oldest publish in flight, whose
        // deadline closes the channel, and for requests held back past theirs, which the top
        // of the loop answers. A publish sent after the oldest may wait past its own deadline
        // for the oldest's, as it waits for its answer (see the module docs).
        let deadline = flight
            .deadline()
            .into_iter()
            .chain(held.iter().map(|(r, _)| r.deadline))
            .min();
        if let Some(deadline) = deadline
            && timer.deadline() != deadline
        {
            timer.as_mut().reset(deadline);
        }
        // Answers, then the deadline, then new requests: a steady stream of requests must not
        // keep the lane from either.
        tokio::select! {
            biased;
            () = poll_fn(|cx| flight.poll_settle(cx)) => {
                if flight.broken {
                    close(&channel, "the channel failed", flight, held.into_iter().map(|q| q.0), &mut requests).await;
                    return;
                }
            }
            () = &mut timer, if deadline.is_some() => {
                if flight.deadline().is_none_or(|d| d > Instant::now()) {
                    // Only held-back requests are overdue.
                    continue;
                }
                tracing::warn!(
                    channel = channel.id(),
                    publishes = flight.sent.len(),
                    "Confirms overdue; closing the publishing channel."
                );
                close(&channel, "confirms overdue", flight, held.into_iter().map(|q| q.0), &mut requests).await;
                return;
            }
            n = requests.recv_many(&mut arrived, MAX_GROUP), if open => {
                if n == 0 {
                    open = false;
                }
            }
        }
    }
}

/// Writes a group, all sends at once so their frames go out together. `join_all` first polls
/// the sends in order, which is when lapin numbers them, so `flight` keeps them in delivery-tag
/// order. Every confirm goes into `flight` before the lane looks at any: a confirm the lane
/// did not hold could carry another publish's return.
///
/// Writes that outlast the earliest deadline in play (a blocked connection stops reading)
/// give up. `Err` then carries the requests not yet answered; so it does after a failed
/// write, which answers its own request.
async fn send_group(
    channel: &Channel,
    group: Vec<Queued>,
    flight: &mut Flight,
    stats: &BatchStats,
) -> Result<(), Vec<Request>> {
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .messages
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    // Until the last caller of the group stops waiting, or the oldest in flight does: the
    // lane answers nothing while it writes.
    let deadline = group
        .iter()
        .map(|(r, _)| r.deadline)
        .max()
        .into_iter()
        .chain(flight.deadline())
        .min()
        .unwrap_or_else(Instant::now);
    let (group, properties): (Vec<Request>, Vec<BasicProperties>) = group.into_iter().unzip();
    let writes = join_all(group.iter().zip(properties).map(|(r, properties)| {
        channel.basic_publish(
            r.exchange.as_str().into(),
            r.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: r.mandatory,
                immediate: false,
            },
            &r.body,
            properties,
        )
    }));
    let Ok(sent) = tokio::time::timeout_at(deadline, writes).await else {
        return Err(group);
    };
    let mut ok = true;
    for (request, sent) in group.into_iter().zip(sent) {
        match sent {
            Ok(confirm) => flight.push(request, confirm),
            Err(source) => {
                ok = false;
                let op = format!(
                    "publish to {}",
                    target(&request.exchange, &request.routing_key)
                );
                let _ = request.reply.send(Err(AmqpError::Broker { op, source }));
            }
        }
    }
    if ok { Ok(()) } else { Err(Vec::new()) }
}

/// Closes the lane's channel and fails everything it still holds or has queued. A publish in
/// flight may have been confirmed; its caller keeps the message, a duplicate at worst.
async fn close(
    channel: &Channel,
    why: &str,
    flight: Flight,
    held: impl IntoIterator<Item = Request>,
    requests: &mut mpsc::UnboundedReceiver<Queued>,
) {
    let now = Instant::now();
    let fail = |r: Request| {
        let error = if now >= r.deadline {
            overdue(&r.exchange, &r.routing_key, r.timeout)
        } else {
            AmqpError::Closed {
                op: format!("publish to {} ({why})", target(&r.exchange, &r.routing_key)),
            }
        };
        let _ = r.reply.send(Err(error));
    };
    flight.into_requests().chain(held).for_each(fail);
    // Callers keep no timers, so nothing may stay queued unanswered: refuse new requests
    // (their send fails at once), then answer every one already sent, including one whose
    // send was under way as the queue closed (`recv` waits for it).
    requests.close();
    while let Some((r, _)) = requests.recv().await {
        fail(r);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(200, why.into())).await;
}
