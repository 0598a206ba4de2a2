//! The I1–I6 reconcile of one scenario: every emitted event accounted for exactly once,
//! nothing phantom, dead letters explained, RSS within bounds, recovery times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::FaultMark;
use crate::support::downstream::{DeadLetter, LedgerView};

/// Files under `dir` containing any of `needles`, with the needle's index.
pub fn canary_hits(dir: &Path, needles: &[&str]) -> Vec<(String, usize)> {
    let mut hits = vec![];
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        scanned += 1;
        let text = String::from_utf8_lossy(&bytes);
        for (i, n) in needles.iter().enumerate() {
            if text.contains(n) {
                hits.push((entry.file_name().to_string_lossy().into_owned(), i));
            }
        }
    }
    assert!(scanned >= 8, "only {scanned} files scanned for canaries");
    hits
}

/// The reconcile of one scenario.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub emitted: usize,
    pub effects: u64,
    pub dead: usize,
    /// POSTs beyond the first per committed key: retries and redeliveries the key absorbed.
    pub repeats_absorbed: u64,
    /// I1 violations: (eventId, effects, dead letters).
    pub unaccounted: Vec<(String, u32, usize)>,
    /// I2 violations: keys or events with more than one effect.
    pub doubled: Vec<String>,
    /// I3 violations: effects for events never emitted (or without an event id).
    pub phantom: Vec<String>,
    /// I4 violations: dead letters without a kind or an error.
    pub unexplained: Vec<DeadLetter>,
    pub rss_kb: BTreeMap<String, u64>,
    /// (fault, recovery ms): from the fault's end to the first effect of an event emitted after it.
    pub recovery_ms: Vec<(String, Option<u64>)>,
    /// The longest time between two consecutive effects.
    pub longest_gap_ms: u64,
    /// (emission index of the event, commit time ms) of every effect, by commit time.
    pub commits: Vec<(usize, u64)>,
    /// Seconds of upstream silence after which the bridge resubscribed, from its logs.
    pub silences_s: Vec<f64>,
    /// From each black hole's start to each worker's session end, ms, from the workers' logs.
    pub half_open_ms: Vec<u64>,
}

impl Report {
    pub(super) fn build(
        name: &str,
        emitted: &[String],
        ledger: &LedgerView,
        dead: &[DeadLetter],
        faults: &[FaultMark],
        rss_kb: BTreeMap<String, u64>,
    ) -> Self {
        let emitted_set: BTreeSet<&str> = emitted.iter().map(String::as_str).collect();
        let index: BTreeMap<&str, usize> = emitted
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let mut doubled = vec![];
        let mut phantom = vec![];
        let mut repeats = 0;
        for k in ledger.keys.iter().filter(|k| k.effects > 0) {
            if k.effects > 1 {
                doubled.push(format!("key {} has {} effects", k.key, k.effects));
            }
            repeats += u64::from(k.posts.saturating_sub(1));
            match &k.event_id {
                Some(id) if emitted_set.contains(id.as_str()) => {}
                other => phantom.push(format!("key {} for event {other:?}", k.key)),
            }
        }
        let effects = ledger.effects_by_event();
        for (id, n) in &effects {
            if *n > 1 {
                doubled.push(format!("event {id} has {n} effects"));
            }
        }
        let mut parked: BTreeMap<&str, usize> = BTreeMap::new();
        let mut unexplained = vec![];
        for d in dead {
            if d.kind.is_empty() || d.kind == "x-death" || d.reason.is_empty() {
                unexplained.push(d.clone());
            }
            *parked.entry(d.event_id.as_str()).or_default() += 1;
        }
        let mut unaccounted = vec![];
        for id in emitted {
            let e = effects.get(id).copied().unwrap_or(0);
            let p = parked.get(id.as_str()).copied().unwrap_or(0);
            if !matches!((e, p), (1, 0) | (0, 1..)) {
                unaccounted.push((id.clone(), e, p));
            }
        }
        // Commit times by the emission index of their event.
        let mut commits: Vec<(usize, u64)> = ledger
            .keys
            .iter()
            .filter_map(|k| {
                let at = k.stored.as_ref()?.committed_at_ms;
                Some((*index.get(k.event_id.as_deref()?)?, at))
            })
            .collect();
        commits.sort_by_key(|c| c.1);
        let longest_gap_ms = commits
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .max()
            .unwrap_or(0);
        let recovery_ms = faults
            .iter()
            .map(|f| {
                let first = commits
                    .iter()
                    .filter(|(i, at)| *i >= f.emitted_at_end && *at >= f.end_ms)
                    .map(|(_, at)| at - f.end_ms)
                    .min();
                (f.name.clone(), first)
            })
            .collect();
        Self {
            name: name.to_string(),
            emitted: emitted.len(),
            effects: ledger.effects,
            dead: dead.len(),
            repeats_absorbed: repeats,
            unaccounted,
            doubled,
            phantom,
            unexplained,
            rss_kb,
            recovery_ms,
            longest_gap_ms,
            commits,
            silences_s: vec![],
            half_open_ms: vec![],
        }
    }

