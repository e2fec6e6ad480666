//! The agent/operator HTTP API, per tenant, with a bearer token per tenant
//! (`tenants.<id>.agent_api_token`). Documented in `openapi.json` beside this crate.
//!
//! Reads (queues, agents, a conversation) are answered by the instance that owns the tenant's
//! partition, whichever instance the request hits: another instance forwards it to the owner
//! found in the owners registry (as Kafka Streams' interactive queries do), one hop at most.
//! Every read says how fresh it is: `X-Omni-Served-By` (the owning instance),
//! `X-Omni-Owner-Epoch` and `X-Omni-State-As-Of` (the time of the last input the state
//! reflects). A 503 `tenant_not_owned` means no instance owns the tenant right now (a
//! rebalance or takeover in progress): retry after `Retry-After`. Writes (replies, commands,
//! live chat revocations) go to Kafka and work on every instance.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as HttpRouter};
use omni_bus::Producer;
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ChannelSignal, CloudEvent, Contact, ConversationId,
    EventId, EventType, OutboundMessage, Secret, SignalKind, Template, TenantId, Topics,
};
use omni_routing::{Command, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::runner::SharedState;
use crate::wire::time_of;

/// What the API handlers share.
pub struct ApiState {
    /// The router's engines, when this instance runs a router.
    pub shared: Option<Arc<Mutex<SharedState>>>,
    /// Publishes replies and commands.
    pub producer: Producer,
    /// Topic names.
    pub topics: Topics,
    /// Agent API tokens per tenant; replaced whole when the config is reloaded.
    pub tokens: RwLock<HashMap<String, (TenantId, Secret)>>,
    /// Largest request body accepted (`server.max_body_bytes`).
    pub max_body_bytes: usize,
    /// Forwards reads to the owning instance.
    pub http: reqwest::Client,
    /// Counts reads by how they were answered.
    pub metrics: Option<crate::RouterMetrics>,
    /// Sends typing indicators and read marks straight to providers (Messenger, Instagram,
    /// WhatsApp);
    /// set once the channels are built, after the API.
    pub signals: OnceLock<Arc<dyn AgentSignals>>,
    /// Revokes live chat visitors' tokens; set once the channels are built, when this
    /// instance serves live chat.
    pub livechat: OnceLock<Arc<dyn VisitorRevoker>>,
}

/// A boxed revocation future.
pub type RevokeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, RevokeFailure>> + Send + 'a>>;

/// Revokes a live chat visitor's tokens on every replica. The daemon implements it over live
/// chat; this crate knows no channel.
pub trait VisitorRevoker: Send + Sync {
    /// Voids every token issued to `visitor` of `tenant` until now, on every replica;
    /// resolves with the revocation time (Unix ms) once Kafka stored it.
    fn revoke<'a>(&'a self, tenant: &'a TenantId, visitor: &'a str) -> RevokeFuture<'a>;
}

/// Why a revocation was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeFailure {
    /// The visitor id cannot be one (the reason).
    InvalidVisitor(String),
    /// Kafka did not store it: nothing was revoked.
    Unavailable,
}

/// An agent's signal to a customer that is not a message: shown now or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSignal {
    /// The agent started typing.
    TypingOn,
    /// The agent stopped typing.
    TypingOff,
    /// The agent has seen the customer's messages.
    Seen,
}

impl AgentSignal {
    /// A bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentSignal::TypingOn => "typing_on",
            AgentSignal::TypingOff => "typing_off",
            AgentSignal::Seen => "seen",
        }
    }
}

