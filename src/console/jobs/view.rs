//! The pages of replays and purges: the list, one job with its ramp and controls, and the
//! job's live progress over SSE (ending once the job finishes).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;
use maud::{Markup, html};

use super::{Job, JobState, Op, Phase};
use crate::console::Console;
use crate::console::guard::Signed;
use crate::console::layout::{self, Chrome};

/// How often a running job's progress is pushed.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn find(c: &Console, id: u64) -> Option<Arc<Job>> {
    c.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
}

/// `GET /jobs`: every job of this console run, newest first.
pub(crate) async fn list_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    c.metrics.page("jobs");
    let jobs: Vec<Arc<Job>> = c
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .rev()
        .cloned()
        .collect();
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "jobs",
        signed: signed.as_ref(),
        changes: c.changes_allowed(),
    };
    let body = html! {
        @if jobs.is_empty() {
            p { "No replay or purge yet. Start one from a page of " a href="/dlq" { "dead letters" } "." }
        } @else {
            table #jobs {
                thead { tr { th.n { "#" } th { "Operation" } th { "Scope" } th { "State" } th.n { "Done" } th.n { "Planned" } } }
                tbody {
                    @for j in &jobs {
                        @let s = j.snapshot();
                        tr {
                            td.n { a href={ "/jobs/" (j.id) } { (j.id) } }
                            td { (s.op.as_str()) }
                            td { (scope(&s)) }
                            td { (phase_text(&s.phase)) }
                            td.n { (s.moved_total()) }
                            td.n { (s.planned) }
                        }
                    }
                }
            }
        }
    };
    Html(layout::page("Replays & purges", &chrome, body)).into_response()
}

/// `GET /jobs/{id}`.
pub(crate) async fn page(
    State(c): State<Arc<Console>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    c.metrics.page("job");
    let Some(job) = find(&c, id) else {
        return layout::error(
            StatusCode::NOT_FOUND,
            format!("no job {id} in this console run"),
        );
    };
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "jobs",
        signed: signed.as_ref(),
        changes: c.changes_allowed(),
    };
    let s = job.snapshot();
    let title = format!(
        "{} #{id}",
        match s.op {
            Op::Replay => "Replay",
            Op::Purge => "Purge",
        }
    );
    let body = html! {
        p.muted { span #live-state .live.off { "not live" } " · reload the page to refresh without JavaScript" }
        div data-live={ "/live/jobs/" (id) } { (fragment(&job, &s, signed.as_ref(), chrome.can_change())) }
    };
    Html(layout::page(&title, &chrome, body)).into_response()
}