    /// Reads, from the members' logs in `dir`, after how long the bridge caught each silence,
    /// and how long each worker took to end its session once a black hole began.
    pub fn read_detections(&mut self, dir: &Path, faults: &[FaultMark]) {
        let logs: Vec<(String, String)> = std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .map(|n| {
                (
                    n.clone(),
                    std::fs::read_to_string(dir.join(&n)).unwrap_or_default(),
                )
            })
            .collect();
        for (name, text) in &logs {
            if name.starts_with("bridge") {
                self.silences_s.extend(
                    text.lines()
                        .filter(|l| l.contains("Upstream silent past the deadline"))
                        .filter_map(|l| l.split("silent_secs=").nth(1))
                        .filter_map(|v| v.split(' ').next())
                        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok()),
                );
            }
        }
        for f in faults.iter().filter(|f| f.name.starts_with("blackhole")) {
            for (name, text) in logs.iter().filter(|(n, _)| n.starts_with("worker")) {
                let first = crate::support::bridge::log_times(text, "Broker session ended")
                    .into_iter()
                    .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .find(|&at| at >= f.start_ms && at <= f.end_ms + 10_000);
                match first {
                    Some(at) => self.half_open_ms.push(at - f.start_ms),
                    None => eprintln!("{}: {name} did not end a session in {}", self.name, f.name),
                }
            }
        }
    }

    /// The measured recovery times of faults whose name starts with `prefix`.
    pub fn recoveries(&self, prefix: &str) -> Vec<u64> {
        self.recovery_ms
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .filter_map(|(_, r)| *r)
            .collect()
    }

    /// I1–I4.
    pub fn assert_invariants(&self) {
        assert!(self.emitted > 0, "{}: nothing emitted", self.name);
        assert!(
            self.unaccounted.is_empty(),
            "I1: {}: {} events without exactly one effect or a dead letter (id, effects, dead): {:?}",
            self.name,
            self.unaccounted.len(),
            &self.unaccounted[..self.unaccounted.len().min(20)]
        );
        assert!(
            self.doubled.is_empty(),
            "I2: {}: {:?}",
            self.name,
            self.doubled
        );
        assert!(
            self.phantom.is_empty(),
            "I3: {}: {:?}",
            self.name,
            self.phantom
        );
        assert!(
            self.unexplained.is_empty(),
            "I4: {}: dead letters without kind/error: {:?}",
            self.name,
            self.unexplained
        );
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rss: Vec<String> = self
            .rss_kb
            .iter()
            .map(|(r, kb)| format!("{r}={:.1}MB", *kb as f64 / 1024.0))
            .collect();
        let mut by_fault: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut none = 0;
        for (n, r) in &self.recovery_ms {
            let family = n.split('#').next().unwrap_or(n).to_string();
            match r {
                Some(ms) => by_fault.entry(family).or_default().push(*ms),
                None => none += 1,
            }
        }
        let rec: Vec<String> = by_fault
            .iter_mut()
            .map(|(n, v)| {
                v.sort_unstable();
                format!(
                    "{n}: n={} median={}ms max={}ms",
                    v.len(),
                    v[v.len() / 2],
                    v[v.len() - 1]
                )
            })
            .collect();
        let silences: Vec<String> = self.silences_s.iter().map(|s| format!("{s:.1}s")).collect();
        let mut half_open = self.half_open_ms.clone();
        half_open.sort_unstable();
        let half_open = match half_open.last() {
            Some(max) => format!("n={} min={}ms max={max}ms", half_open.len(), half_open[0]),
            None => "none".into(),
        };
        write!(
            f,
            "RELIABILITY {}: events={} effects={} dead={} repeats_absorbed={} \
             I1_violations={} I2={} I3={} I4={} longest_effect_gap={}ms max_rss[{}] recovery[{}] \
             silence_detected_after[{}] half_open_detection[{half_open}]{}",
            self.name,
            self.emitted,
            self.effects,
            self.dead,
            self.repeats_absorbed,
            self.unaccounted.len(),
            self.doubled.len(),
            self.phantom.len(),
            self.unexplained.len(),
            self.longest_gap_ms,
            rss.join(" "),
            rec.join("; "),
            if silences.is_empty() {
                "none".into()
            } else {
                silences.join(" ")
            },
            if none > 0 {
                format!(" ({none} faults had no later events)")
            } else {
                String::new()
            }
        )
    }
}
