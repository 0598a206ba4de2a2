//! Dead letters: groups by error fingerprint, a filtered page of messages, one message in
//! full. Every read goes through [`crate::dlq`]'s snapshot walk, which puts each message back
//! in its place: browsing never consumes.

use std::ops::ControlFlow;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;

use super::Console;
use super::layout::{self, Chrome};
use super::query::{FilterForm, pairs, value};
use crate::amqp::Connection;
use crate::dlq::{self, Body, DeadLetter, Detail, DlqRef, Filter, Kind, Listing, Scan, Stats};

/// `GET /dlq`: groups of dead letters sharing origin, kind, type and error fingerprint.
pub(super) async fn groups(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    c.metrics.page("groups");
    let form = FilterForm::from_pairs(&pairs(raw.as_deref().unwrap_or("")));
    let (dlqs, filter) = match form.resolve(&c.settings.topology) {
        Ok(v) => v,
        Err(e) => return layout::error(StatusCode::BAD_REQUEST, e),
    };
    let stats = async {
        let conn = c.read_conn().await?;
        dlq::stats(&conn, &dlqs, &filter).await
    }
    .await;
    let stats = match stats {
        Ok(s) => s,
        Err(e) => return layout::error(StatusCode::BAD_GATEWAY, e),
    };
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "dlq",
        signed: signed.as_ref(),
        changes: c.changes_allowed(),
    };
    let body = html! {
        (filter_form(&c, &form, "/dlq"))
        (scans_note(&stats.scans))
        (group_table(&stats, &form))
    };
    Html(layout::page("Dead letters by cause", &chrome, body)).into_response()
}

fn group_table(stats: &Stats, form: &FilterForm) -> Markup {
    html! {
        p { strong #total { (stats.total) } " dead letters in " (stats.groups.len()) " groups (" (form.describe()) ")." }
        table #groups {
            thead { tr {
                th.n { "Count" } th { "Failed in" } th { "Kind" } th { "Type" } th { "Error" }
                th { "First seen" } th { "Last seen" } th {}
            } }
            tbody {
                @for g in &stats.groups {
                    @let link = FilterForm {
                        queue: g.origin.clone().unwrap_or_else(|| form.queue.clone()),
                        event_type: g.event_type.clone().unwrap_or_default(),
                        kind: g.kind.as_str().into(),
                        fp: g.fingerprint.clone(),
                        ..FilterForm::default()
                    };
                    tr.group data-count=(g.count) {
                        td.n { (g.count) }
                        td { (layout::num(g.origin.as_deref())) }
                        td { (g.kind) }
                        td { (layout::num(g.event_type.as_deref())) }
                        td { code.fp { (g.fingerprint) } br; span.muted { "e.g. " (g.example) } }
                        td { (layout::time(g.first)) }
                        td { (layout::time(g.last)) }
                        td { a href={ "/dlq/messages?" (link.query()) } { "messages →" } }
                    }
                }
            }
        }
    }
}

/// `GET /dlq/messages[?page=N]`: page N (from 1) of the dead letters passing the filter, with
/// links to the pages before and after, and the actions on a selection or on everything the
/// filter matches (whatever the page).
pub(super) async fn messages(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    c.metrics.page("messages");
    let p = pairs(raw.as_deref().unwrap_or(""));
    let form = FilterForm::from_pairs(&p);
    let (dlqs, filter) = match form.resolve(&c.settings.topology) {
        Ok(v) => v,
        Err(e) => return layout::error(StatusCode::BAD_REQUEST, e),
    };
    let page = match value(&p, "page").map(str::parse::<usize>) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => return layout::error(StatusCode::BAD_REQUEST, "page: a number from 1"),
    };
    let size = c.settings.page_size;
    let listing = async {
        let conn = c.read_conn().await?;
        page_of(&conn, &dlqs, filter, page, size).await
    }
    .await;
    let (listing, more) = match listing {
        Ok(l) => l,
        Err(e) => return layout::error(StatusCode::BAD_GATEWAY, e),
    };
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "dlq",
        signed: signed.as_ref(),
        changes: c.changes_allowed(),
    };
    let held: u64 = listing.scans.iter().map(|s| u64::from(s.total)).sum();
    let first = (page - 1) * size + 1;
    let shown = listing.items.len();
    let pager = pager(&form, page, more);
    let body = html! {
        (filter_form(&c, &form, "/dlq/messages"))
        (scans_note(&listing.scans))
        p {
            @if shown == 0 && page > 1 {
                "No dead letters match (" (form.describe()) ") past the first " ((page - 1) * size) ". "
            } @else {
                "Showing " strong #shown { (shown) } " matching (" (form.describe()) ")"
                @if page > 1 || more { ": " span #range { (first) "–" (first + shown.max(1) - 1) } }
                @if more { ", more on the next page" }
                "."
            }
            " The DLQ(s) hold " strong #held { (held) } " dead letters in " (dlqs.len()) " DLQ(s)."
        }
        (pager)
        @if let Some(s) = signed.as_ref().filter(|_| chrome.can_change()) {
            form method="post" action="/jobs" {
                (layout::csrf(s))
                (form.hidden())
                (letter_table(&listing.items, true))
                (actions(&chrome))
            }
        } @else {
            (letter_table(&listing.items, false))
            (actions(&chrome))
        }
        (pager)
    };
    Html(layout::page("Dead letters", &chrome, body)).into_response()
}

