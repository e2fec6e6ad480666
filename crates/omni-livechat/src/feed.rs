//! Every instance reads every live chat message: a group-less tail of the inbound and outbound
//! topics (all partitions assigned by this instance itself, nothing committed), starting one
//! history window back, feeding the [`Hub`]. So the instance holding a visitor's socket sees
//! each agent reply, wherever it was written, and any instance can replay a conversation.
//! The routing topic is tailed the same way: the router's news of a conversation the hub
//! holds (queued with a wait estimate, assigned, ended; see [`crate::routing`]) reaches the
//! visitor's socket on whichever instance holds it.

use chrono::{DateTime, Utc};
use omni_bus::tail::{StartAt, TopicTail};
use omni_core::{ChannelKind, CloudEvent, EventType, MessageReceived, OutboundMessage, TenantId};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::hub::{Entry, Reached};
use crate::protocol::{Position, Stream};
use crate::Livechat;

/// The `message` frame's fields, shared by every socket that is sent it.
#[derive(Serialize)]
struct Body<'a> {
    id: String,
    from: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    attachments: &'a [omni_core::Attachment],
    sent_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    /// The router's CSAT question: the widget offers stars, and a star is the answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    survey: bool,
}

/// Serializes a body without its opening brace, so a socket can prefix its own fields.
fn body_tail(body: &Body<'_>) -> Arc<str> {
    let json = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    Arc::from(json.get(1..).unwrap_or("}"))
}

/// The event type of a live chat record; `None` for every other channel. A cheap probe (the
/// type and the channel only), read once per record: most records are other channels, and
/// those that cannot name the live chat channel are not parsed at all.
fn probe(payload: &[u8]) -> Option<EventType> {
    if !may_be_livechat(payload) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        event_type: EventType,
        data: ProbeData,
    }
    #[derive(serde::Deserialize)]
    struct ProbeData {
        channel: omni_core::ChannelRef,
    }
    let probe: Probe = serde_json::from_slice(payload).ok()?;
    (probe.data.channel.kind == ChannelKind::Livechat).then_some(probe.event_type)
}

/// Whether a record can be a live chat one: its channel kind is the JSON string `livechat`,
/// written as is or, by a producer that escapes freely, with a `\u` escape. Every instance
/// reads every inbound and outbound record, so the other channels' records (nearly all of
/// them) cost a substring search instead of a JSON parse.
fn may_be_livechat(payload: &[u8]) -> bool {
    memchr::memmem::find(payload, ChannelKind::Livechat.as_str().as_bytes()).is_some()
        || memchr::memmem::find(payload, b"\\u").is_some()
}

/// What one record means for live chat, if anything: (tenant, widget, conversation, entry).
pub fn decode(
    stream: Stream,
    offset: i64,
    payload: &[u8],
) -> Option<(TenantId, String, omni_core::ConversationId, Entry)> {
    decode_as(stream, offset, payload, probe(payload)?)
}

/// [`decode`] of a live chat record already probed as `event_type`.
fn decode_as(
    stream: Stream,
    offset: i64,
    payload: &[u8],
    event_type: EventType,
) -> Option<(TenantId, String, omni_core::ConversationId, Entry)> {
    let position = Position { stream, offset };
    match (stream, event_type) {
        (Stream::Inbound, EventType::MessageReceived) => {
            let event: CloudEvent<MessageReceived> = serde_json::from_slice(payload).ok()?;
            let m = &event.data.message;
            let client_id = m.id.rsplit_once('/').map(|(_, c)| c);
            let body = body_tail(&Body {
                id: event.id.to_string(),
                from: "visitor",
                text: &m.text,
                attachments: &m.attachments,
                sent_at: event.data.received_at,
                client_id,
                survey: false,
            });
            Some((
                event.tenant,
                event.data.channel.account,
                event.subject,
                entry(position, event.id, event.time, body),
            ))
        }
        (Stream::Outbound, EventType::MessageSend) => {
            let event: CloudEvent<OutboundMessage> = serde_json::from_slice(payload).ok()?;
            let body = body_tail(&Body {
                id: event.id.to_string(),
                from: "agent",
                text: &event.data.text,
                attachments: &event.data.attachments,
                sent_at: event.time,
                client_id: None,
                survey: event.data.csat_survey,
            });
            Some((
                event.tenant,
                event.data.channel.account,
                event.subject,
                entry(position, event.id, event.time, body),
            ))
        }
        _ => None,
    }
}

