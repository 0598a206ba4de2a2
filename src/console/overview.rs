//! The overview: every queue of the topology (and its lanes) with ready, the oldest ready
//! message's age, unacked, consumers, rates, retry tiers, DLQ depth and the oldest dead
//! letter's age, from the same [`status::collect`] as `warren status`; pushed again every
//! refresh interval over SSE. An age RabbitMQ does not report says why in its title.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use futures_util::Stream;
use maud::{Markup, html};

use super::Console;
use super::layout::{self, Chrome};
use crate::status::{self, DlqDepth, ManagementError, Oldest, Status};

/// `GET /`.
pub(super) async fn page(State(c): State<Arc<Console>>, headers: HeaderMap) -> impl IntoResponse {
    c.metrics.page("overview");
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "overview",
        signed: signed.as_ref(),
        changes: c.changes_allowed(),
    };
    let body = html! {
        p.muted {
            "Topology " code { (c.settings.topology.source.display()) }
            " on " code { (c.settings.url.redacted()) } " · "
            span #live-state .live.off { "not live" }
        }
        div data-live="/live/overview" { (figures(&c).await) }
    };
    Html(layout::page("Queues", &chrome, body))
}

/// `GET /live/overview`: the table again every refresh interval, until the console stops.
pub(super) async fn live(
    State(c): State<Arc<Console>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let every = c.settings.refresh;
    let stream = futures_util::stream::unfold((c, true), move |(c, first)| async move {
        if !first {
            tokio::select! {
                _ = c.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
        }
        let html = figures(&c).await.into_string();
        Some((Ok(Event::default().data(html)), (c, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The figures now, or what kept the console from reading them.
async fn figures(c: &Console) -> Markup {
    let collected = async {
        let conn = c.status_conn().await?;
        status::collect(&conn, &c.settings.topology, c.settings.management.as_ref()).await
    }
    .await;
    match collected {
        Ok((s, problem)) => table(&s, problem.as_ref()),
        Err(e) => html! { p.banner.err { "Cannot read the queues: " (e) } },
    }
}

fn table(s: &Status, problem: Option<&ManagementError>) -> Markup {
    html! {
        @if let Some(p) = problem {
            p.banner.warn { (p) "; unacked and rates shown as –, ages as ?. Ready and consumers are exact (AMQP)." }
        }
        table #queues {
            thead { tr {
                th { "Queue" } th.n { "Ready" } th.n { "Oldest ready" } th.n { "Unacked" } th.n { "Consumers" }
                th.n { "In" } th.n { "Out" } th { "Retry tiers" } th.n { "Dead letters" }
                th.n { "Oldest dead letter" }
            } }
            tbody {
                @for q in &s.queues {
                    tr data-queue=(q.name) {
                        td { (q.name) }
                        td.n data-col="ready" { (layout::num(q.ready)) }
                        (oldest_cell(q.oldest))
                        td.n data-col="unacked" { (layout::num(q.unacked)) }
                        td.n data-col="consumers" { (layout::num(q.consumers)) }
                        td.n { (layout::rate(q.rates.publish)) }
                        td.n { (layout::rate(q.rates.ack)) }
                        td {
                            @for (i, t) in q.retry.iter().enumerate() {
                                @if i > 0 { ", " }
                                (t.delay) ": " span data-tier=(t.depth.queue) { (layout::num(t.depth.ready)) }
                            }
                        }
                        (dlq_cells(&q.dlq))
                    }
                    @for lane in &q.lanes {
                        tr.lane data-queue=(lane.queue) {
                            td { "↳ lane " (lane.lane) @if let Some(o) = &lane.owner { " · " (o) } }
                            td.n data-col="ready" { (layout::num(lane.ready)) }
                            (oldest_cell(Oldest::of(true, lane.ready, None)))
                            td.n data-col="unacked" { (layout::num(lane.unacked)) }
                            td.n {} td.n {} td.n {} td {} td.n {} td.n {}
                        }
                    }
                }
                tr data-queue=(s.ingress_dlq.queue) {
                    td { "bridge: frames that are not events" }
                    td.n {} td.n {} td.n {} td.n {} td.n {} td.n {} td {}
                    (dlq_cells(&s.ingress_dlq))
                }
                tr data-queue=(s.unrouted.queue) {
                    td { "events no queue binds" }
                    td.n {} td.n {} td.n {} td.n {} td.n {} td.n {} td {}
                    (dlq_cells(&s.unrouted))
                }
            }
        }
        @if s.queues.iter().any(|q| q.oldest == Oldest::Quorum) {
            p.muted {
                "Oldest ready n/a: RabbitMQ reports the head message's timestamp for classic queues only, not for quorum queues; "
                "reading it would mean taking the message."
            }
        }
        p.muted { "As of " span #as-of { (s.at) } }
    }
}

fn dlq_cells(d: &DlqDepth) -> Markup {
    let bad = d.messages.is_some_and(|n| n > 0);
    html! {
        td.n data-col="dlq" data-dlq=(d.queue) {
            @match d.messages {
                Some(n) => a class=[bad.then_some("bad")] href={ "/dlq/messages?queue=" (d.queue) } { (n) },
                None => span.muted title="the queue does not exist" { "missing" },
            }
            @if let Some(held) = d.unacked.filter(|&h| h > 0) {
                " " span.muted { "(" (held) " held by a reader)" }
            }
        }
        (oldest_cell(d.oldest))
    }
}

/// An age, or a mark whose title says why there is none.
fn oldest_cell(o: Oldest) -> Markup {
    let mark = match o {
        Oldest::At(t) => {
            return html! { td.n data-col="oldest" title=(t) { (layout::age(Some(t))) } };
        }
        Oldest::Empty => "–",
        Oldest::Quorum => "n/a",
        Oldest::NoManagement | Oldest::NoTimestamp => "?",
        Oldest::Missing => "",
    };
    html! { td.n data-col="oldest" data-why=(format!("{o:?}")) { abbr title=[o.why()] { (mark) } } }
}
