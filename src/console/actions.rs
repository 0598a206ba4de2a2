//! The POST endpoints: sign in and out, start a replay or purge, continue, pause or cancel
//! one. Each is a plain form post answered by a redirect, so it works without JavaScript;
//! every change goes through [`guard::authorize`].

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use super::Console;
use super::guard::{self, Refusal, Signed};
use super::jobs::{self, Op};
use super::layout::{self, Chrome};
use super::query::{FilterForm, pairs, value};

/// A change request that passed the checks, or the refusal (counted and logged).
fn authorize(
    c: &Console,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<Signed, Refusal> {
    guard::authorize(
        &c.sessions,
        c.changes_allowed(),
        headers,
        value(form, "csrf"),
    )
    .inspect_err(|r| {
        c.metrics.refused(r.reason());
        tracing::warn!(reason = r.reason(), "Console change refused.");
    })
}

/// `GET /login`.
pub(super) async fn login_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if !c.changes_allowed() {
        return Refusal::ReadOnly.into_response();
    }
    let signed = c.sessions.get(&headers);
    let chrome = Chrome {
        here: "",
        signed: signed.as_ref(),
        changes: true,
    };
    let body = html! {
        form method="post" action="/login" {
            p { "Changes need the console token (the WARREN_CONSOLE_TOKEN the console was started with)." }
            label { "Token " input type="password" name="token" autocomplete="current-password" required; }
            " "
            button #sign-in type="submit" { "Sign in" }
        }
    };
    Html(layout::page("Sign in", &chrome, body)).into_response()
}

/// `POST /login`: a right token starts a session (cookie); a wrong one is refused.
pub(super) async fn login(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(token) = c.settings.changes.as_ref() else {
        c.metrics.refused(Refusal::ReadOnly.reason());
        return Refusal::ReadOnly.into_response();
    };
    if let Err(r) = guard::same_origin(&headers) {
        c.metrics.refused(r.reason());
        return r.into_response();
    }
    let form = pairs(&body);
    if !token.matches(value(&form, "token").unwrap_or("")) {
        c.metrics.refused(Refusal::Token.reason());
        tracing::warn!("Console sign-in with a wrong token.");
        // Slows guessing; a token of 16+ random characters is out of reach anyway.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        return Refusal::Token.into_response();
    }
    let id = c.sessions.create();
    tracing::info!("Console sign-in.");
    (
        [(header::SET_COOKIE, guard::set_cookie(Some(&id)))],
        Redirect::to("/dlq"),
    )
        .into_response()
}

/// `POST /logout`.
pub(super) async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = authorize(&c, &headers, &pairs(&body)) {
        return r.into_response();
    }
    c.sessions.remove(&headers);
    (
        [(header::SET_COOKIE, guard::set_cookie(None))],
        Redirect::to("/"),
    )
        .into_response()
}

/// `POST /jobs`: `op` = `replay` or `purge` (the selected `id`s) or `replay-all` /
/// `purge-all` (everything the filter fields match). Starts the dry run and shows the job.
pub(super) async fn create_job(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form = pairs(&body);
    if let Err(r) = authorize(&c, &headers, &form) {
        return r.into_response();
    }
    let (op, selected) = match value(&form, "op") {
        Some("replay") => (Op::Replay, true),
        Some("purge") => (Op::Purge, true),
        Some("replay-all") => (Op::Replay, false),
        Some("purge-all") => (Op::Purge, false),
        other => {
            return layout::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "op: '{}' is not replay, purge, replay-all or purge-all",
                    other.unwrap_or("")
                ),
            );
        }
    };
    let ids: BTreeSet<String> = if selected {
        form.iter()
            .filter(|(k, _)| k == "id")
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    if selected && ids.is_empty() {
        return layout::error(
            StatusCode::BAD_REQUEST,
            "id: select at least one message (or use the button for everything matching)",
        );
    }
    let scope = FilterForm::from_pairs(&form);
    let (dlqs, filter) = match scope.resolve(&c.settings.topology) {
        Ok(v) => v,
        Err(e) => return layout::error(StatusCode::BAD_REQUEST, e),
    };
    let id = jobs::start(&c, op, scope, ids, dlqs, filter);
    tracing::info!(job = id, op = op.as_str(), "Console job started (dry run).");
    Redirect::to(&format!("/jobs/{id}")).into_response()
}

/// `POST /jobs/{id}/continue|pause|cancel`.
pub(super) async fn job_action(
    State(c): State<Arc<Console>>,
    Path((id, action)): Path<(u64, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Err(r) = authorize(&c, &headers, &pairs(&body)) {
        return r.into_response();
    }
    let job = c
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    let Some(job) = job else {
        return layout::error(StatusCode::NOT_FOUND, format!("no job {id}"));
    };
    match action.as_str() {
        "continue" => {
            if jobs::begin(&job) {
                tracing::info!(job = id, "Console job step started.");
                let c2 = c.clone();
                c.tasks.spawn(async move { jobs::advance(&c2, &job).await });
            }
        }
        "pause" => jobs::pause(&job),
        "cancel" => jobs::cancel(&job),
        other => {
            return layout::error(
                StatusCode::NOT_FOUND,
                format!("'{other}' is not continue, pause or cancel"),
            );
        }
    }
    Redirect::to(&format!("/jobs/{id}")).into_response()
}
