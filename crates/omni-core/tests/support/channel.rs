//! Real channel events (omni-core's types), minimal and fully populated, and omni-core's reader
//! for them: the fixtures of the contract checks for [`EventType::CHANNEL`].

use chrono::{DateTime, Utc};
use omni_core::{
    Attachment, AuthResult, ChannelKind, ChannelRef, ChannelSignal, CloudEvent, Contact,
    ConversationId, DeliveryStatus, DeliveryUpdate, Direction, EventId, EventType, Message,
    MessageFlag, MessageReceived, OutboundMessage, SenderAuthentication, SignalKind, Template,
    TenantId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::Fixtures;

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

pub fn acme() -> TenantId {
    TenantId::new("acme-vn").unwrap()
}

pub fn minimal_contact(id: &str) -> Contact {
    Contact {
        id: id.into(),
        name: None,
        phone: None,
        email: None,
        language: None,
        tags: vec![],
    }
}

pub fn full_contact(id: &str) -> Contact {
    Contact {
        id: id.into(),
        name: Some("Nguyễn Thị Minh Khai".into()),
        phone: Some("+84901234567".into()),
        email: Some("minhkhai@example.vn".into()),
        language: Some("vi".into()),
        tags: vec!["vip".into(), "khách-hàng-thân-thiết".into()],
    }
}

pub fn full_attachments() -> Vec<Attachment> {
    vec![
        Attachment {
            url: "https://cdn.example.vn/uploads/hoá-đơn-1024.pdf".into(),
            content_type: Some("application/pdf".into()),
            name: Some("hoá đơn #1024.pdf".into()),
            size: Some(48_213),
        },
        Attachment {
            url: "https://cdn.example.vn/uploads/anh.jpg".into(),
            content_type: None,
            name: None,
            size: None,
        },
    ]
}

/// Serializes an event and checks it deserializes back to itself. A minimal event leaves out
/// the optional `dataschema` the constructors set.
fn wire<T>(mut event: CloudEvent<T>, full: bool) -> Value
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    assert_eq!(
        event.dataschema.as_deref(),
        Some(event.event_type.dataschema()),
        "the constructors name the data schema"
    );
    if !full {
        event.dataschema = None;
    }
    let value = serde_json::to_value(&event).unwrap();
    let back: CloudEvent<T> = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, event, "event does not survive a JSON round trip");
    value
}

