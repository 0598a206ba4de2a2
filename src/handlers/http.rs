//! `http`: forwards each event, as its envelope JSON, to a URL with an idempotency key, and maps
//! the response with the error taxonomy. Any service in any language can sit behind the fleet.

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use url::Url;

use crate::envelope::Envelope;
use crate::http::HttpClient;
use crate::worker::{Context, EffectStatus, Handler, HandlerResult};

/// The environment variable holding the downstream's bearer token (never logged).
pub const TOKEN_ENV: &str = "WARREN_HTTP_TOKEN";

/// POSTs every event to one URL.
#[derive(Debug)]
pub struct HttpHandler {
    client: HttpClient,
    url: Url,
}

impl HttpHandler {
    /// Forwards to `url` through `client`.
    pub fn new(client: HttpClient, url: Url) -> Self {
        Self { client, url }
    }
}

/// The `X-Warren-*` headers that tell the downstream which event a call is for.
pub fn event_headers(event: &Envelope) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Both were validated by Envelope::parse (ULID, domain.name), so they are valid header values.
    if let Ok(v) = HeaderValue::from_str(&event.event_id) {
        headers.insert("x-warren-event-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&event.event_type) {
        headers.insert("x-warren-event-type", v);
    }
    headers
}

impl HttpHandler {
    /// The handler's name, in its keys.
    pub const NAME: &str = "http";
    /// The step of its one call, in its keys.
    pub const STEP: &str = "post";

    /// The key of the one call this handler makes for `event`.
    pub fn key(event: &Envelope) -> String {
        event.idempotency_key(Self::NAME, Self::STEP)
    }
}

impl Handler for HttpHandler {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn handle(&self, event: &Envelope, _ctx: &Context) -> HandlerResult {
        let key = Self::key(event);
        // The same event always serializes to the same bytes, so a retry repeats the same body.
        let body = Bytes::from(event.to_json());
        self.client
            .post_idempotent(&self.url, &key, body, &event_headers(event))
            .await
            .map(|_| ())
    }

    async fn effect_status(&self, event: &Envelope) -> EffectStatus {
        effect_status(&self.client, &Self::key(event)).await
    }
}

/// What the status endpoint says about `key`: done only for a committed 2xx outcome.
pub async fn effect_status(client: &HttpClient, key: &str) -> EffectStatus {
    match client.lookup(key).await {
        Ok(Some(stored)) if (200..300).contains(&stored.status) => EffectStatus::Done,
        Ok(Some(stored)) => EffectStatus::NotDone(format!("stored outcome {}", stored.status)),
        Ok(None) => EffectStatus::NotDone("not found".into()),
        Err(error) => EffectStatus::Unknown(error.to_string()),
    }
}
