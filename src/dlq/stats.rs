//! `dlq stats`: dead letters counted by origin queue, kind, event type and error fingerprint.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::explain::{DeadLetter, Kind, Time};
use super::fingerprint::fingerprint;
use super::report::Scan;

/// One group: dead letters sharing origin, kind, type and error fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// How many.
    pub count: usize,
    /// Their origin queue.
    pub origin: Option<String>,
    /// Their kind.
    pub kind: Kind,
    /// Their event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The normalized error.
    pub fingerprint: String,
    /// One real error text of the group.
    pub example: String,
    /// The earliest last-failure time in the group.
    pub first: Option<Time>,
    /// The latest last-failure time in the group.
    pub last: Option<Time>,
}

/// The counts.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Every DLQ read.
    pub scans: Vec<Scan>,
    /// Dead letters counted.
    pub total: usize,
    /// Groups, largest first.
    pub groups: Vec<Group>,
    /// Totals per origin queue.
    pub by_origin: BTreeMap<String, usize>,
    /// Totals per kind.
    pub by_kind: BTreeMap<String, usize>,
    /// Totals per event type.
    pub by_type: BTreeMap<String, usize>,
}

type Key = (Option<String>, Kind, Option<String>, String);

/// Counts dead letters one at a time, so `stats` holds groups, not messages.
#[derive(Debug, Default)]
pub struct StatsBuilder {
    total: usize,
    groups: HashMap<Key, Group>,
    /// Keys in the order first seen, so equal counts keep that order.
    order: Vec<Key>,
    by_origin: BTreeMap<String, usize>,
    by_kind: BTreeMap<String, usize>,
    by_type: BTreeMap<String, usize>,
}

impl StatsBuilder {
    /// Counts one dead letter.
    pub fn add(&mut self, l: &DeadLetter) {
        let label = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        self.total += 1;
        *self.by_origin.entry(label(&l.origin)).or_default() += 1;
        *self.by_kind.entry(l.kind.as_str().to_string()).or_default() += 1;
        *self.by_type.entry(label(&l.event_type)).or_default() += 1;
        let key: Key = (
            l.origin.clone(),
            l.kind,
            l.event_type.clone(),
            fingerprint(&l.error),
        );
        let g = match self.groups.get_mut(&key) {
            Some(g) => g,
            None => {
                self.order.push(key.clone());
                self.groups.entry(key.clone()).or_insert(Group {
                    count: 0,
                    origin: l.origin.clone(),
                    kind: l.kind,
                    event_type: l.event_type.clone(),
                    fingerprint: key.3,
                    example: l.error.clone(),
                    first: l.last_failed,
                    last: l.last_failed,
                })
            }
        };
        g.count += 1;
        g.first = match (g.first, l.last_failed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        g.last = g.last.max(l.last_failed);
    }

    /// The counts, largest group first.
    pub fn finish(mut self, scans: Vec<Scan>) -> Stats {
        let mut groups: Vec<Group> = self
            .order
            .iter()
            .filter_map(|k| self.groups.remove(k))
            .collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        Stats {
            scans,
            total: self.total,
            groups,
            by_origin: self.by_origin,
            by_kind: self.by_kind,
            by_type: self.by_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(error: &str, kind: Kind, at: u64) -> DeadLetter {
        DeadLetter {
            dlq: "q.dlq".into(),
            position: 1,
            id: None,
            event_type: Some("escrow.released".into()),
            agent: None,
            kind,
            warren_kind: None,
            attempts: 1,
            replayed: 0,
            first_failed: None,
            last_failed: Some(Time(at)),
            origin: Some("q".into()),
            error: error.into(),
            bytes: 0,
        }
    }

    #[test]
    fn errors_differing_in_ids_form_one_group() {
        let letters = [
            letter(
                "HTTP 422: order 01J9ZK3W8Q5V6X7Y8Z9A0B1C2D rejected",
                Kind::Permanent,
                3,
            ),
            letter("timeout after 30s", Kind::Exhausted, 9),
            letter(
                "HTTP 422: order 01J9ZK3W8Q5V6X7Y8Z9A0B1C2E rejected",
                Kind::Permanent,
                1,
            ),
            letter(
                "HTTP 422: order 01J9ZK3W8Q5V6X7Y8Z9A0B1C2F rejected",
                Kind::Permanent,
                2,
            ),
        ];
        let mut b = StatsBuilder::default();
        letters.iter().for_each(|l| b.add(l));
        let s = b.finish(vec![]);
        assert_eq!(s.total, 4);
        assert_eq!(s.groups.len(), 2);
        let g = &s.groups[0];
        assert_eq!((g.count, g.kind), (3, Kind::Permanent));
        assert_eq!(g.fingerprint, "HTTP 422: order <ulid> rejected");
        assert_eq!((g.first, g.last), (Some(Time(1)), Some(Time(3))));
        assert_eq!(s.by_kind["permanent"], 3);
        assert_eq!(s.by_origin["q"], 4);
    }
}
