//! A bounded, non-destructive walk over a queue: take the messages present when the walk starts,
//! hold them unacked, and put back whatever the caller did not ack, in its original place.
//!
//! Classic queues return requeued messages to their original positions and have no delivery
//! limit, so a walk over a classic DLQ keeps its order and costs nothing. Messages published
//! after the walk starts are not part of it: QoS caps deliveries at the count taken up front.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicNackOptions, BasicQosOptions};
use lapin::{Channel, Consumer, message::Delivery};

use super::{AmqpError, Connection, consume, queue_depth, timed};

/// QoS takes a 16-bit prefetch; larger walks run unbounded and stop at the count themselves.
const MAX_PREFETCH: u32 = u16::MAX as u32;

/// The messages of one queue as they stood when the walk began.
pub struct Snapshot {
    queue: String,
    total: u32,
    consumers: u32,
    taken: u32,
    idle: Duration,
    incomplete: bool,
    prefetch: u16,
    open: Option<(Channel, Consumer)>,
}

impl Snapshot {
    /// Counts `queue`'s ready messages and starts consuming at most that many, with manual
    /// acks. `idle` bounds the wait for each next message (another consumer may hold some).
    pub async fn open(conn: &Connection, queue: &str, idle: Duration) -> Result<Self, AmqpError> {
        let (total, consumers) = queue_depth(conn, queue).await?;
        // QoS takes 16 bits; 0 (unbounded) for larger walks, which stop at the count themselves.
        let prefetch = if total <= MAX_PREFETCH {
            total as u16
        } else {
            0
        };
        let open = if total == 0 {
            None
        } else {
            let tag = format!(
                "warren-browse-{}-{}",
                super::identity(),
                ulid::Ulid::generate()
            );
            Some(consume(conn, queue, prefetch, &tag).await?)
        };
        Ok(Self {
            queue: queue.to_string(),
            total,
            consumers,
            taken: 0,
            idle,
            incomplete: false,
            prefetch,
            open,
        })
    }

    /// Messages ready when the walk began.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Other consumers on the queue when the walk began; they may take messages from under it.
    pub fn other_consumers(&self) -> u32 {
        self.consumers
    }

    /// Messages taken so far.
    pub fn taken(&self) -> u32 {
        self.taken
    }

    /// True when the walk ended before taking [`Snapshot::total`] messages: nothing arrived
    /// within the idle deadline, because another consumer held them.
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }

    /// The next message of the snapshot, unacked; `None` once every message present at the
    /// start has been taken (or the idle deadline passed).
    pub async fn next(&mut self) -> Result<Option<Delivery>, AmqpError> {
        if self.taken >= self.total {
            return Ok(None);
        }
        let Some((_, consumer)) = self.open.as_mut() else {
            return Ok(None);
        };
        match tokio::time::timeout(self.idle, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                self.taken += 1;
                Ok(Some(delivery))
            }
            Ok(Some(Err(source))) => Err(AmqpError::Broker {
                op: format!("read queue '{}'", self.queue),
                source,
            }),
            // The broker cancelled the consumer (queue deleted) or the deadline passed.
            Ok(None) | Err(_) => {
                self.incomplete = true;
                Ok(None)
            }
        }
    }

    /// Acks `delivery` and waits until the broker has processed the ack: `basic.ack` has no
    /// reply, so a `basic.qos` round trip on the same channel (processed in order, and a no-op
    /// for the running consumer) is the barrier. A replay publishes the next message only after
    /// this, so a kill can leave at most the in-flight window in both queues.
    pub async fn ack_processed(&self, delivery: &Delivery) -> Result<bool, AmqpError> {
        if !super::ack(delivery).await? {
            return Ok(false);
        }
        let Some((channel, _)) = self.open.as_ref() else {
            return Ok(false);
        };
        timed(
            || format!("confirm the ack on queue '{}'", self.queue),
            channel.basic_qos(self.prefetch, BasicQosOptions { global: false }),
        )
        .await?;
        Ok(true)
    }

    /// Puts every message not acked back in its place (`basic.nack` multiple, requeue, tag 0 =
    /// all outstanding) and closes the channel. Dropping a snapshot without calling this still
    /// requeues everything, when the channel closes.
    pub async fn release(mut self) -> Result<(), AmqpError> {
        let Some((channel, consumer)) = self.open.take() else {
            return Ok(());
        };
        let result = timed(
            || format!("requeue the walked messages of queue '{}'", self.queue),
            channel.basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await;
        drop(consumer);
        if channel.status().connected() {
            timed(
                || format!("close the channel reading queue '{}'", self.queue),
                channel.close(200, "walk done".into()),
            )
            .await?;
        }
        result
    }
}