/// `GET /live/jobs/{id}`: the job's fragment every half second until it finishes.
pub(crate) async fn live(
    State(c): State<Arc<Console>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let Some(job) = find(&c, id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let signed = c.sessions.get(&headers);
    let can_change = c.changes_allowed() && signed.is_some();
    let stream = progress(c, job, signed, can_change);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn progress(
    c: Arc<Console>,
    job: Arc<Job>,
    signed: Option<Signed>,
    can_change: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The first fragment at once, then one every interval; after the job finished, one last
    // fragment and an `end` event that tells the script not to reconnect.
    #[derive(Clone, Copy)]
    enum Next {
        First,
        Again,
        End,
    }
    futures_util::stream::unfold(Some(Next::First), move |state| {
        let (c, job, signed) = (c.clone(), job.clone(), signed.clone());
        async move {
            match state? {
                Next::End => return Some((Ok(Event::default().event("end").data("")), None)),
                Next::Again => tokio::select! {
                    _ = c.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                },
                Next::First => {}
            }
            let s = job.snapshot();
            let html = fragment(&job, &s, signed.as_ref(), can_change).into_string();
            let next = if s.phase.finished() {
                Next::End
            } else {
                Next::Again
            };
            Some((Ok(Event::default().data(html)), Some(next)))
        }
    })
}

fn scope(s: &JobState) -> String {
    if s.ids.is_empty() {
        s.scope.describe()
    } else {
        format!("{} selected ({})", s.ids.len(), s.scope.describe())
    }
}

fn phase_text(p: &Phase) -> String {
    match p {
        Phase::DryRun => "dry run…".into(),
        Phase::Waiting => "waiting for you".into(),
        Phase::Running => "running".into(),
        Phase::Pausing => "pausing…".into(),
        Phase::Stopped(why) => format!("stopped: {why}"),
        Phase::Done => "done".into(),
        Phase::Cancelled => "cancelled".into(),
    }
}

fn step_label(op: Op, size: Option<usize>) -> String {
    let verb = match op {
        Op::Replay => "replay",
        Op::Purge => "purge",
    };
    match size {
        Some(1) => format!("{verb} 1 message"),
        Some(n) => format!("{verb} {n} messages"),
        None => format!("{verb} the rest"),
    }
}

/// The live part of a job's page.
fn fragment(job: &Job, s: &JobState, signed: Option<&Signed>, can_change: bool) -> Markup {
    let phase_key = match &s.phase {
        Phase::DryRun => "dry-run",
        Phase::Waiting => "waiting",
        Phase::Running => "running",
        Phase::Pausing => "pausing",
        Phase::Stopped(_) => "stopped",
        Phase::Done => "done",
        Phase::Cancelled => "cancelled",
    };
    let moved = s.moved_total();
    html! {
        p { "Scope: " (scope(s)) }
        p #phase data-phase=(phase_key) class=[matches!(s.phase, Phase::Stopped(_)).then_some("banner err")] {
            "State: " strong { (phase_text(&s.phase)) }
        }
        @if s.phase != Phase::DryRun {
            p #plan {
                "Dry run: would " (s.op.as_str()) " " strong #planned { (s.planned) } " message(s)"
                @for (i, (q, n)) in s.targets.iter().enumerate() {
                    (if i == 0 { match s.op { Op::Replay => " — back to ", Op::Purge => " — from " } } else { ", " })
                    code { (q) } ": " (n)
                }
                "."
                @if s.unmovable > 0 { " " span.bad { (s.unmovable) " cannot be " (s.op.as_str()) "ed (see below)." } }
            }
        }
        p { "Done: " strong #moved data-moved=(moved) { (moved) } " of " (s.planned)
            @if s.failed_again > 0 { " · " span.bad #failed-again { (s.failed_again) " failed again" } } }
        ol.ramp {
            @for (i, step) in s.steps.iter().enumerate() {
                @let class = if i < s.current { "done" } else if i == s.current && !s.phase.finished() { "now" } else { "" };
                li class=(class) data-step=(i) data-done=(step.done) {
                    (step_label(s.op, step.size)) ": " (step.done) " done"
                    @if step.failed > 0 { ", " span.bad { (step.failed) " left in the DLQ" } }
                }
            }
        }
        @if !s.notes.is_empty() {
            h2 { "Problems" }
            ul { @for n in &s.notes { li { (n) } } }
        }
        @if let Some(signed) = signed.filter(|_| can_change) {
            (controls(job, s, signed))
        }
    }
}

fn controls(job: &Job, s: &JobState, signed: &Signed) -> Markup {
    let action = |what: &str| format!("/jobs/{}/{what}", job.id);
    html! {
        div.actions {
            @if s.phase == Phase::Waiting {
                @let label = step_label(s.op, s.steps[s.current].size);
                form method="post" action=(action("continue")) {
                    (layout::csrf(signed))
                    button #continue type="submit" {
                        @if s.steps[s.current].done > 0 { "Resume: " } @else { "Continue: " }
                        (label)
                    }
                }
            }
            @if matches!(s.phase, Phase::Running) {
                form method="post" action=(action("pause")) {
                    (layout::csrf(signed))
                    button #pause type="submit" { "Pause" }
                }
            }
            @if !s.phase.finished() {
                form method="post" action=(action("cancel")) {
                    (layout::csrf(signed))
                    button.danger #cancel type="submit" { "Cancel" }
                }
            }
        }
    }
}