/// Page `page` (from 1) of `size` dead letters passing `filter`, and whether more follow. The
/// walk reads only up to one past the page, then puts everything back.
async fn page_of(
    conn: &Connection,
    dlqs: &[DlqRef],
    mut filter: Filter,
    page: usize,
    size: usize,
) -> Result<(Listing, bool), crate::error::Error> {
    let skip = (page - 1).saturating_mul(size);
    filter.limit = Some(skip.saturating_add(size).saturating_add(1));
    let (mut seen, mut items) = (0, vec![]);
    let scans = dlq::scan(conn, dlqs, &filter, |_, letter| {
        seen += 1;
        if seen > skip {
            items.push(letter);
        }
        Ok(ControlFlow::Continue(()))
    })
    .await?;
    let more = items.len() > size;
    items.truncate(size);
    Ok((Listing { scans, items }, more))
}

/// Links to the previous and next pages, keeping the filter; plain links, no script.
fn pager(form: &FilterForm, page: usize, more: bool) -> Markup {
    let link = |n: usize| {
        let q = form.query();
        match (q.is_empty(), n) {
            (true, 1) => "/dlq/messages".to_string(),
            (true, n) => format!("/dlq/messages?page={n}"),
            (false, 1) => format!("/dlq/messages?{q}"),
            (false, n) => format!("/dlq/messages?{q}&page={n}"),
        }
    };
    html! {
        @if page > 1 || more {
            nav.pager aria-label="pages" {
                @if page > 1 { a rel="prev" href=(link(page - 1)) { "← previous" } " " }
                span.muted { "page " (page) }
                @if more { " " a rel="next" href=(link(page + 1)) { "next →" } }
            }
        }
    }
}

fn letter_table(items: &[DeadLetter], select: bool) -> Markup {
    html! {
        table #letters {
            thead { tr {
                @if select { th {} }
                th.n { "#" } th { "Id" } th { "Type" } th { "Kind" } th.n { "Attempts" }
                th.n { "Replayed" } th { "Last failed" } th { "Error" }
            } }
            tbody {
                @for l in items {
                    @let id = l.id.clone().unwrap_or_else(|| format!("#{}", l.position));
                    tr.letter data-id=(id) {
                        @if select { td { input type="checkbox" name="id" value=(id) aria-label="select"; } }
                        td.n { (l.position) }
                        td { a href={ "/dlq/message?" (detail_query(&l.dlq, &id)) } { code { (id) } } }
                        td { (layout::num(l.event_type.as_deref())) }
                        td { (l.kind) }
                        td.n { (l.attempts) }
                        td.n { (l.replayed) }
                        td { (layout::time(l.last_failed)) }
                        td { (l.error) }
                    }
                }
            }
        }
    }
}

fn actions(chrome: &Chrome<'_>) -> Markup {
    html! {
        @if chrome.can_change() {
            div.actions {
                button type="submit" name="op" value="replay" { "Replay selected…" }
                button type="submit" name="op" value="replay-all" { "Replay everything matching…" }
                button.danger type="submit" name="op" value="purge" { "Purge selected…" }
                button.danger type="submit" name="op" value="purge-all" { "Purge everything matching…" }
            }
            p.muted { "Each starts with a dry run; a replay then moves 1, 10, 100, then the rest, waiting for you between steps." }
        } @else if chrome.changes {
            p { a href="/login" { "Sign in" } " to replay or purge." }
        }
    }
}

fn detail_query(dlq: &str, id: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("queue", dlq)
        .append_pair("id", id)
        .finish()
}

/// `GET /dlq/message?queue=DLQ&id=ID`: one dead letter in full.
pub(super) async fn message(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    c.metrics.page("message");
    let p = pairs(raw.as_deref().unwrap_or(""));
    let (Some(queue), Some(id)) = (value(&p, "queue"), value(&p, "id")) else {
        return layout::error(StatusCode::BAD_REQUEST, "queue and id are both required");
    };
    let dlqs = match dlq::resolve(&c.settings.topology, &[queue.to_string()]) {
        Ok(d) => d,
        Err(e) => return layout::error(StatusCode::BAD_REQUEST, format!("queue: {e}")),
    };
    let found = async {
        let conn = c.read_conn().await?;
        dlq::find(&conn, &dlqs, id).await
    }
    .await;
    let (found, scans) = match found {
        Ok(f) => f,
        Err(e) => return layout::error(StatusCode::BAD_GATEWAY, e),
    };
    if found.is_empty() {
        return layout::error(
            StatusCode::NOT_FOUND,
            format!("no dead letter '{id}' in {queue} (replayed or purged since?)"),
        );
    }
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "dlq",
        signed: signed.as_ref(),
        changes: c.changes_allowed(),
    };
    let body = html! {
        (scans_note(&scans))
        @for d in &found { (detail(d)) }
        @if let Some(s) = signed.as_ref().filter(|_| chrome.can_change()) {
            form method="post" action="/jobs" {
                (layout::csrf(s))
                input type="hidden" name="queue" value=(found[0].letter.dlq);
                input type="hidden" name="id" value=(id);
                div.actions {
                    button type="submit" name="op" value="replay" { "Replay this message…" }
                    button.danger type="submit" name="op" value="purge" { "Purge this message…" }
                }
            }
        }
    };
    Html(layout::page(&format!("Dead letter {id}"), &chrome, body)).into_response()
}

