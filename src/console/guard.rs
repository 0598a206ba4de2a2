//! Who may change what: the console token (compared in constant time), sessions held in a
//! cookie, a CSRF token per session that every change form carries, and a same-origin check.
//! A console started read-only refuses every change whatever the request holds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::layout;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "warren_console";

/// How long a sign-in lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The secret operators sign in with to make changes (`WARREN_CONSOLE_TOKEN`). Never
/// printed: its `Debug` shows stars.
pub struct ChangeToken(String);

impl ChangeToken {
    /// The shortest token accepted: guessing 16 random characters is out of reach.
    pub const MIN_LEN: usize = 16;

    /// Wraps `token`; refuses one too short to be a secret.
    pub fn new(token: String) -> Result<Self, String> {
        if token.chars().count() < Self::MIN_LEN {
            return Err(format!(
                "the console token must be at least {} characters",
                Self::MIN_LEN
            ));
        }
        Ok(Self(token))
    }

    /// True when `given` is the token. Both sides are hashed first, so the comparison takes
    /// the same time whatever the length or content of `given`.
    pub fn matches(&self, given: &str) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(given.as_bytes());
        a.ct_eq(&b).into()
    }
}

impl std::fmt::Debug for ChangeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeToken(***)")
    }
}

struct Session {
    csrf: String,
    expires: Instant,
}

/// Signed-in sessions, by the id their cookie holds.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Session>>);

/// A signed-in session: what forms need to carry.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    /// The CSRF token of the session's forms.
    pub(crate) csrf: String,
}

impl Sessions {
    /// Starts a session; returns its cookie value.
    pub(crate) fn create(&self) -> String {
        let id = random_hex();
        let session = Session {
            csrf: random_hex(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > Instant::now());
        map.insert(id.clone(), session);
        id
    }

    /// The session the request's cookie names, if it is live.
    pub(crate) fn get(&self, headers: &HeaderMap) -> Option<Signed> {
        let id = cookie(headers)?;
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| Signed {
                csrf: s.csrf.clone(),
            })
    }

    /// Ends the request's session.
    pub(crate) fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Why a change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The console was started without `--allow-changes`.
    ReadOnly,
    /// No live session: sign in first.
    NotSignedIn,
    /// The form's CSRF token is missing or not the session's.
    Csrf,
    /// The request came from another site.
    Origin,
    /// The token given at sign-in is wrong.
    Token,
}

impl Refusal {
    /// The metric label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::ReadOnly => "read_only",
            Refusal::NotSignedIn => "session",
            Refusal::Csrf => "csrf",
            Refusal::Origin => "origin",
            Refusal::Token => "token",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::ReadOnly => {
                "This console is read-only. Start it with --allow-changes (and WARREN_CONSOLE_TOKEN) to replay or purge."
            }
            Refusal::NotSignedIn => "Sign in with the console token first.",
            Refusal::Csrf => {
                "The form is stale or was not made by this console (CSRF token mismatch). Reload the page and try again."
            }
            Refusal::Origin => "Refused: the request came from another site.",
            Refusal::Token => "Wrong token.",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self {
            Refusal::NotSignedIn | Refusal::Token => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        (status, layout::message_page("Refused", self.message())).into_response()
    }
}

/// A request from another site (its `Origin` is not this host, or the browser says
/// cross-site) is refused; a request without either header (a script, an old browser) still
/// needs the session cookie and the CSRF token.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
    {
        return Err(Refusal::Origin);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin.to_str().unwrap_or("");
    let same = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(h)
    });
    if same { Ok(()) } else { Err(Refusal::Origin) }
}

/// Checks a change request: changes allowed, same origin, a live session, and the form's
/// CSRF token equal to the session's.
pub(crate) fn authorize(
    sessions: &Sessions,
    allowed: bool,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Signed, Refusal> {
    if !allowed {
        return Err(Refusal::ReadOnly);
    }
    same_origin(headers)?;
    let signed = sessions.get(headers).ok_or(Refusal::NotSignedIn)?;
    let given = csrf.unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(signed.csrf.as_bytes())) {
        return Err(Refusal::Csrf);
    }
    Ok(signed)
}

/// The `Set-Cookie` value starting session `id` (`None` ends it).
pub(crate) fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn token_matches_only_itself_and_never_prints() {
        let t = ChangeToken::new("correct horse battery".into()).unwrap();
        assert!(t.matches("correct horse battery"));
        assert!(!t.matches("correct horse batterY"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "ChangeToken(***)");
        assert!(ChangeToken::new("short".into()).is_err());
    }

    #[test]
    fn origin_must_be_this_host() {
        assert_eq!(same_origin(&headers(&[("host", "127.0.0.1:8080")])), Ok(()));
        let ok = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(same_origin(&ok), Ok(()));
        let evil = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(same_origin(&evil), Err(Refusal::Origin));
        let cross = headers(&[("host", "h"), ("sec-fetch-site", "cross-site")]);
        assert_eq!(same_origin(&cross), Err(Refusal::Origin));
    }

    #[test]
    fn a_change_needs_session_and_its_csrf_token() {
        let sessions = Sessions::default();
        let id = sessions.create();
        let cookie = format!("other=1; {COOKIE}={id}");
        let h = headers(&[("host", "h"), ("cookie", cookie.as_str())]);
        let csrf = sessions.get(&h).unwrap().csrf;
        assert!(authorize(&sessions, true, &h, Some(&csrf)).is_ok());
        assert_eq!(
            authorize(&sessions, false, &h, Some(&csrf)).unwrap_err(),
            Refusal::ReadOnly
        );
        assert_eq!(
            authorize(&sessions, true, &h, Some("forged")).unwrap_err(),
            Refusal::Csrf
        );
        assert_eq!(
            authorize(&sessions, true, &headers(&[("host", "h")]), Some(&csrf)).unwrap_err(),
            Refusal::NotSignedIn
        );
        sessions.remove(&h);
        assert!(sessions.get(&h).is_none());
    }
}
