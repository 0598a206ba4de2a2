//! The downstream client: one pooled `reqwest` client per worker, an `Idempotency-Key` on every
//! mutating call, a few short in-process retries with full jitter, and status checks by key
//! whenever the outcome is unknown. Longer waits are handed to the worker's retry tiers.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::de::DeserializeOwned;
use url::Url;

use super::classify::{
    Class, Lookup, Transport, classify, classify_lookup, classify_transport, parse_retry_after,
};
use crate::backoff::Backoff;
use crate::worker::HandlerError;

/// The header that carries the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

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
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn header(&self) -> Option<HeaderValue> {
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

/// The downstream client. Cheap to share: clone it or keep it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    settings: ClientSettings,
    status: StatusUrl,
    auth: Option<HeaderValue>,
}

/// What one call (and its status check, if any) came to.
enum Step {
    Done(Response),
    Fail(HandlerError),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// What a status check found.
enum Check {
    Committed(Response),
    NotFound,
    Unknown(String),
}

impl HttpClient {
    /// Builds the pooled client. `status` is where ambiguous outcomes are checked.
    pub fn new(
        settings: ClientSettings,
        status: StatusUrl,
        token: Option<Token>,
    ) -> Result<Self, String> {
        // Needed once per process for https; Err only means it is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let inner = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let auth = match token {
            Some(t) => Some(
                t.header()
                    .ok_or("the bearer token is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Self {
            inner,
            settings,
            status,
            auth,
        })
    }

    /// The status-check template in use.
    pub fn status_url(&self) -> &StatusUrl {
        &self.status
    }

    /// POSTs `body` (JSON) to `url` with `key` as its `Idempotency-Key`, retrying in process and
    /// checking status by key on ambiguous outcomes. `Err` carries the taxonomy's verdict:
    /// permanent, or transient (with the `Retry-After` to honour, if any).
    pub async fn post_idempotent(
        &self,
        url: &Url,
        key: &str,
        body: Bytes,
        headers: &HeaderMap,
    ) -> Result<Response, HandlerError> {
        let mut backoff = Backoff::new(self.settings.backoff_base, self.settings.backoff_cap);
        let mut tries = 0;
        loop {
            tries += 1;
            let (reason, retry_after) = match self.attempt(url, key, &body, headers).await {
                Step::Done(response) => return Ok(response),
                Step::Fail(error) => return Err(error),
                Step::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            let wait = backoff.next_delay().max(retry_after.unwrap_or_default());
            if tries >= self.settings.tries.max(1) || wait > self.settings.max_in_process_wait {
                return Err(match retry_after {
                    Some(delay) => HandlerError::retry_after(delay, reason),
                    None => HandlerError::transient(reason),
                });
            }
            tracing::debug!(key, tries, wait_ms = wait.as_millis() as u64, %reason, "Downstream call failed; retrying.");
            tokio::time::sleep(wait).await;
        }
    }

    /// One POST, plus a status check when its outcome is unknown.
    async fn attempt(&self, url: &Url, key: &str, body: &Bytes, headers: &HeaderMap) -> Step {
        let what = format!("POST {}", shown(url));
        let mut request = self
            .inner
            .post(url.clone())
            .headers(headers.clone())
            .header(IDEMPOTENCY_KEY, key)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(auth) = &self.auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let sent = classify_transport(e.is_connect());
                let reason = format!("{what}: {}", describe(e));
                return match sent {
                    Transport::NotSent => Step::Retry {
                        reason,
                        retry_after: None,
                    },
                    Transport::Ambiguous => self.resolve(key, reason).await,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = match response.bytes().await {
            Ok(b) => b,
            // The status arrived but the body did not: the effect may be done.
            Err(e) => {
                return self
                    .resolve(key, format!("{what}: {status}, then {}", describe(e)))
                    .await;
            }
        };
        let reason = format!("{what}: {status} {}", snippet(&body));
        match classify(status) {
            Class::Done => Step::Done(Response {
                status,
                body,
                via_status_check: false,
            }),
            Class::Permanent => Step::Fail(HandlerError::permanent(reason)),
            Class::Conflict | Class::Ambiguous => self.resolve(key, reason).await,
            Class::Throttled => Step::Retry {
                reason: match retry_after {
                    Some(d) => format!("{reason} (Retry-After {}s)", d.as_secs_f64()),
                    None => reason,
                },
                retry_after,
            },
            Class::Transient => Step::Retry {
                reason,
                retry_after: None,
            },
        }
    }

    /// After a 409 or an ambiguous outcome: done if the key is committed, else retry the key.
    async fn resolve(&self, key: &str, reason: String) -> Step {
        match self.check(key).await {
            Check::Committed(stored) => match classify(stored.status) {
                Class::Done => Step::Done(stored),
                Class::Permanent => Step::Fail(HandlerError::permanent(format!(
                    "{reason}; status check: stored outcome {} {}",
                    stored.status,
                    snippet(&stored.body)
                ))),
                _ => Step::Retry {
                    reason: format!("{reason}; status check: stored outcome {}", stored.status),
                    retry_after: None,
                },
            },
            Check::NotFound => Step::Retry {
                reason: format!("{reason}; status check: not found, retrying the same key"),
                retry_after: None,
            },
            Check::Unknown(why) => Step::Retry {
                reason: format!("{reason}; status check: {why}"),
                retry_after: None,
            },
        }
    }

    /// A read-only `GET` of JSON: `None` on 404; any other failure is transient.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &Url,
    ) -> Result<Option<T>, HandlerError> {
        let mut request = self.inner.get(url.clone());
        if let Some(auth) = &self.auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let fail = |why: String| HandlerError::transient(format!("GET {}: {why}", shown(url)));
        let response = request.send().await.map_err(|e| fail(describe(e)))?;
        match response.status().as_u16() {
            404 => Ok(None),
            200..=299 => {
                let body = response.bytes().await.map_err(|e| fail(describe(e)))?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| fail(format!("unexpected body: {e}")))
            }
            status => Err(fail(format!("answered {status}"))),
        }
    }

