//! The Messenger webhook adapter.

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_channel::{Accepted, IngressError, Parsed, PreparedEvent, WebhookAdapter};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ChannelSignal, Contact, ConversationId, Direction,
    EventType, Message, SignalKind, TenantId,
};
use serde::Deserialize;
use std::collections::HashMap;

use super::product::{by_object, MetaProduct};
use super::{MessengerTenant, ECHO_MARKER};
use crate::meta::{MetaApp, MetaWebhook};
use crate::wire::{time_from_millis, IdText};

/// The Meta messaging webhook adapter (Messenger pages and Instagram accounts of one app):
/// the configured tenants and their apps.
pub struct MessengerChannel {
    tenants: HashMap<String, (TenantId, MessengerTenant)>,
}

impl MessengerChannel {
    /// An adapter serving these tenants.
    pub fn new(tenants: impl IntoIterator<Item = (TenantId, MessengerTenant)>) -> Self {
        Self {
            tenants: tenants
                .into_iter()
                .map(|(t, m)| (t.as_str().to_owned(), (t, m)))
                .collect(),
        }
    }
}

impl MetaWebhook for MessengerChannel {
    fn app(&self, tenant: &str) -> Option<MetaApp<'_>> {
        self.account(tenant).map(|(_, account)| meta_app(account))
    }
}

/// The tenant's app credentials.
fn meta_app(account: &MessengerTenant) -> MetaApp<'_> {
    MetaApp {
        app_secret: &account.app_secret,
        verify_token: &account.verify_token,
        accept_sha1: account.accept_sha1,
    }
}

#[derive(Deserialize)]
struct Webhook {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    /// The page (or Instagram account) the entry is for.
    #[serde(default)]
    id: Option<IdText>,
    #[serde(default)]
    messaging: Vec<serde_json::Value>,
    /// Items for a page whose conversation another app (a bot) controls under the handover
    /// protocol: still customer messages, so they are handled like `messaging`.
    #[serde(default)]
    standby: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Item {
    sender: Party,
    recipient: Party,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    message: Option<ItemMessage>,
    #[serde(default)]
    postback: Option<Postback>,
    #[serde(default)]
    delivery: Option<Watermark>,
    #[serde(default)]
    read: Option<Watermark>,
}

#[derive(Deserialize)]
struct Party {
    id: IdText,
}

#[derive(Deserialize)]
struct ItemMessage {
    mid: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    is_echo: bool,
    /// Instagram: the customer unsent the message.
    #[serde(default)]
    is_deleted: bool,
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    attachments: Vec<ItemAttachment>,
    #[serde(default)]
    quick_reply: Option<QuickReply>,
    #[serde(default)]
    reply_to: Option<ReplyTo>,
}

#[derive(Deserialize)]
struct ItemAttachment {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    payload: Option<AttachmentPayload>,
}

#[derive(Deserialize)]
struct AttachmentPayload {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    coordinates: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Coordinates {
    lat: f64,
    long: f64,
}

#[derive(Deserialize)]
struct QuickReply {
    payload: String,
}

#[derive(Deserialize)]
struct ReplyTo {
    #[serde(default)]
    mid: Option<String>,
    /// Instagram: the story the customer answered.
    #[serde(default)]
    story: Option<Story>,
}

#[derive(Deserialize)]
struct Story {
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct Postback {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Deserialize)]
struct Watermark {
    /// Messenger: every message up to this time.
    #[serde(default)]
    watermark: Option<i64>,
    #[serde(default)]
    mids: Vec<String>,
    /// Instagram's `read`: the message read.
    #[serde(default)]
    mid: Option<String>,
}

/// The messaging item kinds we knowingly do not publish, as bounded metric labels.
const IGNORED_KINDS: &[&str] = &[
    "reaction",
    "optin",
    "referral",
    "account_linking",
    "policy_enforcement",
    "game_play",
    "pass_thread_control",
    "take_thread_control",
    "request_thread_control",
    "app_roles",
    "message_edit",
    "feed",
];

/// A bounded label naming an item we do not publish.
fn ignored_kind(item: &serde_json::Value) -> &'static str {
    item.as_object()
        .and_then(|o| IGNORED_KINDS.iter().find(|k| o.contains_key(**k)).copied())
        .unwrap_or("unknown")
}

impl WebhookAdapter for MessengerChannel {
    type Account = MessengerTenant;
    const CHANNEL: ChannelKind = ChannelKind::Messenger;

    fn account(&self, tenant: &str) -> Option<(&TenantId, &MessengerTenant)> {
        self.tenants.get(tenant).map(|(t, m)| (t, m))
    }

    fn verify(
        &self,
        account: &MessengerTenant,
        request: &Parts,
        body: &[u8],
    ) -> Result<(), IngressError> {
        meta_app(account).verify(request, body)
    }