/// An agent's typing indicator for a live chat conversation (an `omni.channel.signal` with
/// `typing_on`/`typing_off` on the outbound topic): (tenant, widget, conversation, on), if it is
/// fresh enough to show (not history read at start-up).
pub fn decode_typing(
    payload: &[u8],
    now: DateTime<Utc>,
) -> Option<(TenantId, String, omni_core::ConversationId, bool)> {
    let event: CloudEvent<omni_core::ChannelSignal> = serde_json::from_slice(payload).ok()?;
    if event.event_type != EventType::ChannelSignal
        || event.data.channel.kind != ChannelKind::Livechat
        || now - event.time > chrono::Duration::seconds(10)
    {
        return None;
    }
    let on = match event.data.signal {
        omni_core::SignalKind::TypingOn => true,
        omni_core::SignalKind::TypingOff => false,
        _ => return None,
    };
    Some((event.tenant, event.data.channel.account, event.subject, on))
}

fn entry(
    position: Position,
    event_id: omni_core::EventId,
    at: DateTime<Utc>,
    body: Arc<str>,
) -> Entry {
    Entry {
        position,
        event_id,
        at,
        body,
        reported_sent: false,
        reported_read: false,
    }
}

/// Runs the tail until `stop` (blocking: run it on its own thread). Retries until both topics
/// exist (the daemon creates them in the background).
pub fn run(chat: Arc<Livechat>, stop: Arc<AtomicBool>) {
    let mut delay = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        match tail(&chat, &stop) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "live chat feed cannot read kafka yet, retrying"
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn tail(chat: &Livechat, stop: &AtomicBool) -> Result<(), omni_bus::BusError> {
    let bus = &chat.bus;
    let group = format!("omnirouter-livechat-{}", uuid::Uuid::now_v7().simple());
    let inbound = bus.topics.inbound.as_str();
    let outbound = bus.topics.outbound.as_str();
    let routing = bus.topics.routing.as_str();
    let since =
        Utc::now() - chrono::Duration::from_std(chat.settings.history_window).unwrap_or_default();
    // Start one history window back; a broker that cannot look offsets up by time is read
    // from the beginning (records older than the window are skipped by their time). The
    // routing topic too: a conversation still waiting is shown its wait on a reconnect.
    let start = StartAt::Since(since.timestamp_millis());
    let consumer = TopicTail::open(
        bus,
        &group,
        &[(inbound, start), (outbound, start), (routing, start)],
    )?;
    tracing::info!(since = %since, "live chat feed reading inbound, outbound and routing topics");
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(payload) = m.payload() else { continue };
                if m.topic() == routing {
                    on_routing(chat, payload);
                } else {
                    let stream = if m.topic() == inbound {
                        Stream::Inbound
                    } else {
                        Stream::Outbound
                    };
                    on_conversation_record(chat, stream, m.offset(), payload);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "live chat feed read error"
                );
            }
            None => {}
        }
    }
    Ok(())
}

