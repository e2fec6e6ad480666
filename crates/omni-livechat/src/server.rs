//! The HTTP surface of live chat and the per-socket loop.
//!
//! - `GET /v1/livechat/widget.js`: the widget script (cacheable for an hour).
//! - `POST /v1/livechat/{tenant}/{widget}/session` (+ CORS preflight): a visitor token.
//! - `GET /v1/livechat/{tenant}/{widget}/ws?token=…[&after=<cursor>]`: the visitor's socket.
//!
//! Refusals before the upgrade are plain HTTP (`403` wrong origin, `401` bad token, `429` too
//! many sockets from one IP, counted over every replica); after it, every problem with a frame is an `error` frame and the
//! socket stays open, except an oversized frame (closed with 1009), a lagging socket
//! (closed with 1013; the widget resumes by cursor) and every socket when the daemon shuts
//! down (closed with 1001 at once; the widget reconnects, to another replica, and resumes).

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use omni_channel::{Parsed, PreparedEvent};
use omni_core::{
    ChannelKind, ChannelRef, Contact, ConversationId, DeliveryStatus, Direction, EventType,
    Message, TenantId,
};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::{IpSlot, Outgoing, Subscriber};
use crate::protocol::{error_frame, parse, ClientFrame, Cursor, FrameError, Position, Stream};
use crate::settings::WidgetSettings;
use crate::token::{self, VisitorClaims};
use crate::Livechat;

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

/// Body of a session request; every field optional.
#[derive(Debug, Default, Deserialize)]
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
    let now = Utc::now().timestamp();
    let secret = settings.secret.expose().as_bytes();
    let visitor = match (&req.user_id, &req.user_hash) {
        (Some(user), Some(hash)) => {
            let valid_id =
                !user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control);
            let matches = settings
                .identity_secret
                .as_ref()
                .is_some_and(|s| token::identity_matches(s.expose().as_bytes(), user, hash));
            if !valid_id || !matches {
                return refuse_cors(
                    StatusCode::FORBIDDEN,
                    "identity_mismatch",
                    "user_hash does not match user_id",
                );
            }
            format!("user:{user}")
        }
        (Some(_), None) | (None, Some(_)) => {
            return refuse_cors(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "give user_id and user_hash together",
            );
        }
        (None, None) => {
            let renew = i64::try_from(chat.settings.renew_window.as_secs()).unwrap_or(i64::MAX);
            req.token
                .as_deref()
                .and_then(|t| token::verify(t, secret, now, renew).ok())
                .filter(|c| {
                    c.tenant == tenant && c.widget == widget && !c.visitor.starts_with("user:")
                })
                .map(|c| c.visitor)
                .unwrap_or_else(|| format!("v_{}", uuid::Uuid::now_v7().simple()))
        }
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

fn conversation_of(tenant: &TenantId, widget: &str, visitor: &str) -> ConversationId {
    ConversationId::derive(
        tenant,
        &ChannelRef::new(ChannelKind::Livechat, widget),
        visitor,
        None,
    )
}

/// Query of the socket URL.
#[derive(Debug, Deserialize)]
struct SocketQuery {
    token: Option<String>,
    after: Option<String>,
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
    let Some(token) = query.token.as_deref() else {
        return refuse(
            &chat,
            KIND,
            StatusCode::UNAUTHORIZED,
            "token_missing",
            "give ?token=",
        );
    };
    let claims = match token::verify(
        token,
        settings.secret.expose().as_bytes(),
        Utc::now().timestamp(),
        0,
    ) {
        Ok(c) if c.tenant == tenant && c.widget == widget => c,
        Ok(_) => {
            return refuse(
                &chat,
                KIND,
                StatusCode::UNAUTHORIZED,
                "token_forged",
                "token of another widget",
            )
        }
        Err(e) => {
            return refuse(
                &chat,
                KIND,
                StatusCode::UNAUTHORIZED,
                e.reason(),
                &e.to_string(),
            )
        }
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

fn client_ip(chat: &Livechat, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    if chat.settings.trust_forwarded_for {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
        {
            return ip;
        }
    }
    peer.ip()
}

struct Visitor {
    tenant: TenantId,
    widget: String,
    claims: VisitorClaims,
    conversation: ConversationId,
    open: bool,
    _slot: IpSlot,
}

/// A socket's side of the conversation: what it has been sent.
struct Conn {
    ws: WebSocket,
    cursor: Cursor,
    /// The visitor's last typing state passed on, and when.
    typing: Option<(bool, Instant)>,
}

impl Conn {
    async fn send(&mut self, text: String) -> bool {
        self.ws.send(WsMessage::Text(text.into())).await.is_ok()
    }

    /// Sends a conversation message unless this socket already has it.
    async fn send_message(&mut self, position: Position, body: &str) -> bool {
        if self.cursor.covers(position) {
            return true;
        }
        self.cursor.advance(position);
        let seq = match position.stream {
            Stream::Inbound => format!("i{}", position.offset),
            Stream::Outbound => format!("o{}", position.offset),
        };
        let frame = format!(
            r#"{{"type":"message","cursor":"{}","seq":"{seq}",{body}"#,
            self.cursor
        );
        self.send(frame).await
    }

    /// Sends a close frame and completes the closing handshake (at most [`CLOSE_WAIT`]):
    /// dropping a socket with unread input (the rest of an oversized frame) makes the kernel
    /// reset the connection, and the peer may then lose the close frame and its code.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let _ = self
            .ws
            .send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            loop {
                match self.ws.recv().await {
                    None | Some(Ok(WsMessage::Close(_))) => break,
                    Some(Ok(_)) => continue,
                    // The stream cannot read on (a frame over the limit): give the peer time
                    // to read what was sent before the connection goes.
                    Some(Err(_)) => tokio::time::sleep(CLOSE_WAIT).await,
                }
            }
        })
        .await;
    }
}

