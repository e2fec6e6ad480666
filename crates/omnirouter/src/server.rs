//! The HTTP surface: inbound endpoints, health, readiness and metrics.

use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use omni_bus::Producer;
use omni_channel::{ApiChannel, Ingress, WebhookAdapter};
use omni_sms::multipart::ConcatStore;
use omni_sms::webhook::SmsWebhook;
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
    /// The SMS endpoints.
    pub sms: SmsEndpoints,
    /// For readiness checks.
    pub producer: Producer,
    /// Everything `/metrics` serves.
    pub registry: Registry,
}

/// One adapter per SMS endpoint, over the same tenants.
pub struct SmsEndpoints {
    /// Twilio inbound messages.
    pub twilio_message: SmsWebhook,
    /// Twilio status callbacks.
    pub twilio_status: SmsWebhook,
    /// Vonage inbound messages, multipart reassembled.
    pub vonage_message: Arc<ConcatStore>,
    /// Vonage delivery receipts.
    pub vonage_dlr: SmsWebhook,
    /// eSMS delivery callbacks.
    pub esms_callback: SmsWebhook,
    /// Generic gateways.
    pub gateway: SmsWebhook,
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
        .route("/v1/webhooks/sms/twilio/{tenant}", post(twilio_message))
        .route(
            "/v1/webhooks/sms/twilio/{tenant}/status",
            post(twilio_status),
        )
        .route(
            "/v1/webhooks/sms/vonage/{tenant}",
            get(vonage_message).post(vonage_message),
        )
        .route(
            "/v1/webhooks/sms/vonage/{tenant}/dlr",
            get(vonage_dlr).post(vonage_dlr),
        )
        .route(
            "/v1/webhooks/sms/esms/{tenant}/callback",
            get(esms_callback).post(esms_callback),
        )
        .route("/v1/webhooks/sms/gateway/{tenant}/{gateway}", post(gateway))
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
        .handle(&state.api, &tenant, &parts, body)
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
        .handle(&state.messenger, &tenant, &parts, body)
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
        .handle(&state.zalo, &tenant, &parts, body)
        .await
}

/// One SMS endpoint through the shared handler.
async fn sms(state: &AppState, adapter: &SmsWebhook, tenant: &str, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    state.ingress.handle(adapter, tenant, &parts, body).await
}

async fn twilio_message(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    sms(&state, &state.sms.twilio_message, &tenant, request).await
}

async fn twilio_status(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    sms(&state, &state.sms.twilio_status, &tenant, request).await
}

async fn vonage_message(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    state
        .sms
        .vonage_message
        .handle(&state.ingress, &tenant, &parts, body)
        .await
}

async fn vonage_dlr(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    sms(&state, &state.sms.vonage_dlr, &tenant, request).await
}

async fn esms_callback(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    sms(&state, &state.sms.esms_callback, &tenant, request).await
}

async fn gateway(
    State(state): State<Arc<AppState>>,
    Path((tenant, _gateway)): Path<(String, String)>,
    request: Request,
) -> Response {
    sms(&state, &state.sms.gateway, &tenant, request).await
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
