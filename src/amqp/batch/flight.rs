//! The publishes one lane has in flight: their confirms, the returns lapin hands out with
//! them, and which callers can be answered.
//!
//! lapin queues each returned (unroutable) message, and hands the oldest queued one
//! to every confirm it completes, whichever publish that confirm belongs to; within one
//! multiple-ack it completes confirms in hash order. A return can therefore ride on a
//! confirm that completes after its own publish's. But the broker returns a channel's
//! messages in the order they were published, each before its ack, so once every publish up
//! to and including `m` is confirmed, enough confirms have completed to carry every return up
//! to `m`'s, and with it `m`'s. A lane therefore answers only the oldest publishes, up to the
//! first whose confirm is still out.
//!
//! The lane must also have seen the confirms that carry those returns. Each confirm is polled
//! with its own waker, which notes it as woken; lapin completes confirms one after another, each waking its
//! poller as it does, so a confirm completed before one the lane sees complete is already
//! noted. The lane polls noted confirms until none is left, and only then answers.
//!
//! A confirm failed by a channel that closed comes without the return lapin may still hold
//! for it, so the first failed confirm fails everything the lane holds, and closes it.
//!
//! Returns are matched to publishes by exchange, routing key, `message_id` and body, and a
//! lane never has two publishes in flight that match alike. A return that matches none fails
//! every publish in flight on the lane: a message kept is at worst a duplicate, one acked
//! wrongly would be lost.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use foldhash::HashSet;
use futures_util::task::AtomicWaker;
use lapin::message::BasicReturnMessage;
use lapin::{Confirmation, PublisherConfirm};
use tokio::time::Instant;

use super::request::{Request, matches_request, returned_identity};
use crate::amqp::AmqpError;
use crate::amqp::publish::target;

/// One publish sent on a lane and not yet answered.
pub(super) struct Sent {
    request: Request,
    confirm: Confirm,
    /// The broker's reply, when this publish came back unroutable.
    returned: Option<String>,
    /// Notes this publish in [`Woken`] when its confirm may have completed.
    waker: Waker,
}

/// Which confirms of a lane were woken, in the order they were, and the lane's task to wake.
#[derive(Default)]
struct Woken {
    ids: Mutex<Vec<u64>>,
    lane: AtomicWaker,
}

struct SlotWaker {
    id: u64,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.woken.ids).push(self.id);
        self.woken.lane.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A publish's confirm: still out, or in.
enum Confirm {
    Out(PublisherConfirm),
    In(Outcome),
}

/// A confirm that is in, without the return lapin may have handed with it (that one goes to
/// the publish it belongs to): a `Confirmation` can hold a whole returned message inline,
/// 470 bytes in every publish in flight.
enum Outcome {
    Ack,
    Nack,
    NotRequested,
    /// The channel failed (rare: boxed).
    Failed(Box<lapin::Error>),
}

/// Everything a lane has sent and not answered, by the order sent.
#[derive(Default)]
pub(super) struct Flight {
    pub(super) sent: BTreeMap<u64, Sent>,
    keys: HashSet<u64>,
    next_id: u64,
    woken: Arc<Woken>,
    /// Ids taken from `woken`, reused between polls.
    taken: Vec<u64>,
    /// A confirm failed: the channel closed or errored.
    pub(super) broken: bool,
}

impl Flight {
    /// False while a publish that a return could not tell apart from `r` is in flight.
    pub(super) fn admits(&self, r: &Request) -> bool {
        !self.keys.contains(&r.key)
    }

