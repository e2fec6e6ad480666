//! The agent/operator HTTP API, per tenant, with a bearer token per tenant
//! (`tenants.<id>.agent_api_token`). Documented in `openapi.json` beside this crate.
//!
//! Reads (queues, agents, a conversation) come from the engines this instance owns: in a
//! cluster, ask the instance that owns the tenant (a 503 `tenant_not_local` says it is another
//! one). Writes (replies, commands) go to Kafka and work on every instance.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use omni_bus::Producer;
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ChannelSignal, CloudEvent, Contact, ConversationId,
    EventId, EventType, OutboundMessage, Secret, SignalKind, TenantId, Topics,
};
use omni_routing::{Command, Timestamp};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::runner::SharedState;
use crate::wire::{time_of, Envelope, COMMAND_TYPE};

/// What the API handlers share.
pub struct ApiState {
    /// The router's engines, when this instance runs a router.
    pub shared: Option<Arc<Mutex<SharedState>>>,
    /// Publishes replies and commands.
    pub producer: Producer,
    /// Topic names.
    pub topics: Topics,
    /// Agent API tokens per tenant.
    pub tokens: HashMap<String, (TenantId, Secret)>,
    /// Largest request body accepted (`server.max_body_bytes`).
    pub max_body_bytes: usize,
}

/// The API routes (mounted by the daemon).
pub fn routes(state: Arc<ApiState>) -> HttpRouter {
    HttpRouter::new()
        .route("/v1/tenants/{tenant}/queues", get(queues))
        .route("/v1/tenants/{tenant}/agents", get(agents))
        .route(
            "/v1/tenants/{tenant}/conversations/{conversation}",
            get(conversation),
        )
        .route("/v1/tenants/{tenant}/replies", post(reply))
        .route("/v1/tenants/{tenant}/typing", post(typing))
        .route("/v1/tenants/{tenant}/commands", post(command))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// Why an API request was refused; becomes `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("unknown tenant")]
    UnknownTenant,
    #[error("send Authorization: Bearer <agent_api_token>")]
    MissingCredentials,
    #[error("agent API token is not valid")]
    BadCredentials,
    #[error("this instance does not hold the tenant's routing state; ask the instance that owns its partition")]
    NotLocal,
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported content type, expected application/json")]
    UnsupportedMediaType,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::UnknownTenant => (StatusCode::NOT_FOUND, "unknown_tenant"),
            ApiError::MissingCredentials => (StatusCode::UNAUTHORIZED, "missing_credentials"),
            ApiError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            ApiError::NotLocal => (StatusCode::SERVICE_UNAVAILABLE, "tenant_not_local"),
            ApiError::Invalid(code, _) => (StatusCode::BAD_REQUEST, *code),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
        };
        error(status, code, self.to_string())
    }
}

fn authorize(state: &ApiState, tenant: &str, headers: &HeaderMap) -> Result<TenantId, ApiError> {
    let Some((id, token)) = state.tokens.get(tenant) else {
        return Err(ApiError::UnknownTenant);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let Some(presented) = presented else {
        return Err(ApiError::MissingCredentials);
    };
    // Constant time: compare every byte whatever the first difference.
    let expected = token.expose().as_bytes();
    let same = presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(id.clone())
    } else {
        Err(ApiError::BadCredentials)
    }
}

fn with_engine<T>(
    state: &ApiState,
    tenant: &TenantId,
    f: impl FnOnce(&crate::runner::TenantSlot) -> T,
) -> Result<T, ApiError> {
    let shared = state.shared.as_ref().ok_or(ApiError::NotLocal)?;
    let s = shared.lock().unwrap_or_else(|p| p.into_inner());
    s.tenants.get(tenant).map(f).ok_or(ApiError::NotLocal)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}

