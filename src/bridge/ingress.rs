//! Webhook ingress: `POST /webhooks/events` with an envelope body. The request is verified
//! ([`super::webhook`]), handed to the publishing loop, and answered 2xx only once the publish
//! is confirmed, so the sender's retry covers every failure of ours. A `webhook-id` already
//! published gets a 2xx and is not published again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::Stats;
use super::webhook::{self, Secret, SignedHeaders};
use crate::envelope::Envelope;

/// The path webhooks are posted to.
pub const PATH: &str = "/webhooks/events";

/// How long a request may wait for its publish to be confirmed before it is answered 503.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// Webhook ids remembered for duplicate detection.
const SEEN_CAPACITY: usize = 100_000;

/// Requests handled at once; more are answered 503 with `Retry-After` (each holds its body).
const MAX_IN_FLIGHT: usize = 1024;

/// How the webhook ingress runs.
pub struct WebhookSettings {
    /// A bound listener (tests bind port 0).
    pub listener: TcpListener,
    /// The signing secrets; any of them verifies.
    pub secrets: Vec<Secret>,
    /// The largest body accepted, in bytes.
    pub max_body: usize,
    /// The accepted clock skew of `webhook-timestamp`.
    pub tolerance: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("listener", &self.listener.local_addr().ok())
            .field("secrets", &self.secrets.len())
            .field("max_body", &self.max_body)
            .finish()
    }
}

/// A verified webhook event for the publishing loop; `reply` fires once it is confirmed.
#[derive(Debug)]
pub struct WebhookJob {
    /// The parsed envelope.
    pub event: Envelope,
    /// The body as received.
    pub body: Vec<u8>,
    /// The request's `traceparent`, if valid.
    pub traceparent: Option<String>,
    /// Fired on confirm; dropped if the publish was given up.
    pub reply: oneshot::Sender<()>,
}

enum Seen {
    Done,
    InFlight(watch::Receiver<Option<bool>>),
}

#[derive(Default)]
struct SeenIds {
    map: HashMap<String, Seen>,
    order: VecDeque<String>,
}

struct App {
    secrets: Vec<Secret>,
    tolerance: Duration,
    jobs: mpsc::Sender<WebhookJob>,
    seen: Mutex<SeenIds>,
    stats: Arc<Stats>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Starts serving; stops accepting when `shutdown` is cancelled and finishes open requests.
pub fn spawn(
    settings: WebhookSettings,
    jobs: mpsc::Sender<WebhookJob>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = Arc::new(App {
        secrets: settings.secrets,
        tolerance: settings.tolerance,
        jobs,
        seen: Mutex::new(SeenIds::default()),
        stats,
        in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    });
    let router = Router::new()
        .route(PATH, post(receive))
        .layer(DefaultBodyLimit::max(settings.max_body))
        .with_state(app);
    let listener = settings.listener;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, path = PATH, "Webhook ingress listening.");
    }
    tokio::spawn(async move {
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "Webhook ingress failed.");
        }
    })
}

fn reply(status: StatusCode, what: &str, detail: &str) -> Response {
    let body = if detail.is_empty() {
        serde_json::json!({ "status": what })
    } else {
        serde_json::json!({ "status": what, "error": detail })
    };
    (status, axum::Json(body)).into_response()
}

/// A refused request: counted, logged (status and reason, never the body or a signature), and
/// answered in JSON like every other answer.
fn rejected(app: &App, status: StatusCode, headers: &HeaderMap, error: &str) -> Response {
    app.stats.webhooks_rejected.fetch_add(1, Ordering::Relaxed);
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
    tracing::warn!(
        status = status.as_u16(),
        webhook_id = webhook_id.unwrap_or("-"),
        error,
        "Webhook rejected."
    );
    reply(status, "rejected", error)
}

