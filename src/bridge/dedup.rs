//! The eventId window that drops replayed and duplicated frames: an id at or below the
//! confirmed cursor is a replay (ULIDs are monotonic in the stream), and the ids accepted since
//! are remembered in a bounded window.

use std::collections::{HashSet, VecDeque};

use ulid::Ulid;

/// A bounded set of recent eventIds above a floor.
#[derive(Debug)]
pub struct Dedup {
    floor: Option<Ulid>,
    recent: HashSet<Ulid>,
    order: VecDeque<Ulid>,
    capacity: usize,
}

impl Dedup {
    /// A window of `capacity` ids (at least 1) above `floor`.
    pub fn new(capacity: usize, floor: Option<Ulid>) -> Self {
        Self {
            floor,
            recent: HashSet::with_capacity(capacity.max(1)),
            order: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// True (and remembered) if `id` was not seen; false for a replay or a duplicate.
    pub fn accept(&mut self, id: Ulid) -> bool {
        if self.floor.is_some_and(|f| id <= f) || !self.recent.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.recent.remove(&old);
        }
        true
    }

    /// Raises the floor to the confirmed cursor and forgets ids at or below it.
    pub fn raise_floor(&mut self, cursor: Ulid) {
        if self.floor.is_some_and(|f| cursor <= f) {
            return;
        }
        self.floor = Some(cursor);
        while let Some(&old) = self.order.front() {
            if old > cursor {
                break;
            }
            self.order.pop_front();
            self.recent.remove(&old);
        }
    }

    /// Ids remembered above the floor.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no id above the floor is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Ulid {
        Ulid::from_parts(1, n)
    }

    #[test]
    fn drops_duplicates_and_anything_at_or_below_the_floor() {
        let mut d = Dedup::new(4, Some(id(10)));
        assert!(!d.accept(id(3)));
        assert!(!d.accept(id(10)));
        assert!(d.accept(id(11)));
        assert!(!d.accept(id(11)));
        assert!(d.accept(id(12)));
        d.raise_floor(id(11));
        assert_eq!(d.len(), 1);
        assert!(!d.accept(id(11)));
        assert!(!d.accept(id(12)));
        d.raise_floor(id(5));
        assert!(!d.accept(id(11)), "the floor never goes down");
    }

    #[test]
    fn the_window_is_bounded() {
        let mut d = Dedup::new(3, None);
        for n in 1..=10 {
            assert!(d.accept(id(n)));
        }
        assert_eq!(d.len(), 3);
        assert!(!d.accept(id(10)));
    }
}