async fn run_socket(chat: Arc<Livechat>, ws: WebSocket, visitor: Visitor, cursor: Cursor) {
    chat.metrics.connections.inc();
    let (subscriber, backlog, reached) = chat.hub.attach(
        &visitor.tenant,
        &visitor.widget,
        visitor.conversation,
        cursor,
    );
    let mut conn = Conn {
        ws,
        cursor,
        typing: None,
    };
    let status = serde_json::json!({
        "type": "status",
        "conversation_id": visitor.conversation,
        "visitor_id": visitor.claims.visitor,
        "open": visitor.open,
    })
    .to_string();
    let mut alive = conn.send(status).await;
    if alive {
        alive = send_backlog(&chat, &mut conn, backlog, reached).await;
    }
    if alive {
        socket_loop(&chat, &mut conn, &visitor, &subscriber).await;
    }
    chat.hub.detach(visitor.conversation, &subscriber);
    chat.metrics.connections.dec();
}

async fn send_backlog(
    chat: &Livechat,
    conn: &mut Conn,
    backlog: crate::hub::Backlog,
    reached: Vec<crate::hub::Reached>,
) -> bool {
    let mut replies = 0;
    for (position, body) in backlog {
        if position.stream == Stream::Outbound && !conn.cursor.covers(position) {
            replies += 1;
        }
        if !conn.send_message(position, &body).await {
            return false;
        }
    }
    if replies > 0 {
        chat.metrics
            .replies_pushed
            .with_label_values(&["replay"])
            .inc_by(replies);
    }
    chat.report(reached, DeliveryStatus::Sent);
    true
}

async fn socket_loop(
    chat: &Livechat,
    conn: &mut Conn,
    visitor: &Visitor,
    subscriber: &Arc<Subscriber>,
) {
    let idle = chat.settings.idle_timeout;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let closing = chat.closing();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            biased;
            () = &mut closing => {
                conn.close(1001, "going away").await;
                return;
            }
            () = subscriber.notified() => {
                for item in subscriber.drain() {
                    let ok = match item {
                        Outgoing::Message(position, body) => conn.send_message(position, &body).await,
                        Outgoing::Frame(frame) => conn.send(frame.to_string()).await,
                    };
                    if !ok {
                        return;
                    }
                }
                if subscriber.lagged() {
                    let err = FrameError::new("lagging", "too far behind; reconnect and resume");
                    let _ = conn.send(error_frame(&err, None)).await;
                    conn.close(1013, "lagging").await;
                    return;
                }
            }
            incoming = conn.ws.recv() => {
                let text = match incoming {
                    None => return,
                    Some(Err(e)) => {
                        // tungstenite: "Space limit exceeded: Message too long: N > max".
                        let message = e.to_string().to_ascii_lowercase();
                        let oversized = message.contains("too long") || message.contains("space limit");
                        if oversized {
                            reject(chat, conn, FrameError::new("frame_too_large",
                                format!("frames are limited to {} bytes", chat.settings.max_frame_bytes)), None).await;
                            conn.close(1009, "frame too large").await;
                        }
                        return;
                    }
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Binary(_))) => {
                        sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                        reject(chat, conn, FrameError::new("binary_not_supported", "send JSON text frames"), None).await;
                        continue;
                    }
                    Some(Ok(WsMessage::Close(_))) => return,
                    Some(Ok(_)) => {
                        sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                        continue;
                    }
                };
                sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                // Boxed: frame handling (publishing to Kafka) is a large future that an idle
                // socket should not carry. A shutdown does not wait for it (Kafka may be
                // away): the message stays unacknowledged and the widget resends it.
                let handled = tokio::select! {
                    biased;
                    () = &mut closing => None,
                    alive = Box::pin(handle_frame(chat, conn, visitor, text.as_str())) => Some(alive),
                };
                match handled {
                    Some(true) => {}
                    Some(false) => return,
                    None => {
                        conn.close(1001, "going away").await;
                        return;
                    }
                }
            }
            () = &mut sleep => {
                conn.close(1000, "idle").await;
                return;
            }
        }
    }
}

async fn reject(
    chat: &Livechat,
    conn: &mut Conn,
    err: FrameError,
    client_id: Option<&str>,
) -> bool {
    chat.metrics
        .frames_rejected
        .with_label_values(&[err.code])
        .inc();
    conn.send(error_frame(&err, client_id)).await
}

