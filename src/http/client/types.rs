//! The client's settings and values: timeouts and retry budget, the status-check URL, the
//! bearer token, a settled response, and how URLs and bodies appear in messages.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderValue;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use url::Url;

use crate::worker::HandlerError;

/// Timeouts and the in-process retry budget.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request; a call that takes longer is ambiguous.
    pub request_timeout: Duration,
    /// Calls per delivery before the worker's retry tiers take over (at least 1).
    pub tries: u32,
    /// First in-process backoff ceiling; doubles per failure (full jitter).
    pub backoff_base: Duration,
    /// Largest in-process backoff ceiling.
    pub backoff_cap: Duration,
    /// The longest in-process wait, `Retry-After` included; anything longer goes to the tiers.
    pub max_in_process_wait: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            tries: 3,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
            max_in_process_wait: Duration::from_secs(1),
        }
    }
}

/// Where to ask about a key: a URL template in which `{key}` is replaced by the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUrl(String);

impl StatusUrl {
    /// Checks a template such as `http://api/operations/{key}`.
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.contains("{key}") {
            return Err(format!(
                "'{}' has no {{key}} placeholder",
                shown_str(template)
            ));
        }
        let url = Url::parse(&template.replace("{key}", "k"))
            .map_err(|e| format!("'{}' is not a URL: {e}", shown_str(template)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("'{}' is not an http(s) URL", shown_str(template)));
        }
        Ok(Self(template.to_string()))
    }

    /// The default for an API at `base`: `<scheme>://<host:port>/operations/{key}`.
    pub fn for_api(base: &Url) -> Self {
        let mut origin = base.clone();
        origin.set_path("/operations/");
        origin.set_query(None);
        origin.set_fragment(None);
        Self(format!("{origin}{{key}}"))
    }

    /// The URL for `key`.
    pub fn url(&self, key: &str) -> String {
        self.0.replace("{key}", key)
    }
}

impl fmt::Display for StatusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown_str(&self.0))
    }
}

/// A bearer token for the downstream; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Reads a token from the environment variable `name`, if it is set and not empty.
    pub fn from_env(name: &str) -> Option<Self> {
        std::env::var(name).ok().filter(|t| !t.is_empty()).map(Self)
    }

    /// Compares a presented token in constant time (for servers, such as the simulated API).
    pub fn matches(&self, presented: &str) -> bool {
        // subtle compares every byte whatever differs; only the length is not hidden.
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    pub(super) fn header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// A response that settled a call: the server's answer, or the stored outcome a status check
/// returned.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status (of the stored outcome, after a status check).
    pub status: u16,
    /// The body.
    pub body: Bytes,
    /// True when the outcome came from a status check rather than the call itself.
    pub via_status_check: bool,
}

impl Response {
    /// Deserializes the body; a body the caller cannot use is permanent.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HandlerError::permanent(format!(
                "unexpected response body ({e}): {}",
                snippet(&self.body)
            ))
        })
    }
}

/// A URL for logs and errors: no credentials, no query.
pub fn shown(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn shown_str(s: &str) -> String {
    match Url::parse(&s.replace("{key}", "KEY")) {
        Ok(u) => shown(&u).replace("KEY", "{key}"),
        Err(_) => "<unparsable URL>".into(),
    }
}

/// The start of a body, for error messages.
pub(super) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn a_token_matches_only_itself() {
        let t = Token::new("s3cret");
        assert!(t.matches("s3cret"));
        for other in ["s3creT", "s3cre", "s3cret!", ""] {
            assert!(!t.matches(other), "{other}");
        }
    }
}
