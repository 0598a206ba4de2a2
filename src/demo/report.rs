//! The demo's reconciliation, pure: what the upstream emitted against what the downstream
//! committed and what sits in the dead-letter queues. No I/O; tested with a table.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// One event the upstream emitted (a line of its ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The eventId.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The event's `ts`, epoch ms.
    pub ts_ms: u64,
}

/// One idempotency key of the downstream's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The event the call was for (`X-Warren-Event-Id`).
    pub event_id: Option<String>,
    /// Effects committed under the key (0 or 1).
    pub effects: u32,
    /// When it was committed, epoch ms.
    pub committed_at_ms: Option<u64>,
}

/// One message found in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    /// The eventId, if the message had one (invalid frames have none).
    pub id: Option<String>,
    /// Why it is dead (`permanent`, `exhausted`, `expired`, …).
    pub kind: String,
}

/// One event type in a demo into PostgreSQL, counted in SQL against the upstream's ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeRows {
    /// The event type.
    pub event_type: String,
    /// Distinct events of the type the upstream emitted.
    pub emitted: u64,
    /// Of those, rows in the `events` table.
    pub stored: u64,
    /// Of those, rows in the domain tables (candles, balance changes, escrow events, job
    /// results); fewer than stored where two events share a natural key.
    pub domain_rows: u64,
}

/// Everything the reconciliation reads.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The upstream's ledger, in emission order.
    pub emitted: Vec<Emitted>,
    /// Publishes the bridge had confirmed (events and invalid frames).
    pub published: u64,
    /// The downstream's ledger.
    pub effects: Vec<Effect>,
    /// Every dead letter of the topology.
    pub dead: Vec<Dead>,
    /// Event types no queue binds: dropped by design, not lost.
    pub unrouted_types: BTreeSet<String>,
    /// Replays and duplicates the bridge's eventId window dropped.
    pub bridge_duplicates: u64,
    /// POSTs the downstream answered with a stored response.
    pub api_replays: u64,
    /// Workers killed with SIGKILL during the run.
    pub worker_kills: u32,
    /// Deliveries acked per lane queue, all workers.
    pub lane_acks: BTreeMap<String, u64>,
    /// Into PostgreSQL: rows per event type.
    pub type_rows: Vec<TypeRows>,
    /// Into PostgreSQL: rows in the events table the upstream never emitted.
    pub phantom: u64,
}

/// Duplicates that reached a layer and were absorbed there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Duplicates {
    /// Dropped by the bridge's eventId window (upstream duplicates and replays).
    pub bridge: u64,
    /// Answered by the downstream with the stored response (redeliveries, ambiguous retries,
    /// events routed to two queues).
    pub downstream: u64,
    /// Both.
    pub total: u64,
}

/// End-to-end latency, effect commit time minus event `ts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Median, ms.
    pub p50_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Slowest, ms.
    pub max_ms: u64,
}

/// The demo's final accounting.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DemoReport {
    /// The AMQP name prefix of the run.
    pub prefix: String,
    /// Distinct events the upstream emitted.
    pub emitted: u64,
    /// Publishes the bridge had confirmed.
    pub published: u64,
    /// Emitted events with their effect in the downstream's ledger.
    pub processed: u64,
    /// Effects in the downstream's ledger (all keys).
    pub effects: u64,
    /// Events whose effect was committed more than once (must be 0).
    pub effected_twice: u64,
    /// Duplicates absorbed.
    pub duplicates_absorbed: Duplicates,
    /// Dead letters by kind (messages; one event routed to two queues can die in both).
    pub dead_letters: BTreeMap<String, u64>,
    /// Emitted events not processed but found in a DLQ.
    pub dead_lettered: u64,
    /// Emitted events of a type no queue binds.
    pub unrouted: u64,
    /// Emitted events neither processed, dead-lettered nor unrouted.
    pub lost: u64,
    /// The first lost eventIds, to look them up.
    pub lost_ids: Vec<String>,
    /// Processed events per second, first event `ts` to last effect.
    pub throughput_per_s: f64,
    /// End-to-end latency of processed events.
    pub latency: Latency,
    /// Workers killed with SIGKILL during the run.
    pub worker_kills: u32,
    /// Deliveries acked per lane of each laned queue (lane queue → count), all workers.
    pub lanes: BTreeMap<String, u64>,
    /// Where the effects went: `http` (the simulated API) or `postgres`.
    pub sink: String,
    /// Into PostgreSQL: per event type, emitted against rows stored (empty for `http`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<TypeRows>,
    /// Into PostgreSQL: stored events the upstream never emitted (must be 0).
    pub phantom: u64,
    /// A signal stopped the run before it settled: a partial report, whose events not yet
    /// processed or dead-lettered count as lost.
    pub interrupted: bool,
    /// One dead-lettered eventId, for the `dlq show` hint of `--keep`.
    #[serde(skip)]
    pub first_dead_id: Option<String>,
}

