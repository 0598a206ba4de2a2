//! Lanes: a queue split into N single-active-consumer quorum queues by a key from the envelope,
//! so workers can share it while each key keeps its order. The routing is a pure function of
//! the key and N, computed by the publisher (client-side partitioning), so a key reaches the
//! same lane across broker restarts, node failures and warren restarts.
//!
//! Names, for a laned queue `Q` with N lanes:
//! - `Q.lane.0` … `Q.lane.N-1`: the lanes (quorum, single active consumer);
//! - `Q.lanes`: a headers exchange, bound to the events exchange with `Q`'s patterns, routing on
//!   the header `x-warren-lane.Q` (the lane number, set by the bridge);
//! - `Q.lanes.unkeyed`: its alternate exchange (fanout to every lane), for events without the key;
//! - `Q.roster`: a fanout exchange the queue's workers heartbeat on to share the lanes.

use sha2::{Digest, Sha256};

use crate::envelope::Envelope;

/// Lanes a queue may have, at most.
pub const MAX_LANES: u16 = 1024;

/// The header that carries an event's lane for the laned queue `queue`.
pub fn lane_header(queue: &str) -> String {
    format!("x-warren-lane.{queue}")
}

/// `<queue>.lane.<i>`.
pub fn lane_queue(queue: &str, lane: u16) -> String {
    format!("{queue}.lane.{lane}")
}

/// `<queue>.lanes`: the headers exchange that splits the queue's events into its lanes.
pub fn lanes_exchange(queue: &str) -> String {
    format!("{queue}.lanes")
}

/// `<queue>.lanes.unkeyed`: where events without the key go (every lane).
pub fn unkeyed_exchange(queue: &str) -> String {
    format!("{queue}.lanes.unkeyed")
}

/// `<queue>.roster`: the fanout exchange the queue's workers heartbeat on.
pub fn roster_exchange(queue: &str) -> String {
    format!("{queue}.roster")
}

/// How a queue is split into lanes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lanes {
    /// How many lanes.
    pub count: u16,
    /// The key that picks an event's lane.
    pub key: LaneKey,
}

impl Lanes {
    /// The lane of `event`: `None` when it has no key (it then goes to every lane).
    pub fn lane(&self, event: &Envelope) -> Option<u16> {
        self.key.value(event).map(|k| lane_of(&k, self.count))
    }
}

/// A path into the envelope: `payload.<field>[.<field>…]`, `agentId` or `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneKey {
    /// The envelope's `agentId`.
    AgentId,
    /// The envelope's `type`.
    Type,
    /// A field of the payload, by its path.
    Payload(Vec<String>),
}

impl LaneKey {
    /// Parses a path; the error says what is wrong with it.
    pub fn parse(path: &str) -> Result<Self, String> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match path {
            "agentId" => return Ok(LaneKey::AgentId),
            "type" => return Ok(LaneKey::Type),
            _ => {}
        }
        let Some(rest) = path.strip_prefix("payload.") else {
            return Err(format!(
                "'{path}' is not a lane key: use payload.<field>[.<field>…], agentId or type"
            ));
        };
        let fields: Vec<String> = rest.split('.').map(str::to_string).collect();
        if let Some(bad) = fields.iter().find(|f| !segment_ok(f)) {
            return Err(format!(
                "'{path}' is not a lane key: field '{bad}' must be letters, digits, '_' or '-'"
            ));
        }
        Ok(LaneKey::Payload(fields))
    }

    /// The key's value in `event`: a string as it is, a number or a boolean as its JSON
    /// text. `None` when the path is absent, null, an object or an array.
    pub fn value(&self, event: &Envelope) -> Option<String> {
        match self {
            LaneKey::AgentId => Some(event.agent_id.clone()),
            LaneKey::Type => Some(event.event_type.clone()),
            LaneKey::Payload(fields) => {
                let payload: serde_json::Value = serde_json::from_str(event.payload.get()).ok()?;
                let mut at = &payload;
                for f in fields {
                    at = at.get(f)?;
                }
                match at {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                }
            }
        }
    }
}

impl std::fmt::Display for LaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaneKey::AgentId => f.write_str("agentId"),
            LaneKey::Type => f.write_str("type"),
            LaneKey::Payload(fields) => write!(f, "payload.{}", fields.join(".")),
        }
    }
}

/// The lane of `key` among `lanes`: the first 8 bytes of its SHA-256, big-endian, modulo the
/// number of lanes. Part of the wire contract: it must never change, or keys would move.
pub fn lane_of(key: &str, lanes: u16) -> u16 {
    let digest = Sha256::digest(key.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % u64::from(lanes.max(1))) as u16
}

