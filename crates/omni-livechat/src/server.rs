//! The HTTP surface of live chat and the per-socket loop.
//!
//! - `GET /v1/livechat/widget.js`: the widget script (cacheable for an hour).
//! - `POST /v1/livechat/{tenant}/{widget}/session` (+ CORS preflight): a visitor token;
//!   limited per client IP and per widget on each replica (`429` with `Retry-After`).
//! - `GET /v1/livechat/{tenant}/{widget}/ws[?after=<cursor>]` with
//!   `Sec-WebSocket-Protocol: omni.v1, omni.token.<token>`: the visitor's socket.
//!
//! # Why the token travels as a subprotocol
//! A browser's `WebSocket` can send no header but `Sec-WebSocket-Protocol`, and a URL ends up
//! in proxies' and load balancers' access logs, so the token goes in the subprotocol list;
//! the server answers with `omni.v1` only, never echoing the token. A first `auth` frame was
//! the other way: it would let unauthenticated sockets in (a per-IP slot, a read buffer and a
//! timer each until they authenticate) and could refuse a bad token only by a close code;
//! with the subprotocol every check happens before the upgrade and refusals stay HTTP
//! statuses. `?token=` is refused (`401 token_in_url`) unless `livechat.allow_token_in_url`
//! (for the hour an old, cached widget script may still send it during an upgrade).
//!
//! Refusals before the upgrade are plain HTTP (`403` wrong origin, `401` bad or revoked
//! token, `429` too many sockets from one IP, counted over every replica); after it, every problem with a frame is an `error` frame and the
//! socket stays open, except an oversized frame (closed with 1009), a socket flooding past
//! its frame budget or whose token was revoked (1008), a lagging socket
//! (closed with 1013; the widget resumes by cursor) and every socket when the daemon shuts
//! down (closed with 1001 at once; the widget reconnects, to another replica, and resumes).
//! No log line or metric holds a token: refusals are counted by reason only.

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use omni_core::{ChannelKind, ChannelRef, ConversationId, TenantId};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::protocol::Cursor;
use crate::settings::WidgetSettings;
use crate::throttle::SessionRefusal;
use crate::token::{self, VisitorClaims};
use crate::Livechat;
use conn::{run_socket, Visitor};

mod conn;
mod frames;

/// The live chat routes over `chat`.
pub fn routes(chat: Arc<Livechat>) -> Router {
    Router::new()
        .route("/v1/livechat/widget.js", get(widget_js))
        .route(
            "/v1/livechat/{tenant}/{widget}/session",
            post(session).options(preflight),
        )
        .route("/v1/livechat/{tenant}/{widget}/ws", get(socket))
        .with_state(chat)
}

async fn widget_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        crate::WIDGET_JS,
    )
        .into_response()
}

