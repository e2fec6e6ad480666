//! One visitor's socket after the upgrade: the status frame, the backlog, then the loop that
//! forwards the hub's messages and reads the visitor's frames until one side goes.

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use omni_core::{ConversationId, DeliveryStatus, TenantId};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frames::handle_frame;
use crate::hub::{IpSlot, Outgoing, Subscriber};
use crate::protocol::{error_frame, Cursor, FrameError, Position, Stream};
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
                            conn.close_unreadable(1009, "frame too large").await;
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
