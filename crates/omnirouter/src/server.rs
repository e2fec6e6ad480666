//! The daemon's own HTTP surface: the generic API channel (public), health, readiness and
//! metrics (admin). Each channel's webhooks come with its component; the agent API with the
//! router. The two sides share one listener unless `server.admin_listen` sets them apart.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodFilter};
use axum::Router;
use omni_bus::Producer;
use omni_channel::{webhook_route, ApiChannel, Ingress, Swappable};
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::Arc;
use std::time::Duration;

use crate::settings::Settings;

/// What the daemon's own routes share (each channel's routes come with its component).
pub struct AppState {
    /// The generic API channel (`POST /v1/inbound/{tenant}`); a reload replaces it whole.
    pub api: Arc<Swappable<ApiChannel>>,
    /// The shared inbound machinery.
    pub ingress: Arc<Ingress>,
    /// For readiness checks.
    pub producer: Producer,
    /// Everything `/metrics` serves.
    pub registry: Registry,
    /// The router, when this instance routes: not ready until its state is restored.
    pub router: Option<Arc<omni_router::Router>>,
}

impl AppState {
    /// The state for the tenants of `settings`, publishing through `ingress`.
    pub fn new(
        settings: &Settings,
        ingress: Arc<Ingress>,
        producer: Producer,
        registry: Registry,
        router: Option<Arc<omni_router::Router>>,
    ) -> Self {
        Self {
            api: Arc::new(Swappable::new(api_channel(settings))),
            ingress,
            producer,
            registry,
            router,
        }
    }

    /// Serves the API channel tenants of `settings` from the next request on.
    pub fn set_tenants(&self, settings: &Settings) {
        self.api.replace(api_channel(settings));
    }
}

fn api_channel(settings: &Settings) -> ApiChannel {
    ApiChannel::new(settings.api_tenants.iter().cloned())
}

/// The daemon's own public route: the API channel (each channel adds its webhooks).
pub fn public(state: &AppState) -> Router {
    let api = webhook_route(MethodFilter::POST, state.ingress.clone(), state.api.clone());
    Router::new().route("/v1/inbound/{tenant}", api)
}

/// What only operators and Prometheus need (the agent API joins it): health, readiness and
/// metrics.
pub fn admin(state: Arc<AppState>) -> Router {
    liveness()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `/healthz` alone, for a public listener apart from the admin one (a load balancer checks it).
pub fn liveness<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/healthz", get(healthz))
}

/// The process is up and serving HTTP (liveness): says nothing about Kafka.
async fn healthz() -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
        .into_response()
}

/// Ready to take traffic: Kafka answers, every topic exists, and the router (if this instance
/// routes) is in its group with the state of every partition it holds restored, so a rolling
/// update waits for the takeover before it stops the next old instance.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = match state.producer.check_ready(Duration::from_secs(2)).await {
        Ok(()) => state
            .router
            .as_ref()
            .map_or(Ok(()), |router| router.readiness()),
        Err(e) => Err(e.to_string()),
    };
    match ready {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not_ready", "reason": e})),
        )
            .into_response(),
    }
}

/// Prometheus text exposition of the daemon's registry.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let families = state.registry.gather();
    let mut buf = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
