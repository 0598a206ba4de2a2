//! `[archive]`: the event archive, a RabbitMQ stream bound to the events exchange. Its
//! retention is by age and by size, and RabbitMQ applies both per segment (it deletes whole
//! segments, never the one being written, and only when a segment rolls over), so the segment
//! size is part of the promise: see [`ArchiveSpec::retention_note`] and docs/archive.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::locate::{Problem, Seg};
use super::model::ArchiveModel;
use super::plan::{Arg, BindingPlan, QueuePlan, QueueRole};
use super::{Topology, is_topic_pattern};

/// Age limit when the file sets none.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Size limit when the file sets none: 5 GB.
pub const DEFAULT_MAX_BYTES: u64 = 5_000_000_000;
/// Segment size when the file sets none (capped at a tenth of `max_bytes`): RabbitMQ's own
/// default of 500 MB would hold a quiet archive's events for weeks past `max_age`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 50_000_000;
/// A segment holds at most this share of `max_bytes`, so size retention never drops more than
/// a tenth of the limit at once, and never keeps more than a tenth over it.
pub const SEGMENTS_AT_LEAST: u64 = 10;

/// The resolved archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSpec {
    /// The stream's full (prefixed) name.
    pub name: String,
    /// Topic patterns on the events exchange; `None`: every event, routed or unrouted.
    pub bind: Option<Vec<String>>,
    /// Segments whose newest event is older than this are deleted (`x-max-age`).
    pub max_age: Duration,
    /// Oldest segments are deleted while the stream is larger than this (`x-max-length-bytes`).
    pub max_bytes: u64,
    /// The segment size (`x-stream-max-segment-size-bytes`), fixed when the stream is declared.
    pub segment_bytes: u64,
}

impl ArchiveSpec {
    /// The stream's declare arguments.
    pub fn arguments(&self) -> BTreeMap<&'static str, Arg> {
        let mut a = BTreeMap::new();
        a.insert("x-queue-type", Arg::Str("stream".into()));
        a.insert(
            "x-max-age",
            Arg::Str(format!("{}s", self.max_age.as_secs())),
        );
        a.insert("x-max-length-bytes", Arg::Int(clamp(self.max_bytes)));
        a.insert(
            "x-stream-max-segment-size-bytes",
            Arg::Int(clamp(self.segment_bytes)),
        );
        a
    }

    /// What the retention settings promise, in one line for `archive info`.
    pub fn retention_note(&self) -> String {
        format!(
            "kept at least {}; deleted a segment ({} bytes) at a time once past {} or {} bytes",
            humantime::format_duration(self.max_age),
            self.segment_bytes,
            humantime::format_duration(self.max_age),
            self.max_bytes,
        )
    }
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// Validates `[archive]`; errors name the field.
pub(super) fn resolve(model: ArchiveModel, prefix: &str) -> Result<ArchiveSpec, Problem> {
    let at = |field: &str, m: String| {
        Problem::at(field, format!("archive: field '{field}': {m}"))
            .under(&[Seg::Key("archive".into())])
    };
    let name = super::parse::prefixed(prefix, &model.name, "archive.name")
        .map_err(|m| Problem::at("name", m).under(&[Seg::Key("archive".into())]))?;
    if let Some(bind) = &model.bind {
        if bind.is_empty() {
            return Err(at(
                "bind",
                "empty: list topic patterns, or remove the field to archive every event".into(),
            ));
        }
        if let Some((i, p)) = bind.iter().enumerate().find(|(_, p)| !is_topic_pattern(p)) {
            return Err(at(
                "bind",
                format!("'{p}' is not a topic pattern (dot-separated words, '*' or '#')"),
            )
            .at_index(i));
        }
    }
    let max_age = match &model.max_age {
        Some(s) => super::parse::parse_duration(s, "archive.max_age")
            .map_err(|m| Problem::at("max_age", m).under(&[Seg::Key("archive".into())]))?,
        None => DEFAULT_MAX_AGE,
    };
    if max_age < Duration::from_secs(1) {
        return Err(at("max_age", "must be at least 1s".into()));
    }
    let max_bytes = model.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if max_bytes == 0 {
        return Err(at("max_bytes", "must be at least 1".into()));
    }
    let segment_bytes = model
        .segment_bytes
        .unwrap_or((max_bytes / SEGMENTS_AT_LEAST).clamp(1, DEFAULT_SEGMENT_BYTES));
    if segment_bytes == 0 || segment_bytes > max_bytes / SEGMENTS_AT_LEAST {
        return Err(at(
            "segment_bytes",
            format!(
                "{segment_bytes} bytes: at most a tenth of max_bytes ({}). RabbitMQ deletes \
                 whole segments only, so a larger segment would keep up to a segment beyond \
                 the limits",
                max_bytes / SEGMENTS_AT_LEAST
            ),
        ));
    }
    Ok(ArchiveSpec {
        name,
        bind: model.bind,
        max_age,
        max_bytes,
        segment_bytes,
    })
}

