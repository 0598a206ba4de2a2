//! Bulk results as data: one outcome per dead letter and one summary per DLQ read. The command
//! line turns them into an exit code.

use serde::Serialize;

/// How one DLQ was read.
#[derive(Debug, Clone, Serialize)]
pub struct Scan {
    /// The DLQ.
    pub dlq: String,
    /// Messages in it when the command started; only these were considered.
    pub total: u32,
    /// Messages read.
    pub read: u32,
    /// True when fewer than `total` could be read: another consumer held some.
    pub incomplete: bool,
}

/// What happened to one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Republished to its origin queue (confirmed), then removed from the DLQ.
    Replayed,
    /// Removed from the DLQ.
    Purged,
    /// `--dry-run`: would be replayed.
    WouldReplay,
    /// `--dry-run`: would be purged.
    WouldPurge,
    /// Left in the DLQ; `error` says why.
    Failed,
}

impl Outcome {
    /// The word shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Replayed => "replayed",
            Outcome::Purged => "purged",
            Outcome::WouldReplay => "would replay",
            Outcome::WouldPurge => "would purge",
            Outcome::Failed => "failed",
        }
    }
}

/// One dead letter's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The DLQ it was in.
    pub dlq: String,
    /// Its position there when read.
    pub position: u32,
    /// Its event id, when it has one.
    pub id: Option<String>,
    /// Its event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Where it was (or would be) replayed to.
    pub origin: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
}

/// The outcome of `replay` or `purge`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `replay` or `purge`.
    pub operation: &'static str,
    /// True for `--dry-run`: nothing was changed.
    pub dry_run: bool,
    /// Every DLQ read.
    pub scans: Vec<Scan>,
    /// Every matching dead letter, in the order handled.
    pub items: Vec<Item>,
    /// Set when the command stopped early (broker error, signal); untouched messages stay.
    pub aborted: Option<String>,
}

impl Report {
    /// An empty report.
    pub fn new(operation: &'static str, dry_run: bool) -> Self {
        Self {
            operation,
            dry_run,
            scans: vec![],
            items: vec![],
            aborted: None,
        }
    }

    /// How many items had `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.items.iter().filter(|i| i.outcome == outcome).count()
    }

    /// One line for stderr: `replayed 10, failed 2 (of 1000 messages in 1 DLQ)`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = [
            Outcome::Replayed,
            Outcome::Purged,
            Outcome::WouldReplay,
            Outcome::WouldPurge,
            Outcome::Failed,
        ]
        .into_iter()
        .filter_map(|o| match self.count(o) {
            0 => None,
            n => Some(format!("{} {n}", o.as_str())),
        })
        .collect();
        if parts.is_empty() {
            parts.push("nothing matched".into());
        }
        let total: u32 = self.scans.iter().map(|s| s.total).sum();
        let mut line = format!(
            "{}: {} (of {total} messages in {} DLQ{})",
            self.operation,
            parts.join(", "),
            self.scans.len(),
            if self.scans.len() == 1 { "" } else { "s" }
        );
        if let Some(why) = &self.aborted {
            line.push_str(&format!("; stopped early: {why}"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_nothing_matched_says_so() {
        let mut r = Report::new("purge", false);
        r.scans.push(Scan {
            dlq: "q.dlq".into(),
            total: 2,
            read: 1,
            incomplete: true,
        });
        assert!(
            r.summary()
                .starts_with("purge: nothing matched (of 2 messages in 1 DLQ)"),
            "{}",
            r.summary()
        );
    }
}