async fn receive(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A body over --webhook-max-body (413) or one that broke off: axum would answer in plain
    // text.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return rejected(&app, rejection.status(), &headers, &rejection.body_text());
        }
    };
    let Ok(_permit) = app.in_flight.clone().try_acquire_owned() else {
        let mut busy = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "retry",
            "too many webhook requests in flight",
        );
        busy.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, "1".parse().expect("valid"));
        return busy;
    };
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = SignedHeaders {
        id: get("webhook-id"),
        timestamp: get("webhook-timestamp"),
        signature: get("webhook-signature"),
        pf_signature: get("x-pf-signature"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    if let Err(error) = webhook::verify(&app.secrets, &signed, &body, now, app.tolerance) {
        let status = match error {
            webhook::VerifyError::Unsigned
            | webhook::VerifyError::Missing(_)
            | webhook::VerifyError::Malformed(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        return rejected(&app, status, &headers, &error.to_string());
    }
    let event = match Envelope::parse(&body) {
        Ok(e) => e,
        Err(error) => {
            return rejected(
                &app,
                StatusCode::UNPROCESSABLE_ENTITY,
                &headers,
                &error.to_string(),
            );
        }
    };
    // X-PF-Signature requests have no webhook-id: the eventId identifies the delivery.
    let key = match signed.id {
        Some(id) => format!("id:{id}"),
        None => format!("event:{}", event.event_id),
    };
    let done = match app.begin(&key) {
        Begin::Duplicate => return duplicate(&app),
        Begin::Wait(mut rx) => {
            let outcome = tokio::time::timeout(CONFIRM_WAIT, rx.wait_for(|v| v.is_some())).await;
            return match outcome {
                Ok(Ok(v)) if *v == Some(true) => duplicate(&app),
                _ => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "retry",
                    "the first delivery of this id is not confirmed",
                ),
            };
        }
        Begin::New(done) => done,
    };
    let (tx, rx) = oneshot::channel();
    let traceparent = get("traceparent")
        .filter(|t| super::route::is_traceparent(t))
        .map(str::to_string);
    let job = WebhookJob {
        event,
        body: body.to_vec(),
        traceparent,
        reply: tx,
    };
    // The hand-off and the wait run in their own task, so a sender that hangs up mid-wait
    // cannot leave its id in flight forever: the outcome is recorded either way, and a
    // publish confirmed after the hang-up makes the sender's retry a duplicate, not a second
    // publish.
    let task = tokio::spawn({
        let app = app.clone();
        async move {
            let handed = tokio::time::timeout(CONFIRM_WAIT, app.jobs.send(job)).await;
            let published = match handed {
                Ok(Ok(())) => matches!(tokio::time::timeout(CONFIRM_WAIT, rx).await, Ok(Ok(()))),
                Ok(Err(_)) | Err(_) => false,
            };
            app.finish(&key, published, done);
            published
        }
    });
    let published = task.await.unwrap_or(false);
    if published {
        app.stats.webhooks_published.fetch_add(1, Ordering::Relaxed);
        reply(StatusCode::OK, "published", "")
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "retry",
            "the publish was not confirmed",
        )
    }
}

fn duplicate(app: &App) -> Response {
    app.stats.webhooks_duplicate.fetch_add(1, Ordering::Relaxed);
    reply(StatusCode::OK, "duplicate", "")
}

enum Begin {
    New(watch::Sender<Option<bool>>),
    Duplicate,
    Wait(watch::Receiver<Option<bool>>),
}

impl App {
    fn begin(&self, key: &str) -> Begin {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.map.get(key) {
            Some(Seen::Done) => Begin::Duplicate,
            Some(Seen::InFlight(rx)) => Begin::Wait(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                seen.map.insert(key.to_string(), Seen::InFlight(rx));
                seen.order.push_back(key.to_string());
                while seen.order.len() > SEEN_CAPACITY {
                    if let Some(old) = seen.order.pop_front() {
                        seen.map.remove(&old);
                    }
                }
                Begin::New(tx)
            }
        }
    }

    /// Records the outcome; a failed delivery is forgotten so the sender's retry publishes.
    fn finish(&self, key: &str, published: bool, done: watch::Sender<Option<bool>>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if published {
            seen.map.insert(key.to_string(), Seen::Done);
        } else {
            seen.map.remove(key);
            seen.order.retain(|k| k != key);
        }
        done.send_replace(Some(published));
    }
}
