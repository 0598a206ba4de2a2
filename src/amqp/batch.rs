//! Publishing for many concurrent callers, each waiting for its own confirm, pipelined in
//! batches on a few channels: the worker's retry and dead-letter republishes.
//!
//! lapin hands a returned (unroutable) message to whichever confirm of the same ack frame it
//! completes first, not to the publish it belongs to. A batch therefore owns its channel from
//! its first publish until its last confirm: the broker returns a message before it acks it,
//! so once every confirm of the batch is in, every return of the batch is too, and no other
//! batch's. Returns are then matched to publishes by exchange, routing key, `message_id` and
//! body, and a batch never holds two publishes that match alike. A return that matches no
//! publish fails the whole batch: a message kept is at worst a duplicate, one acked wrongly
//! would be lost.
//!
//! Requests arriving while every channel's batch is out wait for the next batch, so under load
//! a batch grows to whatever arrived during one confirm round trip: one multiple-ack frame from
//! the broker settles it, where one publish in flight per channel needs a frame and a wake-up
//! per message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::publish::{CONFIRM_TIMEOUT, confirm_channel, target};
use super::{AmqpError, Message};

/// The most publishes one batch takes; the rest wait for the next.
const MAX_BATCH: usize = 256;

/// Confirm-mode channels fed by one batching task. Cheap to clone; clones share the task, which
/// ends once every clone is dropped and its last batch is settled.
#[derive(Clone)]
pub struct BatchPublisher {
    requests: mpsc::UnboundedSender<Request>,
    channels: Arc<[Channel]>,
    confirm_timeout: Duration,
    stats: Arc<BatchStats>,
}

/// How many batches went out, and how many publishes they held.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches sent.
    pub batches: AtomicU64,
    /// Publishes sent in them.
    pub messages: AtomicU64,
}

struct Request {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
    mandatory: bool,
    /// What a returned message is matched by (see [`identity`]).
    key: u64,
    /// When the caller stops waiting.
    deadline: Instant,
    reply: oneshot::Sender<Result<(), AmqpError>>,
}

impl BatchPublisher {
    /// Opens `channels` (at least one) confirm-mode channels on `conn` and starts the task
    /// that batches publishes onto them.
    pub async fn open(conn: &Connection, channels: usize) -> Result<Self, AmqpError> {
        let mut opened = Vec::with_capacity(channels.max(1));
        for _ in 0..channels.max(1) {
            opened.push(confirm_channel(conn).await?);
        }
        let channels: Arc<[Channel]> = opened.into();
        let (requests, queue) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        tokio::spawn(drive(channels.clone(), queue, stats.clone()));
        Ok(Self {
            requests,
            channels,
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
    pub async fn publish(&self, msg: Message<'_>) -> Result<(), AmqpError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key: identity(
                msg.exchange,
                msg.routing_key,
                msg.properties.message_id().as_ref().map(|id| id.as_str()),
                msg.body,
            ),
            exchange: msg.exchange.to_string(),
            routing_key: msg.routing_key.to_string(),
            body: msg.body.to_vec(),
            properties: msg.properties,
            mandatory: msg.mandatory,
            deadline: Instant::now() + self.confirm_timeout,
            reply,
        };
        let closed = || AmqpError::Closed {
            op: format!("publish to {}", target(msg.exchange, msg.routing_key)),
        };
        self.requests.send(request).map_err(|_| closed())?;
        match tokio::time::timeout(self.confirm_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(AmqpError::Timeout {
                op: format!(
                    "confirm of publish to {}",
                    target(msg.exchange, msg.routing_key)
                ),
                after: self.confirm_timeout,
            }),
        }
    }

    /// True while every channel can publish. A channel that owes confirms past the deadline
    /// is closed, so this turns false: the owner should replace the publisher.
    pub fn is_open(&self) -> bool {
        !self.requests.is_closed() && self.channels.iter().all(|c| c.status().connected())
    }

    /// Batches and publishes sent so far.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

/// A hash of what a returned message carries of its publish.
fn identity(exchange: &str, routing_key: &str, message_id: Option<&str>, body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (exchange, routing_key, message_id, body).hash(&mut h);
    h.finish()
}

fn returned_identity(r: &BasicReturnMessage) -> u64 {
    let d = &r.delivery;
    identity(
        d.exchange.as_str(),
        d.routing_key.as_str(),
        d.properties.message_id().as_ref().map(|id| id.as_str()),
        &d.data,
    )
}

/// The batching task: queues requests, and whenever a channel is free, sends it the next
/// batch.
async fn drive(
    channels: Arc<[Channel]>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    stats: Arc<BatchStats>,
) {
    let mut free: Vec<usize> = (0..channels.len()).rev().collect();
    let mut queue = VecDeque::new();
    let mut busy = FuturesUnordered::new();
    let mut open = true;
    loop {
        while let Some(&lane) = free.last() {
            let batch = next_batch(&mut queue);
            if batch.is_empty() {
                break;
            }
            free.pop();
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .messages
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            busy.push(run_batch(channels[lane].clone(), batch).map(move |()| lane));
        }
        if !open && queue.is_empty() && busy.is_empty() {
            return;
        }
        tokio::select! {
            request = requests.recv(), if open => match request {
                Some(r) => {
                    queue.push_back(r);
                    while let Ok(r) = requests.try_recv() {
                        queue.push_back(r);
                    }
                }
                None => open = false,
            },
            Some(lane) = busy.next() => free.push(lane),
            else => return,
        }
    }
}

/// Takes up to [`MAX_BATCH`] requests in order, leaving for later any that a return could not
/// tell apart from one already taken, and dropping those whose caller stopped waiting.
fn next_batch(queue: &mut VecDeque<Request>) -> Vec<Request> {
    let mut batch = Vec::new();
    let mut keys = HashSet::new();
    let mut later = VecDeque::new();
    while batch.len() < MAX_BATCH
        && let Some(r) = queue.pop_front()
    {
        if r.reply.is_closed() {
            continue;
        }
        if keys.insert(r.key) {
            batch.push(r);
        } else {
            later.push_back(r);
        }
    }
    later.append(queue);
    *queue = later;
    batch
}

/// Sends the batch, waits for every confirm, then answers each caller. A batch whose confirms
/// are not all in when its last caller stops waiting closes its channel: a confirm that never
/// comes would hold the channel, and every batch after it, forever.
async fn run_batch(channel: Channel, batch: Vec<Request>) {
    let deadline = batch.iter().map(|r| r.deadline).max();
    let confirmed = async {
        // All sends start at once, so their frames go out together, in order.
        let sent = join_all(batch.iter().map(|r| {
            channel.basic_publish(
                r.exchange.as_str().into(),
                r.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: r.mandatory,
                    immediate: false,
                },
                &r.body,
                r.properties.clone(),
            )
        }))
        .await;
        join_all(sent.into_iter().map(|s| async move {
            match s {
                Ok(confirm) => Ok(confirm.await),
                Err(source) => Err(source),
            }
        }))
        .await
    };
    let confirms =
        match tokio::time::timeout_at(deadline.unwrap_or_else(Instant::now), confirmed).await {
            Ok(confirms) => confirms,
            Err(_) => {
                tracing::warn!(
                    channel = channel.id(),
                    publishes = batch.len(),
                    "Confirms overdue; closing the publishing channel."
                );
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    channel.close(200, "confirms overdue".into()),
                )
                .await;
                // Every caller has stopped waiting by now.
                return;
            }
        };

