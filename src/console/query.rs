//! The dead-letter filter as the pages carry it: in a query string for links and GET forms,
//! in hidden fields for change forms, and turned into a [`Filter`] and the DLQs to read.

use std::time::Duration;

use maud::{Markup, html};

use crate::dlq::{self, DlqRef, Filter, Kind};
use crate::topology::Topology;

/// `application/x-www-form-urlencoded` pairs (a query string or a form body); repeated names
/// stay repeated (a selection's `id`s).
pub(crate) fn pairs(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name`.
pub(crate) fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The filter fields of the dead-letter pages, as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FilterForm {
    /// A work queue or DLQ; empty for every DLQ.
    pub(crate) queue: String,
    /// An event type or topic pattern.
    pub(crate) event_type: String,
    /// A kind (`permanent`, `delivery_limit`…).
    pub(crate) kind: String,
    /// Text looked for in the id, type, agent, error and body.
    pub(crate) text: String,
    /// Failed within this long (`15m`, `2h`).
    pub(crate) since: String,
    /// An error fingerprint (a group).
    pub(crate) fp: String,
}

const FIELDS: [&str; 6] = ["queue", "type", "kind", "text", "since", "fp"];

impl FilterForm {
    /// Reads the fields from `pairs`; absent ones are empty.
    pub(crate) fn from_pairs(pairs: &[(String, String)]) -> Self {
        let get = |n: &str| value(pairs, n).unwrap_or("").trim().to_string();
        Self {
            queue: get("queue"),
            event_type: get("type"),
            kind: get("kind"),
            text: get("text"),
            since: get("since"),
            fp: value(pairs, "fp").unwrap_or("").to_string(),
        }
    }

    fn values(&self) -> [&str; 6] {
        [
            &self.queue,
            &self.event_type,
            &self.kind,
            &self.text,
            &self.since,
            &self.fp,
        ]
    }

    /// The DLQs to read and the filter, or what is wrong, naming the field.
    pub(crate) fn resolve(&self, topology: &Topology) -> Result<(Vec<DlqRef>, Filter), String> {
        let queues: Vec<String> = match self.queue.as_str() {
            "" => vec![],
            q => vec![q.to_string()],
        };
        let dlqs = dlq::resolve(topology, &queues).map_err(|e| format!("queue: {e}"))?;
        let kinds = match self.kind.as_str() {
            "" => vec![],
            k => vec![Kind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("kind: '{k}' is not one of {}", known.join(", "))
            })?],
        };
        let since: Option<Duration> =
            match self.since.as_str() {
                "" => None,
                s => Some(humantime::parse_duration(s).map_err(|e| {
                    format!("since: '{s}' is not a duration such as 15m or 2h ({e})")
                })?),
            };
        let filter = Filter {
            types: match self.event_type.as_str() {
                "" => vec![],
                t => vec![t.to_string()],
            },
            kinds,
            grep: (!self.text.is_empty()).then(|| self.text.to_lowercase()),
            fingerprint: (!self.fp.is_empty()).then(|| self.fp.clone()),
            ..Filter::default()
        }
        .since_ago(since);
        Ok((dlqs, filter))
    }

    /// The fields as a query string (without `?`), empty ones left out.
    pub(crate) fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (name, v) in FIELDS.iter().zip(self.values()) {
            if !v.is_empty() {
                q.append_pair(name, v);
            }
        }
        q.finish()
    }

    /// The fields as hidden inputs, so a change form acts on what the page shows.
    pub(crate) fn hidden(&self) -> Markup {
        html! {
            @for (name, v) in FIELDS.iter().zip(self.values()) {
                @if !v.is_empty() { input type="hidden" name=(name) value=(v); }
            }
        }
    }

    /// The filter in words.
    pub(crate) fn describe(&self) -> String {
        let parts: Vec<String> = FIELDS
            .iter()
            .zip(self.values())
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| format!("{n} = {v}"))
            .collect();
        if parts.is_empty() {
            "every dead letter".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_survives_its_query_string() {
        let f = FilterForm {
            queue: "pf.jobs".into(),
            kind: "permanent".into(),
            fp: "HTTP 422 for <n> & 'x'".into(),
            ..Default::default()
        };
        assert_eq!(FilterForm::from_pairs(&pairs(&f.query())), f);
    }

    #[test]
    fn bad_fields_are_named() {
        let t = Topology::parse(
            &std::fs::read_to_string(crate::topology::DEFAULT_TOPOLOGY_FILE).unwrap(),
            std::path::Path::new("warren.toml"),
            "",
        )
        .unwrap();
        let err = |f: FilterForm| f.resolve(&t).unwrap_err();
        assert!(
            err(FilterForm {
                kind: "nope".into(),
                ..Default::default()
            })
            .starts_with("kind: 'nope'")
        );
        assert!(
            err(FilterForm {
                since: "soon".into(),
                ..Default::default()
            })
            .starts_with("since: 'soon'")
        );
        assert!(
            err(FilterForm {
                queue: "nope".into(),
                ..Default::default()
            })
            .starts_with("queue: ")
        );
        let (dlqs, filter) = FilterForm {
            queue: "pf.jobs".into(),
            since: "1h".into(),
            ..Default::default()
        }
        .resolve(&t)
        .unwrap();
        assert_eq!(dlqs.len(), 1);
        assert!(filter.since.is_some());
    }
}
