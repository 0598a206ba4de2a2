//! Deterministic fault injection. A request's fault is a function of (seed, key, n), n being the
//! request's number for its key, so a run repeats exactly and a retry of the same key can pass.
//!
//! The rule that keeps any key from failing forever: only a key's first `max_per_key` requests
//! can be faulted; from the next one on, the key is served normally. Rejections (422) are the
//! exception by design: they are a verdict on the request, the same on every try.

use sha2::{Digest, Sha256};

/// The fault a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Served normally.
    None,
    /// 500 before anything is done.
    Fail,
    /// 429 with `Retry-After` before anything is done.
    Throttle,
    /// The effect is committed, then the answer is a 504, or nothing until the client gives up
    /// (`hang`).
    Ambiguous {
        /// Hang instead of answering 504.
        hang: bool,
    },
    /// A duplicate of this request is "already in flight": it is processed in the background
    /// (and committed) while this one gets a 409.
    Conflict,
}

/// How often each fault happens, each in `[0, 1]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRates {
    /// 500s.
    pub fail: f64,
    /// 429s.
    pub throttle: f64,
    /// Committed, then 504 or a hang.
    pub ambiguous: f64,
    /// 409 with the duplicate committed in the background.
    pub conflict: f64,
    /// Keys whose every request is rejected with 422.
    pub reject: f64,
}

impl FaultRates {
    /// Each rate is in `[0, 1]` and the per-request ones add up to at most 1. Errors name the flag.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("--fail-rate", self.fail),
            ("--throttle-rate", self.throttle),
            ("--ambiguous-rate", self.ambiguous),
            ("--conflict-rate", self.conflict),
            ("--reject-rate", self.reject),
        ];
        for (flag, rate) in named {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{flag}: {rate} is not between 0 and 1"));
            }
        }
        let sum = self.fail + self.throttle + self.ambiguous + self.conflict;
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "--fail-rate + --throttle-rate + --ambiguous-rate + --conflict-rate is {sum}, more than 1"
            ));
        }
        Ok(())
    }
}

/// Decides faults from a seed.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    seed: u64,
    rates: FaultRates,
    max_per_key: u32,
    hang: bool,
}

impl FaultPlan {
    /// A plan; `hang` allows half of the ambiguous faults to hang instead of answering 504.
    pub fn new(seed: u64, rates: FaultRates, max_per_key: u32, hang: bool) -> Self {
        Self {
            seed,
            rates,
            max_per_key,
            hang,
        }
    }

    /// The fault for the `n`-th request (from 1) carrying `key`.
    pub fn fault(&self, key: &str, n: u32) -> Fault {
        if n > self.max_per_key {
            return Fault::None;
        }
        let r = &self.rates;
        let u = self.unit(key, "fault", n);
        let mut edge = r.fail;
        if u < edge {
            return Fault::Fail;
        }
        edge += r.throttle;
        if u < edge {
            return Fault::Throttle;
        }
        edge += r.ambiguous;
        if u < edge {
            return Fault::Ambiguous {
                hang: self.hang && self.unit(key, "hang", n) < 0.5,
            };
        }
        edge += r.conflict;
        if u < edge {
            return Fault::Conflict;
        }
        Fault::None
    }

    /// Whether every request with `key` is rejected (422).
    pub fn rejects(&self, key: &str) -> bool {
        self.unit(key, "reject", 0) < self.rates.reject
    }

    /// A uniform number in `[0, 1)` from (seed, key, what, n); sha256 so it is the same on every
    /// build and platform.
    fn unit(&self, key: &str, what: &str, n: u32) -> f64 {
        let mut h = Sha256::new();
        h.update(self.seed.to_be_bytes());
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update(what.as_bytes());
        h.update(n.to_be_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> FaultRates {
        FaultRates {
            fail: 0.2,
            throttle: 0.2,
            ambiguous: 0.2,
            conflict: 0.2,
            reject: 0.1,
        }
    }

    #[test]
    fn same_seed_same_faults_other_seed_other_faults() {
        let a = FaultPlan::new(7, rates(), 3, true);
        let b = FaultPlan::new(7, rates(), 3, true);
        let c = FaultPlan::new(8, rates(), 3, true);
        let run = |p: &FaultPlan| {
            (0..200)
                .flat_map(|k| (1..=3).map(move |n| (format!("key-{k}"), n)))
                .map(|(k, n)| p.fault(&k, n))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&a), run(&b));
        assert_ne!(run(&a), run(&c));
    }

    #[test]
    fn no_key_is_faulted_past_the_cap() {
        let all_fail = FaultRates {
            fail: 1.0,
            ..Default::default()
        };
        let p = FaultPlan::new(1, all_fail, 2, false);
        assert_eq!(p.fault("k", 1), Fault::Fail);
        assert_eq!(p.fault("k", 2), Fault::Fail);
        assert_eq!(p.fault("k", 3), Fault::None);
        assert_eq!(p.fault("k", 100), Fault::None);
    }

    #[test]
    fn rates_are_roughly_honoured() {
        let p = FaultPlan::new(42, rates(), 1, true);
        let n = 20_000;
        let mut counts = [0usize; 5];
        let mut rejected = 0;
        for k in 0..n {
            let key = format!("key-{k}");
            let i = match p.fault(&key, 1) {
                Fault::None => 0,
                Fault::Fail => 1,
                Fault::Throttle => 2,
                Fault::Ambiguous { .. } => 3,
                Fault::Conflict => 4,
            };
            counts[i] += 1;
            rejected += p.rejects(&key) as usize;
        }
        for (i, c) in counts.iter().enumerate() {
            let share = *c as f64 / n as f64;
            assert!((share - 0.2).abs() < 0.02, "fault {i}: {share}");
        }
        assert!(((rejected as f64 / n as f64) - 0.1).abs() < 0.02);
    }

    #[test]
    fn without_hang_ambiguous_always_answers() {
        let p = FaultPlan::new(
            3,
            FaultRates {
                ambiguous: 1.0,
                ..Default::default()
            },
            5,
            false,
        );
        assert!((1..=5).all(|n| p.fault("k", n) == Fault::Ambiguous { hang: false }));
    }

    #[test]
    fn validation_names_the_flag() {
        let bad = FaultRates {
            reject: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("--reject-rate"));
        let too_much = FaultRates {
            fail: 0.6,
            throttle: 0.6,
            ..Default::default()
        };
        assert!(too_much.validate().unwrap_err().contains("more than 1"));
        assert!(rates().validate().is_ok());
    }
}