impl DemoReport {
    /// 0 when nothing was lost and no effect happened twice, else 1.
    pub fn exit_code(&self) -> u8 {
        if self.reconciled() { 0 } else { 1 }
    }

    /// Nothing lost, no effect twice, nothing stored that was never emitted.
    pub fn reconciled(&self) -> bool {
        self.lost == 0 && self.effected_twice == 0 && self.phantom == 0
    }
}

/// Lost eventIds listed in the report at most.
const LOST_IDS_SHOWN: usize = 10;

/// Reconciles the ledgers and the dead letters.
pub fn reconcile(prefix: &str, inputs: &Inputs) -> DemoReport {
    let mut emitted: HashMap<&str, &Emitted> = HashMap::new();
    for e in &inputs.emitted {
        emitted.entry(e.id.as_str()).or_insert(e);
    }
    // Per event: effects committed and the first commit time.
    let mut effected: HashMap<&str, (u32, u64)> = HashMap::new();
    let mut effects = 0u64;
    for e in inputs.effects.iter().filter(|e| e.effects > 0) {
        effects += u64::from(e.effects);
        if let Some(id) = e.event_id.as_deref() {
            let at = e.committed_at_ms.unwrap_or(0);
            let slot = effected.entry(id).or_insert((0, at));
            slot.0 += e.effects;
            slot.1 = slot.1.min(at);
        }
    }
    let mut dead_letters: BTreeMap<String, u64> = BTreeMap::new();
    let mut dead_ids: BTreeSet<&str> = BTreeSet::new();
    for d in &inputs.dead {
        *dead_letters.entry(d.kind.clone()).or_default() += 1;
        if let Some(id) = d.id.as_deref() {
            dead_ids.insert(id);
        }
    }

    let mut report = DemoReport {
        prefix: prefix.to_string(),
        emitted: emitted.len() as u64,
        published: inputs.published,
        effects,
        duplicates_absorbed: Duplicates {
            bridge: inputs.bridge_duplicates,
            downstream: inputs.api_replays,
            total: inputs.bridge_duplicates + inputs.api_replays,
        },
        dead_letters,
        worker_kills: inputs.worker_kills,
        lanes: inputs.lane_acks.clone(),
        rows: inputs.type_rows.clone(),
        phantom: inputs.phantom,
        ..DemoReport::default()
    };
    let mut latencies = vec![];
    let (mut first_ts, mut last_effect) = (u64::MAX, 0u64);
    // Emission order, so the lost ids listed are the earliest.
    let mut seen = BTreeSet::new();
    for e in inputs.emitted.iter().filter(|e| seen.insert(e.id.as_str())) {
        if let Some(&(n, at)) = effected.get(e.id.as_str()) {
            report.processed += 1;
            if n > 1 {
                report.effected_twice += 1;
            }
            latencies.push(at.saturating_sub(e.ts_ms));
            first_ts = first_ts.min(e.ts_ms);
            last_effect = last_effect.max(at);
        } else if dead_ids.contains(e.id.as_str()) {
            report.dead_lettered += 1;
            report.first_dead_id.get_or_insert_with(|| e.id.clone());
        } else if inputs.unrouted_types.contains(&e.event_type) {
            report.unrouted += 1;
        } else {
            report.lost += 1;
            if report.lost_ids.len() < LOST_IDS_SHOWN {
                report.lost_ids.push(e.id.clone());
            }
        }
    }
    latencies.sort_unstable();
    report.latency = Latency {
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(0),
    };
    if report.processed > 0 && last_effect > first_ts {
        report.throughput_per_s =
            report.processed as f64 * 1000.0 / (last_effect - first_ts) as f64;
    }
    report
}

