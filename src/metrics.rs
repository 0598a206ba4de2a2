//! `--metrics-listen`: Prometheus `/metrics`, liveness `/healthz` and readiness `/readyz`,
//! served by axum on a listener the caller binds (port 0 in tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the component is connected and doing its job (consuming, or publishing).
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the component ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// True when ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Served {
    registry: Registry,
    ready: Arc<Readiness>,
}

/// `warren_build_info{version}`: always 1, so dashboards can tell which build each replica runs.
fn register_build_info(registry: &mut Registry) {
    let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
    registry.sub_registry_with_prefix("warren").register(
        "build",
        "The running build of warren",
        info,
    );
}

/// `/metrics`, `/healthz` and `/readyz` as a router another server can merge (the console
/// does); the registry gains `warren_build_info`.
pub fn router(mut registry: Registry, ready: Arc<Readiness>) -> Router {
    register_build_info(&mut registry);
    let state = Arc::new(Served { registry, ready });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`; the registry
/// gains `warren_build_info`.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, ready))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(
    addr: &str,
    registry: Registry,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, registry, ready, shutdown).await {
            tracing::error!(%error, "Metrics server stopped.");
        }
    });
    tracing::info!(addr = %local, "Serving /metrics, /healthz and /readyz.");
    Ok(local)
}

async fn metrics(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(s): State<Arc<Served>>) -> impl IntoResponse {
    if s.ready.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