    pub(super) fn push(&mut self, request: Request, confirm: PublisherConfirm) {
        let id = self.next_id;
        self.next_id += 1;
        self.keys.insert(request.key);
        let waker = Waker::from(Arc::new(SlotWaker {
            id,
            woken: self.woken.clone(),
        }));
        // Never polled yet, so no wake-up would name it: it is looked at on the next poll.
        lock(&self.woken.ids).push(id);
        self.sent.insert(
            id,
            Sent {
                request,
                confirm: Confirm::Out(confirm),
                returned: None,
                waker,
            },
        );
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Polls the confirms woken since the last call, again and again until none was, then
    /// answers the oldest publishes whose confirms are in, up to the first still out (see the
    /// module docs). `Ready` once it answered at least one.
    pub(super) fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.woken.lane.register(cx.waker());
        let mut returns = Vec::new();
        loop {
            std::mem::swap(&mut self.taken, &mut *lock(&self.woken.ids));
            if self.taken.is_empty() {
                break;
            }
            for id in self.taken.drain(..) {
                let Some(s) = self.sent.get_mut(&id) else {
                    continue;
                };
                let Confirm::Out(confirm) = &mut s.confirm else {
                    continue;
                };
                let Poll::Ready(outcome) =
                    Pin::new(confirm).poll(&mut Context::from_waker(&s.waker))
                else {
                    continue;
                };
                // The return goes to the publish it belongs to, which may be another.
                let outcome = match outcome {
                    Ok(Confirmation::Ack(returned)) => {
                        returns.extend(returned);
                        Outcome::Ack
                    }
                    Ok(Confirmation::Nack(returned)) => {
                        returns.extend(returned);
                        Outcome::Nack
                    }
                    Ok(Confirmation::NotRequested) => Outcome::NotRequested,
                    // lapin fails every pending confirm of a channel that closed, without
                    // handing out the returns it still holds: nothing after this is trusted.
                    Err(error) => {
                        self.broken = true;
                        Outcome::Failed(Box::new(error))
                    }
                };
                s.confirm = Confirm::In(outcome);
            }
        }
        for message in &returns {
            self.attribute(message);
        }
        if self.broken {
            // Answered as in `close`; the lane's task closes next.
            return Poll::Ready(());
        }
        // Only the oldest publishes, up to the first still pending: see the module docs.
        let mut answered = false;
        while let Some(entry) = self.sent.first_entry()
            && matches!(entry.get().confirm, Confirm::In(_))
        {
            let s = entry.remove();
            self.keys.remove(&s.request.key);
            if let Confirm::In(outcome) = s.confirm {
                answer(s.request, outcome, s.returned);
            }
            answered = true;
        }
        if answered {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Marks the publish a return belongs to, or, when none matches, every publish in flight.
    fn attribute(&mut self, message: &BasicReturnMessage) {
        let reply = format!("{} {}", message.reply_code, message.reply_text);
        let key = returned_identity(message);
        if let Some(s) = self
            .sent
            .values_mut()
            .find(|s| s.request.key == key && matches_request(message, &s.request))
        {
            s.returned = Some(reply);
            return;
        }
        tracing::warn!(%reply, "A returned message matches no publish in flight; failing them all.");
        for s in self.sent.values_mut() {
            s.returned.get_or_insert_with(|| {
                format!("{reply}, a message in flight with it that cannot be told apart")
            });
        }
    }

    /// When the oldest publish in flight stops waiting for its confirm. It holds back every
    /// answer after it, so its deadline is the one that closes the channel.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.sent.first_key_value().map(|(_, s)| s.request.deadline)
    }

    pub(super) fn into_requests(self) -> impl Iterator<Item = Request> {
        self.sent.into_values().map(|s| s.request)
    }
}

fn answer(request: Request, outcome: Outcome, returned: Option<String>) {
    let target = || target(&request.exchange, &request.routing_key);
    let message_id = || request.message_id.as_ref().map(|id| id.to_string());
    let result = match outcome {
        Outcome::Failed(source) => Err(AmqpError::Broker {
            op: format!("confirm of publish to {}", target()),
            source: *source,
        }),
        Outcome::Nack => Err(AmqpError::Nacked {
            target: target(),
            returned: returned.is_some().then(message_id),
        }),
        Outcome::NotRequested => Err(AmqpError::NotConfirmed { target: target() }),
        Outcome::Ack => match returned {
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