/// Sends agents' typing indicators and read marks straight to a provider (Messenger and
/// Instagram sender actions, WhatsApp read marks): best effort, never through Kafka, so a stale "typing" is never
/// replayed. The daemon implements it over the channels' senders, which count and log
/// failures; this crate knows no channel.
pub trait AgentSignals: Send + Sync {
    /// Whether signals on channels of `kind` go this way.
    fn handles(&self, kind: ChannelKind) -> bool;
    /// Whether signals on channels of `kind` name the customer's message they answer
    /// (WhatsApp marks a message read, not a conversation).
    fn needs_message_id(&self, kind: ChannelKind) -> bool {
        let _ = kind;
        false
    }
    /// Sends `signal` from `channel`'s account to `recipient` (about the customer's message
    /// `message_id`, where the channel needs one), in the background.
    fn send(&self, to: SignalTarget<'_>, signal: AgentSignal);
}

/// Whom an agent's signal is for.
#[derive(Debug, Clone, Copy)]
pub struct SignalTarget<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The channel account it is sent from.
    pub channel: &'a ChannelRef,
    /// The customer.
    pub recipient: &'a str,
    /// The customer's message it answers, where the channel needs one.
    pub message_id: Option<&'a str>,
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
        .route("/v1/tenants/{tenant}/read", post(mark_read))
        .route("/v1/tenants/{tenant}/commands", post(command))
        .route(
            "/v1/tenants/{tenant}/livechat/visitors/{visitor}/revoke",
            post(revoke_visitor),
        )
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
    #[error("no router instance owns this tenant's partition right now (a takeover is in progress); retry shortly")]
    NotOwned,
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
            ApiError::NotOwned => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tenant_not_owned",
                    self.to_string(),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return r;
            }
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
    let tokens = state.tokens.read().unwrap_or_else(|p| p.into_inner());
    let Some((id, token)) = tokens.get(tenant) else {
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

/// Header marking a read forwarded by another instance (its member name): never forwarded
/// again.
const FORWARDED: &str = "x-omni-forwarded-by";

/// How fresh a local answer is.
struct Freshness {
    member: String,
    epoch: u64,
    as_of: u64,
}

impl Freshness {
    fn apply(&self, mut response: Response) -> Response {
        let h = response.headers_mut();
        for (name, value) in [
            ("x-omni-served-by", self.member.clone()),
            ("x-omni-owner-epoch", self.epoch.to_string()),
            ("x-omni-state-as-of", time_of(self.as_of).to_rfc3339()),
        ] {
            if let Ok(v) = header::HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        response
    }
}

/// Where a tenant's reads are answered.
enum Owner<T> {
    /// Here: the answer, with its freshness.
    Local(T, Freshness),
    /// At another instance's base URL.
    Remote(String),
}

fn locate<T>(
    state: &ApiState,
    tenant: &TenantId,
    f: impl FnOnce(&crate::runner::TenantSlot) -> T,
) -> Result<Owner<T>, ApiError> {
    let shared = state.shared.as_ref().ok_or(ApiError::NotOwned)?;
    let s = shared.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = s.tenants.get(tenant) {
        if let Some(owned) = s.owned.get(&slot.partition) {
            let fresh = Freshness {
                member: s.member.clone(),
                epoch: owned.epoch,
                as_of: owned.as_of,
            };
            return Ok(Owner::Local(f(slot), fresh));
        }
    }
    let partition = s.partition_of(tenant).ok_or(ApiError::NotOwned)?;
    match s.owners.get(partition) {
        Some(claim) if claim.member != s.member => {
            claim.url.map(Owner::Remote).ok_or(ApiError::NotOwned)
        }
        _ => Err(ApiError::NotOwned),
    }
}

/// Answers a read here if this instance owns the tenant, or forwards it to the owner.
async fn read<T>(
    state: &ApiState,
    tenant: &TenantId,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    view: impl FnOnce(&crate::runner::TenantSlot) -> T,
    answer: impl FnOnce(T) -> Response,
) -> Response {
    let count = |how: &str| {
        if let Some(m) = &state.metrics {
            m.reads.with_label_values(&[how]).inc();
        }
    };
    match locate(state, tenant, view) {
        Ok(Owner::Local(value, fresh)) => {
            count("local");
            fresh.apply(answer(value))
        }
        Ok(Owner::Remote(_)) if headers.contains_key(FORWARDED) => {
            count("unowned");
            ApiError::NotOwned.into_response()
        }
        Ok(Owner::Remote(base)) => match forward(state, &base, headers, uri).await {
            Ok(r) => {
                count("forwarded");
                r
            }
            Err(e) => {
                tracing::warn!(owner = %base, error = %e, "forwarding a read to the tenant's owner failed");
                count("unowned");
                ApiError::NotOwned.into_response()
            }
        },
        Err(e) => {
            count("unowned");
            e.into_response()
        }
    }
}

async fn forward(
    state: &ApiState,
    base: &str,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Response, reqwest::Error> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let member = state
        .shared
        .as_ref()
        .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).member.clone())
        .unwrap_or_default();
    let mut request = state
        .http
        .get(format!("{}{path}", base.trim_end_matches('/')))
        .header(FORWARDED, member);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.as_bytes());
    }
    let upstream = request.send().await?;
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        let keep = name == reqwest::header::CONTENT_TYPE
            || name == reqwest::header::RETRY_AFTER
            || name.as_str().starts_with("x-omni-");
        if keep {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let body = upstream.bytes().await?;
    Ok(out
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
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
    uri: axum::http::Uri,
) -> Response {
    let tenant = match authorize(&state, &tenant, &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let now = Timestamp(now_ms());
    read(
        &state,
        &tenant,
        &headers,
        &uri,
        |slot| slot.engine.queue_views(),
        |views| {
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
        },
    )
    .await
}

async fn agents(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let tenant = match authorize(&state, &tenant, &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    read(&state, &tenant, &headers, &uri, |slot| slot.engine.agent_views(), |views| {
            let now = omni_routing::Timestamp(
                u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0),
            );
            let agents: Vec<serde_json::Value> = views
                .iter()
                .map(|a| {
                    let staffed = a.presence != omni_routing::Presence::Offline;
                    let today = a.today.at(now, staffed, a.open + a.wrap_up > 0);
                    json!({"id": a.id.0, "presence": a.presence.as_str(), "open": a.open, "wrap_up": a.wrap_up, "capacity": a.capacity, "today": today})
                })
                .collect();
            Json(json!({ "agents": agents })).into_response()
    })
    .await
}

async fn conversation(
    State(state): State<Arc<ApiState>>,
    Path((tenant, conversation)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
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
    let view = |slot: &crate::runner::TenantSlot| {
        slot.engine.conversation(id).map(|v| {
            let history: Vec<serde_json::Value> = slot
                .history
                .get(&id)
                .map(|h| {
                    h.iter()
                        .filter_map(|json| serde_json::from_str(json).ok())
                        .collect()
                })
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
    };
    read(&state, &tenant, &headers, &uri, view, |found| match found {
        Some(body) => Json(body).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_conversation",
            "no such conversation",
        ),
    })
    .await
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
    #[serde(default)]
    template: Option<Template>,
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

/// Publishes an agent API event, answering 202 with its id once Kafka has it.
async fn publish(
    state: &ApiState,
    topic: &str,
    tenant: &TenantId,
    id: EventId,
    event: &impl Serialize,
) -> Response {
    let payload = match omni_core::to_json("agent API event", event) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(tenant = %tenant, error = %e, "agent API event not published");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the event could not be encoded",
            );
        }
    };
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
    match &req.template {
        Some(t) if t.name.trim().is_empty() => {
            return error(StatusCode::BAD_REQUEST, "missing_field", "template.name");
        }
        Some(_) => {}
        None if req.text.trim().is_empty() && req.attachments.is_empty() => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "text (or at least one attachment, or a template)",
            );
        }
        None => {}
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
            csat_survey: false,
            template: req.template,
        },
    );
    publish(&state, &state.topics.outbound, &tenant, id, &event).await
}

