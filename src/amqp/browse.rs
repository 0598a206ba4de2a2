//! A bounded, non-destructive walk over a queue: take the messages present when the walk starts,
//! hold them unacked, and put back whatever the caller did not ack, in its original place.
//!
//! Classic queues return requeued messages to their original positions and have no delivery
//! limit, so a walk over a classic DLQ keeps its order and costs nothing. Messages published
//! after the walk starts are not part of it: the consumer's prefetch never exceeds what is left
//! of the count taken up front. Consumers take the snapshot in chunks on one channel, so the
//! client never buffers more than one chunk however long the queue. A caller that acks as it
//! goes (replay, purge) frees prefetch, so the broker tops the chunk's consumer up past its
//! share: those deliveries are kept, in order, and handed out before the next chunk's.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, message::Delivery};

use super::{AmqpError, Connection, inspect_queue, timed};

/// Messages per consumer: the most the client buffers at once.
pub const CHUNK: u32 = 10_000;

/// The messages of one queue as they stood when the walk began.
pub struct Snapshot {
    queue: String,
    total: u32,
    consumers: u32,
    taken: u32,
    idle: Duration,
    incomplete: bool,
    channel: Option<Channel>,
    chunk_size: u32,
    /// The size of the next chunk: `chunk_size`, or less while a growing walk ramps up.
    next_size: u32,
    /// The prefetch last set on the channel.
    prefetch: u16,
    /// The current chunk's consumer, its tag and what is left of it.
    chunk: Option<(Consumer, String, u32)>,
    /// Deliveries a retired consumer received past its share, in queue order.
    carry: VecDeque<Delivery>,
}

impl Snapshot {
    /// Counts `queue`'s ready messages and starts taking them, unacked; `None` if the queue
    /// does not exist. `idle` bounds the wait for each next message (another consumer may hold
    /// some).
    pub async fn open(
        conn: &Connection,
        queue: &str,
        idle: Duration,
    ) -> Result<Option<Self>, AmqpError> {
        Self::open_chunked(conn, queue, idle, CHUNK).await
    }

    /// [`Snapshot::open`] with consumers of `chunk_size` messages (at least 1, at most
    /// [`CHUNK`]).
    pub async fn open_chunked(
        conn: &Connection,
        queue: &str,
        idle: Duration,
        chunk_size: u32,
    ) -> Result<Option<Self>, AmqpError> {
        let Some((total, consumers)) = inspect_queue(conn, queue).await? else {
            return Ok(None);
        };
        let channel = if total == 0 {
            None
        } else {
            Some(timed(|| "open a channel", conn.create_channel()).await?)
        };
        Ok(Some(Self {
            queue: queue.to_string(),
            total,
            consumers,
            taken: 0,
            idle,
            incomplete: false,
            channel,
            chunk_size: chunk_size.clamp(1, CHUNK),
            next_size: chunk_size.clamp(1, CHUNK),
            prefetch: 0,
            chunk: None,
            carry: VecDeque::new(),
        }))
    }

    /// [`Snapshot::open`] for a read that may stop early (a page of matches): the first
    /// consumer takes `first` messages and each next one twice as many, up to [`CHUNK`], so a
    /// read that stops after a page has not had the broker send it the whole queue.
    pub async fn open_growing(
        conn: &Connection,
        queue: &str,
        idle: Duration,
        first: u32,
    ) -> Result<Option<Self>, AmqpError> {
        let mut snapshot = Self::open_chunked(conn, queue, idle, CHUNK).await?;
        if let Some(s) = snapshot.as_mut() {
            s.next_size = first.clamp(1, CHUNK);
        }
        Ok(snapshot)
    }

    /// Messages ready when the walk began.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Other consumers on the queue when the walk began; they may take messages from under it.
    pub fn other_consumers(&self) -> u32 {
        self.consumers
    }

    /// True while the channel is open (acks can be sent).
    pub fn is_open(&self) -> bool {
        self.channel
            .as_ref()
            .is_some_and(|c| c.status().connected())
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
        if self.taken >= self.total || self.incomplete {
            return Ok(None);
        }
        if self.carry.is_empty() && self.chunk.as_ref().is_none_or(|c| c.2 == 0) {
            self.next_chunk().await?;
        }
        if let Some(delivery) = self.carry.pop_front() {
            self.taken += 1;
            return Ok(Some(delivery));
        }
        let Some((consumer, _, left)) = self.chunk.as_mut() else {
            return Ok(None);
        };
        match tokio::time::timeout(self.idle, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                self.taken += 1;
                *left -= 1;
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

    /// Retires the finished chunk's consumer (its messages stay unacked on the channel) and
    /// starts one for the next chunk, with a prefetch of exactly what it may take. What the
    /// retired consumer received past its share (acks freed its prefetch) is carried over.
    async fn next_chunk(&mut self) -> Result<(), AmqpError> {
        let Some(channel) = self.channel.clone() else {
            return Ok(());
        };
        if let Some((mut consumer, tag, _)) = self.chunk.take() {
            self.cancel(&channel, &tag).await?;
            // cancel-ok follows every delivery sent to this consumer on the channel, so they
            // are all buffered by now.
            while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                self.carry.push_back(delivery);
            }
            drop(consumer);
            if !self.carry.is_empty() {
                return Ok(());
            }
        }
        let n = (self.total - self.taken).min(self.next_size);
        self.next_size = self.next_size.saturating_mul(2).min(self.chunk_size);
        let prefetch = n as u16;
        timed(
            || format!("set prefetch {prefetch} for queue '{}'", self.queue),
            channel.basic_qos(prefetch, BasicQosOptions { global: false }),
        )
        .await?;
        let tag = format!(
            "warren-browse-{}-{}",
            super::identity(),
            ulid::Ulid::generate()
        );
        let consumer = timed(
            || format!("consume queue '{}'", self.queue),
            channel.basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        self.prefetch = prefetch;
        self.chunk = Some((consumer, tag, n));
        Ok(())
    }

    async fn cancel(&self, channel: &Channel, tag: &str) -> Result<(), AmqpError> {
        timed(
            || format!("cancel the consumer of queue '{}'", self.queue),
            channel.basic_cancel(tag.into(), BasicCancelOptions::default()),
        )
        .await
    }

    /// Acks `delivery` and waits until the broker has processed the ack: `basic.ack` has no
    /// reply, so a `basic.qos` round trip on the same channel (processed in order, and a no-op
    /// for the running consumer) is the barrier. A replay publishes the next message only after
    /// this, so a kill can leave at most the in-flight window in both queues.
    pub async fn ack_processed(&self, delivery: &Delivery) -> Result<bool, AmqpError> {
        if !super::ack(delivery).await? {
            return Ok(false);
        }
        let Some(channel) = self.channel.as_ref() else {
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
    /// all outstanding on the channel) and closes the channel. Dropping a snapshot without
    /// calling this still requeues everything, when the channel closes.
    pub async fn release(mut self) -> Result<(), AmqpError> {
        let Some(channel) = self.channel.take() else {
            return Ok(());
        };
        // Cancelled before it is dropped: a dropped live consumer cancels itself in the
        // background, racing the channel close below.
        if let Some((consumer, tag, _)) = self.chunk.take()
            && channel.status().connected()
        {
            let _ = self.cancel(&channel, &tag).await;
            drop(consumer);
        }
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