/// Handles one text frame; `false` when the socket is gone.
/// How long a closing socket waits for the peer's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How often a visitor who keeps typing is reported again.
const TYPING_REPEAT: Duration = Duration::from_secs(3);

/// Tells agents the visitor started or stopped typing: an `omni.channel.signal`
/// (`typing_on`/`typing_off`) on the inbound topic. Best effort: a typing indicator that does
/// not make it is not worth an error frame.
async fn publish_typing(chat: &Livechat, visitor: &Visitor, on: bool) {
    let now = Utc::now();
    let data = omni_core::ChannelSignal {
        tenant: visitor.tenant.clone(),
        conversation_id: visitor.conversation,
        channel: ChannelRef::new(ChannelKind::Livechat, visitor.widget.clone()),
        contact: Contact::new(visitor.claims.visitor.clone()),
        signal: if on {
            omni_core::SignalKind::TypingOn
        } else {
            omni_core::SignalKind::TypingOff
        },
        message_ids: Vec::new(),
        watermark: None,
        payload: None,
        occurred_at: now,
    };
    let id = format!(
        "typing:{}:{}:{on}",
        visitor.claims.visitor,
        now.timestamp_millis()
    );
    let Ok(prepared) = PreparedEvent::signal(&id, data, now) else {
        return;
    };
    if let Err(e) = chat
        .ingress
        .publish(
            ChannelKind::Livechat,
            &visitor.tenant,
            Parsed::from(vec![prepared]),
        )
        .await
    {
        tracing::debug!(error = %e, "typing indicator not published");
    }
}

async fn handle_frame(chat: &Livechat, conn: &mut Conn, visitor: &Visitor, text: &str) -> bool {
    let frame = match parse(text, chat.settings.max_text_chars) {
        Ok(f) => f,
        Err(e) => return reject(chat, conn, e, None).await,
    };
    match frame {
        ClientFrame::Message { client_id, text } => {
            if !chat.hub.allow_message(visitor.conversation, Instant::now()) {
                let err = FrameError::new(
                    "rate_limited",
                    "too many messages; wait a moment and resend",
                );
                return reject(chat, conn, err, Some(&client_id)).await;
            }
            let mut contact = Contact::new(visitor.claims.visitor.clone());
            contact.language = visitor.claims.language.clone();
            let message = Message {
                id: format!("{}/{client_id}", visitor.claims.visitor),
                direction: Direction::Inbound,
                text,
                subject: None,
                attachments: Vec::new(),
                reply_to: None,
                payload: None,
                sent_at: None,
            };
            let channel = ChannelRef::new(ChannelKind::Livechat, visitor.widget.clone());
            let prepared = match PreparedEvent::message(
                &visitor.tenant,
                channel,
                contact,
                EventType::MessageReceived,
                message,
                Utc::now(),
            ) {
                Ok(p) => p,
                Err(e) => {
                    return reject(
                        chat,
                        conn,
                        FrameError::new("bad_frame", e.to_string()),
                        Some(&client_id),
                    )
                    .await
                }
            };
            match chat
                .ingress
                .publish(
                    ChannelKind::Livechat,
                    &visitor.tenant,
                    Parsed::from(vec![prepared]),
                )
                .await
            {
                Ok(accepted) => {
                    let (event_id, _, duplicate) =
                        accepted.events.first().copied().unwrap_or_else(|| {
                            (
                                omni_core::EventId::new_random(),
                                visitor.conversation,
                                false,
                            )
                        });
                    chat.hub
                        .admitted(visitor.conversation, Some((event_id, duplicate)));
                    let ack = serde_json::json!({
                        "type": "ack", "client_id": client_id, "event_id": event_id, "duplicate": duplicate,
                    });
                    conn.send(ack.to_string()).await
                }
                Err(_) => {
                    chat.hub.admitted(visitor.conversation, None);
                    let err = FrameError::new(
                        "unavailable",
                        "not stored; resend with the same client_id",
                    );
                    reject(chat, conn, err, Some(&client_id)).await
                }
            }
        }
        ClientFrame::Typing { on } => {
            let now = Instant::now();
            // Pass on changes, and a continuing "on" every few seconds; a first "off" is news
            // to nobody.
            let due = match conn.typing {
                Some((was, at)) => was != on || (on && now.duration_since(at) >= TYPING_REPEAT),
                None => on,
            };
            if due {
                conn.typing = Some((on, now));
                publish_typing(chat, visitor, on).await;
            }
            true
        }
        ClientFrame::Read { cursor } => {
            if let Ok(c) = cursor.parse::<Cursor>() {
                let read = chat.hub.mark_read(visitor.conversation, c);
                chat.report(read, DeliveryStatus::Read);
            }
            true
        }
        ClientFrame::Resume { after } => {
            let Ok(after) = after.parse::<Cursor>() else {
                return true;
            };
            conn.cursor = after;
            let (backlog, reached) = chat.hub.replay(visitor.conversation, after);
            send_backlog(chat, conn, backlog, reached).await
        }
        ClientFrame::Ping => conn.send(r#"{"type":"pong"}"#.to_owned()).await,
    }
}
