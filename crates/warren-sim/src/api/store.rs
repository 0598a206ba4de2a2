//! The simulated API's memory: the idempotency store (key → in flight or stored response), the
//! ledger of committed effects, and a log of every request with its time, for tests to audit.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use super::ops::{Book, Endpoint, Op};

/// A stored response, replayed for every later request with the same key and body.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Commit order across all keys, from 1.
    pub seq: u64,
    /// When the effect was committed (epoch ms).
    pub committed_at_ms: u64,
}

#[derive(Debug)]
enum KeyState {
    /// Seen, but nothing is in flight or committed (faulted, rejected, or failed validation).
    Open,
    InFlight,
    Committed(Stored),
}

#[derive(Debug)]
struct KeyRecord {
    endpoint: Endpoint,
    body_sha256: String,
    event_id: Option<String>,
    posts: u32,
    status_checks: u32,
    replays: u32,
    /// Effects committed under this key: counted, not derived from the state, so a pipeline
    /// that ever committed a key twice would show it.
    commits: u32,
    state: KeyState,
}

/// What the idempotency layer says about a new request.
#[derive(Debug)]
pub enum Begin {
    /// Process it (the key is now in flight).
    Proceed,
    /// Same key, same request, already done: answer this.
    Replay(Stored),
    /// Same key, different request (body or endpoint): 422.
    Mismatch,
    /// Same key still being processed: 409.
    InFlight,
}

/// What a status check finds.
#[derive(Debug)]
pub enum Lookup {
    /// Committed, with the stored response.
    Committed(Stored, Option<String>),
    /// Being processed.
    InFlight,
    /// Never committed.
    NotFound,
}

/// One request, as the server saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Arrival order, from 1.
    pub seq: u64,
    /// Arrival time (epoch ms).
    pub at_ms: u64,
    /// `POST` or `GET`.
    pub method: &'static str,
    /// The path.
    pub path: String,
    /// The idempotency key (empty if none was sent).
    pub key: String,
    /// The status answered (0 while unanswered, e.g. hanging).
    pub status: u16,
}

/// One key in the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    /// The idempotency key.
    pub key: String,
    /// The endpoint it was used on.
    pub path: &'static str,
    /// `X-Warren-Event-Id` (or the body's `eventId`) of the first request.
    pub event_id: Option<String>,
    /// Effects committed for this key, as counted at each commit: 0 or 1 unless the server
    /// (or its idempotency pipeline) is broken.
    pub effects: u32,
    /// POSTs received with this key.
    pub posts: u32,
    /// Status checks received for this key.
    pub status_checks: u32,
    /// POSTs answered with the stored response (`Idempotent-Replayed: true`).
    pub replays: u32,
    /// sha256 of the request body.
    pub body_sha256: String,
    /// The stored response, if committed.
    pub stored: Option<Stored>,
}

/// `GET /ledger`.
#[derive(Debug, Clone, Serialize)]
pub struct Ledger {
    /// Effects committed, all keys.
    pub effects: u64,
    /// POSTs received, all keys.
    pub posts: u64,
    /// Every key seen, in commit order (uncommitted keys last).
    pub keys: Vec<LedgerEntry>,
}

/// Requests kept in the log; older ones are dropped so a long demo run stays bounded.
pub const MAX_LOGGED_REQUESTS: usize = 1_000_000;

/// `GET /stats`: the ledger's totals, cheap to poll.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    /// Effects committed, all keys.
    pub effects: u64,
    /// POSTs received, all keys.
    pub posts: u64,
    /// Keys seen.
    pub keys: usize,
    /// Requests received (POSTs and status checks).
    pub requests: u64,
    /// POSTs answered with a stored response: duplicates absorbed by the idempotency layer.
    pub replays: u64,
}

/// Everything the server remembers, behind one mutex.
#[derive(Debug)]
pub struct Store {
    keys: HashMap<String, KeyRecord>,
    book: Book,
    log: VecDeque<RequestRecord>,
    logged: u64,
    effects: u64,
    posts: u64,
    replays: u64,
}

