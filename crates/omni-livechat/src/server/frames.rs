//! What a visitor's frames do: a message is published on the inbound topic and acknowledged,
//! typing is passed on to agents, `read` reports replies read, `resume` replays, `leave`
//! tells the router the visitor left.

use chrono::Utc;
use omni_channel::{Accepted, IngressError, Parsed, PreparedEvent};
use omni_core::{ChannelKind, ChannelRef, Contact, DeliveryStatus, Direction, EventType, Message};
use std::time::{Duration, Instant};

use super::conn::{reject, send_backlog, Conn, Visitor};
use crate::protocol::{ClientFrame, Cursor, FrameError, LEFT_FRAME};
use crate::Livechat;

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
    if let Err(e) = publish(chat, visitor, prepared).await {
        tracing::debug!(error = %e, "typing indicator not published");
    }
}

/// Handles one parsed text frame (within the socket's budget); `false` when the socket is
/// gone.
pub(super) async fn handle_frame(
    chat: &Livechat,
    conn: &mut Conn,
    visitor: &Visitor,
    frame: Result<ClientFrame, FrameError>,
) -> bool {
    let frame = match frame {
        Ok(f) => f,
        Err(e) => return reject(chat, conn, e, None).await,
    };
    match frame {
        ClientFrame::Message { client_id, text } => {
            admit_message(chat, conn, visitor, client_id, text).await
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
        ClientFrame::Leave {} => leave(chat, conn, visitor).await,
    }
}

/// The visitor ended the chat: `customer_left` on the commands topic, then `left` once Kafka
/// acknowledged it; `leave_failed` (and the rate-limit token back) when it did not, so the
/// widget can try again. A leave costs a token of the conversation's message bucket: a
/// widget cannot flood the router's topic with them.
async fn leave(chat: &Livechat, conn: &mut Conn, visitor: &Visitor) -> bool {
    if !chat.hub.allow_message(visitor.conversation, Instant::now()) {
        let err = FrameError::new("rate_limited", "too many frames; wait a moment and retry");
        return reject(chat, conn, err, None).await;
    }
    let published = crate::routing::publish_customer_left(
        chat.sink.as_ref(),
        &chat.bus.topics.commands,
        &visitor.tenant,
        &visitor.widget,
        visitor.conversation,
    )
    .await;
    match published {
        Ok(()) => conn.send(LEFT_FRAME.to_owned()).await,
        Err(e) => {
            tracing::warn!(
                tenant = %visitor.tenant,
                error = &e as &dyn std::error::Error,
                "live chat customer_left not published"
            );
            chat.hub.admitted(visitor.conversation, None);
            let err = FrameError::new(
                "leave_failed",
                "the chat could not be ended just now; try again",
            );
            reject(chat, conn, err, None).await
        }
    }
}

/// A visitor's message: rate-limited, published on the inbound topic, then acknowledged
/// (`ack`, with `duplicate` for a resend) or refused with an error frame.
async fn admit_message(
    chat: &Livechat,
    conn: &mut Conn,
    visitor: &Visitor,
    client_id: String,
    text: String,
) -> bool {
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
    match publish(chat, visitor, prepared).await {
        Ok(accepted) => {
            let (event_id, _, duplicate) = accepted.events.first().copied().unwrap_or_else(|| {
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
            let err = FrameError::new("unavailable", "not stored; resend with the same client_id");
            reject(chat, conn, err, Some(&client_id)).await
        }
    }
}

/// Publishes one event of the visitor's conversation through the shared ingress (dedupe,
/// Kafka acknowledgement, metrics).
async fn publish(
    chat: &Livechat,
    visitor: &Visitor,
    prepared: PreparedEvent,
) -> Result<Accepted, IngressError> {
    chat.ingress
        .publish(
            ChannelKind::Livechat,
            &visitor.tenant,
            Parsed::from(vec![prepared]),
        )
        .await
}
