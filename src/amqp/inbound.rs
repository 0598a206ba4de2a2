//! A delivery together with the channel it came on, settled on that channel.
//!
//! lapin's `Acker` (`delivery.acker.ack()`) hands each ack to lapin's internal RPC task, which
//! spawns a task to write it: two task hops per delivery, and a task of about 2 KiB held per
//! delivery until its ack is written. `Channel::basic_ack` writes the frame from the caller's
//! task. A delivery tag means something only on the channel that delivered it (acked on
//! another, it could settle a different message), so a worker settles a delivery only through
//! the `Inbound` its own channel's consumer made.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, Channel, message::Delivery};

use super::{AmqpError, timed};

/// A delivery and the channel it arrived on. Derefs to the delivery.
pub struct Inbound {
    delivery: Delivery,
    channel: Arc<Channel>,
    settled: AtomicBool,
}

impl Inbound {
    /// `delivery` as received on `channel`.
    pub fn new(delivery: Delivery, channel: Arc<Channel>) -> Self {
        Self {
            delivery,
            channel,
            settled: AtomicBool::new(false),
        }
    }

    /// Acks it. `Ok(false)` means nothing was sent (the channel is gone, or it was settled
    /// already): the broker will redeliver, and the caller logs it.
    pub async fn ack(&self) -> Result<bool, AmqpError> {
        if !self.take() {
            return Ok(false);
        }
        let tag = self.delivery.delivery_tag;
        timed(
            || "ack",
            self.channel.basic_ack(tag, BasicAckOptions::default()),
        )
        .await
        .map(|()| true)
    }

    /// Nacks it with `requeue = true`. `Ok(false)` as for [`Inbound::ack`].
    pub async fn requeue(&self) -> Result<bool, AmqpError> {
        if !self.take() {
            return Ok(false);
        }
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let tag = self.delivery.delivery_tag;
        timed(|| "nack (requeue)", self.channel.basic_nack(tag, options))
            .await
            .map(|()| true)
    }

    /// Drops the delivery's properties, parsed headers and all, once a republish has taken
    /// what it needs from them: a delivery waiting for its republish's confirm then holds
    /// little more than its tag and body.
    pub fn shed_properties(&mut self) {
        self.delivery.properties = BasicProperties::default();
    }

    /// True once, if the channel is still open: then the caller settles it.
    fn take(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel) && self.channel.status().connected()
    }
}

impl Deref for Inbound {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}
