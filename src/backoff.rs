//! Exponential backoff with full jitter, reset after a stable period. Used for broker and
//! WebSocket reconnects and for in-process HTTP retries.

use std::time::{Duration, Instant};

/// Full-jitter exponential backoff: the n-th delay is uniform in `[0, min(cap, base * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    stable_after: Duration,
    failures: u32,
    connected_at: Option<Instant>,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            stable_after: Duration::from_secs(30),
            failures: 0,
            connected_at: None,
        }
    }

    /// Broker and WebSocket reconnects: 100 ms up to 30 s, reset after 1 s connected.
    ///
    /// The counter is for attempts that fail to get a working connection (refused, timed out, or
    /// dropped at once). A connection that worked for a second and was then closed (a broker
    /// restart, `close_all_connections`) starts again from 100 ms: after ten closes in twenty
    /// seconds, a 30 s stable period had pushed the ceiling to 51 s and left a healthy broker
    /// idle for up to that long.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
            .with_stable_after(Duration::from_secs(1))
    }

    /// How long a connection must stay up before the next failure starts from `base` again.
    pub fn with_stable_after(mut self, stable_after: Duration) -> Self {
        self.stable_after = stable_after;
        self
    }

    /// The upper bound of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        if let Some(at) = self.connected_at.take()
            && at.elapsed() >= self.stable_after
        {
            self.failures = 0;
        }
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Records a successful connection; the counter resets if it stays up `stable_after`.
    pub fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_under_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = vec![];
        for _ in 0..8 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
    }

    #[test]
    fn a_stable_connection_resets_the_counter_a_flapping_one_does_not() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60))
            .with_stable_after(Duration::ZERO);
        b.next_delay();
        b.next_delay();
        b.connected();
        b.next_delay();
        assert_eq!(b.failures(), 1);

        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60))
            .with_stable_after(Duration::from_secs(3600));
        b.next_delay();
        b.connected();
        b.next_delay();
        assert_eq!(b.failures(), 2);
    }
}