    fn parse(
        &self,
        tenant: &TenantId,
        account: &MessengerTenant,
        _request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let webhook: Webhook = serde_json::from_slice(body)
            .map_err(|e| IngressError::Malformed(format!("not a Meta webhook: {e}")))?;
        let Some(product) = by_object(&webhook.object) else {
            // WhatsApp, user or permission changes… subscribed on this app: answered 200 so
            // Meta neither retries them nor disables the subscription.
            tracing::debug!(tenant = %tenant, object = %webhook.object,
                "webhook object not handled, ignored");
            return Ok(Parsed {
                ignored: vec!["unhandled_object"],
                ..Parsed::default()
            });
        };
        let mut parsed = Parsed {
            channel: Some(product.kind),
            ..Parsed::default()
        };
        for entry in webhook.entry {
            entry_events(tenant, product, account, entry, now, &mut parsed)?;
        }
        Ok(parsed)
    }

    fn respond(&self, _accepted: Accepted) -> Response {
        (StatusCode::OK, "EVENT_RECEIVED").into_response()
    }
}

/// The events of one entry's items. An item for an account the tenant does not have (its
/// page or Instagram account, or the entry's `id`) is refused and counted, not published: two
/// tenants sharing one Meta app sign with the same secret, so the signature alone does not
/// say whose item it is.
fn entry_events(
    tenant: &TenantId,
    product: &MetaProduct,
    account: &MessengerTenant,
    entry: Entry,
    now: DateTime<Utc>,
    parsed: &mut Parsed,
) -> Result<(), IngressError> {
    let accounts = (product.accounts)(account);
    let entry_id = entry.id.map(|id| id.0);
    for raw in entry.messaging.into_iter().chain(entry.standby) {
        let item = match serde_json::from_value::<Item>(raw.clone()) {
            Ok(item) => item,
            Err(e) => {
                tracing::warn!(channel = %product.kind, tenant = %tenant, error = %e,
                    "messaging item without sender/recipient, ignored");
                parsed.ignored.push("malformed_item");
                continue;
            }
        };
        let unknown = [entry_id.as_deref(), Some(item.account())]
            .into_iter()
            .flatten()
            .find(|a| !accounts.contains_key(*a));
        if let Some(other) = unknown {
            tracing::warn!(channel = %product.kind, tenant = %tenant, account = %other,
                "signed item for an account this tenant does not have, refused");
            parsed.refused.push("unknown_account");
            continue;
        }
        let ctx = ItemContext {
            tenant,
            kind: product.kind,
            sent_at: item.timestamp.and_then(time_from_millis),
            now,
        };
        item_events(&ctx, item, &raw, parsed)?;
    }
    Ok(())
}

impl Item {
    /// The business's account the item belongs to: the sender of an echo, else the recipient.
    fn account(&self) -> &str {
        match &self.message {
            Some(m) if m.is_echo => &self.sender.id.0,
            _ => &self.recipient.id.0,
        }
    }
}

/// What every event of one item shares.
struct ItemContext<'a> {
    tenant: &'a TenantId,
    kind: ChannelKind,
    sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl ItemContext<'_> {
    fn message(
        &self,
        account: String,
        customer: &str,
        event_type: EventType,
        message: Message,
    ) -> Result<PreparedEvent, IngressError> {
        PreparedEvent::message(
            self.tenant,
            ChannelRef::new(self.kind, account),
            Contact::new(customer),
            event_type,
            message,
            self.now,
        )
    }
}

/// The events of one messaging item.
fn item_events(
    ctx: &ItemContext<'_>,
    item: Item,
    raw: &serde_json::Value,
    parsed: &mut Parsed,
) -> Result<(), IngressError> {
    let (recipient, sender) = (item.recipient.id.0, item.sender.id.0);
    if let Some(message) = item.message {
        if message.is_echo {
            if message
                .metadata
                .as_deref()
                .is_some_and(|m| m.starts_with(ECHO_MARKER))
            {
                parsed.ignored.push("own_echo");
                return Ok(());
            }
            // An echo is sent by the business's account to the customer.
            let body = message_body(message, Direction::Outbound, ctx.sent_at);
            let event = ctx.message(sender, &recipient, EventType::MessageEchoed, body)?;
            parsed.events.push(event);
        } else if message.is_deleted {
            // The customer unsent a message (Instagram): nothing to route.
            parsed.ignored.push("message_deleted");
        } else {
            let body = message_body(message, Direction::Inbound, ctx.sent_at);
            let event = ctx.message(recipient, &sender, EventType::MessageReceived, body)?;
            parsed.events.push(event);
        }
    } else if let Some(postback) = item.postback {
        let message = postback_message(postback, &sender, item.timestamp, ctx.sent_at);
        let event = ctx.message(recipient, &sender, EventType::MessageReceived, message)?;
        parsed.events.push(event);
    } else if let Some((signal, mark)) = item
        .delivery
        .map(|d| (SignalKind::Delivered, d))
        .or_else(|| item.read.map(|r| (SignalKind::Read, r)))
    {
        let channel = ChannelRef::new(ctx.kind, recipient);
        let event = signal_event(ctx, channel, &sender, signal, mark)?;
        parsed.events.push(event);
    } else {
        parsed.ignored.push(ignored_kind(raw));
    }
    Ok(())
}

