//! A window of the archive: from and to (each a time or an offset), event types and agents.
//! Times are the events' own (`ts`, milliseconds); a time window is half-open, `[from, to)`,
//! so consecutive windows split the archive exactly; an offset window includes both ends.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::envelope::{Envelope, is_event_type};
use crate::error::Error;
use crate::topology::{ArchiveSpec, topic_matches};

/// How far an event's time may be from the broker's time when it was written (clock skew,
/// publish delay): a time window starts reading this much earlier, and stops at the first
/// event this much past its end.
pub const SKEW: Duration = Duration::from_secs(60);

/// One end of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The oldest event the archive holds (`--from first`).
    First,
    /// A stream offset.
    Offset(u64),
    /// An event time, epoch milliseconds.
    Time(u64),
}

impl Bound {
    /// `first`, an offset (digits), an RFC 3339 time (`2026-12-07T14:02:00Z`), `now`, or a
    /// duration ago (`15m ago`). `flag` names the flag in errors.
    pub fn parse(flag: &str, s: &str) -> Result<Bound, Error> {
        let s = s.trim();
        if s == "first" {
            return Ok(Bound::First);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Bound::Offset)
                .map_err(|_| Error::Usage(format!("{flag} {s}: the offset is too large")));
        }
        let now = SystemTime::now();
        let at = if s == "now" {
            now
        } else if let Some(ago) = s.strip_suffix(" ago") {
            let d = humantime::parse_duration(ago.trim()).map_err(|e| {
                Error::Usage(format!(
                    "{flag} '{s}': '{ago}' is not a duration like 15m ({e})"
                ))
            })?;
            now.checked_sub(d)
                .ok_or_else(|| Error::Usage(format!("{flag} '{s}': before 1970")))?
        } else {
            humantime::parse_rfc3339_weak(s).map_err(|_| {
                Error::Usage(format!(
                    "{flag} '{s}': not a time or an offset (give an RFC 3339 time like \
                     2026-12-07T14:02:00Z, '15m ago', 'now', 'first', or an offset like 1042)"
                ))
            })?
        };
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Usage(format!("{flag} '{s}': before 1970")))?
            .as_millis();
        Ok(Bound::Time(ms.min(u64::MAX as u128) as u64))
    }

    fn show(self) -> String {
        match self {
            Bound::First => "first".into(),
            Bound::Offset(n) => format!("offset {n}"),
            Bound::Time(ms) => {
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
            }
        }
    }
}

/// Where an event stands relative to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Before its start: skip.
    Before,
    /// Inside.
    In,
    /// Past its end, but within [`SKEW`]: skip, an earlier event may still follow.
    Beyond,
    /// Past its end for good: stop.
    After,
}

/// The part of the archive a command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Where it starts.
    pub from: Bound,
    /// Where it ends; `None`: at the archive's end when the command started.
    pub to: Option<Bound>,
    /// Only these event types (empty: all).
    pub types: BTreeSet<String>,
    /// Only these agents (empty: all).
    pub agents: BTreeSet<String>,
}

impl Window {
    /// Checks the window against itself and the archive: `--to` not before `--from`, types
    /// well formed and kept by the archive. Errors name the flag.
    pub fn new(
        from: Bound,
        to: Option<Bound>,
        types: Vec<String>,
        agents: Vec<String>,
        archive: &ArchiveSpec,
    ) -> Result<Window, Error> {
        match (from, to) {
            (_, Some(Bound::First)) => {
                return Err(Error::Usage("--to first: give a time or an offset".into()));
            }
            (Bound::Time(f), Some(Bound::Time(t))) if t <= f => {
                return Err(Error::Usage(format!(
                    "--to {} is not after --from {}: the window is empty",
                    Bound::Time(t).show(),
                    Bound::Time(f).show()
                )));
            }
            (Bound::Offset(f), Some(Bound::Offset(t))) if t < f => {
                return Err(Error::Usage(format!(
                    "--to {t} is before --from {f}: the window is empty"
                )));
            }
            _ => {}
        }
        for t in &types {
            if !is_event_type(t) {
                return Err(Error::Usage(format!(
                    "--type '{t}': not an event type (domain.name, e.g. market.tick)"
                )));
            }
            if let Some(bind) = &archive.bind
                && !bind.iter().any(|p| topic_matches(p, t))
            {
                return Err(Error::Usage(format!(
                    "--type '{t}': archive '{}' does not keep this type (it binds {})",
                    archive.name,
                    bind.join(", ")
                )));
            }
        }
        if let Some(a) = agents.iter().find(|a| a.is_empty()) {
            return Err(Error::Usage(format!("--agent '{a}': must not be empty")));
        }
        Ok(Window {
            from,
            to,
            types: types.into_iter().collect(),
            agents: agents.into_iter().collect(),
        })
    }

