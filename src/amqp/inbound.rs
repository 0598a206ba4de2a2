//! A delivery together with the channel it came on, settled on that channel.
//!
//! lapin's `Acker` (`delivery.acker.ack()`) hands each ack to lapin's internal RPC task, which
//! spawns a task to write it: two task hops per delivery, and a task of about 2 KiB held per
//! delivery until its ack is written. A worker settles through its channel's [`Settler`]
//! instead: one task per channel that writes the frames itself. A delivery tag means something
//! only on the channel that delivered it (acked on another, it could settle a different
//! message), so a worker settles a delivery only through the `Inbound` its own channel's
//! consumer made.
//!
//! # Coalesced acks
//! Acks asked for together (a batch committed at once, say) go out as one `basic.ack` with
//! `multiple = true` when that cannot settle anything else: only over a run of tags from the
//! channel's first delivery where every tag is settled already or being acked now. An ack above
//! such a run waits up to a millisecond for the acks below it (a batch's tasks ask in any order,
//! often the lowest tag last), then goes out alone; acks that go out alone go out together.
//! Every requeue goes out on its own, at once, before any ack of the same round. The multiple
//! ack's tag is always one not yet settled (the broker closes the channel on an unknown tag,
//! multiple or not).

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, Channel, message::Delivery};
use tokio::sync::{mpsc, oneshot};

use super::{AmqpError, OP_TIMEOUT, timed};

/// Settled tags tracked above the run at most; past it (a tag that never settles), acks of
/// this channel simply go out one by one.
const TRACKED: usize = 65_536;

/// How long an ack above the run waits for the tags below it to be acked too, before it goes
/// out on its own.
const HOLD: Duration = Duration::from_millis(1);

/// A delivery and the channel it arrived on. Derefs to the delivery.
pub struct Inbound {
    delivery: Delivery,
    settler: Arc<Settler>,
    settled: AtomicBool,
}

impl Inbound {
    /// `delivery` as received on the channel of `settler`.
    pub fn new(delivery: Delivery, settler: Arc<Settler>) -> Self {
        Self {
            delivery,
            settler,
            settled: AtomicBool::new(false),
        }
    }

    /// Acks it. `Ok(false)` means nothing was sent (the channel is gone, or it was settled
    /// already): the broker will redeliver, and the caller logs it.
    pub async fn ack(&self) -> Result<bool, AmqpError> {
        if !self.take() {
            return Ok(false);
        }
        self.settler
            .settle(self.delivery.delivery_tag, Settle::Ack)
            .await
            .map(|()| true)
    }

    /// Nacks it with `requeue = true`. `Ok(false)` as for [`Inbound::ack`].
    pub async fn requeue(&self) -> Result<bool, AmqpError> {
        if !self.take() {
            return Ok(false);
        }
        self.settler
            .settle(self.delivery.delivery_tag, Settle::Requeue)
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
        !self.settled.swap(true, Ordering::AcqRel) && self.settler.channel.status().connected()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
}

struct Request {
    tag: u64,
    how: Settle,
    done: oneshot::Sender<Result<(), AmqpError>>,
}

/// Settles the deliveries of one channel, from one task that coalesces acks (see the module
/// docs). Make one per channel, when the channel is opened, and give it to every delivery of
/// every consumer on that channel: a second settler on the same channel would not know the
/// first one's tags (it stays safe, but acks one by one).
pub struct Settler {
    channel: Channel,
    requests: mpsc::UnboundedSender<Request>,
}

impl Settler {
    /// The settler of `channel`; its task ends when the settler and every delivery holding it
    /// are dropped.
    pub fn new(channel: Channel) -> Arc<Self> {
        let (requests, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(channel.clone(), rx));
        Arc::new(Self { channel, requests })
    }

