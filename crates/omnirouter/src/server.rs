//! The HTTP surface: inbound endpoints, health, readiness and metrics.

use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter, MethodRouter};
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
    let post_only = MethodFilter::POST;
    let get_or_post = MethodFilter::GET.or(MethodFilter::POST);
    Router::new()
        .route(
            "/v1/inbound/{tenant}",
            webhook(post_only, |s: &AppState| &s.api),
        )
        .route(
            "/v1/webhooks/messenger/{tenant}",
            webhook(post_only, |s: &AppState| &s.messenger).get(messenger_handshake),
        )
        .route(
            "/v1/webhooks/zalo/{tenant}",
            webhook(post_only, |s: &AppState| &s.zalo),
        )
        .route(
            "/v1/webhooks/sms/twilio/{tenant}",
            webhook(post_only, |s: &AppState| &s.sms.twilio_message),
        )
        .route(
            "/v1/webhooks/sms/twilio/{tenant}/status",
            webhook(post_only, |s: &AppState| &s.sms.twilio_status),
        )
        .route(
            "/v1/webhooks/sms/vonage/{tenant}",
            get(vonage_message).post(vonage_message),
        )
        .route(
            "/v1/webhooks/sms/vonage/{tenant}/dlr",
            webhook(get_or_post, |s: &AppState| &s.sms.vonage_dlr),
        )
        .route(
            "/v1/webhooks/sms/esms/{tenant}/callback",
            webhook(get_or_post, |s: &AppState| &s.sms.esms_callback),
        )
        .route(
            "/v1/webhooks/sms/gateway/{tenant}/{gateway}",
            webhook(post_only, |s: &AppState| &s.sms.gateway),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The route of one webhook adapter (picked out of the state): the request goes whole through
/// the shared inbound handler. The tenant is the path's `{tenant}`; other path parameters (a
/// gateway's name) are the adapter's to read from the URI.
fn webhook<A: WebhookAdapter>(
    methods: MethodFilter,
    pick: fn(&AppState) -> &A,
) -> MethodRouter<Arc<AppState>> {
    on(
        methods,
        move |State(state): State<Arc<AppState>>,
              Path(params): Path<HashMap<String, String>>,
              request: Request| async move {
            // Taking the request whole avoids the header map copy the `HeaderMap` extractor
            // makes.
            let tenant = params.get("tenant").map_or("", String::as_str);
            let (parts, body) = request.into_parts();
            state
                .ingress
                .handle(pick(&state), tenant, &parts, body)
                .await
        },
    )
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

/// Vonage messages go through the multipart store (parts made durable before they are
/// acknowledged, then reassembled).
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
