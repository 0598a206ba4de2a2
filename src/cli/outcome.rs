//! How a command ended, and the one place that turns it into the process exit code.

use crate::dlq::{self, Report, Scan};
use crate::error::{Error, Result};
use crate::topology::TopologyError;

/// How a command ended. Commands return `Result<Outcome>`; [`exit_code`] maps either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done. Exit 0.
    Success,
    /// Part of the work failed, or the answer may be incomplete (a DLQ another consumer held
    /// messages of). Exit 3.
    Partial,
    /// The command failed, or ran to its end with a failing answer (a replay stopped early, a
    /// demo that lost events). Exit 1.
    Failure,
    /// A flag, file or environment variable cannot work. Exit 2, as clap's own usage errors.
    Usage,
    /// A signal stopped the process: a second one without draining, or the first one a demo
    /// answered with its partial report. Exit 130.
    Interrupted,
}

impl Outcome {
    /// The process exit code: the only place these numbers are decided.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Usage => 2,
            Outcome::Partial => 3,
            Outcome::Interrupted => 130,
        }
    }

    /// A command that failed with `error`.
    pub fn of_error(error: &Error) -> Self {
        match error {
            // A topology file that cannot be read or is invalid, or a queue it does not have:
            // configuration the operator fixes, like a flag.
            Error::Usage(_)
            | Error::Db(crate::postgres::DbError::Config(_))
            | Error::Topology(
                TopologyError::Read { .. }
                | TopologyError::Invalid { .. }
                | TopologyError::UnknownQueue { .. },
            ) => Outcome::Usage,
            // The id may be among the messages another consumer holds: the answer is partial.
            Error::DeadLetterNotFound { incomplete, .. } if !incomplete.is_empty() => {
                Outcome::Partial
            }
            _ => Outcome::Failure,
        }
    }

    /// A read of the DLQs (`list`, `show`, `stats`, `export`): partial when one could not be
    /// read whole.
    pub fn of_scans(scans: &[Scan]) -> Self {
        if dlq::read_whole(scans) {
            Outcome::Success
        } else {
            Outcome::Partial
        }
    }

    /// `replay` or `purge`: a failure when stopped early, partial when some dead letter failed
    /// or a DLQ could not be read whole.
    pub fn of_report(report: &Report) -> Self {
        if report.aborted.is_some() {
            Outcome::Failure
        } else if report.count(dlq::Outcome::Failed) > 0 {
            Outcome::Partial
        } else {
            Outcome::of_scans(&report.scans)
        }
    }
}

/// The exit code for a command's result.
pub fn exit_code(result: &Result<Outcome>) -> u8 {
    match result {
        Ok(outcome) => outcome.code(),
        Err(e) => Outcome::of_error(e).code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::Item;

    fn item(outcome: dlq::Outcome) -> Item {
        Item {
            dlq: "q.dlq".into(),
            position: 1,
            id: None,
            event_type: None,
            origin: None,
            outcome,
            error: None,
        }
    }

    fn scan(incomplete: bool) -> Scan {
        Scan {
            dlq: "q.dlq".into(),
            total: 2,
            read: if incomplete { 1 } else { 2 },
            incomplete,
        }
    }

    #[test]
    fn a_report_exits_by_its_items_its_scans_and_whether_it_stopped() {
        let code = |r: &Report| exit_code(&Ok(Outcome::of_report(r)));
        let mut r = Report::new("replay", false);
        assert_eq!(code(&r), 0);
        r.items.push(item(dlq::Outcome::Replayed));
        assert_eq!(code(&r), 0);
        r.items.push(item(dlq::Outcome::Failed));
        assert_eq!(code(&r), 3);
        r.aborted = Some("connection lost".into());
        assert_eq!(code(&r), 1);
        let mut r = Report::new("purge", false);
        r.scans.push(scan(true));
        assert_eq!(code(&r), 3);
    }

    #[test]
    fn errors_exit_2_for_usage_3_for_an_incomplete_search_else_1() {
        let code = |e: Error| exit_code(&Err(e));
        assert_eq!(code(Error::Usage("--rate".into())), 2);
        assert_eq!(code(Error::NotConfirmed), 1);
        let invalid = TopologyError::Invalid {
            path: "t.toml".into(),
            line: 3,
            column: 1,
            key: "queues[0].prefetch".into(),
            message: "field 'prefetch': must be at least 1".into(),
        };
        assert_eq!(code(invalid.into()), 2);
        assert_eq!(
            code(TopologyError::Mismatch("x-max-length".into()).into()),
            1
        );
        let not_found = |incomplete: Vec<String>| Error::DeadLetterNotFound {
            id: "01X".into(),
            dlqs: vec!["a.dlq".into()],
            incomplete,
        };
        assert_eq!(code(not_found(vec![])), 1);
        assert_eq!(code(not_found(vec!["a.dlq".into()])), 3);
        assert_eq!(exit_code(&Ok(Outcome::of_scans(&[scan(false)]))), 0);
        assert_eq!(
            exit_code(&Ok(Outcome::of_scans(&[scan(false), scan(true)]))),
            3
        );
        assert_eq!(Outcome::Interrupted.code(), 130);
    }
}