    async fn settle(&self, tag: u64, how: Settle) -> Result<(), AmqpError> {
        let (done, answer) = oneshot::channel();
        let gone = || AmqpError::Timeout {
            op: "settle (the channel's settler stopped)".into(),
            after: std::time::Duration::ZERO,
        };
        self.requests
            .send(Request { tag, how, done })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut tags = Tags::default();
    // Acks above the run, not sent yet: a batch's acks are asked for in whatever order its
    // tasks run, often with the lowest tag last, and a moment later one multiple ack covers
    // them all. Held for `HOLD` at most, then sent one by one.
    let mut held: Vec<(Request, Instant)> = Vec::new();
    let mut round = Vec::new();
    loop {
        let first = match held.iter().map(|(_, at)| *at).min() {
            None => rx.recv().await,
            Some(oldest) => tokio::select! {
                r = rx.recv() => r,
                () = tokio::time::sleep_until((oldest + HOLD).into()) => None,
            },
        };
        let closed = match first {
            Some(r) => {
                round.push(r);
                // Let the deliveries settled at the same moment (one batch's commit) ask too.
                tokio::task::yield_now().await;
                while let Ok(r) = rx.try_recv() {
                    round.push(r);
                }
                false
            }
            // Held too long, or no one can ask any more (then nothing waits for the run).
            None => rx.is_closed(),
        };
        // Requeues first, each on its own: no multiple ack below may cover one before it.
        let (requeues, mut acks): (Vec<Request>, Vec<Request>) =
            round.drain(..).partition(|r| r.how == Settle::Requeue);
        for r in requeues {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            let sent = timed(|| "nack (requeue)", channel.basic_nack(r.tag, options)).await;
            tags.settled(r.tag);
            let _ = r.done.send(sent);
        }
        let now = Instant::now();
        let mut asked = std::mem::take(&mut held);
        asked.extend(acks.drain(..).map(|r| (r, now)));
        if asked.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let plan = tags.plan(asked.iter().map(|(r, _)| r.tag).collect());
        let multiple = match plan.multiple {
            Some(top) => Some((
                top,
                timed(
                    || "ack (multiple)",
                    channel.basic_ack(top, BasicAckOptions { multiple: true }),
                )
                .await,
            )),
            None => None,
        };
        let mut alone = Vec::new();
        for (r, at) in asked {
            match &multiple {
                Some((top, sent)) if r.tag <= *top => {
                    let _ = r.done.send(again(sent));
                }
                _ if plan.coalescing && !closed && now.duration_since(at) < HOLD => {
                    held.push((r, at));
                }
                _ => {
                    tags.settled(r.tag);
                    alone.push(r);
                }
            }
        }
        // Acks sent alone go out together: one wait for the connection, not one each.
        let sent = futures_util::future::join_all(alone.iter().map(|r| {
            timed(
                || "ack",
                channel.basic_ack(r.tag, BasicAckOptions::default()),
            )
        }))
        .await;
        for (r, sent) in alone.into_iter().zip(sent) {
            let _ = r.done.send(sent);
        }
        if closed && held.is_empty() {
            return;
        }
    }
}

/// One answer for each delivery a multiple ack covered.
fn again(sent: &Result<(), AmqpError>) -> Result<(), AmqpError> {
    match sent {
        Ok(()) => Ok(()),
        Err(AmqpError::Broker { op, source }) => Err(AmqpError::Broker {
            op: op.clone(),
            source: source.clone(),
        }),
        Err(AmqpError::Timeout { op, after }) => Err(AmqpError::Timeout {
            op: op.clone(),
            after: *after,
        }),
        Err(other) => Err(AmqpError::Timeout {
            op: other.to_string(),
            after: OP_TIMEOUT,
        }),
    }
}

/// Which of a channel's tags are settled: all up to `run`, and those in `above`.
#[derive(Debug, Default)]
struct Tags {
    run: u64,
    above: BTreeSet<u64>,
    /// A tag never settled kept the run from growing for too long: no more coalescing.
    given_up: bool,
}

/// How a round's acks go out.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// One `multiple` ack at this tag covers every ack of the round up to it.
    multiple: Option<u64>,
    /// Whether acks above the run may wait for it (false once coalescing was given up).
    coalescing: bool,
}

impl Tags {
    /// Records `tag` as settled (sent on its own).
    fn settled(&mut self, tag: u64) {
        if self.given_up {
            return;
        }
        if tag == self.run + 1 {
            self.run = tag;
            self.extend();
        } else if tag > self.run {
            self.above.insert(tag);
            if self.above.len() > TRACKED {
                self.given_up = true;
                self.above.clear();
            }
        }
    }

