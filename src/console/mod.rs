//! `warren console`: a web console over the topology's queues and dead letters. Pages are
//! server-rendered HTML that work without JavaScript; a small script served from the binary
//! swaps in live figures over server-sent events. Read-only unless started with changes
//! allowed; then every change needs a session signed in with the console token, a CSRF token
//! and a same-origin request. Replays run as canary ramps (1, 10, 100, the rest) through
//! [`crate::dlq::replay`], so they keep its kill-safety and its replay marker.

mod actions;
mod assets;
mod guard;
mod jobs;
mod layout;
mod letters;
mod overview;
mod query;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use guard::ChangeToken;

use crate::amqp::{self, AmqpUrl, Connection};
use crate::error::Error;
use crate::metrics::Readiness;
use crate::status::Management;
use crate::topology::Topology;

/// What the console serves and whether it may change anything.
pub struct ConsoleSettings {
    /// The broker.
    pub url: AmqpUrl,
    /// The queues shown.
    pub topology: Topology,
    /// The management API, for unacked counts, rates and the oldest dead letter's age.
    pub management: Option<Management>,
    /// `Some` when changes are allowed: the token an operator signs in with.
    pub changes: Option<ChangeToken>,
    /// How often live figures are pushed.
    pub refresh: Duration,
    /// Dead letters on one page.
    pub page_size: usize,
}

/// The console's own metrics.
#[derive(Default)]
pub(crate) struct ConsoleMetrics {
    /// Pages served, by page.
    pages: Family<Vec<(String, String)>, Counter>,
    /// Changes carried out (replay and purge steps), by operation.
    changes: Family<Vec<(String, String)>, Counter>,
    /// Requests refused, by reason (read_only, token, csrf, origin, session).
    refused: Family<Vec<(String, String)>, Counter>,
}

impl ConsoleMetrics {
    fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("warren_console");
        sub.register("pages", "Pages served, by page", self.pages.clone());
        sub.register(
            "changes",
            "Replay and purge steps carried out",
            self.changes.clone(),
        );
        sub.register(
            "refused",
            "Requests refused, by reason",
            self.refused.clone(),
        );
    }

    pub(crate) fn page(&self, page: &str) {
        self.pages
            .get_or_create(&vec![("page".into(), page.into())])
            .inc();
    }

    pub(crate) fn change(&self, op: &str) {
        self.changes
            .get_or_create(&vec![("op".into(), op.into())])
            .inc();
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }
}

/// Everything the handlers share.
pub(crate) struct Console {
    pub(crate) settings: ConsoleSettings,
    /// The connection the overview reads depths with.
    status_conn: Mutex<Option<Connection>>,
    /// The connection dead letters are browsed with; held for a whole read, so reads (and
    /// replay chunks) take turns and never see each other's messages as missing.
    read_conn: Mutex<Option<Connection>>,
    pub(crate) sessions: guard::Sessions,
    pub(crate) jobs: SyncMutex<BTreeMap<u64, Arc<jobs::Job>>>,
    pub(crate) metrics: ConsoleMetrics,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl Console {
    /// The overview's connection, opened again if the broker dropped it.
    pub(crate) async fn status_conn(&self) -> Result<MappedMutexGuard<'_, Connection>, Error> {
        open(&self.settings.url, self.status_conn.lock().await, "status").await
    }

    /// The browsing connection, held until the guard drops: one DLQ read at a time.
    pub(crate) async fn read_conn(&self) -> Result<MappedMutexGuard<'_, Connection>, Error> {
        open(&self.settings.url, self.read_conn.lock().await, "browse").await
    }

    /// True when changes are allowed at all.
    pub(crate) fn changes_allowed(&self) -> bool {
        self.settings.changes.is_some()
    }
}

async fn open<'a>(
    url: &AmqpUrl,
    mut slot: MutexGuard<'a, Option<Connection>>,
    role: &str,
) -> Result<MappedMutexGuard<'a, Connection>, Error> {
    if !slot.as_ref().is_some_and(|c| c.status().connected()) {
        *slot = Some(amqp::connect(url, "console", role).await?);
    }
    Ok(MutexGuard::map(slot, |c| {
        c.as_mut().expect("the connection was just opened")
    }))
}

/// Serves the console on `listener` until `shutdown`, then lets running replay steps finish
/// their current chunk and closes the connections.
pub async fn run(
    settings: ConsoleSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = ConsoleMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(Readiness::default());
    ready.set(true);
    let console = Arc::new(Console {
        settings,
        status_conn: Mutex::new(None),
        read_conn: Mutex::new(None),
        sessions: guard::Sessions::default(),
        jobs: SyncMutex::new(BTreeMap::new()),
        metrics,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    let app = router(console.clone()).merge(crate::metrics::router(registry, ready));
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("console listener: {e}")))?;
    tracing::info!(
        %addr,
        changes = console.changes_allowed(),
        "Console serving."
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    console.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), console.tasks.wait()).await;
    for slot in [&console.status_conn, &console.read_conn] {
        if let Some(c) = slot.lock().await.take() {
            amqp::close(&c).await;
        }
    }
    served.map_err(|e| Error::Other(format!("console server: {e}")))
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/live/overview", get(overview::live))
        .route("/dlq", get(letters::groups))
        .route("/dlq/messages", get(letters::messages))
        .route("/dlq/message", get(letters::message))
        .route("/login", get(actions::login_page).post(actions::login))
        .route("/logout", post(actions::logout))
        .route("/jobs", get(jobs::list_page).post(actions::create_job))
        .route("/jobs/{id}", get(jobs::page))
        .route("/jobs/{id}/{action}", post(actions::job_action))
        .route("/live/jobs/{id}", get(jobs::live))
        .route("/assets/console.js", get(assets::script))
        .route("/assets/console.css", get(assets::style))
        .with_state(console)
}
