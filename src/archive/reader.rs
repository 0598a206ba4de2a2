//! A stream reader that keeps its own offset. lapin's recovery would re-issue `basic.consume`
//! with its first arguments (`first`: duplicates; `next`: a gap), so this reader owns its
//! connection: when it is lost, it connects again and subscribes at the offset after the last
//! one it handed out, and drops anything at or below it.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::amqp::{
    self, AmqpUrl, BasicProperties, Channel, Connection, Consumer, StreamOffset, stream_offset,
};
use crate::backoff::Backoff;
use crate::error::Error;

/// Consecutive failed reconnects after which the reader gives up.
const MAX_RECONNECTS: u32 = 8;

/// One message read from the stream.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its offset in the stream.
    pub offset: u64,
    /// Its properties and headers.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
}

struct Session {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    /// Deliveries taken since the last ack.
    unacked: u16,
}

/// Reads one stream in offset order, each offset at most once, across connection losses.
pub struct StreamReader {
    url: AmqpUrl,
    stream: String,
    prefetch: u16,
    start: StreamOffset,
    last: Option<u64>,
    session: Option<Session>,
    resubscribed: u32,
    idle_start: Option<Duration>,
}

impl StreamReader {
    /// Connects and subscribes to `stream` at `start` with `prefetch` credit. The first
    /// subscription's failure (no such stream, a refused login) is returned as it is.
    pub async fn open(
        url: &AmqpUrl,
        stream: &str,
        start: StreamOffset,
        prefetch: u16,
    ) -> Result<Self, Error> {
        let mut reader = Self {
            url: url.clone(),
            stream: stream.to_string(),
            prefetch,
            start,
            last: None,
            session: None,
            resubscribed: 0,
            idle_start: None,
        };
        reader.session = Some(reader.subscribe().await?);
        Ok(reader)
    }

    /// Ends the read (`Ok(None)` from [`StreamReader::next`]) when no first message comes
    /// within `idle`: a subscription at a time after the last chunk waits for new ones.
    pub fn with_idle_start(mut self, idle: Duration) -> Self {
        self.idle_start = Some(idle);
        self
    }

    /// The last offset handed out.
    pub fn last_offset(&self) -> Option<u64> {
        self.last
    }

    /// How many times the reader subscribed again after losing its connection or channel.
    pub fn resubscribed(&self) -> u32 {
        self.resubscribed
    }

    /// Where the next subscription starts: after the last offset handed out.
    fn resume_at(&self) -> StreamOffset {
        match self.last {
            Some(n) => StreamOffset::At(n + 1),
            None => self.start,
        }
    }

    async fn subscribe(&self) -> Result<Session, Error> {
        let conn = amqp::connect(&self.url, "archive", "read").await?;
        let session = async {
            let channel = amqp::channel(&conn).await?;
            let consumer = amqp::consume_stream(
                &channel,
                &self.stream,
                self.resume_at(),
                self.prefetch,
                "warren-archive",
            )
            .await?;
            Ok::<_, amqp::AmqpError>((channel, consumer))
        }
        .await;
        match session {
            Ok((channel, consumer)) => Ok(Session {
                conn,
                channel,
                consumer,
                unacked: 0,
            }),
            Err(e) => {
                amqp::close(&conn).await;
                Err(e.into())
            }
        }
    }

    /// The next message after the last one handed out. Waits while the stream has nothing
    /// new; `Ok(None)` only when `shutdown` is cancelled. A lost connection is replaced, with
    /// backoff, up to [`MAX_RECONNECTS`] failures in a row.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Result<Option<Record>, Error> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let Some(session) = self.session.as_mut() else {
                match self.subscribe().await {
                    Ok(s) => {
                        self.session = Some(s);
                        self.resubscribed += 1;
                        tracing::info!(stream = %self.stream, at = ?self.resume_at(), "Archive reader subscribed again.");
                    }
                    Err(e) if backoff.failures() + 1 >= MAX_RECONNECTS => return Err(e),
                    Err(e) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(stream = %self.stream, error = %e, retry_in = ?wait, "Archive reader cannot subscribe; retrying.");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(None),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
                continue;
            };
            let idle = async {
                match (self.idle_start, self.last) {
                    (Some(d), None) => tokio::time::sleep(d).await,
                    _ => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(None),
                next = session.consumer.next() => next,
                _ = idle => return Ok(None),
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(stream = %self.stream, error = %e, last = ?self.last, "Archive reader lost its connection; resubscribing after the last offset.");
                    self.drop_session().await;
                    continue;
                }
                None => {
                    tracing::warn!(stream = %self.stream, last = ?self.last, "Archive consumer ended; resubscribing after the last offset.");
                    self.drop_session().await;
                    continue;
                }
            };
            // The credit comes back with the ack, a quarter of it at a time (one ack with
            // `multiple` for every delivery up to this one): a stream's ack removes nothing.
            // A failed ack means the channel is gone, and the next read notices. The message
            // itself is good either way.
            session.unacked += 1;
            if session.unacked >= (self.prefetch / 4).max(1) {
                session.unacked = 0;
                let _ = amqp::ack_multiple(&delivery).await;
            }
            let Some(offset) = stream_offset(&delivery.properties) else {
                return Err(Error::Other(format!(
                    "'{}' delivered a message without an x-stream-offset header: it is not a stream",
                    self.stream
                )));
            };
            let wanted = match (self.last, self.start) {
                (Some(last), _) => offset > last,
                (None, StreamOffset::At(first)) => offset >= first,
                (None, _) => true,
            };
            if !wanted {
                continue;
            }
            if let Some(last) = self.last
                && offset > last + 1
            {
                tracing::warn!(stream = %self.stream, after = last, next = offset, "Offsets skipped: retention removed them while the reader was away.");
            }
            self.last = Some(offset);
            return Ok(Some(Record {
                offset,
                properties: delivery.properties,
                body: delivery.data,
            }));
        }
    }

    /// Forgets a lost session at once: closing a connection the broker may no longer answer
    /// can take a round-trip timeout, so it is closed in the background.
    async fn drop_session(&mut self) {
        if let Some(s) = self.session.take() {
            tokio::spawn(async move {
                amqp::close(&s.conn).await;
            });
        }
    }

    /// Cancels the subscription and closes the connection.
    pub async fn close(mut self) {
        if let Some(s) = self.session.take() {
            amqp::close_channel(&s.channel).await;
            amqp::close(&s.conn).await;
        }
    }
}
