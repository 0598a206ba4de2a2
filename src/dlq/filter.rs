//! Which dead letters a command acts on: `--type`, `--kind`, `--grep`, `--since`, `--limit`,
//! and for the console a group's fingerprint, a selection of ids and ids to leave out.

use std::collections::BTreeSet;
use std::time::Duration;

use super::explain::{DeadLetter, Kind, Time};
use crate::topology::topic_matches;

/// The common filters. An empty filter matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Event types or topic patterns (`wallet.*`, `escrow.#`); any may match.
    pub types: Vec<String>,
    /// Kinds; any may match.
    pub kinds: Vec<Kind>,
    /// Case-insensitive text looked for in the id, type, error and body.
    pub grep: Option<String>,
    /// Only dead letters whose last failure is at or after this time.
    pub since: Option<Time>,
    /// Only dead letters whose last failure is before this time.
    pub until: Option<Time>,
    /// Only dead letters whose error has this fingerprint (see [`super::fingerprint`]).
    pub fingerprint: Option<String>,
    /// Only these ids (a selection); empty means any.
    pub ids: BTreeSet<String>,
    /// Never these ids (a canary replay leaves out what it already replayed).
    pub skip: BTreeSet<String>,
    /// Act on at most this many matching dead letters.
    pub limit: Option<usize>,
}

impl Filter {
    /// Sets `since` to `now - ago`.
    pub fn since_ago(mut self, ago: Option<Duration>) -> Self {
        self.since = ago.map(|d| Time(Time::now().0.saturating_sub(d.as_millis() as u64)));
        self
    }

    /// True if `letter` (with `body`) passes every filter but the limit.
    pub fn matches(&self, letter: &DeadLetter, body: &[u8]) -> bool {
        let id = letter.id.as_deref();
        if !self.ids.is_empty() && !id.is_some_and(|i| self.ids.contains(i)) {
            return false;
        }
        if id.is_some_and(|i| self.skip.contains(i)) {
            return false;
        }
        if !self.types.is_empty() {
            let Some(t) = letter.event_type.as_deref() else {
                return false;
            };
            if !self.types.iter().any(|p| p == t || topic_matches(p, t)) {
                return false;
            }
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&letter.kind) {
            return false;
        }
        if let Some(since) = self.since
            && letter.last_failed.is_none_or(|t| t < since)
        {
            return false;
        }
        if let Some(until) = self.until
            && letter.last_failed.is_none_or(|t| t >= until)
        {
            return false;
        }
        if self
            .fingerprint
            .as_ref()
            .is_some_and(|f| *f != super::fingerprint(&letter.error))
        {
            return false;
        }
        if let Some(needle) = &self.grep {
            let needle = needle.to_lowercase();
            let fields = [
                letter.id.as_deref().unwrap_or(""),
                letter.event_type.as_deref().unwrap_or(""),
                letter.agent.as_deref().unwrap_or(""),
                &letter.error,
            ];
            let in_fields = fields.iter().any(|f| f.to_lowercase().contains(&needle));
            if !in_fields
                && !String::from_utf8_lossy(body)
                    .to_lowercase()
                    .contains(&needle)
            {
                return false;
            }
        }
        true
    }

    /// True once `matched` dead letters reach the limit.
    pub fn full(&self, matched: usize) -> bool {
        self.limit.is_some_and(|l| matched >= l)
    }

    /// The filters in words, for confirmation prompts.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.types.is_empty() {
            parts.push(format!("type {}", self.types.join("|")));
        }
        if !self.kinds.is_empty() {
            let k: Vec<&str> = self.kinds.iter().map(|k| k.as_str()).collect();
            parts.push(format!("kind {}", k.join("|")));
        }
        if let Some(g) = &self.grep {
            parts.push(format!("containing '{g}'"));
        }
        if let Some(s) = self.since {
            parts.push(format!("failed since {s}"));
        }
        if let Some(u) = self.until {
            parts.push(format!("failed before {u}"));
        }
        if let Some(f) = &self.fingerprint {
            parts.push(format!("error like '{f}'"));
        }
        if !self.ids.is_empty() {
            parts.push(format!("{} selected", self.ids.len()));
        }
        if !self.skip.is_empty() {
            parts.push(format!("{} left out", self.skip.len()));
        }
        if let Some(l) = self.limit {
            parts.push(format!("at most {l}"));
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(t: &str, kind: Kind, error: &str, last: u64) -> DeadLetter {
        DeadLetter {
            dlq: "q.dlq".into(),
            position: 1,
            id: Some("01ABC".into()),
            event_type: Some(t.into()),
            agent: None,
            kind,
            warren_kind: None,
            attempts: 0,
            replayed: 0,
            first_failed: None,
            last_failed: Some(Time(last)),
            origin: Some("q".into()),
            error: error.into(),
            bytes: 0,
        }
    }

    #[test]
    fn each_filter_narrows() {
        let l = letter("wallet.balance_changed", Kind::Permanent, "HTTP 422", 5_000);
        assert!(Filter::default().matches(&l, b""));
        let f = |f: Filter| f.matches(&l, br#"{"payload":{"pair":"BTC-EUR"}}"#);
        assert!(f(Filter {
            types: vec!["wallet.*".into()],
            ..Default::default()
        }));
        assert!(f(Filter {
            types: vec!["wallet.balance_changed".into()],
            ..Default::default()
        }));
        assert!(!f(Filter {
            types: vec!["escrow.#".into()],
            ..Default::default()
        }));
        assert!(f(Filter {
            kinds: vec![Kind::Exhausted, Kind::Permanent],
            ..Default::default()
        }));
        assert!(!f(Filter {
            kinds: vec![Kind::Expired],
            ..Default::default()
        }));
        assert!(f(Filter {
            grep: Some("http 4".into()),
            ..Default::default()
        }));
        assert!(
            f(Filter {
                grep: Some("btc-eur".into()),
                ..Default::default()
            }),
            "grep looks in the body"
        );
        assert!(!f(Filter {
            grep: Some("timeout".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            since: Some(Time(5_000)),
            ..Default::default()
        }));
        assert!(!f(Filter {
            since: Some(Time(5_001)),
            ..Default::default()
        }));
    }

    #[test]
    fn selection_skip_fingerprint_and_until_narrow() {
        let l = letter(
            "wallet.balance_changed",
            Kind::Permanent,
            "HTTP 422 for 123",
            5_000,
        );
        let f = |f: Filter| f.matches(&l, b"");
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        assert!(f(Filter {
            ids: ids(&["01ABC", "01XYZ"]),
            ..Default::default()
        }));
        assert!(!f(Filter {
            ids: ids(&["01XYZ"]),
            ..Default::default()
        }));
        assert!(!f(Filter {
            skip: ids(&["01ABC"]),
            ..Default::default()
        }));
        assert!(f(Filter {
            fingerprint: Some("HTTP 422 for <n>".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            fingerprint: Some("HTTP 500 for <n>".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            until: Some(Time(5_001)),
            ..Default::default()
        }));
        assert!(!f(Filter {
            until: Some(Time(5_000)),
            ..Default::default()
        }));
    }

    #[test]
    fn limit_is_counted_by_the_caller() {
        let f = Filter {
            limit: Some(2),
            ..Default::default()
        };
        assert!(!f.full(1));
        assert!(f.full(2));
        assert!(!Filter::default().full(1_000_000));
    }
}