fn refuse(
    chat: &Livechat,
    kind: &str,
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response {
    chat.metrics.attempts.with_label_values(&[kind, code]).inc();
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The widget and the request's allowed origin, or the refusal.
fn widget_for(
    chat: &Livechat,
    kind: &str,
    tenant: &str,
    widget: &str,
    headers: &HeaderMap,
) -> Result<(TenantId, WidgetSettings, String), Box<Response>> {
    let Some((tenant_id, settings)) = chat.widget(tenant, widget) else {
        return Err(Box::new(refuse(
            chat,
            kind,
            StatusCode::NOT_FOUND,
            "unknown_widget",
            "no such widget",
        )));
    };
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if origin.is_empty() || !settings.origin_allowed(origin) {
        return Err(Box::new(refuse(
            chat,
            kind,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this page's origin is not allowed for the widget",
        )));
    }
    Ok((tenant_id, settings, origin.to_owned()))
}

fn cors(mut response: Response, origin: &str) -> Response {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

async fn preflight(
    State(chat): State<Arc<Livechat>>,
    Path((tenant, widget)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match widget_for(&chat, "preflight", &tenant, &widget, &headers) {
        Ok((_, _, origin)) => {
            let mut r = cors(StatusCode::NO_CONTENT.into_response(), &origin);
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            r
        }
        Err(r) => *r,
    }
}

/// Body of a session request; every field optional. No `Debug`: it carries a visitor token.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SessionRequest {
    /// A previous token of this browser: the same visitor (and conversation) is kept.
    token: Option<String>,
    /// A logged-in customer's id on the site…
    user_id: Option<String>,
    /// …and `hex(HMAC-SHA256(identity secret, user_id))`, computed by the site's server.
    user_hash: Option<String>,
    /// The visitor's language (`vi`, `en`).
    language: Option<String>,
}

async fn session(
    State(chat): State<Arc<Livechat>>,
    Path((tenant, widget)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const KIND: &str = "session";
    let (tenant_id, settings, origin) = match widget_for(&chat, KIND, &tenant, &widget, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let refuse_cors =
        |status, code, message: &str| cors(refuse(&chat, KIND, status, code, message), &origin);
    let ip = client_ip(&chat, &headers, peer);
    if let Err(refusal) = chat.admit_session(ip, &tenant, &widget) {
        let (code, message, wait) = match refusal {
            SessionRefusal::Ip(wait) => (
                "ip_rate_limited",
                "too many sessions from this address; retry after Retry-After seconds",
                wait,
            ),
            SessionRefusal::Widget(wait) => (
                "widget_rate_limited",
                "too many sessions for this widget; retry after Retry-After seconds",
                wait,
            ),
        };
        let mut r = refuse_cors(StatusCode::TOO_MANY_REQUESTS, code, message);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        r.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
        return r;
    }
    if body.len() > 4096 {
        return refuse_cors(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "session body over 4096 bytes",
        );
    }
    let req: SessionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SessionRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return refuse_cors(StatusCode::BAD_REQUEST, "malformed", &e.to_string()),
        }
    };
    let now_ms = Utc::now().timestamp_millis();
    let now = now_ms.div_euclid(1000);
    let secret = settings.secret.expose().as_bytes();
    let visitor = match session_visitor(&chat, &settings, &req, &tenant, &widget, now) {
        Ok(v) => v,
        Err((status, code, message)) => return refuse_cors(status, code, message),
    };
    let language = req
        .language
        .filter(|l| {
            !l.is_empty()
                && l.len() <= 16
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(|l| l.to_ascii_lowercase());
    let exp = now + i64::try_from(chat.settings.token_ttl.as_secs()).unwrap_or(86_400);
    let claims = VisitorClaims {
        tenant: tenant.clone(),
        widget: widget.clone(),
        visitor: visitor.clone(),
        exp,
        iat_ms: now_ms,
        language,
    };
    let conversation = conversation_of(&tenant_id, &widget, &visitor);
    let open = settings
        .hours
        .as_ref()
        .is_none_or(|h| h.is_open(Utc::now()));
    chat.metrics
        .attempts
        .with_label_values(&[KIND, "accepted"])
        .inc();
    cors(
        axum::Json(serde_json::json!({
            "token": token::sign(&claims, secret),
            "visitor_id": visitor,
            "conversation_id": conversation,
            "expires_at": exp,
            "open": open,
            "ws_path": format!("/v1/livechat/{tenant}/{widget}/ws"),
        }))
        .into_response(),
        &origin,
    )
}

/// The visitor a session is for: the logged-in customer whose `user_hash` matches, the
/// visitor of a still-renewable token of this widget, or a new one; or why it is refused (a
/// renewal with a revoked token: 401 `token_revoked`, so the widget starts afresh).
fn session_visitor(
    chat: &Livechat,
    settings: &WidgetSettings,
    req: &SessionRequest,
    tenant: &str,
    widget: &str,
    now: i64,
) -> Result<String, (StatusCode, &'static str, &'static str)> {
    let secret = settings.secret.expose().as_bytes();
    match (&req.user_id, &req.user_hash) {
        (Some(user), Some(hash)) => {
            let valid_id =
                !user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control);
            let matches = settings
                .identity_secret
                .as_ref()
                .is_some_and(|s| token::identity_matches(s.expose().as_bytes(), user, hash));
            if !valid_id || !matches {
                return Err((
                    StatusCode::FORBIDDEN,
                    "identity_mismatch",
                    "user_hash does not match user_id",
                ));
            }
            Ok(format!("user:{user}"))
        }
        (Some(_), None) | (None, Some(_)) => Err((
            StatusCode::BAD_REQUEST,
            "missing_field",
            "give user_id and user_hash together",
        )),
        (None, None) => {
            let renew = i64::try_from(chat.settings.renew_window.as_secs()).unwrap_or(i64::MAX);
            let previous = req
                .token
                .as_deref()
                .and_then(|t| token::verify(t, secret, now, renew).ok())
                .filter(|c| {
                    c.tenant == tenant && c.widget == widget && !c.visitor.starts_with("user:")
                });
            match previous {
                Some(c) if chat.revocations.is_revoked(tenant, &c.visitor, c.iat_ms) => Err((
                    StatusCode::UNAUTHORIZED,
                    "token_revoked",
                    "this token was revoked; ask for a session without it",
                )),
                Some(c) => Ok(c.visitor),
                None => Ok(format!("v_{}", uuid::Uuid::now_v7().simple())),
            }
        }
    }
}

fn conversation_of(tenant: &TenantId, widget: &str, visitor: &str) -> ConversationId {
    ConversationId::derive(
        tenant,
        &ChannelRef::new(ChannelKind::Livechat, widget),
        visitor,
        None,
    )
}

/// Query of the socket URL. No `Debug`: it may carry a visitor token (refused unless
/// `allow_token_in_url`).
#[derive(Deserialize)]
struct SocketQuery {
    token: Option<String>,
    after: Option<String>,
}

/// The subprotocol the server speaks, and the only one it ever answers with.
pub const PROTOCOL: &str = "omni.v1";
/// Prefix of the subprotocol that carries the visitor token (`omni.token.<token>`).
pub const TOKEN_PROTOCOL_PREFIX: &str = "omni.token.";

/// The token offered as a subprotocol (the first `omni.token.…` of every
/// `Sec-WebSocket-Protocol` header), if any.
fn protocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL_PREFIX))
}

async fn socket(
    State(chat): State<Arc<Livechat>>,
    Path((tenant, widget)): Path<(String, String)>,
    Query(query): Query<SocketQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    const KIND: &str = "socket";
    let (tenant_id, settings) = match widget_for(&chat, KIND, &tenant, &widget, &headers) {
        Ok((t, s, _)) => (t, s),
        Err(r) => return *r,
    };
    let token = match (protocol_token(&headers), query.token.as_deref()) {
        (Some(t), _) => Some(t),
        (None, Some(t)) if chat.settings.allow_token_in_url => Some(t),
        (None, Some(_)) => {
            return refuse(
                &chat,
                KIND,
                StatusCode::UNAUTHORIZED,
                "token_in_url",
                "send the token as the subprotocol omni.token.<token> (Sec-WebSocket-Protocol: omni.v1, omni.token.<token>), never in the URL",
            )
        }
        (None, None) => None,
    };
    let claims = match socket_claims(&chat, &settings, &tenant, &widget, token) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let cursor = match query.after.as_deref().map(str::parse::<Cursor>) {
        None => Cursor::START,
        Some(Ok(c)) => c,
        Some(Err(())) => {
            return refuse(
                &chat,
                KIND,
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                "after is \"<in>.<out>\"",
            )
        }
    };
    let ip = client_ip(&chat, &headers, peer);
    let key = chat.presence.hasher.hash(ip);
    let elsewhere = chat.presence.remote_count(key);
    let Some(slot) = chat
        .hub
        .acquire_ip(ip, key, chat.settings.max_connections_per_ip, elsewhere)
    else {
        return refuse(
            &chat,
            KIND,
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many sockets from this address",
        );
    };
    chat.metrics
        .attempts
        .with_label_values(&[KIND, "accepted"])
        .inc();
    let open = settings
        .hours
        .as_ref()
        .is_none_or(|h| h.is_open(Utc::now()));
    let limit = chat.settings.max_frame_bytes;
    upgrade
        .protocols([PROTOCOL])
        .read_buffer_size(chat.settings.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |ws| {
            let visitor = Visitor {
                conversation: conversation_of(&tenant_id, &widget, &claims.visitor),
                tenant: tenant_id,
                widget,
                claims,
                open,
                _slot: slot,
            };
            // Boxed: the socket's future stays small, and so does an idle socket.
            Box::pin(run_socket(chat, ws, visitor, cursor))
        })
}

/// The claims of a socket's token, valid and of this widget; or the refusal.
fn socket_claims(
    chat: &Livechat,
    settings: &WidgetSettings,
    tenant: &str,
    widget: &str,
    token: Option<&str>,
) -> Result<VisitorClaims, Box<Response>> {
    const KIND: &str = "socket";
    let Some(token) = token else {
        return Err(Box::new(refuse(
            chat,
            KIND,
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "send Sec-WebSocket-Protocol: omni.v1, omni.token.<token>",
        )));
    };
    match token::verify(
        token,
        settings.secret.expose().as_bytes(),
        Utc::now().timestamp(),
        0,
    ) {
        Ok(c) if c.tenant == tenant && c.widget == widget => {
            if chat.revocations.is_revoked(tenant, &c.visitor, c.iat_ms) {
                return Err(Box::new(refuse(
                    chat,
                    KIND,
                    StatusCode::UNAUTHORIZED,
                    "token_revoked",
                    "this token was revoked; ask for a new session",
                )));
            }
            Ok(c)
        }
        Ok(_) => Err(Box::new(refuse(
            chat,
            KIND,
            StatusCode::UNAUTHORIZED,
            "token_forged",
            "token of another widget",
        ))),
        Err(e) => Err(Box::new(refuse(
            chat,
            KIND,
            StatusCode::UNAUTHORIZED,
            e.reason(),
            &e.to_string(),
        ))),
    }
}

/// The client's address: the peer, or behind `trusted_proxies` the rightmost untrusted
/// `X-Forwarded-For` hop (see [`crate::client_ip`]). A header value that is not text is
/// unreadable, like an unreadable entry.
fn client_ip(chat: &Livechat, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    let trusted = &chat.settings.trusted_proxies;
    if trusted.is_empty() {
        return crate::client_ip::canonical(peer.ip());
    }
    let mut values = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        match v.to_str() {
            Ok(v) => values.push(v),
            // Not text: an entry no address can be read from, where it stands.
            Err(_) => values.push("?"),
        }
    }
    crate::client_ip::resolve(peer.ip(), values, trusted)
}
