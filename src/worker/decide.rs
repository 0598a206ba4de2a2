//! The pure decision from a handler's outcome to what happens to the message. No I/O: tested
//! with a table.

use std::time::Duration;

use super::handler::{HandlerError, HandlerResult};
use crate::amqp::ErrorKind;
use crate::topology::QueueSpec;

/// What to do with a delivery once its handler has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The effect is done.
    Ack,
    /// Park in the retry tier `delay`, then come back to the queue that failed.
    Retry {
        /// The tier's delay.
        delay: Duration,
        /// Attempts so far, including this one (the new `x-warren-attempt`).
        attempt: u32,
        /// Epoch ms before which the handler must not run again, when the requested delay
        /// (a 429's `Retry-After`) is longer than the longest tier.
        not_before_ms: Option<u64>,
        /// The error, for the failure headers.
        reason: String,
    },
    /// Park in the tier `delay` unchanged, without counting an attempt: the message came back
    /// before its `not_before`, or the downstream is unavailable.
    Defer {
        /// The tier's delay.
        delay: Duration,
    },
    /// Give up: republish to the dead-letter exchange with the failure headers.
    DeadLetter {
        /// Why.
        kind: ErrorKind,
        /// The error.
        reason: String,
        /// Attempts so far, including this one.
        attempt: u32,
    },
    /// Put it back untouched (`nack`, `requeue = true`): only for shutdown drains.
    Requeue,
}

/// Decides the fate of a message whose handler returned `result` after `attempt` earlier
/// failed attempts, under the retry policy of `queue`.
pub fn decide(result: &HandlerResult, attempt: u32, queue: &QueueSpec, now_ms: u64) -> Disposition {
    let error = match result {
        Ok(()) => return Disposition::Ack,
        Err(e) => e,
    };
    let attempt = attempt.saturating_add(1);
    match error {
        HandlerError::Permanent(reason) => Disposition::DeadLetter {
            kind: ErrorKind::Permanent,
            reason: reason.clone(),
            attempt,
        },
        // Park it in the shortest tier without counting an attempt: a nack would hand it straight
        // back, looping hot and burning the delivery limit while the downstream is down.
        HandlerError::Unavailable(_) => match queue.retry_delays.first() {
            Some(&delay) => Disposition::Defer { delay },
            None => Disposition::Requeue,
        },
        HandlerError::Transient {
            reason,
            retry_after,
        } => {
            let backoff_tier = queue
                .retry_delays
                .get((attempt as usize - 1).min(queue.retry_delays.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default();
            let wanted = retry_after.map_or(backoff_tier, |ra| ra.max(backoff_tier));
            match queue.tier_for(wanted) {
                Some(delay) if attempt < queue.max_attempts => Disposition::Retry {
                    delay,
                    attempt,
                    not_before_ms: (wanted > delay).then(|| {
                        now_ms.saturating_add(wanted.as_millis().min(u64::MAX as u128) as u64)
                    }),
                    reason: reason.clone(),
                },
                _ => Disposition::DeadLetter {
                    kind: ErrorKind::Exhausted,
                    reason: format!("{reason} (after {attempt} attempts)"),
                    attempt,
                },
            }
        }
    }
}

/// A message carrying `x-warren-not-before` in the future goes back to a tier unchanged.
pub fn defer(not_before_ms: Option<u64>, queue: &QueueSpec, now_ms: u64) -> Option<Disposition> {
    let remaining = not_before_ms?.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    let delay = queue.tier_for(Duration::from_millis(remaining))?;
    Some(Disposition::Defer { delay })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::QueueType;

    fn queue() -> QueueSpec {
        QueueSpec {
            name: "q".into(),
            bind: vec!["a.b".into()],
            queue_type: QueueType::Quorum,
            prefetch: 10,
            max_attempts: 4,
            retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60),
            ],
            delivery_limit: 10,
            message_ttl: None,
            max_length: None,
            single_active_consumer: false,
            expires: None,
            quorum_initial_group_size: None,
            lanes: None,
            lane_of: None,
        }
    }

    fn retry(delay: u64, attempt: u32, not_before_ms: Option<u64>) -> Disposition {
        Disposition::Retry {
            delay: Duration::from_secs(delay),
            attempt,
            not_before_ms,
            reason: "boom".into(),
        }
    }

    #[test]
    fn the_decision_table() {
        let q = queue();
        let now = 1_000_000;
        let transient = Err(HandlerError::transient("boom"));
        let cases: Vec<(HandlerResult, u32, Disposition)> = vec![
            (Ok(()), 0, Disposition::Ack),
            (Ok(()), 3, Disposition::Ack),
            // Tiers in order, one per failed attempt.
            (transient.clone(), 0, retry(1, 1, None)),
            (transient.clone(), 1, retry(10, 2, None)),
            (transient.clone(), 2, retry(60, 3, None)),
            // The fourth failure with max_attempts = 4 is the last.
            (
                transient.clone(),
                3,
                Disposition::DeadLetter {
                    kind: ErrorKind::Exhausted,
                    reason: "boom (after 4 attempts)".into(),
                    attempt: 4,
                },
            ),
            (
                Err(HandlerError::permanent("bad request")),
                0,
                Disposition::DeadLetter {
                    kind: ErrorKind::Permanent,
                    reason: "bad request".into(),
                    attempt: 1,
                },
            ),
            (
                Err(HandlerError::Unavailable("circuit open".into())),
                2,
                Disposition::Defer {
                    delay: Duration::from_secs(1),
                },
            ),
            // Retry-After picks the smallest tier at least that long.
            (
                Err(HandlerError::retry_after(Duration::from_secs(5), "boom")),
                0,
                retry(10, 1, None),
            ),
            // Longer than every tier: the longest tier, and a not-before stamp.
            (
                Err(HandlerError::retry_after(Duration::from_secs(300), "boom")),
                0,
                retry(60, 1, Some(now + 300_000)),
            ),
        ];
        for (result, attempt, want) in cases {
            assert_eq!(
                decide(&result, attempt, &q, now),
                want,
                "{result:?} at attempt {attempt}"
            );
        }
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let mut q = queue();
        q.max_attempts = 1;
        let d = decide(&Err(HandlerError::transient("x")), 0, &q, 0);
        assert!(matches!(
            d,
            Disposition::DeadLetter {
                kind: ErrorKind::Exhausted,
                attempt: 1,
                ..
            }
        ));
    }

    #[test]
    fn not_before_in_the_future_defers_in_the_past_does_not() {
        let q = queue();
        assert_eq!(
            defer(Some(10_000 + 240_000), &q, 10_000),
            Some(Disposition::Defer {
                delay: Duration::from_secs(60)
            })
        );
        assert_eq!(
            defer(Some(10_000 + 5_000), &q, 10_000),
            Some(Disposition::Defer {
                delay: Duration::from_secs(10)
            })
        );
        assert_eq!(defer(Some(9_000), &q, 10_000), None);
        assert_eq!(defer(None, &q, 10_000), None);
    }
}
