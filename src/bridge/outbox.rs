//! Everything the bridge has taken responsibility for and not yet seen confirmed, in stream
//! order. Pure bookkeeping: the cursor is the last eventId of the confirmed prefix, so it never
//! passes an event that is unconfirmed, nacked or waiting to be republished.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use ulid::Ulid;

use crate::amqp::BasicProperties;

/// The longest wait before a nacked event is published again.
pub const MAX_NACK_DELAY: Duration = Duration::from_secs(60);

/// One message to publish, kept until confirmed so it can be sent again.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The exchange.
    pub exchange: Arc<str>,
    /// The routing key.
    pub routing_key: String,
    /// The body, verbatim.
    pub body: Vec<u8>,
    /// Properties and headers.
    pub properties: BasicProperties,
}

/// Where a slot came from, and who waits for it.
#[derive(Debug)]
pub enum Origin {
    /// An upstream event: confirming it may move the cursor.
    Stream(Ulid),
    /// An upstream frame that is not an envelope, on its way to the dead-letter exchange.
    Invalid,
    /// A webhook request, answered once the publish is confirmed.
    Webhook(Option<oneshot::Sender<()>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not published on the current channel (new, or the connection was lost).
    Unsent,
    /// Published; waiting for the confirm.
    Sent,
    /// Nacked; publish again at this time.
    RetryAt(Instant),
    /// Confirmed (or returned unroutable, which retrying cannot fix).
    Done,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    out: Outgoing,
    origin: Origin,
    state: State,
    nacks: u32,
}

/// The ordered slots, at most `capacity` of them.
#[derive(Debug)]
pub struct Outbox {
    slots: VecDeque<Slot>,
    next_seq: u64,
    capacity: usize,
}

impl Outbox {
    /// An outbox holding at most `capacity` (at least 1) slots.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: VecDeque::with_capacity(capacity.max(1)),
            next_seq: 0,
            capacity: capacity.max(1),
        }
    }

    /// True while another slot fits.
    pub fn has_room(&self) -> bool {
        self.slots.len() < self.capacity
    }

    /// Slots held (not yet popped past the cursor).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when everything taken has been confirmed and popped.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes a message; returns its sequence number.
    pub fn push(&mut self, out: Outgoing, origin: Origin) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(Slot {
            seq,
            out,
            origin,
            state: State::Unsent,
            nacks: 0,
        });
        seq
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let first = self.slots.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.slots.get_mut(i)
    }

    /// The message of slot `seq`, marked as sent.
    pub fn mark_sent(&mut self, seq: u64) -> Option<&Outgoing> {
        let slot = self.slot_mut(seq)?;
        slot.state = State::Sent;
        Some(&slot.out)
    }

    /// Marks `seq` confirmed and answers its webhook request. False if it was not pending.
    pub fn confirm(&mut self, seq: u64) -> bool {
        let Some(slot) = self.slot_mut(seq) else {
            return false;
        };
        if slot.state == State::Done {
            return false;
        }
        slot.state = State::Done;
        if let Origin::Webhook(reply) = &mut slot.origin
            && let Some(reply) = reply.take()
        {
            let _ = reply.send(());
        }
        true
    }

    /// Marks `seq` nacked: it is republished after a delay that doubles per nack, from 100 ms
    /// up to [`MAX_NACK_DELAY`]. A nack may come from one full queue while the other queues
    /// bound to the event took it, and each retry gives those a duplicate: the growing delay
    /// bounds how many. Returns the delay.
    pub fn nack(&mut self, seq: u64, now: Instant) -> Option<Duration> {
        let slot = self.slot_mut(seq)?;
        slot.nacks = slot.nacks.saturating_add(1);
        let delay = Duration::from_millis(50u64.saturating_mul(1 << slot.nacks.min(11)))
            .min(MAX_NACK_DELAY);
        slot.state = State::RetryAt(now + delay);
        Some(delay)
    }

    /// Slots to publish now: unsent ones and nacked ones whose delay passed, in order.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| match s.state {
                State::Unsent => true,
                State::RetryAt(at) => at <= now,
                State::Sent | State::Done => false,
            })
            .map(|s| s.seq)
            .collect()
    }

    /// True if some slot is unsent or waiting for a retry.
    pub fn has_waiting(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.state, State::Unsent | State::RetryAt(_)))
    }

    /// The publishing channel was lost: every unconfirmed slot must be sent again.
    pub fn resend_all(&mut self) {
        for s in &mut self.slots {
            if s.state != State::Done {
                s.state = State::Unsent;
            }
        }
    }

    /// Pops the confirmed prefix; returns the last upstream eventId in it, the new cursor.
    pub fn pop_confirmed(&mut self) -> Option<Ulid> {
        let mut cursor = None;
        while self.slots.front().is_some_and(|s| s.state == State::Done) {
            if let Some(Slot {
                origin: Origin::Stream(id),
                ..
            }) = self.slots.pop_front()
            {
                cursor = Some(id);
            }
        }
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> Outgoing {
        Outgoing {
            exchange: Arc::from("ev"),
            routing_key: "a.b".into(),
            body: b"{}".to_vec(),
            properties: BasicProperties::default(),
        }
    }

    fn id(n: u128) -> Ulid {
        Ulid::from_parts(1, n)
    }

    #[test]
    fn the_cursor_follows_the_confirmed_prefix_only() {
        let mut o = Outbox::new(8);
        let a = o.push(out(), Origin::Stream(id(1)));
        let bad = o.push(out(), Origin::Invalid);
        let b = o.push(out(), Origin::Stream(id(2)));
        let c = o.push(out(), Origin::Stream(id(3)));
        assert_eq!(o.due(Instant::now()), [a, bad, b, c]);
        for s in [a, bad, b, c] {
            o.mark_sent(s);
        }
        o.confirm(c);
        assert_eq!(o.pop_confirmed(), None, "c is confirmed but a is not");
        o.confirm(a);
        assert_eq!(o.pop_confirmed(), Some(id(1)));
        o.confirm(b);
        assert_eq!(
            o.pop_confirmed(),
            None,
            "the invalid frame still holds the line"
        );
        o.confirm(bad);
        assert_eq!(o.pop_confirmed(), Some(id(3)));
        assert!(o.is_empty());
    }

    #[test]
    fn a_nacked_slot_blocks_the_cursor_until_its_retry_is_confirmed() {
        let mut o = Outbox::new(8);
        let a = o.push(out(), Origin::Stream(id(1)));
        let b = o.push(out(), Origin::Stream(id(2)));
        o.mark_sent(a);
        o.mark_sent(b);
        let now = Instant::now();
        let d1 = o.nack(a, now).unwrap();
        o.confirm(b);
        assert_eq!(o.pop_confirmed(), None);
        assert!(o.due(now).is_empty());
        assert_eq!(o.due(now + d1), [a]);
        o.mark_sent(a);
        let d2 = o.nack(a, now).unwrap();
        assert!(d2 > d1, "retries back off");
        o.mark_sent(a);
        o.confirm(a);
        assert_eq!(o.pop_confirmed(), Some(id(2)));
    }

    #[test]
    fn a_lost_channel_resends_every_unconfirmed_slot_in_order_and_capacity_holds() {
        let mut o = Outbox::new(3);
        let s: Vec<u64> = (1..=3)
            .map(|n| o.push(out(), Origin::Stream(id(n))))
            .collect();
        assert!(!o.has_room());
        for &x in &s {
            o.mark_sent(x);
        }
        o.confirm(s[1]);
        o.resend_all();
        assert_eq!(o.due(Instant::now()), [s[0], s[2]]);
        assert!(!o.confirm(s[1]), "already done");
    }

    #[test]
    fn webhook_slots_are_answered_on_their_own_confirm() {
        let mut o = Outbox::new(4);
        let a = o.push(out(), Origin::Stream(id(1)));
        let (tx, mut rx) = oneshot::channel();
        let w = o.push(out(), Origin::Webhook(Some(tx)));
        o.confirm(w);
        assert!(rx.try_recv().is_ok());
        assert_eq!(o.pop_confirmed(), None);
        o.confirm(a);
        assert_eq!(o.pop_confirmed(), Some(id(1)));
        assert!(o.is_empty());
    }
}
