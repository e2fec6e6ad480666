//! The HTTP surface: inbound endpoints, health, readiness and metrics.

use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use omni_bus::Producer;
use omni_channel::{ApiChannel, Ingress, WebhookAdapter};
use omni_social::messenger::MessengerChannel;
use omni_social::zalo::ZaloChannel;
use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything the handlers share.
pub struct AppState {
    /// The shared inbound machinery.
    pub ingress: Ingress,
    /// The API channel adapter.
    pub api: ApiChannel,
    /// The Messenger webhook adapter.
    pub messenger: MessengerChannel,
    /// The Zalo OA webhook adapter.
    pub zalo: ZaloChannel,
    /// For readiness checks.
    pub producer: Producer,
    /// Everything `/metrics` serves.
    pub registry: Registry,
}

/// The daemon's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/inbound/{tenant}", post(api_inbound))
        .route(
            "/v1/webhooks/messenger/{tenant}",
            get(messenger_handshake).post(messenger_webhook),
        )
        .route("/v1/webhooks/zalo/{tenant}", post(zalo_webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn api_inbound(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    // Taking the request whole avoids the header map copy the `HeaderMap` extractor makes.
    let (parts, body) = request.into_parts();
    state
        .ingress
        .handle(&state.api, &tenant, &parts.headers, body)
        .await
}

async fn messenger_webhook(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    state
        .ingress
        .handle(&state.messenger, &tenant, &parts.headers, body)
        .await
}

/// Meta's `GET` subscription handshake: echo `hub.challenge` for the right verify token.
async fn messenger_handshake(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    match state.messenger.handshake(&tenant, &query) {
        Ok(challenge) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge,
        )
            .into_response(),
        Err(e) => state.ingress.refuse(MessengerChannel::CHANNEL, e),
    }
}

async fn zalo_webhook(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    state
        .ingress
        .handle(&state.zalo, &tenant, &parts.headers, body)
        .await
}

/// The process is up and serving HTTP (liveness): says nothing about Kafka.
async fn healthz() -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
        .into_response()
}

/// Ready to take traffic: Kafka answers and every topic exists.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.producer.check_ready(Duration::from_secs(2)).await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not_ready", "reason": e.to_string()})),
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
