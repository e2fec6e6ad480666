//! Channels, contacts and messages: the normalized shape every channel adapter produces.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ids::{ConversationId, TenantId};

/// The kind of channel a message came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// The generic HTTP API channel (`POST /v1/inbound/{tenant}`).
    Api,
    /// E-mail over IMAP/SMTP.
    Email,
    /// SMS through a provider (Twilio, Vonage, a gateway).
    Sms,
    /// Facebook Messenger.
    Messenger,
    /// Zalo Official Account.
    Zalo,
    /// Website live chat.
    Livechat,
    /// Instagram Direct, through the same Meta app and webhook as Messenger.
    Instagram,
    /// WhatsApp Business through Meta's Cloud API.
    Whatsapp,
}

impl ChannelKind {
    /// Every kind, for metrics pre-registration and docs.
    pub const ALL: [ChannelKind; 8] = [
        ChannelKind::Api,
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Messenger,
        ChannelKind::Zalo,
        ChannelKind::Livechat,
        ChannelKind::Instagram,
        ChannelKind::Whatsapp,
    ];

    /// The wire name (also the metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Api => "api",
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Messenger => "messenger",
            ChannelKind::Zalo => "zalo",
            ChannelKind::Livechat => "livechat",
            ChannelKind::Instagram => "instagram",
            ChannelKind::Whatsapp => "whatsapp",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One channel endpoint of a tenant: a kind and the account within it (a page id, an OA id, a
/// phone number, a mailbox, a widget id). A tenant may have several accounts of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelRef {
    /// The kind of channel.
    pub kind: ChannelKind,
    /// The account within that kind, as the provider names it.
    pub account: String,
}

impl ChannelRef {
    /// A channel reference.
    pub fn new(kind: ChannelKind, account: impl Into<String>) -> Self {
        Self {
            kind,
            account: account.into(),
        }
    }
}

/// The customer, as far as the channel tells us.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Contact {
    /// The channel's handle for the customer (PSID, Zalo user id, E.164 number, e-mail address,
    /// visitor id, or the caller's own id on the API channel). Stable per channel account.
    pub id: String,
    /// A display name, if the channel gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Phone number in E.164, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// E-mail address, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Preferred language as a BCP 47 tag (`vi`, `en`), used by routing rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Tags from the CRM or the site (`vip`, `b2b`), used by routing rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Contact {
    /// A contact known only by its channel handle, as most channels deliver it.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the customer to the business.
    Inbound,
    /// From the business (an agent, possibly replying outside omnirouter) to the customer.
    Outbound,
}

/// A file or media item attached to a message. Content stays with the provider or the
/// operator's store; Kafka carries only where to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the content can be fetched.
    pub url: String,
    /// MIME type, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// File name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size in bytes, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A message as the channel delivered it, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The provider's (or client's) id for this message: the dedupe key.
    pub id: String,
    /// Who wrote it.
    pub direction: Direction,
    /// Plain text (may be empty when the message is only attachments).
    pub text: String,
    /// Subject line, for channels that have one (e-mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Attached files and media.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The provider id of the message this one replies to or quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The payload of the button or quick reply the customer chose (Messenger postbacks and
    /// quick replies, Zalo buttons), for bots and CRMs to act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// When the provider says it was sent, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
}

/// `data` of `omni.message.received` (customer messages) and `omni.message.echoed` (messages
/// the business sent from the provider's own tools, recorded so the conversation is complete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReceived {
    /// The routing domain.
    pub tenant: TenantId,
    /// The conversation this message belongs to.
    pub conversation_id: ConversationId,
    /// Where it came from.
    pub channel: ChannelRef,
    /// Who the customer is.
    pub contact: Contact,
    /// The message itself.
    pub message: Message,
    /// When omnirouter received it.
    pub received_at: DateTime<Utc>,
    /// E-mail: what the receiving mail server the operator trusts found about the sender
    /// (SPF, DKIM, DMARC), so agents can tell a spoofed mail; absent when nothing is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<SenderAuthentication>,
    /// Why the message was treated with suspicion; empty for almost every message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<MessageFlag>,
}

/// The sender checks of one mail, from the `Authentication-Results` header (RFC 8601) that a
/// receiving server the operator trusts added; headers of other servers are ignored, since a
/// sender can write any header it likes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderAuthentication {
    /// The trusted server that checked (the header's authserv-id).
    pub authserv_id: String,
    /// SPF of the envelope sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<AuthResult>,
    /// DKIM: `pass` when any signature passed, else the first result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<AuthResult>,
    /// DMARC of the `From` domain: the one that says whether `From` can be believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<AuthResult>,
}

/// A method's result, as RFC 8601 §2.7 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthResult {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// SPF: probably not authorized.
    Softfail,
    /// No assertion either way.
    Neutral,
    /// Nothing to check (no record, no signature).
    None,
    /// Could not be checked now (DNS timeout, …).
    Temperror,
    /// Could not be checked: the published record is broken.
    Permerror,
    /// DKIM: a valid signature the verifier's policy did not accept.
    Policy,
}

/// Why a message was treated with suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageFlag {
    /// The mail named an existing thread (`References`, `In-Reply-To`) but failed DMARC: it
    /// was given a conversation of its own, so a forged `From` cannot slip into a customer's
    /// conversation.
    ThreadRefused,
    /// Its Message-ID was already used by a mail of another sender: it was published under an
    /// id of its own instead of being taken for a repeat and dropped.
    MessageIdReused,
}

/// What a channel signal reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Messages up to the watermark (or the listed ones) reached the customer's device.
    Delivered,
    /// The customer read messages up to the watermark.
    Read,
    /// The customer followed / subscribed to the account.
    Follow,
    /// The customer unfollowed / unsubscribed.
    Unfollow,
    /// The customer pressed a button or quick reply with no text message.
    Action,
    /// Someone started typing: the visitor (live chat, on the inbound topic) or an agent (on
    /// the outbound topic, for live chat to show the visitor). Ephemeral: nothing to store.
    TypingOn,
    /// Someone stopped typing (or sent their message).
    TypingOff,
}

/// `data` of `omni.channel.signal`: something a channel tells us that is not a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSignal {
    /// The routing domain.
    pub tenant: TenantId,
    /// The conversation it concerns.
    pub conversation_id: ConversationId,
    /// Where it came from.
    pub channel: ChannelRef,
    /// The customer it concerns.
    pub contact: Contact,
    /// What happened.
    pub signal: SignalKind,
    /// Provider message ids the signal covers, when listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_ids: Vec<String>,
    /// Everything sent up to this time is covered (delivery/read watermarks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<DateTime<Utc>>,
    /// A payload attached to the signal (a button's payload), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// When it happened, per the provider.
    pub occurred_at: DateTime<Utc>,
}
