//! Reading a RabbitMQ stream over AMQP 0-9-1: `basic.consume` with `x-stream-offset` (a
//! prefetch is required and acks are manual; an ack only returns credit, it removes nothing),
//! and the `x-stream-offset` header each delivery carries.

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Consumer};

use super::{AmqpError, BasicProperties, header_u64, timed};

/// The header a stream sets on every delivery: the message's offset in the stream.
pub const STREAM_OFFSET: &str = "x-stream-offset";

/// Where a stream consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    /// The oldest message the stream still holds.
    First,
    /// The first message of the last chunk written.
    Last,
    /// Only messages written after the consumer starts.
    Next,
    /// This offset (or the first one held, if it is gone).
    At(u64),
    /// The first chunk written at or after this time (epoch seconds; the broker's clock).
    Since(u64),
}

impl StreamOffset {
    fn value(self) -> AMQPValue {
        let word = |w: &str| AMQPValue::LongString(LongString::from(w));
        match self {
            StreamOffset::First => word("first"),
            StreamOffset::Last => word("last"),
            StreamOffset::Next => word("next"),
            StreamOffset::At(n) => AMQPValue::LongLongInt(n.min(i64::MAX as u64) as i64),
            StreamOffset::Since(secs) => AMQPValue::Timestamp(secs),
        }
    }
}

/// Starts consuming `stream` at `offset`, with manual acks and `prefetch` as its credit.
pub async fn consume_stream(
    channel: &Channel,
    stream: &str,
    offset: StreamOffset,
    prefetch: u16,
    tag: &str,
) -> Result<Consumer, AmqpError> {
    timed(
        || format!("set prefetch {prefetch} for stream '{stream}'"),
        channel.basic_qos(prefetch.max(1), BasicQosOptions { global: false }),
    )
    .await?;
    let mut args = std::collections::BTreeMap::new();
    args.insert(ShortString::from(STREAM_OFFSET), offset.value());
    timed(
        || format!("consume stream '{stream}' from {offset:?}"),
        channel.basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::from(args),
        ),
    )
    .await
}

/// A delivery's offset in its stream; `None` if the message did not come from a stream.
pub fn stream_offset(props: &BasicProperties) -> Option<u64> {
    header_u64(props, STREAM_OFFSET)
}
