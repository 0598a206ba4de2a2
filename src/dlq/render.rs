//! Tables and text for people; JSON shapes are the structs themselves.

use std::fmt::Write;

use tabled::Tabled;

use super::detail::{Body, Detail};
use super::{DeadLetter, Report, Stats};
use crate::output::table;

/// The widest error shown in a list row.
const ERROR_WIDTH: usize = 60;

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn time(t: Option<super::Time>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
}

/// Cuts `s` to `width` characters, marking the cut with `…`, on one line.
pub fn truncate(s: &str, width: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= width {
        return one_line;
    }
    let mut out: String = one_line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The narrowest error column worth showing before columns are dropped instead: room for a
/// failing call and its status (`POST http://host:port/path: 503 …`).
const MIN_ERROR_WIDTH: usize = 48;

/// Columns `list` drops, in this order, when the terminal is too narrow for them.
const DROPPABLE: [&str; 5] = ["first failed", "agent", "attempts", "last failed", "id"];

/// The `list` table; `#` is the position in the DLQ, named in a first column when the
/// listing spans several DLQs. With a `width`, the table fits it: the error column takes the
/// room the others leave (its start kept: the failing call and status), and when even
/// [`MIN_ERROR_WIDTH`] does not fit, the least useful columns go first.
pub fn list(items: &[DeadLetter], width: Option<usize>) -> String {
    let several = items.iter().any(|l| l.dlq != items[0].dlq);
    let header = [
        "#",
        "id",
        "type",
        "agent",
        "kind",
        "attempts",
        "first failed",
        "last failed",
        "origin",
        "error",
    ];
    let rows: Vec<[String; 10]> = items
        .iter()
        .map(|l| {
            [
                l.position.to_string(),
                dash(&l.id),
                dash(&l.event_type),
                dash(&l.agent),
                l.kind.to_string(),
                l.attempts.to_string(),
                time(l.first_failed),
                time(l.last_failed),
                dash(&l.origin),
                l.error.replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let build = |dropped: &[&str], error_width: usize| {
        let keep: Vec<usize> = (0..header.len())
            .filter(|&c| !dropped.contains(&header[c]))
            .collect();
        let mut b = tabled::builder::Builder::new();
        let head = keep.iter().map(|&c| header[c].to_string());
        b.push_record(several.then(|| "dlq".to_string()).into_iter().chain(head));
        for (l, row) in items.iter().zip(&rows) {
            let cells = keep.iter().map(|&c| match c {
                9 => truncate(&row[c], error_width),
                _ => row[c].clone(),
            });
            b.push_record(several.then(|| l.dlq.clone()).into_iter().chain(cells));
        }
        let mut t = b.build();
        crate::output::style(&mut t);
        t
    };
    let Some(width) = width else {
        return build(&[], ERROR_WIDTH).to_string();
    };
    let longest = rows.iter().map(|r| r[9].chars().count()).max().unwrap_or(0);
    for n in 0..=DROPPABLE.len() {
        let dropped = &DROPPABLE[..n];
        // The table with an empty error column: what every other column takes.
        let rest = build(dropped, 0).total_width() - "error".len();
        let room = width.saturating_sub(rest);
        if room >= MIN_ERROR_WIDTH.min(longest.max("error".len())) || n == DROPPABLE.len() {
            // Even with every droppable column gone the table fits: the error takes what is left.
            return build(dropped, room.max(8)).to_string();
        }
    }
    unreachable!("the last attempt returns")
}

#[derive(Tabled)]
struct StatsRow {
    count: usize,
    origin: String,
    kind: String,
    #[tabled(rename = "type")]
    event_type: String,
    #[tabled(rename = "error fingerprint")]
    fingerprint: String,
    #[tabled(rename = "last failed")]
    last: String,
}

#[derive(Tabled)]
struct TotalRow {
    by: &'static str,
    value: String,
    count: usize,
}

/// The `stats` tables: groups, then totals per origin, kind and type.
pub fn stats(s: &Stats) -> String {
    let groups = table(s.groups.iter().map(|g| StatsRow {
        count: g.count,
        origin: dash(&g.origin),
        kind: g.kind.to_string(),
        event_type: dash(&g.event_type),
        fingerprint: truncate(&g.fingerprint, 80),
        last: time(g.last),
    }));
    let totals = [
        ("origin", &s.by_origin),
        ("kind", &s.by_kind),
        ("type", &s.by_type),
    ]
    .into_iter()
    .flat_map(|(by, m)| {
        m.iter().map(move |(v, n)| TotalRow {
            by,
            value: v.clone(),
            count: *n,
        })
    });
    format!("{groups}\n{}\n{} dead letters", table(totals), s.total)
}

#[derive(Tabled)]
struct ReportRow {
    dlq: String,
    #[tabled(rename = "#")]
    position: u32,
    id: String,
    #[tabled(rename = "type")]
    event_type: String,
    origin: String,
    outcome: &'static str,
    error: String,
}

/// The `replay` / `purge` table.
pub fn report(r: &Report) -> String {
    table(r.items.iter().map(|i| {
        ReportRow {
            dlq: i.dlq.clone(),
            position: i.position,
            id: dash(&i.id),
            event_type: dash(&i.event_type),
            origin: dash(&i.origin),
            outcome: i.outcome.as_str(),
            error: i
                .error
                .as_deref()
                .map(|e| truncate(e, ERROR_WIDTH))
                .unwrap_or_default(),
        }
    }))
}

#[derive(Tabled)]
struct Field {
    field: String,
    value: String,
}

#[derive(Tabled)]
struct DeathRow {
    queue: String,
    reason: String,
    count: u64,
    exchange: String,
    time: String,
}

/// `show`: the explanation, properties, headers, `x-death` and the pretty body.
pub fn detail(d: &Detail) -> String {
    let l = &d.letter;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dead letter {} in {} (position {})",
        dash(&l.id),
        l.dlq,
        l.position
    );
    let summary = [
        ("kind", l.kind.to_string()),
        ("warren kind", dash(&l.warren_kind)),
        ("origin", dash(&l.origin)),
        ("type", dash(&l.event_type)),
        ("agent", dash(&l.agent)),
        ("attempts", l.attempts.to_string()),
        ("replayed", l.replayed.to_string()),
        ("first failed", time(l.first_failed)),
        ("last failed", time(l.last_failed)),
        ("error", l.error.clone()),
    ];
    let effect = d
        .effect
        .as_ref()
        .map(|e| ("effect".to_string(), e.describe()));
    out.push_str(&fields(
        summary
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(effect),
    ));
    out.push_str("\n\nproperties\n");
    out.push_str(&fields(
        d.properties.iter().map(|(k, v)| (k.clone(), plain(v))),
    ));
    out.push_str("\n\nheaders\n");
    out.push_str(&fields(
        d.headers
            .iter()
            .filter(|(k, _)| *k != "x-death")
            .map(|(k, v)| (k.clone(), plain(v))),
    ));
    if !d.x_death.is_empty() {
        out.push_str("\n\nx-death (most recent first)\n");
        out.push_str(&table(d.x_death.iter().map(|x| DeathRow {
            queue: x.queue.clone(),
            reason: x.reason.clone(),
            count: x.count,
            exchange: if x.exchange.is_empty() {
                "(default)".into()
            } else {
                x.exchange.clone()
            },
            time: time(x.time.and_then(super::Time::from_secs)),
        })));
    }
    let _ = write!(out, "\n\nbody ({} bytes", l.bytes);
    match &d.body {
        Body::Json(v) => {
            let _ = write!(
                out,
                ", JSON)\n{}",
                serde_json::to_string_pretty(v).unwrap_or_default()
            );
        }
        Body::Utf8(s) => {
            let _ = write!(out, ", text, not JSON)\n{s}");
        }
        Body::Base64(b) => {
            let _ = write!(out, ", binary, base64)\n{b}");
        }
    }
    out
}

fn fields(rows: impl Iterator<Item = (String, String)>) -> String {
    table(rows.map(|(field, value)| Field { field, value }))
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_marks_the_cut_and_flattens_lines() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdefghijk", 5), "abcd…");
        assert_eq!(truncate("ééééééé", 3), "éé…");
    }
}