    /// `GET <status-url>` for `key`: `Some` with the stored outcome if the operation is
    /// committed, `None` if the server never committed it; an error if it cannot tell yet.
    pub async fn lookup(&self, key: &str) -> Result<Option<Response>, HandlerError> {
        match self.check(key).await {
            Check::Committed(r) => Ok(Some(r)),
            Check::NotFound => Ok(None),
            Check::Unknown(why) => Err(HandlerError::transient(format!("status check: {why}"))),
        }
    }

    /// `GET <status-url>` for `key`, read with [`read_status_body`].
    async fn check(&self, key: &str) -> Check {
        let mut request = self.inner.get(self.status.url(key));
        if let Some(auth) = &self.auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Check::Unknown(describe(e)),
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Check::Unknown(describe(e)),
        };
        match classify_lookup(status) {
            Lookup::Committed => read_status_body(body),
            Lookup::NotFound => Check::NotFound,
            Lookup::Unknown => Check::Unknown(format!("{status} {}", snippet(&body))),
        }
    }
}

/// What a 200 from the status endpoint says. Only an explicit "done" counts as done:
/// - `{"status": <number>, "body": …}` (warren's contract): the stored outcome;
/// - a `status` or `state` string: `committed`, `complete(d)`, `succeeded`, `success`, `done`
///   mean done; anything else (`pending`, `processing`, `in_flight`, `failed`, …) means
///   "not done yet": retry later with the same key, and let the downstream's idempotency decide;
/// - a body with neither field (the resource itself) means the operation exists: done.
fn read_status_body(body: Bytes) -> Check {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Check::Unknown(format!(
            "200 with a body that is not JSON: {}",
            snippet(&body)
        ));
    };
    if let Some(status) = value.get("status").and_then(|s| s.as_u64())
        && let Some(inner) = value.get("body")
    {
        return Check::Committed(Response {
            status: u16::try_from(status).unwrap_or(500),
            body: Bytes::from(inner.to_string()),
            via_status_check: true,
        });
    }
    let state = ["status", "state"]
        .iter()
        .find_map(|k| value.get(*k).and_then(|v| v.as_str()));
    match state.map(|s| s.to_ascii_lowercase()) {
        Some(s)
            if matches!(
                s.as_str(),
                "committed" | "complete" | "completed" | "succeeded" | "success" | "done"
            ) =>
        {
            Check::Committed(Response {
                status: 200,
                body,
                via_status_check: true,
            })
        }
        Some(s) => Check::Unknown(format!("operation is '{s}'")),
        None => Check::Committed(Response {
            status: 200,
            body,
            via_status_check: true,
        }),
    }
}

/// A reqwest error without its URL (which may hold credentials), with its causes.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod status_body_tests {
    use super::*;

    fn read(body: &str) -> Check {
        read_status_body(Bytes::from(body.to_string()))
    }

    #[test]
    fn only_an_explicit_done_counts_as_done() {
        assert!(matches!(
            read(r#"{"state":"committed","status":201,"body":{"id":1}}"#),
            Check::Committed(Response { status: 201, .. })
        ));
        for done in [
            r#"{"status":"complete"}"#,
            r#"{"state":"Succeeded"}"#,
            r#"{"id":"pos_1"}"#,
        ] {
            assert!(matches!(read(done), Check::Committed(_)), "{done}");
        }
        // The seeds' OperationStatus: pending, processing and failed are not done.
        for not_done in [
            r#"{"status":"pending"}"#,
            r#"{"status":"processing"}"#,
            r#"{"status":"failed"}"#,
            r#"{"state":"in_flight"}"#,
            "not json",
        ] {
            assert!(matches!(read(not_done), Check::Unknown(_)), "{not_done}");
        }
    }
}
