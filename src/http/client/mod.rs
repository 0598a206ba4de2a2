//! The downstream client: one pooled `reqwest` client per worker, an `Idempotency-Key` on every
//! mutating call, a few short in-process retries with full jitter, and status checks by key
//! whenever the outcome is unknown. Longer waits are handed to the worker's retry tiers.

mod status;
mod types;

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
use status::{Check, read_status_body};
use types::snippet;

pub use types::{ClientSettings, Response, StatusUrl, Token, shown};

/// The header that carries the key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

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
