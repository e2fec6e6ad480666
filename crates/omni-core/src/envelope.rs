//! The CloudEvents 1.0 envelope (structured JSON mode) around every Kafka value.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::ids::{ConversationId, EventId, TenantId};
use crate::message::ChannelRef;

/// The event types omnirouter emits, namespaced `omni.*`. Consumers switch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A customer message (`data`: [`crate::MessageReceived`]).
    #[serde(rename = "omni.message.received")]
    MessageReceived,
    /// A message the business sent outside omnirouter, echoed by the channel
    /// (`data`: [`crate::MessageReceived`] with direction `outbound`).
    #[serde(rename = "omni.message.echoed")]
    MessageEchoed,
    /// Delivery/read watermarks, follows and the like (`data`: [`crate::ChannelSignal`]).
    #[serde(rename = "omni.channel.signal")]
    ChannelSignal,
    /// A reply to send (`data`: [`crate::OutboundMessage`]).
    #[serde(rename = "omni.message.send")]
    MessageSend,
    /// What became of a reply (`data`: [`crate::DeliveryUpdate`]).
    #[serde(rename = "omni.delivery.updated")]
    DeliveryUpdated,
}

impl EventType {
    /// Every event type, for docs and contract tests.
    pub const ALL: [EventType; 5] = [
        EventType::MessageReceived,
        EventType::MessageEchoed,
        EventType::ChannelSignal,
        EventType::MessageSend,
        EventType::DeliveryUpdated,
    ];

    /// The CloudEvents `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MessageReceived => "omni.message.received",
            EventType::MessageEchoed => "omni.message.echoed",
            EventType::ChannelSignal => "omni.channel.signal",
            EventType::MessageSend => "omni.message.send",
            EventType::DeliveryUpdated => "omni.delivery.updated",
        }
    }

    /// The JSON Schema file (in `schemas/`) that describes this type's `data`.
    pub fn schema_file(self) -> &'static str {
        match self {
            EventType::MessageReceived | EventType::MessageEchoed => "message-received.schema.json",
            EventType::ChannelSignal => "channel-signal.schema.json",
            EventType::MessageSend => "outbound-message.schema.json",
            EventType::DeliveryUpdated => "delivery-update.schema.json",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The only CloudEvents version we speak; a value of another version fails to deserialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecVersion;

impl Serialize for SpecVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("1.0")
    }
}

impl<'de> Deserialize<'de> for SpecVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if v == "1.0" {
            Ok(SpecVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported CloudEvents specversion {v:?}, expected \"1.0\""
            )))
        }
    }
}

/// A CloudEvent in structured JSON mode, the value of every Kafka record omnirouter writes.
/// The Kafka key is the tenant; `subject` is the conversation id; `tenant` is an extension
/// attribute so consumers can filter without parsing `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEvent<T> {
    /// Always `1.0`.
    pub specversion: SpecVersion,
    /// Unique per event; deterministic for provider messages (see [`EventId`]).
    pub id: EventId,
    /// `/omnirouter/{tenant}/{channel kind}/{account}`.
    pub source: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event was produced.
    pub time: DateTime<Utc>,
    /// The conversation id.
    pub subject: ConversationId,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// Extension attribute: the routing domain.
    pub tenant: TenantId,
    /// The payload, described by the type's JSON Schema.
    pub data: T,
}

impl<T> CloudEvent<T> {
    /// Wraps `data` in an envelope for a channel event.
    pub fn new(
        id: EventId,
        event_type: EventType,
        tenant: TenantId,
        channel: &ChannelRef,
        conversation: ConversationId,
        time: DateTime<Utc>,
        data: T,
    ) -> Self {
        Self {
            specversion: SpecVersion,
            id,
            source: source_for(&tenant, channel),
            event_type,
            time,
            subject: conversation,
            datacontenttype: "application/json".into(),
            tenant,
            data,
        }
    }
}

/// The CloudEvents `source` of events from a channel account.
pub fn source_for(tenant: &TenantId, channel: &ChannelRef) -> String {
    format!(
        "/omnirouter/{}/{}/{}",
        tenant,
        channel.kind.as_str(),
        channel.account
    )
}