    let mut returned = vec![None; batch.len()];
    let mut unattributed = None;
    let index: HashMap<u64, usize> = batch.iter().enumerate().map(|(i, r)| (r.key, i)).collect();
    for message in confirms.iter().filter_map(|c| match c {
        Ok(Ok(Confirmation::Ack(Some(m)) | Confirmation::Nack(Some(m)))) => Some(m),
        _ => None,
    }) {
        let reply = format!("{} {}", message.reply_code, message.reply_text);
        match index.get(&returned_identity(message)) {
            Some(&i) if matches_request(message, &batch[i]) => returned[i] = Some(reply),
            _ => unattributed = Some(reply),
        }
    }

    for ((request, confirm), returned) in batch.into_iter().zip(confirms).zip(returned) {
        let target = || target(&request.exchange, &request.routing_key);
        let message_id = || {
            request
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
        };
        let result = match confirm {
            Err(source) => Err(AmqpError::Broker {
                op: format!("publish to {}", target()),
                source,
            }),
            Ok(Err(source)) => Err(AmqpError::Broker {
                op: format!("confirm of publish to {}", target()),
                source,
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(AmqpError::Nacked {
                target: target(),
                returned: returned.is_some().then(message_id),
            }),
            Ok(Ok(Confirmation::NotRequested)) => Err(AmqpError::NotConfirmed { target: target() }),
            Ok(Ok(Confirmation::Ack(_))) => match returned.or_else(|| {
                unattributed.as_ref().map(|reply| {
                    format!("{reply}, a message of the same batch that cannot be told apart")
                })
            }) {
                Some(reply) => Err(AmqpError::Returned {
                    target: target(),
                    reply,
                    message_id: message_id(),
                }),
                None => Ok(()),
            },
        };
        let _ = request.reply.send(result);
    }
}

/// True when a returned message is this request's publish, not a hash collision.
fn matches_request(m: &BasicReturnMessage, r: &Request) -> bool {
    let d = &m.delivery;
    d.exchange.as_str() == r.exchange
        && d.routing_key.as_str() == r.routing_key
        && d.properties.message_id() == r.properties.message_id()
        && d.data == r.body
}