    /// Plans a round's acks and records those the run reaches as settled. The multiple ack's
    /// tag is the highest acked tag the run reaches through this round's acks; the others are
    /// not settled yet: the caller holds them or sends them alone ([`Tags::settled`]).
    fn plan(&mut self, mut acks: Vec<u64>) -> Plan {
        if self.given_up {
            return Plan {
                multiple: None,
                coalescing: false,
            };
        }
        acks.sort_unstable();
        let mut multiple = None;
        for tag in acks {
            if tag == self.run + 1 {
                self.run = tag;
                multiple = Some(tag);
                // Tags sent alone earlier may now join the run.
                self.extend();
            }
        }
        // A run of one tag needs no `multiple`, but one frame either way.
        Plan {
            multiple,
            coalescing: true,
        }
    }

    fn extend(&mut self) {
        while self.above.remove(&(self.run + 1)) {
            self.run += 1;
        }
    }
}

impl Deref for Inbound {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_from_the_first_tag_goes_out_as_one_multiple_ack() {
        let mut t = Tags::default();
        assert_eq!(t.plan(vec![3, 1, 2]).multiple, Some(3));
        assert_eq!(t.run, 3);
        assert_eq!(t.plan(vec![4]).multiple, Some(4));
    }

    #[test]
    fn an_ack_past_a_gap_goes_out_alone_and_joins_the_run_later() {
        let mut t = Tags::default();
        // Tag 1 is still being handled: 2 and 3 go out alone (once held long enough).
        assert_eq!(t.plan(vec![2, 3]).multiple, None);
        assert_eq!(t.run, 0);
        t.settled(2);
        t.settled(3);
        // Tag 1's ack reaches the run over 2 and 3, but the multiple ack's tag is 1 itself:
        // 2 and 3 are no longer outstanding, and an unknown tag would close the channel.
        assert_eq!(t.plan(vec![1]).multiple, Some(1));
        assert_eq!(t.run, 3);
        assert_eq!(t.plan(vec![5, 4]).multiple, Some(5));
    }

    #[test]
    fn acks_held_above_the_run_join_it_when_the_lowest_tag_comes() {
        let mut t = Tags::default();
        // A batch's tasks asked in the order 2..=100, then 1: the first round settles nothing,
        // and the held acks with tag 1 make one multiple ack at 100.
        assert_eq!(t.plan((2..=100).collect()).multiple, None);
        assert_eq!(t.plan((1..=100).collect()).multiple, Some(100));
        assert!(t.above.is_empty());
    }

    #[test]
    fn a_requeue_is_settled_and_never_the_multiple_acks_tag() {
        let mut t = Tags::default();
        t.settled(1);
        assert_eq!(t.plan(vec![2, 4]).multiple, Some(2));
        // 4 is held; 3 is requeued, and the held 4 then joins the run.
        t.settled(3);
        assert_eq!(t.run, 3);
        assert_eq!(t.plan(vec![4]).multiple, Some(4));
        t.settled(6);
        assert_eq!(t.plan(vec![5, 7]).multiple, Some(7));
    }

    #[test]
    fn a_tag_that_never_settles_stops_coalescing_without_growing() {
        let mut t = Tags::default();
        for tag in 2..(TRACKED as u64 + 3) {
            assert_eq!(t.plan(vec![tag]).multiple, None);
            t.settled(tag);
        }
        assert!(t.given_up && t.above.is_empty());
        assert_eq!(
            t.plan(vec![1]),
            Plan {
                multiple: None,
                coalescing: false
            }
        );
    }
}