    /// The flags as given, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("--from {}", self.from.show());
        if let Some(to) = self.to {
            s.push_str(&format!(" --to {}", to.show()));
        }
        for t in &self.types {
            s.push_str(&format!(" --type {t}"));
        }
        for a in &self.agents {
            s.push_str(&format!(" --agent {a}"));
        }
        s
    }

    /// Where the event at `offset` stands.
    pub(super) fn place(&self, offset: u64, event: &Envelope) -> Place {
        let before = match self.from {
            Bound::First => false,
            Bound::Offset(n) => offset < n,
            Bound::Time(ms) => event.ts < ms,
        };
        if before {
            return Place::Before;
        }
        match self.to {
            None | Some(Bound::First) => Place::In,
            Some(Bound::Offset(n)) if offset > n => Place::After,
            Some(Bound::Offset(_)) => Place::In,
            Some(Bound::Time(ms)) if event.ts < ms => Place::In,
            Some(Bound::Time(ms)) if event.ts < ms.saturating_add(SKEW.as_millis() as u64) => {
                Place::Beyond
            }
            Some(Bound::Time(_)) => Place::After,
        }
    }

    /// True if the event passes the type and agent filters.
    pub fn matches(&self, event: &Envelope) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && (self.agents.is_empty() || self.agents.contains(&event.agent_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(bind: Option<Vec<&str>>) -> ArchiveSpec {
        ArchiveSpec {
            name: "a".into(),
            bind: bind.map(|b| b.into_iter().map(String::from).collect()),
            max_age: Duration::from_secs(60),
            max_bytes: 1000,
            segment_bytes: 100,
        }
    }

    #[test]
    fn bounds_parse_offsets_times_and_name_the_flag() {
        assert_eq!(Bound::parse("--from", "42").unwrap(), Bound::Offset(42));
        assert_eq!(Bound::parse("--from", "first").unwrap(), Bound::First);
        assert_eq!(
            Bound::parse("--from", "2026-12-07T14:02:00Z").unwrap(),
            Bound::Time(1_796_652_120_000)
        );
        let e = Bound::parse("--to", "yesterday").unwrap_err().to_string();
        assert!(e.starts_with("--to 'yesterday'"), "{e}");
        let e = Bound::parse("--from", "5 parsecs ago")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--from '5 parsecs ago'"), "{e}");
    }

    #[test]
    fn bad_windows_name_the_flag() {
        let a = archive(Some(vec!["market.*"]));
        let e = Window::new(
            Bound::Time(2000),
            Some(Bound::Time(1000)),
            vec![],
            vec![],
            &a,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--to") && e.contains("--from"), "{e}");
        let e = Window::new(Bound::Offset(9), Some(Bound::Offset(3)), vec![], vec![], &a)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--to 3 is before --from 9"), "{e}");
        let e = Window::new(Bound::First, None, vec!["Market".into()], vec![], &a)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--type 'Market'"), "{e}");
        let e = Window::new(Bound::First, None, vec!["job.done".into()], vec![], &a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not keep this type"), "{e}");
        assert!(
            Window::new(
                Bound::First,
                None,
                vec!["job.done".into()],
                vec![],
                &archive(None)
            )
            .is_ok()
        );
    }

    #[test]
    fn a_time_window_is_half_open_and_stops_past_the_skew() {
        let w = Window::new(
            Bound::Time(1000),
            Some(Bound::Time(2000)),
            vec![],
            vec![],
            &archive(None),
        )
        .unwrap();
        let ev = |ts: u64| {
            Envelope::parse(
                format!(r#"{{"eventId":"01HZ9K3M2Q7WB5VN8PXCT4YRDJ","type":"a.b","agentId":"x","payload":{{}},"ts":{ts}}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(w.place(0, &ev(999)), Place::Before);
        assert_eq!(w.place(0, &ev(1000)), Place::In);
        assert_eq!(w.place(0, &ev(1999)), Place::In);
        assert_eq!(w.place(0, &ev(2000)), Place::Beyond);
        assert_eq!(w.place(0, &ev(2000 + 60_000)), Place::After);
    }
}
