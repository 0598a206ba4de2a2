//! A publish request on its way through a lane, and the identity a returned message is
//! matched to it by.

use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::BasicReturnMessage;
use lapin::types::ShortString;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::amqp::AmqpError;
use crate::amqp::publish::target;

/// A request on its way to the lane, with the properties that go to lapin as it is written:
/// a copy kept until the confirm would cost an allocation per header and hold them all, and
/// the properties' room in every `Sent` alone is 300 bytes per publish in flight.
pub(super) type Queued = (Request, BasicProperties);

/// One caller's publish and the sender its answer goes to.
pub(super) struct Request {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) body: Vec<u8>,
    /// What a return is matched by.
    pub(super) message_id: Option<ShortString>,
    pub(super) mandatory: bool,
    /// What a returned message is matched by (see [`identity`]).
    pub(super) key: u64,
    /// When the caller stops waiting.
    pub(super) deadline: Instant,
    /// How long the caller waits, for the error it gets when the confirm is overdue.
    pub(super) timeout: Duration,
    pub(super) reply: oneshot::Sender<Result<(), AmqpError>>,
}

/// The error of a caller whose confirm did not come in time.
pub(super) fn overdue(exchange: &str, routing_key: &str, after: Duration) -> AmqpError {
    AmqpError::Timeout {
        op: format!("confirm of publish to {}", target(exchange, routing_key)),
        after,
    }
}

/// Seeded once per process, so requests and the returns matched to them hash alike, and a
/// random seed makes colliding bodies hard to choose (foldhash is only minimally
/// DoS-resistant, but a collision merely holds a publish back). foldhash rather than std's
/// SipHash: this hashes every republish's body, and SipHash was 2% of a retrying worker's
/// instructions.
static IDENTITY: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

/// A hash of what a returned message carries of its publish. Equal hashes only hold a
/// publish back (`Flight::admits`); a return is matched by its contents
/// ([`matches_request`]).
pub(super) fn identity(
    exchange: &str,
    routing_key: &str,
    message_id: Option<&str>,
    body: &[u8],
) -> u64 {
    IDENTITY.hash_one((exchange, routing_key, message_id, body))
}

/// The [`identity`] of the publish a returned message came from.
pub(super) fn returned_identity(r: &BasicReturnMessage) -> u64 {
    let d = &r.delivery;
    identity(
        d.exchange.as_str(),
        d.routing_key.as_str(),
        d.properties.message_id().as_ref().map(|id| id.as_str()),
        &d.data,
    )
}

/// True when a returned message is this request's publish, not a hash collision.
pub(super) fn matches_request(m: &BasicReturnMessage, r: &Request) -> bool {
    let d = &m.delivery;
    d.exchange.as_str() == r.exchange
        && d.routing_key.as_str() == r.routing_key
        && d.properties.message_id() == &r.message_id
        && d.data == r.body
}
