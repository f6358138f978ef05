//! The daemon's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process answers),
//! `/readyz` (the database answers, no event poller waits for a dependency or fails to reach the
//! queue, and the last sweep did not fail).

use crate::catalog::Catalog;
use crate::error::{Dependency, Error, Result};
use crate::events::gate::Gate;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the daemon's tasks tell the endpoints.
#[derive(Default)]
pub struct Health {
    last_sweep: Mutex<LastSweep>,
    /// The event pollers' gate: closed while one of them waits for a dependency.
    pub events: Arc<Gate>,
}

/// How this process's last sweep ended, as readiness sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LastSweep {
    /// It did not fail (or none ran yet).
    #[default]
    Fine,
    /// It failed, on this dependency when its error was one's.
    Failed(Option<Dependency>),
}

impl Health {
    pub fn sweep_finished(&self, last: LastSweep) {
        if let Ok(mut slot) = self.last_sweep.lock() {
            *slot = last;
        }
    }

    pub fn last_sweep(&self) -> LastSweep {
        self.last_sweep.lock().map(|l| *l).unwrap_or_default()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    catalog: Arc<dyn Catalog>,
    health: Arc<Health>,
}

/// Bind now (so a bad address fails the start, and port 0 gets its real port), serve until
/// `shutdown` resolves.
pub async fn bind(listen: &str) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("server.listen: binding {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("server.listen: reading the bound address", e))?;
    Ok((listener, addr))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    catalog: Arc<dyn Catalog>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            metrics,
            catalog,
            health,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    // First, because it answers at once: a ping to a database that is down can take seconds.
    if let Some(dependency) = state.health.events.awaited() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the event pollers wait for the {} to answer again\n",
                dependency.as_str()
            ),
        );
    }
    if !state.health.events.queue_reached() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the event pollers cannot reach the queue (see the log)\n".to_owned(),
        );
    }
    if let Err(e) = state.catalog.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", crate::redact::text(&e.to_string())),
        );
    }
    if let LastSweep::Failed(on) = state.health.last_sweep() {
        let on = on
            .map(|dependency| format!(" on the {}", dependency.as_str()))
            .unwrap_or_default();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the last sweep failed{on} (see the log)\n"),
        );
    }
    (StatusCode::OK, "ready\n".to_owned())
}