/// A button press as the customer's message: the button's title as text, its payload kept.
fn postback_message(
    postback: Postback,
    customer: &str,
    timestamp: Option<i64>,
    sent_at: Option<DateTime<Utc>>,
) -> Message {
    let id = postback.mid.unwrap_or_else(|| {
        format!(
            "postback:{customer}:{}:{}",
            timestamp.unwrap_or_default(),
            postback.payload.as_deref().unwrap_or_default()
        )
    });
    Message {
        id,
        direction: Direction::Inbound,
        text: postback.title.unwrap_or_default(),
        subject: None,
        attachments: Vec::new(),
        reply_to: None,
        payload: postback.payload,
        sent_at,
    }
}

/// The normalized message of a Messenger or Instagram `message` object. Instagram's story
/// mentions, shared posts and reels are attachments named by their kind (`story_mention`,
/// `share`, `ig_reel`) with the content's URL; a reply to a story adds the story as an
/// attachment named `story_reply` (its id is not a message id, so `reply_to` stays empty).
fn message_body(
    message: ItemMessage,
    direction: Direction,
    sent_at: Option<DateTime<Utc>>,
) -> Message {
    let mut attachments: Vec<Attachment> = message
        .attachments
        .into_iter()
        .filter_map(attachment)
        .collect();
    let (reply_to, story) = match message.reply_to {
        Some(r) => (r.mid, r.story),
        None => (None, None),
    };
    if let Some(url) = story.and_then(|s| s.url) {
        attachments.push(Attachment {
            url,
            content_type: None,
            name: Some("story_reply".into()),
            size: None,
        });
    }
    Message {
        id: message.mid,
        direction,
        text: message.text.unwrap_or_default(),
        subject: None,
        attachments,
        reply_to,
        payload: message.quick_reply.map(|q| q.payload),
        sent_at,
    }
}

/// One webhook attachment as a normalized one, if it has something to point at.
fn attachment(a: ItemAttachment) -> Option<Attachment> {
    let payload = a.payload?;
    let url = match (payload.url, payload.coordinates) {
        (Some(url), _) => url,
        // A shared location has no URL: RFC 5870 `geo:` carries it.
        (None, Some(c)) => format!("geo:{},{}", c.lat, c.long),
        (None, None) => return None,
    };
    let named_kind = matches!(a.kind.as_str(), "story_mention" | "share" | "ig_reel");
    Some(Attachment {
        url,
        content_type: content_type_family(&a.kind),
        name: payload.title.or_else(|| named_kind.then(|| a.kind.clone())),
        size: None,
    })
}

/// Messenger's attachment `type` as a MIME family (the exact type is not in the webhook).
fn content_type_family(kind: &str) -> Option<String> {
    match kind {
        "image" => Some("image/*".into()),
        "video" | "ig_reel" => Some("video/*".into()),
        "audio" => Some("audio/*".into()),
        "file" => Some("application/octet-stream".into()),
        _ => None,
    }
}

/// A delivery or read receipt. Messenger's carry a watermark (every message up to it);
/// Instagram's `read` names the one message read (`mid`).
fn signal_event(
    ctx: &ItemContext<'_>,
    channel: ChannelRef,
    customer: &str,
    signal: SignalKind,
    mark: Watermark,
) -> Result<PreparedEvent, IngressError> {
    let kind = match signal {
        SignalKind::Read => "read",
        _ => "delivery",
    };
    let mark_id = match (mark.watermark, &mark.mid) {
        (Some(w), _) => w.to_string(),
        (None, Some(mid)) => mid.clone(),
        (None, None) => return Err(IngressError::MissingField(format!("{kind}.watermark"))),
    };
    let message_ids = mark.mids.into_iter().chain(mark.mid).collect();
    let data = ChannelSignal {
        tenant: ctx.tenant.clone(),
        conversation_id: ConversationId::derive(ctx.tenant, &channel, customer, None),
        channel,
        contact: Contact::new(customer),
        signal,
        message_ids,
        watermark: mark.watermark.and_then(time_from_millis),
        payload: None,
        occurred_at: ctx.sent_at.unwrap_or(ctx.now),
    };
    PreparedEvent::signal(&format!("{kind}:{customer}:{mark_id}"), data, ctx.now)
}
