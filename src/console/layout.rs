//! The page shell (header, navigation, mode banner) and the small formatters every page uses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::guard::Signed;
use crate::dlq::Time;

/// What the header needs to know about the request.
pub(crate) struct Chrome<'a> {
    /// The navigation entry to mark: `overview`, `dlq` or `jobs`.
    pub(crate) here: &'a str,
    /// The signed-in session, if any.
    pub(crate) signed: Option<&'a Signed>,
    /// True when the console allows changes.
    pub(crate) changes: bool,
}

impl Chrome<'_> {
    /// True when this page may offer change forms.
    pub(crate) fn can_change(&self) -> bool {
        self.changes && self.signed.is_some()
    }
}

/// A whole page.
pub(crate) fn page(title: &str, chrome: &Chrome<'_>, body: Markup) -> Markup {
    let nav = [
        ("overview", "/", "Overview"),
        ("dlq", "/dlq", "Dead letters"),
        ("jobs", "/jobs", "Replays & purges"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · warren console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    strong { "warren" }
                    @for (key, href, label) in nav {
                        a href=(href) class=[(key == chrome.here).then_some("here")] { (label) }
                    }
                    span.who {
                        @if !chrome.changes {
                            "read-only"
                        } @else if let Some(s) = chrome.signed {
                            "signed in · "
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "sign out" }
                            }
                        } @else {
                            a href="/login" { "sign in to make changes" }
                        }
                    }
                }
                main {
                    @if !chrome.changes {
                        p.banner.ro { "Read-only: browsing never consumes a message. Start the console with --allow-changes to replay or purge." }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A bare page with one message (refusals, errors).
pub(crate) fn message_page(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · warren console" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body { main { h1 { (title) } p.banner.err { (text) } p { a href="/" { "Back to the overview" } } } }
        }
    }
}

/// An error answer whose page says what went wrong.
pub(crate) fn error(status: StatusCode, text: impl std::fmt::Display) -> Response {
    let title = if status.is_client_error() {
        "Bad request"
    } else {
        "Error"
    };
    (status, message_page(title, &text.to_string())).into_response()
}

/// The hidden CSRF field of a change form.
pub(crate) fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

/// A count, or `–` when unknown.
pub(crate) fn num<T: ToString>(v: Option<T>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "–".into())
}

/// A rate per second, or `–`.
pub(crate) fn rate(v: Option<f64>) -> String {
    match v {
        Some(r) if r >= 10.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
        None => "–".into(),
    }
}

/// How long ago `t` was, coarsely (`42s`, `5m`, `3h`, `2d`), or `–`.
pub(crate) fn age(t: Option<Time>) -> String {
    let Some(t) = t else {
        return "–".into();
    };
    let secs = Time::now().0.saturating_sub(t.0) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A time as RFC 3339, or `–`.
pub(crate) fn time(t: Option<Time>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "–".into())
}
