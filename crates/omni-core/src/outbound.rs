//! Replies going out and what became of them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::ids::{ConversationId, EventId, TenantId};
use crate::message::{Attachment, ChannelRef};

/// `data` of `omni.message.send` on the outbound topic: a reply an agent or CRM wants delivered
/// on the customer's channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// The routing domain.
    pub tenant: TenantId,
    /// The conversation being answered.
    pub conversation_id: ConversationId,
    /// The channel to answer on (normally the one the customer used).
    pub channel: ChannelRef,
    /// The channel's handle for the recipient (see `Contact::id`).
    pub recipient: String,
    /// The agent who wrote it, if a human did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Text to send.
    pub text: String,
    /// Subject, for e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Files and media to send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The provider id of the customer message this answers (threading, quotes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// This is the router's CSAT survey question, not an agent's reply: channels offer the
    /// answers their way (stars in the live chat widget, quick replies on Messenger), and the
    /// router does not count it as a response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub csat_survey: bool,
    /// A message template the provider approved, sent instead of `text` and attachments: the
    /// only way to reach a customer outside the channel's reply window (Zalo ZNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
}

/// A provider-approved message template and the values of its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// The template's id or name at the provider (a ZNS `template_id`).
    pub name: String,
    /// The template's language, where the provider keeps one per language (`vi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Parameter values by the template's parameter names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The customer's phone number, for channels that address templates by phone rather than
    /// by the conversation's `recipient` (Zalo ZNS): `+84…`, `84…` or `0…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// The fate of an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The provider accepted it.
    Sent,
    /// It could not be sent; `reason` says why.
    Failed,
    /// The provider reports it reached the customer.
    Delivered,
    /// The customer read it.
    Read,
}

/// `data` of `omni.delivery.updated` on the delivery topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryUpdate {
    /// The routing domain.
    pub tenant: TenantId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The outbound event this reports on.
    pub outbound_event_id: EventId,
    /// The channel it went out on.
    pub channel: ChannelRef,
    /// What happened.
    pub status: DeliveryStatus,
    /// The provider's id for the sent message, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    /// A bounded reason code for failures (`outside_window`, `user_unavailable`, `bad_token`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail from the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// SMS segments used, when the channel counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// When this status was reached.
    pub occurred_at: DateTime<Utc>,
}