/// Nearest-rank percentile of sorted values; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, event_type: &str, ts_ms: u64) -> Emitted {
        Emitted {
            id: id.into(),
            event_type: event_type.into(),
            ts_ms,
        }
    }

    fn fx(id: &str, effects: u32, at: u64) -> Effect {
        Effect {
            event_id: Some(id.into()),
            effects,
            committed_at_ms: (effects > 0).then_some(at),
        }
    }

    fn dead(id: Option<&str>, kind: &str) -> Dead {
        Dead {
            id: id.map(str::to_string),
            kind: kind.into(),
        }
    }

    struct Case {
        name: &'static str,
        inputs: Inputs,
        // processed, dead_lettered, unrouted, lost, effected_twice
        want: (u64, u64, u64, u64, u64),
        exit: u8,
    }

    #[test]
    fn reconciliation_table() {
        let two = || vec![ev("a", "job.completed", 1000), ev("b", "job.failed", 1010)];
        let cases = [
            Case {
                name: "all processed",
                inputs: Inputs {
                    emitted: two(),
                    effects: vec![fx("a", 1, 1100), fx("b", 1, 1200)],
                    ..Inputs::default()
                },
                want: (2, 0, 0, 0, 0),
                exit: 0,
            },
            Case {
                name: "one dead-lettered, one uncommitted key with a retry",
                inputs: Inputs {
                    emitted: two(),
                    effects: vec![fx("a", 1, 1100), fx("b", 0, 0)],
                    dead: vec![dead(Some("b"), "permanent"), dead(None, "invalid")],
                    ..Inputs::default()
                },
                want: (1, 1, 0, 0, 0),
                exit: 0,
            },
            Case {
                name: "missing everywhere is lost",
                inputs: Inputs {
                    emitted: two(),
                    effects: vec![fx("a", 1, 1100)],
                    ..Inputs::default()
                },
                want: (1, 0, 0, 1, 0),
                exit: 1,
            },
            Case {
                name: "a type no queue binds is unrouted, not lost",
                inputs: Inputs {
                    emitted: two(),
                    effects: vec![fx("a", 1, 1100)],
                    unrouted_types: ["job.failed".to_string()].into(),
                    ..Inputs::default()
                },
                want: (1, 0, 1, 0, 0),
                exit: 0,
            },
            Case {
                name: "two keys committed for one event is a double effect",
                inputs: Inputs {
                    emitted: two(),
                    effects: vec![fx("a", 1, 1100), fx("a", 1, 1150), fx("b", 1, 1200)],
                    ..Inputs::default()
                },
                want: (2, 0, 0, 0, 1),
                exit: 1,
            },
            Case {
                name: "processed wins over a dead letter of the same event in another queue",
                inputs: Inputs {
                    emitted: vec![ev("a", "wallet.balance_changed", 1000)],
                    effects: vec![fx("a", 1, 1100)],
                    dead: vec![dead(Some("a"), "expired")],
                    ..Inputs::default()
                },
                want: (1, 0, 0, 0, 0),
                exit: 0,
            },
            Case {
                name: "a repeated ledger line counts once",
                inputs: Inputs {
                    emitted: vec![
                        ev("a", "job.completed", 1000),
                        ev("a", "job.completed", 1000),
                    ],
                    effects: vec![fx("a", 1, 1100)],
                    ..Inputs::default()
                },
                want: (1, 0, 0, 0, 0),
                exit: 0,
            },
        ];
        for c in cases {
            let r = reconcile("p.", &c.inputs);
            let got = (
                r.processed,
                r.dead_lettered,
                r.unrouted,
                r.lost,
                r.effected_twice,
            );
            assert_eq!(got, c.want, "{}", c.name);
            assert_eq!(r.exit_code(), c.exit, "{}", c.name);
            assert_eq!(
                r.emitted,
                r.processed + r.dead_lettered + r.unrouted + r.lost,
                "{}: every emitted event is counted once",
                c.name
            );
        }
    }

    #[test]
    fn dead_letters_by_kind_latency_and_throughput() {
        let inputs = Inputs {
            emitted: (0..100)
                .map(|i| ev(&format!("e{i}"), "job.completed", 1000 + i * 10))
                .collect(),
            effects: (0..100)
                .map(|i| fx(&format!("e{i}"), 1, 1000 + i * 10 + 5 + i))
                .collect(),
            dead: vec![
                dead(None, "invalid"),
                dead(Some("x"), "exhausted"),
                dead(Some("y"), "exhausted"),
            ],
            bridge_duplicates: 4,
            api_replays: 6,
            ..Inputs::default()
        };
        let r = reconcile("p.", &inputs);
        assert_eq!(r.dead_letters.get("exhausted"), Some(&2));
        assert_eq!(r.dead_letters.get("invalid"), Some(&1));
        assert_eq!(r.duplicates_absorbed.total, 10);
        // Latencies are 5..=104 ms.
        assert_eq!(r.latency.p50_ms, 54);
        assert_eq!(r.latency.p99_ms, 103);
        assert_eq!(r.latency.max_ms, 104);
        // 100 events from ts 1000 to the last effect at 1000 + 990 + 104.
        assert!((r.throughput_per_s - 100_000.0 / 1094.0).abs() < 1e-9);
    }

    #[test]
    fn percentile_edges() {
        assert_eq!(percentile(&[], 99.0), 0);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), 2);
        assert_eq!(percentile(&[1, 2, 3, 4], 100.0), 4);
    }
}
