//! One visitor's socket after the upgrade: the status frame, the backlog, then the loop that
//! forwards the hub's messages and reads the visitor's frames until one side goes.

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use omni_core::{ConversationId, DeliveryStatus, TenantId};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frames::handle_frame;
use crate::hub::{IpSlot, Outgoing, Subscriber};
use crate::protocol::{error_frame, parse, ClientFrame, Cursor, FrameError, Position, Stream};
use crate::throttle::{FrameBudget, Verdict};
use crate::token::VisitorClaims;
use crate::Livechat;

/// Who is on a socket, fixed at the upgrade.
pub(super) struct Visitor {
    pub(super) tenant: TenantId,
    pub(super) widget: String,
    pub(super) claims: VisitorClaims,
    pub(super) conversation: ConversationId,
    pub(super) open: bool,
    /// Holds the socket's place in the per-IP cap until the socket goes.
    pub(super) _slot: IpSlot,
}

/// A socket's side of the conversation: what it has been sent.
pub(super) struct Conn {
    ws: WebSocket,
    pub(super) cursor: Cursor,
    /// The visitor's last typing state passed on, and when.
    pub(super) typing: Option<(bool, Instant)>,
}

impl Conn {
    pub(super) async fn send(&mut self, text: String) -> bool {
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
        self.send_close(code, reason).await;
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

    /// Sends a close frame on a socket whose input cannot be read on (a frame over the limit),
    /// then lingers [`CLOSE_WAIT`] before the connection goes. The peer's close frame can never
    /// be read here (after a read error the stream ends), and dropping the socket at once with
    /// the rest of the oversized frame unread makes the kernel reset the connection: the peer
    /// then often loses our close frame and its code before it reads them.
    async fn close_unreadable(&mut self, code: u16, reason: &'static str) {
        self.send_close(code, reason).await;
        tokio::time::sleep(CLOSE_WAIT).await;
    }

    /// Sends a close frame with `code`; a socket already gone has nothing to be told.
    async fn send_close(&mut self, code: u16, reason: &'static str) {
        let _ = self
            .ws
            .send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
}

const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub(super) async fn run_socket(
    chat: Arc<Livechat>,
    ws: WebSocket,
    visitor: Visitor,
    cursor: Cursor,
) {
    chat.metrics.connections.inc();
    // Watched from before the token is looked at again: a revocation applied between the
    // check before the upgrade and here is seen now, one applied later wakes the loop.
    let mut revoked = chat.revocations.subscribe();
    revoked.borrow_and_update();
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
    if is_revoked(&chat, &visitor) {
        close_revoked(&chat, &mut conn).await;
        chat.hub.detach(visitor.conversation, &subscriber);
        chat.metrics.connections.dec();
        return;
    }
    let mut alive = conn.send(status).await;
    if alive {
        alive = send_backlog(&chat, &mut conn, backlog, reached).await;
    }
    if alive {
        socket_loop(&chat, &mut conn, &visitor, &subscriber, &mut revoked).await;
    }
    chat.hub.detach(visitor.conversation, &subscriber);
    chat.metrics.connections.dec();
}

pub(super) async fn send_backlog(
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

fn is_revoked(chat: &Livechat, visitor: &Visitor) -> bool {
    chat.revocations.is_revoked(
        visitor.tenant.as_str(),
        &visitor.claims.visitor,
        visitor.claims.iat_ms,
    )
}

/// Tells the widget its token was revoked and closes with 1008 (policy violation).
async fn close_revoked(chat: &Livechat, conn: &mut Conn) {
    chat.metrics
        .policy_closes
        .with_label_values(&["token_revoked"])
        .inc();
    let err = FrameError::new(
        "token_revoked",
        "this visitor's token was revoked; ask for a new session",
    );
    let _ = conn.send(error_frame(&err, None)).await;
    conn.close(1008, "token revoked").await;
}

/// A frame read from the widget, before its budget is charged.
enum Incoming {
    Text(Result<ClientFrame, FrameError>),
    Binary,
    Control,
}

async fn socket_loop(
    chat: &Livechat,
    conn: &mut Conn,
    visitor: &Visitor,
    subscriber: &Arc<Subscriber>,
    revoked: &mut tokio::sync::watch::Receiver<u64>,
) {
    let mut budget = FrameBudget::new(
        chat.settings.frame_rate_per_second,
        chat.settings.frame_burst,
        Instant::now(),
    );
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
            changed = revoked.changed() => {
                // The sender lives as long as `chat`: an error cannot happen while it does.
                if changed.is_ok() && is_revoked(chat, visitor) {
                    close_revoked(chat, conn).await;
                    return;
                }
            }
            incoming = conn.ws.recv() => {
                let (kind, frame) = match incoming {
                    None | Some(Ok(WsMessage::Close(_))) => return,
                    Some(Err(e)) => {
                        // tungstenite: "Space limit exceeded: Message too long: N > max".
                        let message = e.to_string().to_ascii_lowercase();
                        let oversized = message.contains("too long") || message.contains("space limit");
                        if oversized {
                            reject(chat, conn, FrameError::new("frame_too_large",
                                format!("frames are limited to {} bytes", chat.settings.max_frame_bytes)), None).await;
                            conn.close_unreadable(1009, "frame too large").await;
                        }
                        return;
                    }
                    Some(Ok(WsMessage::Text(t))) => {
                        let parsed = parse(t.as_str(), chat.settings.max_text_chars);
                        let kind = parsed.as_ref().map_or("invalid", ClientFrame::kind);
                        (kind, Incoming::Text(parsed))
                    }
                    Some(Ok(WsMessage::Binary(_))) => ("binary", Incoming::Binary),
                    Some(Ok(_)) => ("control", Incoming::Control),
                };
                sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                match budget.charge(Instant::now()) {
                    Verdict::Admit => {}
                    Verdict::Refuse => {
                        chat.metrics.frames_throttled.with_label_values(&[kind]).inc();
                        let client_id = match &frame {
                            Incoming::Text(Ok(ClientFrame::Message { client_id, .. })) => Some(client_id.as_str()),
                            _ => None,
                        };
                        let err = FrameError::new("rate_limited", "too many frames; slow down (this one was dropped)");
                        if !reject(chat, conn, err, client_id).await {
                            return;
                        }
                        continue;
                    }
                    Verdict::Close => {
                        chat.metrics.frames_throttled.with_label_values(&[kind]).inc();
                        chat.metrics.policy_closes.with_label_values(&["flooding"]).inc();
                        conn.close(1008, "flooding").await;
                        return;
                    }
                }
                let frame = match frame {
                    Incoming::Text(frame) => frame,
                    Incoming::Binary => {
                        reject(chat, conn, FrameError::new("binary_not_supported", "send JSON text frames"), None).await;
                        continue;
                    }
                    Incoming::Control => continue,
                };
                // Boxed: frame handling (publishing to Kafka) is a large future that an idle
                // socket should not carry. A shutdown does not wait for it (Kafka may be
                // away): the message stays unacknowledged and the widget resends it.
                let handled = tokio::select! {
                    biased;
                    () = &mut closing => None,
                    alive = Box::pin(handle_frame(chat, conn, visitor, frame)) => Some(alive),
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

pub(super) async fn reject(
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
