//! Who works a laned queue: every worker publishes a heartbeat on the queue's roster exchange
//! each second and hears everyone's, so all agree on the sorted list of live workers and each
//! takes the lanes [`crate::topology::lanes::assign`] gives it from that list. RabbitMQ is
//! the only coordinator; a worker killed with `kill -9` drops out when its heartbeats stop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a worker says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A worker not heard from for this long has left.
pub const EXPIRY: Duration = Duration::from_millis(3500);
/// How long a new worker listens before it claims lanes, so it does not take every lane of a
/// running fleet for a moment.
pub const LISTEN_FIRST: Duration = Duration::from_millis(1500);

/// A roster notice: a heartbeat, or a goodbye on a clean shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The worker is alive.
    Alive(String),
    /// The worker is leaving: its lanes can be taken at once.
    Leaving(String),
}

impl Notice {
    /// The wire form: `alive <id>` or `leaving <id>`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Notice::Alive(id) => format!("alive {id}").into_bytes(),
            Notice::Leaving(id) => format!("leaving {id}").into_bytes(),
        }
    }

    /// Parses a notice; anything else (another program's message) is `None`.
    pub fn decode(body: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        let (verb, id) = text.split_once(' ')?;
        if id.is_empty() || id.len() > 256 {
            return None;
        }
        match verb {
            "alive" => Some(Notice::Alive(id.to_string())),
            "leaving" => Some(Notice::Leaving(id.to_string())),
            _ => None,
        }
    }
}

/// The workers heard from lately, this one included.
#[derive(Debug)]
pub struct Roster {
    me: String,
    last_heard: BTreeMap<String, Instant>,
}

impl Roster {
    /// A roster that knows only this worker.
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            last_heard: BTreeMap::new(),
        }
    }

    /// This worker's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Takes in a notice heard at `now`.
    pub fn hear(&mut self, notice: Notice, now: Instant) {
        match notice {
            Notice::Alive(id) if id != self.me => {
                self.last_heard.insert(id, now);
            }
            Notice::Leaving(id) => {
                self.last_heard.remove(&id);
            }
            Notice::Alive(_) => {}
        }
    }

    /// The live workers, sorted, and this worker's place among them.
    pub fn members(&mut self, now: Instant) -> (Vec<String>, usize) {
        self.last_heard
            .retain(|_, heard| now.saturating_duration_since(*heard) < EXPIRY);
        let mut members: Vec<String> = self.last_heard.keys().cloned().collect();
        members.push(self.me.clone());
        members.sort();
        let me = members.iter().position(|m| *m == self.me).unwrap_or(0);
        (members, me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_strangers_are_ignored() {
        for n in [
            Notice::Alive("h:1:a".into()),
            Notice::Leaving("h:2:b".into()),
        ] {
            assert_eq!(Notice::decode(&n.encode()), Some(n));
        }
        for junk in [&b"hello"[..], b"alive ", b"dead h:1", &[0xff, 0xfe]] {
            assert_eq!(Notice::decode(junk), None);
        }
    }

    #[test]
    fn members_expire_leave_and_sort() {
        let t0 = Instant::now();
        let mut r = Roster::new("b");
        assert_eq!(r.members(t0), (vec!["b".to_string()], 0));
        r.hear(Notice::Alive("c".into()), t0);
        r.hear(Notice::Alive("a".into()), t0);
        r.hear(Notice::Alive("b".into()), t0);
        assert_eq!(r.members(t0), (vec!["a".into(), "b".into(), "c".into()], 1));
        r.hear(Notice::Leaving("a".into()), t0);
        assert_eq!(r.members(t0).1, 0);
        r.hear(Notice::Alive("c".into()), t0 + Duration::from_secs(2));
        assert_eq!(r.members(t0 + EXPIRY).0, vec!["b", "c"]);
        assert_eq!(
            r.members(t0 + Duration::from_secs(2) + EXPIRY).0,
            vec!["b"],
            "silent for EXPIRY: gone"
        );
    }
}