/// Body of `POST /v1/tenants/{tenant}/typing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingRequest {
    conversation_id: ConversationId,
    channel: ChannelRef,
    recipient: String,
    on: bool,
    /// The customer's message being answered (WhatsApp: required, marked read with it).
    #[serde(default)]
    message_id: Option<String>,
}

/// Body of `POST /v1/tenants/{tenant}/read`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadRequest {
    conversation_id: ConversationId,
    channel: ChannelRef,
    recipient: String,
    /// The customer's message seen (WhatsApp: required).
    #[serde(default)]
    message_id: Option<String>,
}

/// Revokes every live chat token issued to the visitor until now, on every replica: new
/// sockets and renewals with those tokens are refused (401 `token_revoked`) and the visitor's
/// open sockets are closed. `200 {tenant, visitor_id, revoked_at}` once Kafka stored the
/// revocation (this instance has applied it; the others apply it as they read it).
async fn revoke_visitor(
    State(state): State<Arc<ApiState>>,
    Path((tenant, visitor)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let tenant = match authorize(&state, &tenant, &headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let Some(revoker) = state.livechat.get() else {
        return error(
            StatusCode::NOT_FOUND,
            "livechat_not_served",
            "live chat is not served by this instance (livechat.enabled, a widget)",
        );
    };
    match revoker.revoke(&tenant, &visitor).await {
        Ok(at_ms) => {
            let at = chrono::DateTime::from_timestamp_millis(at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            Json(json!({
                "tenant": tenant.as_str(),
                "visitor_id": visitor,
                "revoked_at": at,
            }))
            .into_response()
        }
        Err(RevokeFailure::InvalidVisitor(reason)) => {
            ApiError::Invalid("invalid_visitor", reason).into_response()
        }
        Err(RevokeFailure::Unavailable) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka_unavailable",
                "event store unavailable, nothing was revoked; retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

/// An agent's typing indicator. Live chat: an `omni.channel.signal` on the outbound topic,
/// which the instance holding the visitor's socket shows. Messenger and Instagram: a sender
/// action straight to Meta (best effort, nothing stored). Other channels show no typing.
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
        let signal = match req.on {
            true => AgentSignal::TypingOn,
            false => AgentSignal::TypingOff,
        };
        let to = SignalTarget {
            tenant: &tenant,
            channel: &req.channel,
            recipient: &req.recipient,
            message_id: req.message_id.as_deref(),
        };
        return to_provider(&state, to, signal);
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
    publish(&state, &state.topics.outbound, &tenant, id, &event).await
}

/// An agent has seen the customer's messages: Messenger's and Instagram's "seen"
/// (`mark_seen`), sent straight to Meta, best effort.
async fn mark_read(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (tenant, req): (TenantId, ReadRequest) =
        match json_request(&state, &tenant, &headers, body).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    if req.recipient.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing_field", "recipient");
    }
    let signal = AgentSignal::Seen;
    tracing::debug!(tenant = %tenant, conversation = %req.conversation_id,
        signal = signal.as_str(), "agent signal");
    let to = SignalTarget {
        tenant: &tenant,
        channel: &req.channel,
        recipient: &req.recipient,
        message_id: req.message_id.as_deref(),
    };
    to_provider(&state, to, signal)
}

/// Hands a signal to the provider's sender (202: taken, best effort), or refuses a channel
/// that has none.
fn to_provider(state: &ApiState, to: SignalTarget<'_>, signal: AgentSignal) -> Response {
    let kind = to.channel.kind;
    match state.signals.get().filter(|s| s.handles(kind)) {
        Some(signals) => {
            if signals.needs_message_id(kind) && to.message_id.is_none_or(|m| m.trim().is_empty()) {
                return ApiError::Invalid(
                    "missing_field",
                    format!("message_id: {kind} marks the customer's message it answers"),
                )
                .into_response();
            }
            signals.send(to, signal);
            (
                StatusCode::ACCEPTED,
                Json(json!({ "signal": signal.as_str(), "delivery": "best_effort" })),
            )
                .into_response()
        }
        None => {
            let shown = match signal {
                AgentSignal::Seen => "read marks are sent on messenger, instagram and whatsapp only",
                _ => "typing indicators are shown on livechat, messenger, instagram and whatsapp only",
            };
            ApiError::Invalid("invalid_field", format!("channel.kind: {shown}")).into_response()
        }
    }
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
    let env = crate::wire::command_envelope(
        id,
        tenant.clone(),
        format!("/omnirouter/{tenant}/api"),
        time_of(now_ms()),
        cmd,
    );
    publish(&state, &state.topics.commands, &tenant, id, &env).await
}