/// The lanes `members[me]` should own, given the sorted, distinct ids of the live workers.
/// Every worker computes the same answer from the same list. Each lane goes to the member
/// that ranks it highest (SHA-256 of member and lane: rendezvous hashing) among those with
/// room left, and room is ⌊N/W⌋, or ⌈N/W⌉ for the first N mod W members to fill up: so each
/// owns ⌊N/W⌋ or ⌈N/W⌉ lanes, and a worker joining or leaving moves few lanes besides its own.
pub fn assign(lanes: u16, members: &[String], me: usize) -> Vec<u16> {
    let w = members.len();
    if w == 0 || me >= w {
        return Vec::new();
    }
    let n = usize::from(lanes);
    let (floor, mut extra) = (n / w, n % w);
    let mut owned = vec![0usize; w];
    let mut mine = Vec::new();
    for lane in 0..lanes {
        let mut ranked: Vec<(u64, usize)> = (0..w).map(|m| (rank(&members[m], lane), m)).collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        let taker = ranked
            .iter()
            .map(|&(_, m)| m)
            .find(|&m| owned[m] < floor || (owned[m] == floor && extra > 0))
            .unwrap_or(ranked[0].1);
        if owned[taker] == floor {
            extra = extra.saturating_sub(1);
        }
        owned[taker] += 1;
        if taker == me {
            mine.push(lane);
        }
    }
    mine
}

fn rank(member: &str, lane: u16) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update(lane.to_be_bytes());
    let digest = h.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Envelope {
        Envelope::parse(
            format!(
                r#"{{"eventId":"01JNQ2X6Y3S8V4W5Z7A9B1C2D3","type":"market.tick","agentId":"pf_a","payload":{payload},"ts":1}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn paths_parse_or_say_why_not() {
        assert_eq!(
            LaneKey::parse("payload.pair"),
            Ok(LaneKey::Payload(vec!["pair".into()]))
        );
        assert_eq!(LaneKey::parse("agentId"), Ok(LaneKey::AgentId));
        assert_eq!(LaneKey::parse("type"), Ok(LaneKey::Type));
        for bad in [
            "pair",
            "payload.",
            "payload..pair",
            "payload.pa ir",
            "",
            "payload",
        ] {
            let err = LaneKey::parse(bad).unwrap_err();
            assert!(err.contains("is not a lane key"), "{bad}: {err}");
        }
        assert_eq!(
            LaneKey::parse("payload.a.b_c").unwrap().to_string(),
            "payload.a.b_c"
        );
    }

    #[test]
    fn values_come_from_the_path_and_missing_ones_are_none() {
        let key = LaneKey::parse("payload.pair").unwrap();
        assert_eq!(
            key.value(&event(r#"{"pair":"BTC-USD"}"#)),
            Some("BTC-USD".into())
        );
        assert_eq!(key.value(&event(r#"{"pair":7}"#)), Some("7".into()));
        for missing in [
            r#"{}"#,
            r#"{"pair":null}"#,
            r#"{"pair":{"a":1}}"#,
            r#"{"pair":[1]}"#,
        ] {
            assert_eq!(key.value(&event(missing)), None, "{missing}");
        }
        let nested = LaneKey::parse("payload.a.b").unwrap();
        assert_eq!(nested.value(&event(r#"{"a":{"b":"x"}}"#)), Some("x".into()));
        assert_eq!(
            LaneKey::AgentId.value(&event("{}")),
            Some("pf_a".to_string())
        );
    }

    /// Pinned values: the function is part of the wire contract.
    #[test]
    fn lanes_are_stable_and_spread() {
        let pinned: Vec<u16> = ["BTC-USD", "ETH-USD", "SOL-USD", "", "pf_agent_1"]
            .iter()
            .map(|k| lane_of(k, 8))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[usize::from(lane_of(&format!("key-{i}"), 8))] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(lane_of("anything", 1), 0);
    }

    /// Computed apart from this code: `int.from_bytes(sha256(key).digest()[:8], "big") % 8`.
    const PINNED: [u16; 5] = [5, 7, 4, 4, 0];

    fn ids(n: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n).map(|i| format!("host:{}:w{i}", 100 + i)).collect();
        v.sort();
        v
    }

    #[test]
    fn assignment_covers_every_lane_once_within_one_of_fair() {
        for lanes in [1u16, 7, 8, 16, 64] {
            for w in 1..=9usize {
                let members = ids(w);
                let mut seen = vec![0u32; usize::from(lanes)];
                let owned: Vec<usize> = (0..w)
                    .map(|me| {
                        let mine = assign(lanes, &members, me);
                        for l in &mine {
                            seen[usize::from(*l)] += 1;
                        }
                        mine.len()
                    })
                    .collect();
                assert!(seen.iter().all(|&n| n == 1), "{lanes}/{w}: {seen:?}");
                let fair = usize::from(lanes) / w;
                assert!(
                    owned.iter().all(|n| *n == fair || *n == fair + 1),
                    "{lanes} lanes, {w} members: {owned:?}"
                );
            }
        }
        assert!(assign(8, &[], 0).is_empty());
    }

    /// A worker leaving moves its own lanes and few others: far fewer than a modulo split.
    #[test]
    fn a_worker_leaving_moves_few_other_lanes() {
        let owners = |members: &[String]| -> Vec<String> {
            let mut owner = vec![String::new(); 64];
            for (i, m) in members.iter().enumerate() {
                for l in assign(64, members, i) {
                    owner[usize::from(l)] = m.clone();
                }
            }
            owner
        };
        let four = ids(4);
        let before = owners(&four);
        let three: Vec<String> = four[..3].to_vec();
        let after = owners(&three);
        let moved_between_survivors = (0..64)
            .filter(|&l| before[l] != four[3] && before[l] != after[l])
            .count();
        assert!(
            moved_between_survivors <= 8,
            "{moved_between_survivors} of 64 moved needlessly"
        );
    }
}