/// A record of the inbound or outbound topic: a live chat message goes to the hub (and to the
/// conversation's sockets), an agent's typing to the sockets only.
fn on_conversation_record(chat: &Livechat, stream: Stream, offset: i64, payload: &[u8]) {
    let Some(event_type) = probe(payload) else {
        return;
    };
    let Some((tenant, widget, conversation, entry)) =
        decode_as(stream, offset, payload, event_type)
    else {
        if stream == Stream::Outbound && event_type == EventType::ChannelSignal {
            if let Some((tenant, widget, conversation, on)) = decode_typing(payload, Utc::now()) {
                if chat.has_widget(tenant.as_str(), &widget) {
                    let frame = format!(r#"{{"type":"typing","from":"agent","on":{on}}}"#);
                    chat.hub.broadcast(conversation, Arc::from(frame));
                }
            }
        }
        return;
    };
    if !chat.has_widget(tenant.as_str(), &widget) {
        return;
    }
    let reached: Option<Reached> =
        chat.hub
            .record(&tenant, &widget, conversation, entry, Utc::now());
    if let Some(r) = reached {
        chat.metrics
            .replies_pushed
            .with_label_values(&["live"])
            .inc();
        chat.report(vec![r], omni_core::DeliveryStatus::Sent);
    }
}

/// A record of the routing topic: news of a live chat conversation held here (queued with a
/// wait estimate, assigned, ended) goes to the hub and its sockets; everything else is
/// skipped after a shallow parse.
fn on_routing(chat: &Livechat, payload: &[u8]) {
    if let Some((tenant, conversation, update)) =
        crate::routing::decode(payload, |c| chat.hub.knows(c))
    {
        chat.hub.queue_update(&tenant, conversation, update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omni_core::{ChannelRef, ConversationId, EventId};

    fn reply(kind: ChannelKind) -> Vec<u8> {
        let tenant = TenantId::new("demo").unwrap();
        let channel = ChannelRef::new(kind, "web");
        let conversation = ConversationId::derive(&tenant, &channel, "v_1", None);
        let event = CloudEvent::new(
            EventId::new_random(),
            EventType::MessageSend,
            tenant.clone(),
            &channel,
            conversation,
            Utc::now(),
            OutboundMessage {
                tenant,
                conversation_id: conversation,
                channel: channel.clone(),
                recipient: "v_1".into(),
                agent_id: Some("agent-7".into()),
                text: "Dạ \"vâng\" ạ".into(),
                subject: None,
                attachments: vec![],
                reply_to: None,
                csat_survey: false,
                template: None,
            },
        );
        serde_json::to_vec(&event).unwrap()
    }

    #[test]
    fn live_chat_replies_become_entries_and_other_channels_are_skipped() {
        let (tenant, widget, _, entry) =
            decode(Stream::Outbound, 41, &reply(ChannelKind::Livechat)).unwrap();
        assert_eq!((tenant.as_str(), widget.as_str()), ("demo", "web"));
        assert_eq!(
            entry.position,
            Position {
                stream: Stream::Outbound,
                offset: 41
            }
        );
        let frame: serde_json::Value =
            serde_json::from_str(&format!("{{\"type\":\"message\",{}", entry.body)).unwrap();
        assert_eq!(frame["from"], "agent");
        assert_eq!(frame["text"], "Dạ \"vâng\" ạ");
        assert!(frame.get("agent_id").is_none(), "agent ids stay internal");
        assert!(decode(Stream::Outbound, 1, &reply(ChannelKind::Messenger)).is_none());
        assert!(decode(Stream::Inbound, 1, &reply(ChannelKind::Livechat)).is_none());
        assert!(decode(Stream::Outbound, 1, b"garbage").is_none());
    }

    #[test]
    fn the_prefilter_skips_other_channels_but_not_a_live_chat_kind_written_with_escapes() {
        assert!(may_be_livechat(&reply(ChannelKind::Livechat)));
        assert!(!may_be_livechat(&reply(ChannelKind::Messenger)));
        assert!(!may_be_livechat(&reply(ChannelKind::Sms)));
        // A CRM's JSON library may escape any character: "livechat" spelled with \u escapes
        // is still the live chat channel, and still decoded.
        let plain = String::from_utf8(reply(ChannelKind::Livechat)).unwrap();
        let escaped = plain
            .replace(r#""kind":"livechat""#, r#""kind":"\u006civechat""#)
            .replace("/livechat/", "/crm/");
        assert!(
            !escaped.contains("livechat"),
            "no plain name is left: {escaped}"
        );
        let (tenant, widget, _, _) = decode(Stream::Outbound, 7, escaped.as_bytes()).unwrap();
        assert_eq!((tenant.as_str(), widget.as_str()), ("demo", "web"));
    }

    fn typing(kind: ChannelKind, on: bool, at: DateTime<Utc>) -> Vec<u8> {
        let tenant = TenantId::new("demo").unwrap();
        let channel = ChannelRef::new(kind, "web");
        let conversation = ConversationId::derive(&tenant, &channel, "v_1", None);
        let event = CloudEvent::new(
            EventId::new_random(),
            EventType::ChannelSignal,
            tenant.clone(),
            &channel,
            conversation,
            at,
            omni_core::ChannelSignal {
                tenant,
                conversation_id: conversation,
                channel: channel.clone(),
                contact: omni_core::Contact::new("v_1"),
                signal: if on {
                    omni_core::SignalKind::TypingOn
                } else {
                    omni_core::SignalKind::TypingOff
                },
                message_ids: vec![],
                watermark: None,
                payload: None,
                occurred_at: at,
            },
        );
        serde_json::to_vec(&event).unwrap()
    }

    #[test]
    fn fresh_agent_typing_for_live_chat_is_recognised_and_old_or_other_signals_are_not() {
        let now = Utc::now();
        let (tenant, widget, _, on) =
            decode_typing(&typing(ChannelKind::Livechat, true, now), now).unwrap();
        assert_eq!(
            (tenant.as_str(), widget.as_str(), on),
            ("demo", "web", true)
        );
        let (_, _, _, on) = decode_typing(&typing(ChannelKind::Livechat, false, now), now).unwrap();
        assert!(!on);
        let old = now - chrono::Duration::minutes(5);
        assert!(decode_typing(&typing(ChannelKind::Livechat, true, old), now).is_none());
        assert!(decode_typing(&typing(ChannelKind::Zalo, true, now), now).is_none());
        assert!(decode_typing(&reply(ChannelKind::Livechat), now).is_none());
        // A typing signal is not a conversation message: never logged or replayed.
        assert!(decode(
            Stream::Outbound,
            1,
            &typing(ChannelKind::Livechat, true, now)
        )
        .is_none());
    }
}
