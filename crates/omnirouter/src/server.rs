//! The HTTP surface: inbound endpoints, health, readiness and metrics.

use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::Router;
use omni_bus::Producer;
use omni_channel::{ApiChannel, Ingress, WebhookAdapter};
use omni_sms::vonage::concat_store::ConcatStore;
use omni_sms::webhook::{Endpoint, SmsWebhook};
use omni_social::messenger::MessengerChannel;
use omni_social::zalo::ZaloChannel;
use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::settings::Settings;

/// Everything the handlers share.
pub struct AppState {
    /// The shared inbound machinery.
    pub ingress: Ingress,
    /// The webhook adapters of the config in force; a reload swaps them whole.
    channels: RwLock<Arc<Channels>>,
    /// Vonage inbound messages, multipart reassembled (its tenants are swapped in place: it
    /// holds parts waiting for their siblings).
    pub vonage_message: Arc<ConcatStore>,
    /// For readiness checks.
    pub producer: Producer,
    /// Everything `/metrics` serves.
    pub registry: Registry,
}

impl AppState {
    /// The state for `channels` (and the Vonage store), publishing through `ingress`.
    pub fn new(
        ingress: Ingress,
        channels: Channels,
        vonage_message: Arc<ConcatStore>,
        producer: Producer,
        registry: Registry,
    ) -> Self {
        Self {
            ingress,
            channels: RwLock::new(Arc::new(channels)),
            vonage_message,
            producer,
            registry,
        }
    }

    /// The adapters in force. A request takes them once and keeps them to its end, so a reload
    /// never changes a tenant's credentials halfway through a request.
    pub fn channels(&self) -> Arc<Channels> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves `channels` from the next request on (a reloaded config).
    pub fn set_channels(&self, channels: Channels) {
        let sms = channels.sms.twilio_message.tenants();
        *self.channels.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(channels);
        self.vonage_message.set_tenants(sms);
    }
}

/// Every tenant-facing webhook adapter, built from one config.
pub struct Channels {
    /// The API channel adapter.
    pub api: ApiChannel,
    /// The Messenger webhook adapter.
    pub messenger: MessengerChannel,
    /// The Zalo OA webhook adapter.
    pub zalo: ZaloChannel,
    /// The SMS endpoints.
    pub sms: SmsEndpoints,
}

impl Channels {
    /// The adapters for the tenants of `settings`.
    pub fn new(settings: &Settings) -> Self {
        let sms = omni_sms::webhook::tenants(settings.sms_tenants.iter().cloned());
        let endpoint = |endpoint| SmsWebhook::new(sms.clone(), endpoint);
        Self {
            api: ApiChannel::new(settings.api_tenants.iter().cloned()),
            messenger: MessengerChannel::new(settings.messenger_tenants.iter().cloned()),
            zalo: ZaloChannel::new(settings.zalo_tenants.iter().cloned()),
            sms: SmsEndpoints {
                twilio_message: endpoint(Endpoint::TwilioMessage),
                twilio_status: endpoint(Endpoint::TwilioStatus),
                vonage_dlr: endpoint(Endpoint::VonageDlr),
                esms_callback: endpoint(Endpoint::EsmsCallback),
                gateway: endpoint(Endpoint::Gateway),
            },
        }
    }
}

/// One adapter per SMS endpoint, over the same tenants (Vonage messages go through
/// [`AppState::vonage_message`]).
pub struct SmsEndpoints {
    /// Twilio inbound messages.
    pub twilio_message: SmsWebhook,
    /// Twilio status callbacks.
    pub twilio_status: SmsWebhook,
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
            webhook(post_only, |c: &Channels| &c.api),
        )
        .route(
            "/v1/webhooks/messenger/{tenant}",
            webhook(post_only, |c: &Channels| &c.messenger).get(messenger_handshake),
        )
        .route(
            "/v1/webhooks/zalo/{tenant}",
            webhook(post_only, |c: &Channels| &c.zalo),
        )
        .route(
            "/v1/webhooks/sms/twilio/{tenant}",
            webhook(post_only, |c: &Channels| &c.sms.twilio_message),
        )
        .route(
            "/v1/webhooks/sms/twilio/{tenant}/status",
            webhook(post_only, |c: &Channels| &c.sms.twilio_status),
        )
        .route(
            "/v1/webhooks/sms/vonage/{tenant}",
            get(vonage_message).post(vonage_message),
        )
        .route(
            "/v1/webhooks/sms/vonage/{tenant}/dlr",
            webhook(get_or_post, |c: &Channels| &c.sms.vonage_dlr),
        )
        .route(
            "/v1/webhooks/sms/esms/{tenant}/callback",
            webhook(get_or_post, |c: &Channels| &c.sms.esms_callback),
        )
        .route(
            "/v1/webhooks/sms/gateway/{tenant}/{gateway}",
            webhook(post_only, |c: &Channels| &c.sms.gateway),
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
    pick: fn(&Channels) -> &A,
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
            let channels = state.channels();
            state
                .ingress
                .handle(pick(&channels), tenant, &parts, body)
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
    match state.channels().messenger.handshake(&tenant, &query) {
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