impl Store {
    /// An empty store whose ids derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            keys: HashMap::new(),
            book: Book::new(seed),
            log: VecDeque::new(),
            logged: 0,
            effects: 0,
            posts: 0,
            replays: 0,
        }
    }

    /// Logs a request; returns its sequence number (to record the answer).
    pub fn arrived(&mut self, method: &'static str, path: &str, key: &str, at_ms: u64) -> u64 {
        self.logged += 1;
        if self.log.len() >= MAX_LOGGED_REQUESTS {
            self.log.pop_front();
        }
        self.log.push_back(RequestRecord {
            seq: self.logged,
            at_ms,
            method,
            path: path.to_string(),
            key: key.to_string(),
            status: 0,
        });
        self.logged
    }

    /// Records the status answered to request `seq`.
    pub fn answered(&mut self, seq: u64, status: u16) {
        let first = self.logged + 1 - self.log.len() as u64;
        if let Some(r) = seq
            .checked_sub(first)
            .and_then(|i| self.log.get_mut(i as usize))
        {
            r.status = status;
        }
    }

    /// Counts a POST for `key`; returns its number for the key, from 1.
    pub fn count_post(&mut self, key: &str, endpoint: Endpoint, body_sha256: &str) -> u32 {
        self.posts += 1;
        let record = self
            .keys
            .entry(key.to_string())
            .or_insert_with(|| KeyRecord {
                endpoint,
                body_sha256: body_sha256.to_string(),
                event_id: None,
                posts: 0,
                status_checks: 0,
                replays: 0,
                commits: 0,
                state: KeyState::Open,
            });
        record.posts += 1;
        record.posts
    }

    /// The idempotency decision for a validated request.
    pub fn begin(
        &mut self,
        key: &str,
        endpoint: Endpoint,
        body_sha256: &str,
        event_id: Option<&str>,
    ) -> Begin {
        let Some(record) = self.keys.get_mut(key) else {
            return Begin::Mismatch;
        };
        let same = record.endpoint == endpoint && record.body_sha256 == body_sha256;
        match &record.state {
            KeyState::Committed(stored) if same => {
                record.replays += 1;
                self.replays += 1;
                Begin::Replay(stored.clone())
            }
            KeyState::Committed(_) => Begin::Mismatch,
            KeyState::InFlight => Begin::InFlight,
            KeyState::Open => {
                // Nothing was ever done under this key: the request it first came with is void.
                record.endpoint = endpoint;
                record.body_sha256 = body_sha256.to_string();
                if record.event_id.is_none() {
                    record.event_id = event_id.map(str::to_string);
                }
                record.state = KeyState::InFlight;
                Begin::Proceed
            }
        }
    }

    /// Applies an in-flight request's effect and stores the response; a failed effect (422)
    /// leaves nothing behind.
    pub fn commit(&mut self, key: &str, op: &Op, at_ms: u64) -> (u16, Value) {
        let Some(record) = self.keys.get_mut(key) else {
            return (500, serde_json::json!({"error": "key vanished"}));
        };
        let result = self.book.apply(key, record.event_id.as_deref(), op);
        match result {
            Ok(body) => {
                self.effects += 1;
                record.commits += 1;
                let stored = Stored {
                    status: 200,
                    body: body.clone(),
                    seq: self.effects,
                    committed_at_ms: at_ms,
                };
                record.state = KeyState::Committed(stored);
                (200, body)
            }
            Err(error) => {
                record.state = KeyState::Open;
                (422, serde_json::json!({"error": error}))
            }
        }
    }

    /// `GET /operations/{key}`.
    pub fn lookup(&mut self, key: &str) -> Lookup {
        let Some(record) = self.keys.get_mut(key) else {
            return Lookup::NotFound;
        };
        record.status_checks += 1;
        match &record.state {
            KeyState::Committed(s) => Lookup::Committed(s.clone(), record.event_id.clone()),
            KeyState::InFlight => Lookup::InFlight,
            KeyState::Open => Lookup::NotFound,
        }
    }

    /// `GET /stats`.
    pub fn stats(&self) -> Stats {
        Stats {
            effects: self.effects,
            posts: self.posts,
            keys: self.keys.len(),
            requests: self.logged,
            replays: self.replays,
        }
    }

    /// `GET /ledger`.
    pub fn ledger(&self) -> Ledger {
        let mut keys: Vec<LedgerEntry> = self
            .keys
            .iter()
            .map(|(key, r)| {
                let stored = match &r.state {
                    KeyState::Committed(s) => Some(s.clone()),
                    _ => None,
                };
                LedgerEntry {
                    key: key.clone(),
                    path: r.endpoint.path(),
                    event_id: r.event_id.clone(),
                    effects: r.commits,
                    posts: r.posts,
                    status_checks: r.status_checks,
                    replays: r.replays,
                    body_sha256: r.body_sha256.clone(),
                    stored,
                }
            })
            .collect();
        keys.sort_by_key(|e| (e.stored.as_ref().map_or(u64::MAX, |s| s.seq), e.key.clone()));
        Ledger {
            effects: self.effects,
            posts: self.posts,
            keys,
        }
    }

    /// `GET /requests`, optionally for one key.
    pub fn requests(&self, key: Option<&str>) -> Vec<RequestRecord> {
        self.log
            .iter()
            .filter(|r| key.is_none_or(|k| r.key == k))
            .cloned()
            .collect()
    }

    /// `GET /positions`.
    pub fn positions(&self) -> Vec<super::ops::Position> {
        self.book.positions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Op {
        Op::parse(Endpoint::Events, br#"{"eventId":"e1"}"#).unwrap()
    }

    #[test]
    fn the_ledger_counts_every_commit_of_a_key() {
        let mut store = Store::new(1);
        store.count_post("k", Endpoint::Events, "h");
        assert!(matches!(
            store.begin("k", Endpoint::Events, "h", Some("e1")),
            Begin::Proceed
        ));
        store.commit("k", &event(), 1);
        // A replay is not an effect.
        store.count_post("k", Endpoint::Events, "h");
        assert!(matches!(
            store.begin("k", Endpoint::Events, "h", Some("e1")),
            Begin::Replay(_)
        ));
        assert_eq!(store.ledger().keys[0].effects, 1);
        // A pipeline that committed the key again (skipping `begin`) is caught by the count.
        store.commit("k", &event(), 2);
        let ledger = store.ledger();
        assert_eq!(ledger.keys[0].effects, 2);
        assert_eq!(ledger.effects, 2);
    }
}
