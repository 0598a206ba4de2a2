//! The only module that touches lapin: connecting, consuming with prefetch, publishing with
//! confirms, settling deliveries, and reading warren's headers. Every network await here has
//! a deadline, because lapin has none of its own.

mod batch;
mod browse;
mod declare;
mod headers;
mod inbound;
mod lanes;
mod publish;
mod stream;
mod url;

use std::fmt::Display;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
pub use lapin::{
    BasicProperties, Channel, Connection, Consumer, message::Delivery, types::AMQPValue,
    types::FieldTable as Headers,
};

pub use batch::{BatchPublisher, BatchStats};
pub use browse::Snapshot;
pub use declare::{
    Arg, bind, cancel, channel, close_channel, declare_exchange, declare_queue, delete_exchange,
    delete_queue, exchange_exists, field_table, inspect_queue,
};
pub use headers::{
    ErrorKind, FailureHeaders, MAX_ERROR_BYTES, XDeath, hdr, header_str, header_u32, header_u64,
    is_broker_death_header, republish_properties, set_header, truncate, x_death,
};
pub use inbound::{Inbound, Settler};
pub use lanes::{bind_exchange, bind_with, consume_notices, notify, private_queue};
pub use publish::{Confirm, ConfirmWindow, Message, Publisher};
pub use stream::{STREAM_OFFSET, StreamOffset, consume_stream, stream_offset};
pub use url::{AmqpUrl, AmqpUrlError, DEFAULT_AMQP_URL, Node, redact};

/// Deadline for one broker round trip (declare, qos, consume, ack, close).
pub const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// A broker operation failed. Messages name the operation and the queue or exchange, never a
/// password.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The TCP/TLS/AMQP handshake failed or timed out.
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The broker did not answer in time (a blocked connection, a black-holed socket).
    #[error("{op}: no answer from the broker within {}s", after.as_secs())]
    Timeout {
        /// What was being done.
        op: String,
        /// How long we waited.
        after: Duration,
    },
    /// The broker or the client library refused the operation.
    #[error("{op}: {source}")]
    Broker {
        /// What was being done.
        op: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker nacked a publish: it could not take responsibility for the message.
    #[error("publish to {target}: the broker nacked it")]
    Nacked {
        /// `exchange/routing-key`.
        target: String,
        /// Set when a returned (unroutable) message came with this nack: `Some(message_id)`
        /// of that message, which, as with [`AmqpError::Returned`], may be another publish's.
        returned: Option<Option<String>>,
    },
    /// A mandatory publish matched no queue.
    #[error("publish to {target}: unroutable ({reply})")]
    Returned {
        /// `exchange/routing-key`.
        target: String,
        /// The broker's reply text.
        reply: String,
        /// The `message_id` of the message the broker returned. With several mandatory publishes
        /// in flight on one channel, lapin may attach a return to another publish's confirm, so
        /// pipelined publishers must check this id rather than trust the attribution.
        message_id: Option<String>,
    },
    /// The publishing channel closed, or its task stopped, before the publish was confirmed.
    #[error("{op}: the publishing channel is closed")]
    Closed {
        /// What was being done.
        op: String,
    },
    /// The publish went out on a channel without confirms: warren never does this on purpose.
    #[error("publish to {target}: no publisher confirm was requested")]
    NotConfirmed {
        /// `exchange/routing-key`.
        target: String,
    },
}

impl AmqpError {
    /// The AMQP reply text of a channel/connection error, e.g. `PRECONDITION_FAILED - …`.
    pub fn reply_text(&self) -> Option<String> {
        match self {
            AmqpError::Broker { source, .. } => match source.kind() {
                lapin::ErrorKind::ProtocolError(e) => Some(e.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// True when the broker closed the channel with 404 NOT_FOUND.
    pub fn is_not_found(&self) -> bool {
        self.reply_text().is_some_and(|t| t.contains("NOT_FOUND"))
    }
}

/// Runs one broker operation with [`OP_TIMEOUT`]. `op` is only rendered on failure.
pub async fn timed<T, F, D>(op: impl FnOnce() -> D, fut: F) -> Result<T, AmqpError>
where
    F: Future<Output = lapin::Result<T>>,
    D: Display,
{
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(AmqpError::Broker {
            op: op().to_string(),
            source,
        }),
        Err(_) => Err(AmqpError::Timeout {
            op: op().to_string(),
            after: OP_TIMEOUT,
        }),
    }
}

/// `host:pid`, identifying this process in connection names and failure headers.
pub fn identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}:{}", hostname(), std::process::id()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Opens a connection named `warren <component> <host:pid> <role>`, so that
/// `rabbitmqctl list_connections name` shows the fleet. Heartbeats are on. With several nodes,
/// the one that answered last is tried first, then the others in list order (nodes that did
/// not answer lately last); the error names every node's reason.
pub async fn connect(url: &AmqpUrl, component: &str, role: &str) -> Result<Connection, AmqpError> {
    let name = format!("warren {component} {} {role}", identity());
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_client_property("product".into(), "warren".into())
        .with_client_property("version".into(), env!("CARGO_PKG_VERSION").into());
    let mut reasons = Vec::new();
    for i in url.candidates() {
        let node = &url.nodes()[i];
        let deadline = node.connect_timeout() + Duration::from_secs(1);
        let reason = match tokio::time::timeout(
            deadline,
            Connection::connect_uri(node.uri(), props.clone()),
        )
        .await
        {
            Ok(Ok(conn)) => {
                url.answered(i);
                if !reasons.is_empty() {
                    tracing::info!(node = %node.host_port(), component, role, "Connected to another broker node.");
                }
                return Ok(conn);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", deadline.as_secs()),
        };
        url.failed(i);
        if url.nodes().len() > 1 {
            tracing::debug!(node = %node.host_port(), %reason, "Broker node did not answer.");
            reasons.push(format!("{}: {reason}", node.host_port()));
        } else {
            reasons.push(reason);
        }
    }
    Err(AmqpError::Connect {
        url: url.redacted().to_string(),
        reason: reasons.join("; "),
    })
}

/// Closes a connection politely, without waiting long for a broker that is gone.
pub async fn close(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            conn.close(200, "warren shutting down".into()),
        )
        .await;
    }
}

/// Starts consuming `queue` on `channel` with manual acks. Per-consumer QoS is set to
/// `prefetch` first, so the first burst is already bounded; deliveries still unacked on the
/// channel from an earlier consumer stay ackable.
pub async fn consume(
    channel: &Channel,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> Result<Consumer, AmqpError> {
    timed(
        || format!("set prefetch {prefetch} for queue '{queue}'"),
        channel.basic_qos(prefetch, BasicQosOptions { global: false }),
    )
    .await?;
    timed(
        || format!("consume queue '{queue}'"),
        channel.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// Acks a delivery. `Ok(false)` means lapin did not send it (channel gone, already settled):
/// the broker will redeliver, and the caller logs it.
pub async fn ack(delivery: &Delivery) -> Result<bool, AmqpError> {
    ack_with(delivery, false).await
}

/// Acks `delivery` and every earlier one on its channel (`multiple`): one frame for many, where
/// acks only return credit (a stream consumer's).
pub async fn ack_multiple(delivery: &Delivery) -> Result<bool, AmqpError> {
    ack_with(delivery, true).await
}

async fn ack_with(delivery: &Delivery, multiple: bool) -> Result<bool, AmqpError> {
    timed(
        || "ack",
        delivery
            .acker
            .ack(lapin::options::BasicAckOptions { multiple }),
    )
    .await
}
