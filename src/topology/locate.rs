//! Where in a topology file a problem is: every error carries a key path (`queues[1].prefetch`),
//! turned into `line:column` through the spans of the parsed document.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    /// A table key.
    Key(String),
    /// An array index (0-based).
    Index(usize),
}

/// A problem found in the file, at a key path.
#[derive(Debug, Clone)]
pub(super) struct Problem {
    /// Where, from the document root.
    pub at: Vec<Seg>,
    /// What is wrong; names the queue when there is one.
    pub message: String,
    /// A span the parser or deserializer reported, more precise than the key path's.
    pub span: Option<Range<usize>>,
}

impl Problem {
    /// A problem at `field` (relative; see [`Problem::under`]).
    pub fn at(field: &str, message: impl Into<String>) -> Self {
        Problem {
            at: vec![Seg::Key(field.to_string())],
            message: message.into(),
            span: None,
        }
    }

    /// A problem at the document root (or wherever `under` puts it).
    pub fn here(message: impl Into<String>) -> Self {
        Problem {
            at: Vec::new(),
            message: message.into(),
            span: None,
        }
    }

    /// The same problem, its path placed below `prefix`.
    pub fn under(mut self, prefix: &[Seg]) -> Self {
        let mut at = prefix.to_vec();
        at.append(&mut self.at);
        self.at = at;
        self
    }

    /// The same problem, one element further down (`retry_delays[2]`).
    pub fn at_index(mut self, i: usize) -> Self {
        self.at.push(Seg::Index(i));
        self
    }

    /// The same problem with `label: ` (a queue) in front of its message.
    pub fn labelled(mut self, label: &str) -> Self {
        self.message = format!("{label}: {}", self.message);
        self
    }
}

/// `queues[2].max_attempts`.
pub(super) struct KeyPath<'a>(pub &'a [Seg]);

impl fmt::Display for KeyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// `key path` from serde_path_to_error's path.
pub(super) fn segs_of(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// The span of the deepest part of `at` the document holds: the value when the whole path
/// exists, else the closest table above it.
pub(super) fn span_of(text: &str, at: &[Seg]) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut array: Option<&[toml::Spanned<DeValue>]> = None;
    for seg in at {
        let next = match (seg, table, array) {
            (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
            (Seg::Index(i), _, Some(a)) => a.get(*i),
            _ => None,
        };
        let Some(value) = next else { break };
        span = Some(value.span());
        table = value.get_ref().as_table();
        array = value.get_ref().as_array().map(|a| &a[..]);
    }
    span
}

/// The name of queue `index` as written, for messages.
pub(super) fn queue_name(text: &str, index: usize) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let queue = root
        .get_ref()
        .get("queues")?
        .get_ref()
        .as_array()?
        .get(index)?;
    Some(queue.get_ref().get("name")?.get_ref().as_str()?.to_string())
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// For a syntax error (no document to walk): the key path from the table header above the
/// error and the key on its line, e.g. `queues[1].prefetch`.
pub(super) fn syntax_path(text: &str, offset: usize) -> Vec<Seg> {
    let offset = boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let mut at = Vec::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut header: Option<(String, bool)> = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name.clone(), 1)),
            }
            header = Some((name, true));
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            header = Some((name.trim().to_string(), false));
        }
    }
    if let Some((name, is_array)) = header {
        at.extend(name.split('.').map(|k| Seg::Key(k.trim().to_string())));
        if is_array {
            let n = counts.iter().find(|(n, _)| *n == name).map_or(1, |c| c.1);
            at.push(Seg::Index(n - 1));
        }
    }
    let line = text[line_start..line_end].trim();
    if !line.starts_with('[')
        && let Some((key, _)) = line.split_once('=')
    {
        at.extend(
            key.split('.')
                .map(|k| Seg::Key(k.trim().trim_matches('"').to_string())),
        );
    }
    at
}

/// The char boundary at or before `offset`.
fn boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}