fn detail(d: &Detail) -> Markup {
    let l = &d.letter;
    html! {
        dl.props {
            dt { "DLQ" } dd { (l.dlq) " (position " (l.position) ")" }
            dt { "Failed in" } dd { (layout::num(l.origin.as_deref())) }
            dt { "Type" } dd { (layout::num(l.event_type.as_deref())) }
            dt { "Agent" } dd { (layout::num(l.agent.as_deref())) }
            dt { "Kind" } dd { (l.kind) @if l.kind.by_broker() { " (dead-lettered by the broker)" } }
            dt { "Attempts" } dd { (l.attempts) }
            dt { "Replayed" } dd { (l.replayed) " time(s)" }
            dt { "Size" } dd { (l.bytes) " bytes" }
        }
        h2 { "Why" }
        pre #error { (l.error) }
        h2 { "Failure history" }
        table {
            thead { tr { th { "When" } th { "What" } th { "Where" } th.n { "Count" } } }
            tbody {
                tr { td { (layout::time(l.first_failed)) } td { "first failure" } td { (layout::num(l.origin.as_deref())) } td.n {} }
                @for x in &d.x_death {
                    tr {
                        td { (layout::time(x.time.and_then(dlq::Time::from_secs))) }
                        td { "broker: " (x.reason) }
                        td { (x.queue) " via " (if x.exchange.is_empty() { "(default)" } else { &x.exchange }) }
                        td.n { (x.count) }
                    }
                }
                tr { td { (layout::time(l.last_failed)) } td { "last failure: " (l.kind) } td { (layout::num(l.origin.as_deref())) } td.n {} }
            }
        }
        h2 { "Properties" }
        (json_list(&d.properties))
        h2 { "Headers" }
        (json_list(&d.headers))
        h2 { "Body" }
        pre #body { (body_text(&d.body)) }
    }
}

/// Header names whose values are never shown.
fn secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "authorization",
        "api-key",
        "apikey",
        "cookie",
    ]
    .iter()
    .any(|s| n.contains(s))
}

fn json_list(map: &serde_json::Map<String, Value>) -> Markup {
    html! {
        dl.props {
            @for (k, v) in map {
                dt { (k) }
                dd {
                    @if secret(k) { "*** (hidden)" }
                    @else if let Value::String(s) = v { (s) }
                    @else { (v) }
                }
            }
        }
    }
}

fn body_text(body: &Body) -> String {
    match body {
        Body::Json(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
        Body::Utf8(s) => s.clone(),
        Body::Base64(b) => format!("(binary, base64)\n{b}"),
    }
}

/// The filter form of the dead-letter pages: a plain GET form.
fn filter_form(c: &Console, form: &FilterForm, action: &str) -> Markup {
    let dlqs = dlq::resolve(&c.settings.topology, &[]).unwrap_or_default();
    html! {
        form.filters method="get" action=(action) {
            label { "Queue"
                select name="queue" {
                    option value="" { "every DLQ" }
                    @for d in &dlqs {
                        @let v = d.origin.clone().unwrap_or_else(|| d.name.clone());
                        option value=(v) selected[form.queue == v || form.queue == d.name] { (d.name) }
                    }
                }
            }
            label { "Type" input name="type" value=(form.event_type) placeholder="wallet.* or escrow.#"; }
            label { "Kind"
                select name="kind" {
                    option value="" { "any" }
                    @for k in Kind::ALL {
                        option value=(k.as_str()) selected[form.kind == k.as_str()] { (k) }
                    }
                }
            }
            label { "Text" input name="text" value=(form.text) placeholder="id, error, body…"; }
            label { "Failed within" input name="since" value=(form.since) placeholder="15m, 2h" size="6"; }
            @if !form.fp.is_empty() {
                input type="hidden" name="fp" value=(form.fp);
            }
            button type="submit" { "Filter" }
            a href=(action) { "clear" }
        }
        @if !form.fp.is_empty() {
            p { "Group: errors like " code.fp { (form.fp) } }
        }
    }
}

/// A warning for each DLQ another consumer held messages of.
fn scans_note(scans: &[Scan]) -> Markup {
    html! {
        @for s in scans.iter().filter(|s| s.incomplete) {
            p.banner.warn {
                (s.dlq) ": read " (s.read) " of " (s.total) "; another consumer holds the rest. Reload to try again."
            }
        }
    }
}