impl Topology {
    /// The archive stream and its bindings. Archiving every event binds the stream with every
    /// work queue's pattern and to the unrouted exchange, rather than with `#`: a `#` binding
    /// would route every event, and the events exchange's alternate exchange (the unrouted
    /// queue) would never see one again.
    pub(super) fn plan_archive(
        &self,
        queues: &mut Vec<QueuePlan>,
        bindings: &mut Vec<BindingPlan>,
    ) {
        let Some(a) = &self.archive else {
            return;
        };
        queues.push(QueuePlan {
            name: a.name.clone(),
            role: QueueRole::Archive,
            arguments: a.arguments(),
        });
        let patterns: BTreeSet<&String> = match &a.bind {
            Some(list) => list.iter().collect(),
            None => self.queues.iter().flat_map(|q| &q.bind).collect(),
        };
        for p in patterns {
            bindings.push(BindingPlan::to_queue(&self.events_exchange, &a.name, p));
        }
        if a.bind.is_none() {
            let unrouted = self.unrouted_queue();
            bindings.push(BindingPlan::to_queue(&unrouted, &a.name, ""));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[exchanges]\nevents = \"ev\"\ndead_letter = \"dlx\"\n[[queues]]\nname = \"q\"\nbind = [\"a.*\"]\n";

    fn load(archive: &str) -> Result<Topology, String> {
        Topology::parse(
            &format!("{BASE}[archive]\n{archive}"),
            Path::new("t.toml"),
            "p.",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn an_archive_gets_stream_arguments_and_binds_every_event() {
        let t = load("name = \"arc\"\nmax_age = \"2h\"\nmax_bytes = 1000\nsegment_bytes = 100\n")
            .unwrap();
        let a = t.archive.as_ref().unwrap();
        assert_eq!(a.name, "p.arc");
        let plan = t.plan();
        let q = plan.queues.iter().find(|q| q.name == "p.arc").unwrap();
        assert_eq!(q.arguments["x-queue-type"], Arg::Str("stream".into()));
        assert_eq!(q.arguments["x-max-age"], Arg::Str("7200s".into()));
        assert_eq!(
            q.arguments["x-stream-max-segment-size-bytes"],
            Arg::Int(100)
        );
        let to_archive: Vec<(&str, &str)> = plan
            .bindings
            .iter()
            .filter(|b| b.queue == "p.arc")
            .map(|b| (b.exchange.as_str(), b.routing_key.as_str()))
            .collect();
        assert_eq!(to_archive, [("p.ev", "a.*"), ("p.ev.unrouted", "")]);
    }

    #[test]
    fn bad_archive_fields_are_named() {
        let e = load("name = \"arc\"\nmax_bytes = 1000\nsegment_bytes = 500\n").unwrap_err();
        assert!(
            e.contains("archive: field 'segment_bytes': 500 bytes: at most a tenth"),
            "{e}"
        );
        let e = load("name = \"arc\"\nbind = []\n").unwrap_err();
        assert!(e.contains("archive: field 'bind'"), "{e}");
        let e = load("name = \"arc\"\nmax_age = \"soon\"\n").unwrap_err();
        assert!(e.contains("archive.max_age"), "{e}");
        let e = load("name = \"arc\"\nretention = 1\n").unwrap_err();
        assert!(e.contains("retention"), "{e}");
        let defaults = load("name = \"arc\"\n").unwrap();
        let a = defaults.archive.unwrap();
        assert_eq!(
            (a.max_bytes, a.segment_bytes),
            (DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES)
        );
    }
}