pub fn message_received(event_type: EventType, full: bool) -> Value {
    let tenant = acme();
    let direction = match event_type {
        EventType::MessageEchoed => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let (channel, contact, message) = if full {
        let channel = ChannelRef::new(ChannelKind::Email, "support@shop.example.vn");
        let contact = full_contact("minhkhai@example.vn");
        let message = Message {
            id: "<CAF=x1@mail.example.vn>".into(),
            direction,
            text: "Xin chào, tôi cần hỗ trợ đơn hàng #1024. Cảm ơn!".into(),
            subject: Some("Hỗ trợ đơn hàng #1024".into()),
            attachments: full_attachments(),
            reply_to: Some("<CAF=x0@mail.example.vn>".into()),
            payload: Some("XEM_DON_HANG_1024".into()),
            sent_at: Some(at("2025-03-14T09:26:52+07:00")),
        };
        (channel, contact, message)
    } else {
        let channel = ChannelRef::new(ChannelKind::Api, "default");
        let contact = minimal_contact("client-42");
        let message = Message {
            id: "m-1".into(),
            direction,
            text: String::new(),
            subject: None,
            attachments: vec![],
            reply_to: None,
            payload: None,
            sent_at: None,
        };
        (channel, contact, message)
    };
    let thread = full.then_some("<CAF=x0@mail.example.vn>");
    let conversation = ConversationId::derive(&tenant, &channel, &contact.id, thread);
    let id = EventId::from_provider(&tenant, &channel, "message", &message.id);
    let now = at("2025-03-14T02:26:53.589793238Z");
    let data = MessageReceived {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        contact,
        message,
        received_at: now,
        authentication: full.then(|| SenderAuthentication {
            authserv_id: "mx.google.com".into(),
            spf: Some(AuthResult::Pass),
            dkim: Some(AuthResult::Pass),
            dmarc: Some(AuthResult::Fail),
        }),
        flags: if full {
            vec![MessageFlag::ThreadRefused, MessageFlag::MessageIdReused]
        } else {
            Vec::new()
        },
    };
    wire(
        CloudEvent::new(id, event_type, tenant, &channel, conversation, now, data),
        full,
    )
}

pub fn channel_signal(full: bool) -> Value {
    let tenant = acme();
    let channel = ChannelRef::new(ChannelKind::Zalo, "1234567890123456789");
    let contact = if full {
        full_contact("8812345678901234567")
    } else {
        minimal_contact("8812345678901234567")
    };
    let conversation = ConversationId::derive(&tenant, &channel, &contact.id, None);
    let now = at("2025-03-14T09:33:00.120Z");
    let data = ChannelSignal {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        contact,
        signal: if full {
            SignalKind::Read
        } else {
            SignalKind::Follow
        },
        message_ids: if full {
            vec!["msg-9a8b7c".into(), "msg-9a8b7d".into()]
        } else {
            vec![]
        },
        watermark: full.then(|| at("2025-03-14T09:32:58Z")),
        payload: full.then(|| "XEM_DON_HANG_1024".into()),
        occurred_at: at("2025-03-14T09:32:59Z"),
    };
    let id = EventId::from_provider(&tenant, &channel, "signal", "msg-9a8b7c");
    wire(
        CloudEvent::new(
            id,
            EventType::ChannelSignal,
            tenant,
            &channel,
            conversation,
            now,
            data,
        ),
        full,
    )
}

pub fn outbound_message(full: bool) -> Value {
    let tenant = acme();
    let channel = ChannelRef::new(ChannelKind::Messenger, "104857600123456");
    let recipient = "6543210987654321";
    let conversation = ConversationId::derive(&tenant, &channel, recipient, None);
    let data = OutboundMessage {
        tenant: tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        recipient: recipient.into(),
        agent_id: full.then(|| "agent-17".into()),
        text: "Chào chị, đơn hàng #1024 đang được giao, dự kiến đến trong hôm nay ạ.".into(),
        subject: full.then(|| "Re: Hỗ trợ đơn hàng #1024".into()),
        attachments: if full { full_attachments() } else { vec![] },
        reply_to: full.then(|| "m_AbCdEf".into()),
        csat_survey: full,
        template: full.then(|| Template {
            name: "231187".into(),
            language: Some("vi".into()),
            params: [("order_code", "1024"), ("customer_name", "Nguyễn Thị Lan")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            phone: Some("+84912345678".into()),
        }),
    };
    wire(
        CloudEvent::new(
            EventId::new_random(),
            EventType::MessageSend,
            tenant,
            &channel,
            conversation,
            Utc::now(),
            data,
        ),
        full,
    )
}

pub fn delivery_update(full: bool) -> Value {
    let tenant = acme();
    let channel = ChannelRef::new(ChannelKind::Sms, "+842873001234");
    let conversation = ConversationId::derive(&tenant, &channel, "+84901234567", None);
    let outbound = EventId::new_random();
    let data = DeliveryUpdate {
        tenant: tenant.clone(),
        conversation_id: conversation,
        outbound_event_id: outbound,
        channel: channel.clone(),
        status: if full {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Sent
        },
        provider_message_id: full.then(|| "SM0123456789abcdef".into()),
        reason: full.then(|| "user_unavailable".into()),
        detail: full.then(|| "Thuê bao tạm thời không liên lạc được".into()),
        segments: full.then_some(3),
        occurred_at: at("2025-03-14T09:39:59.8Z"),
    };
    let id = EventId::from_provider(&tenant, &channel, "delivery", &outbound.to_string());
    wire(
        CloudEvent::new(
            id,
            EventType::DeliveryUpdated,
            tenant,
            &channel,
            conversation,
            at("2025-03-14T09:40:00Z"),
            data,
        ),
        full,
    )
}

/// A serialized event of a channel type: minimal (every optional field absent) or fully
/// populated. The match has no wildcard, so a new event type does not compile until it is
/// placed here or in the router's fixtures.
pub fn event(event_type: EventType, full: bool) -> Value {
    match event_type {
        EventType::MessageReceived | EventType::MessageEchoed => message_received(event_type, full),
        EventType::ChannelSignal => channel_signal(full),
        EventType::MessageSend => outbound_message(full),
        EventType::DeliveryUpdated => delivery_update(full),
        EventType::Command
        | EventType::RouterTick
        | EventType::RoutingQueued
        | EventType::RoutingAfterHours
        | EventType::RoutingOffered
        | EventType::RoutingOfferDeclined
        | EventType::RoutingAssigned
        | EventType::RoutingRequeued
        | EventType::RoutingEscalated
        | EventType::RoutingSlaBreached
        | EventType::RoutingResolved
        | EventType::RoutingExpired
        | EventType::RoutingReopened
        | EventType::RoutingRejected
        | EventType::RoutingAbandoned
        | EventType::RoutingSlaAtRisk
        | EventType::RoutingAgentAway
        | EventType::RoutingAgentDay
        | EventType::RoutingCsatSurvey
        | EventType::RoutingCsatAnswered => {
            panic!("{event_type} is the router's: its fixtures are in omni-router's contract test")
        }
    }
}

/// Whether omni-core's types accept `value` as a channel event of `event_type`.
pub fn serde_accepts(event_type: EventType, value: &Value) -> bool {
    fn parses<T: DeserializeOwned>(value: &Value) -> bool {
        serde_json::from_value::<CloudEvent<T>>(value.clone()).is_ok()
    }
    let right_type = value["type"] == event_type.as_str();
    right_type
        && match event_type {
            EventType::MessageReceived | EventType::MessageEchoed => {
                parses::<MessageReceived>(value)
            }
            EventType::ChannelSignal => parses::<ChannelSignal>(value),
            EventType::MessageSend => parses::<OutboundMessage>(value),
            EventType::DeliveryUpdated => parses::<DeliveryUpdate>(value),
            _ => panic!("{event_type} is the router's"),
        }
}

/// The channel types' fixtures.
pub struct Channel;

impl Fixtures for Channel {
    fn events(&self, event_type: EventType, full: bool) -> Vec<Value> {
        vec![event(event_type, full)]
    }

    fn reader_accepts(&self, event_type: EventType, value: &Value) -> bool {
        serde_accepts(event_type, value)
    }
}