async fn queues(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let tenant = match authorize(&state, &tenant, &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let now = Timestamp(now_ms());
    match with_engine(&state, &tenant, |slot| slot.engine.queue_views()) {
        Ok(views) => {
            let queues: Vec<serde_json::Value> = views
                .iter()
                .map(|q| {
                    json!({
                        "id": q.id.0,
                        "waiting": q.waiting,
                        "offered": q.offered,
                        "assigned": q.assigned,
                        "oldest_wait_secs": q.oldest_arrival.map(|a| now.secs_since(a)),
                        "available_agents": q.available_agents,
                    })
                })
                .collect();
            Json(json!({ "queues": queues })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn agents(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let tenant = match authorize(&state, &tenant, &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match with_engine(&state, &tenant, |slot| slot.engine.agent_views()) {
        Ok(views) => {
            let agents: Vec<serde_json::Value> = views
                .iter()
                .map(|a| json!({"id": a.id.0, "presence": a.presence.as_str(), "open": a.open, "capacity": a.capacity}))
                .collect();
            Json(json!({ "agents": agents })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn conversation(
    State(state): State<Arc<ApiState>>,
    Path((tenant, conversation)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let tenant = match authorize(&state, &tenant, &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let Ok(id) = conversation.parse::<ConversationId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "conversation id must be a UUID",
        );
    };
    let found = with_engine(&state, &tenant, |slot| {
        slot.engine.conversation(id).map(|v| {
            let history: Vec<serde_json::Value> = slot
                .history
                .get(&id)
                .map(|h| h.iter().cloned().collect())
                .unwrap_or_default();
            json!({
                "id": id.to_string(),
                "queue": v.queue.0,
                "state": v.state,
                "agent": v.agent.map(|a| a.0),
                "arrival": time_of(v.arrival.0),
                "priority": v.priority,
                "history": history,
            })
        })
    });
    match found {
        Ok(Some(body)) => Json(body).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_conversation",
            "no such conversation",
        ),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /v1/tenants/{tenant}/replies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyRequest {
    conversation_id: ConversationId,
    channel: ChannelRef,
    recipient: String,
    text: String,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    reply_to: Option<String>,
}

/// The checks every write starts with: credentials, then a JSON body within the limit.
async fn json_request<T: for<'de> Deserialize<'de>>(
    state: &ApiState,
    tenant: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(TenantId, T), ApiError> {
    let tenant = authorize(state, tenant, headers)?;
    let body = read_body(state, headers, body).await?;
    Ok((tenant, parse(&body)?))
}

/// Reads a JSON request body within the configured limit.
async fn read_body(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let json = ct
            .to_str()
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(limit))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.to_string().starts_with("missing field") {
            "missing_field"
        } else {
            "malformed"
        };
        ApiError::Invalid(code, e.to_string())
    })
}

async fn publish(
    state: &ApiState,
    topic: &str,
    tenant: &TenantId,
    id: EventId,
    payload: Vec<u8>,
) -> Response {
    match state
        .producer
        .send(topic, tenant.as_str().as_bytes(), &payload)
        .await
    {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "event_id": id.to_string() })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(tenant = %tenant, error = %e, "agent API publish failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka_unavailable",
                "event store unavailable, retry later",
            )
        }
    }
}

async fn reply(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (tenant, req): (TenantId, ReplyRequest) =
        match json_request(&state, &tenant, &headers, body).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    if req.text.trim().is_empty() && req.attachments.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_field",
            "text (or at least one attachment)",
        );
    }
    if let Some(i) = req.attachments.iter().position(|a| a.url.trim().is_empty()) {
        return ApiError::Invalid("missing_field", format!("attachments[{i}].url")).into_response();
    }
    if req.recipient.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing_field", "recipient");
    }
    let id = EventId::new_random();
    let channel = req.channel.clone();
    let event = CloudEvent::new(
        id,
        EventType::MessageSend,
        tenant.clone(),
        &channel,
        req.conversation_id,
        time_of(now_ms()),
        OutboundMessage {
            tenant: tenant.clone(),
            conversation_id: req.conversation_id,
            channel: req.channel,
            recipient: req.recipient,
            agent_id: req.agent_id,
            text: req.text,
            subject: req.subject,
            attachments: req.attachments,
            reply_to: req.reply_to,
        },
    );
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    publish(&state, &state.topics.outbound, &tenant, id, payload).await
}

/// Body of `POST /v1/tenants/{tenant}/typing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingRequest {
    conversation_id: ConversationId,
    channel: ChannelRef,
    recipient: String,
    on: bool,
}

/// An agent's typing indicator: an `omni.channel.signal` on the outbound topic, which live
/// chat shows to the visitor. Only live chat shows typing, so other channels are refused.
async fn typing(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (tenant, req): (TenantId, TypingRequest) =
        match json_request(&state, &tenant, &headers, body).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    if req.recipient.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing_field", "recipient");
    }
    if req.channel.kind != ChannelKind::Livechat {
        return ApiError::Invalid(
            "invalid_field",
            "channel.kind: typing indicators are shown on live chat only".into(),
        )
        .into_response();
    }
    let now = time_of(now_ms());
    let id = EventId::new_random();
    let signal = ChannelSignal {
        tenant: tenant.clone(),
        conversation_id: req.conversation_id,
        channel: req.channel.clone(),
        contact: Contact::new(req.recipient),
        signal: if req.on {
            SignalKind::TypingOn
        } else {
            SignalKind::TypingOff
        },
        message_ids: Vec::new(),
        watermark: None,
        payload: None,
        occurred_at: now,
    };
    let event = CloudEvent::new(
        id,
        EventType::ChannelSignal,
        tenant.clone(),
        &req.channel,
        req.conversation_id,
        now,
        signal,
    );
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    publish(&state, &state.topics.outbound, &tenant, id, payload).await
}

async fn command(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (tenant, cmd): (TenantId, Command) =
        match json_request(&state, &tenant, &headers, body).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    let id = EventId::new_random();
    let subject = match &cmd {
        Command::Accept { conversation, .. }
        | Command::Decline { conversation, .. }
        | Command::AgentReplied { conversation, .. }
        | Command::Resolve { conversation }
        | Command::Transfer { conversation, .. }
        | Command::Reopen { conversation }
        | Command::Csat { conversation, .. } => Some(conversation.to_string()),
        _ => None,
    };
    let env = Envelope::new(
        id,
        tenant.clone(),
        COMMAND_TYPE,
        format!("/omnirouter/{tenant}/api"),
        time_of(now_ms()),
        subject,
        cmd,
    );
    let payload = serde_json::to_vec(&env).unwrap_or_default();
    publish(&state, &state.topics.commands, &tenant, id, payload).await
}
