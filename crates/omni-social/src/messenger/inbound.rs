//! The Messenger webhook adapter.

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_channel::signature::{secrets_match, verify_hmac_sha1_hex, verify_hmac_sha256_hex};
use omni_channel::{Accepted, IngressError, Parsed, PreparedEvent, WebhookAdapter};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ChannelSignal, Contact, ConversationId, Direction,
    EventType, Message, SignalKind, TenantId,
};
use serde::Deserialize;
use std::collections::HashMap;

use super::{MessengerTenant, PageSettings, ECHO_MARKER};
use crate::wire::{time_from_millis, IdText};

/// The Messenger webhook adapter: the configured tenants and their apps.
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

    /// Meta's subscription handshake (`GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`):
    /// the challenge to echo when the mode and token are right.
    pub fn handshake(
        &self,
        tenant: &str,
        query: &HashMap<String, String>,
    ) -> Result<String, IngressError> {
        let (_, account) = self.account(tenant).ok_or(IngressError::UnknownTenant)?;
        if query.get("hub.mode").map(String::as_str) != Some("subscribe") {
            return Err(IngressError::VerificationFailed(
                "hub.mode must be subscribe",
            ));
        }
        let token = query.get("hub.verify_token").map_or("", String::as_str);
        if !secrets_match(token.as_bytes(), account.verify_token.expose().as_bytes()) {
            return Err(IngressError::VerificationFailed(
                "hub.verify_token does not match",
            ));
        }
        query
            .get("hub.challenge")
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .cloned()
            .ok_or(IngressError::MissingField("hub.challenge".into()))
    }
}

/// Meta's signature headers.
const SIGNATURE_256: &str = "x-hub-signature-256";
const SIGNATURE_SHA1: &str = "x-hub-signature";

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
    mid: String,
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
    watermark: i64,
    #[serde(default)]
    mids: Vec<String>,
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
        let headers = &request.headers;
        let key = account.app_secret.expose().as_bytes();
        if let Some(sig) = headers.get(SIGNATURE_256) {
            let hex = sig
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("sha256="))
                .ok_or(IngressError::BadCredentials(
                    "X-Hub-Signature-256 must be sha256=<hex>",
                ))?;
            return if verify_hmac_sha256_hex(key, body, hex) {
                Ok(())
            } else {
                Err(IngressError::BadCredentials(
                    "X-Hub-Signature-256 does not match the body",
                ))
            };
        }
        match headers.get(SIGNATURE_SHA1) {
            Some(sig) if account.accept_sha1 => {
                let hex = sig
                    .to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("sha1="))
                    .ok_or(IngressError::BadCredentials(
                        "X-Hub-Signature must be sha1=<hex>",
                    ))?;
                if verify_hmac_sha1_hex(key, body, hex) {
                    Ok(())
                } else {
                    Err(IngressError::BadCredentials(
                        "X-Hub-Signature does not match the body",
                    ))
                }
            }
            Some(_) => Err(IngressError::BadCredentials(
                "only X-Hub-Signature-256 is accepted for this tenant",
            )),
            None => Err(IngressError::MissingCredentials(
                "X-Hub-Signature-256 header is required",
            )),
        }
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
            .map_err(|e| IngressError::Malformed(format!("not a Messenger webhook: {e}")))?;
        if webhook.object != "page" {
            return Err(IngressError::InvalidField {
                field: "object".into(),
                reason: format!("expected \"page\", got {:?}", webhook.object),
            });
        }
        let object = MetaObject {
            kind: ChannelKind::Messenger,
            accounts: &account.pages,
        };
        let mut parsed = Parsed {
            channel: Some(object.kind),
            ..Parsed::default()
        };
        for entry in webhook.entry {
            entry_events(tenant, &object, entry, now, &mut parsed)?;
        }
        Ok(parsed)
    }

    fn respond(&self, _accepted: Accepted) -> Response {
        (StatusCode::OK, "EVENT_RECEIVED").into_response()
    }
}

/// What one webhook `object` is to this tenant: the channel kind its items become and the
/// accounts (pages) the tenant has there.
struct MetaObject<'a> {
    kind: ChannelKind,
    accounts: &'a HashMap<String, PageSettings>,
}

/// The events of one entry's items. An item for an account the tenant does not have (its
/// page, or the entry's `id`) is refused and counted, not published: two tenants sharing one
/// Meta app sign with the same secret, so the signature alone does not say whose item it is.
fn entry_events(
    tenant: &TenantId,
    object: &MetaObject<'_>,
    entry: Entry,
    now: DateTime<Utc>,
    parsed: &mut Parsed,
) -> Result<(), IngressError> {
    let entry_id = entry.id.map(|id| id.0);
    for raw in entry.messaging.into_iter().chain(entry.standby) {
        let item = match serde_json::from_value::<Item>(raw.clone()) {
            Ok(item) => item,
            Err(e) => {
                tracing::warn!(channel = %object.kind, tenant = %tenant, error = %e,
                    "messaging item without sender/recipient, ignored");
                parsed.ignored.push("malformed_item");
                continue;
            }
        };
        let unknown = [entry_id.as_deref(), Some(item.account())]
            .into_iter()
            .flatten()
            .find(|a| !object.accounts.contains_key(*a));
        if let Some(other) = unknown {
            tracing::warn!(channel = %object.kind, tenant = %tenant, account = %other,
                "signed item for an account this tenant does not have, refused");
            parsed.refused.push("unknown_account");
            continue;
        }
        item_events(tenant, object.kind, item, &raw, now, parsed)?;
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

/// The events of one messaging item.
fn item_events(
    tenant: &TenantId,
    kind: ChannelKind,
    item: Item,
    raw: &serde_json::Value,
    now: DateTime<Utc>,
    parsed: &mut Parsed,
) -> Result<(), IngressError> {
    let sent_at = item.timestamp.and_then(time_from_millis);
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
            // An echo is sent by the page to the customer.
            let page = item.sender.id.0;
            let customer = item.recipient.id.0;
            parsed.events.push(message_event(
                tenant,
                ChannelRef::new(kind, page),
                &customer,
                EventType::MessageEchoed,
                message_body(message, Direction::Outbound, sent_at),
                now,
            )?);
        } else {
            let page = item.recipient.id.0;
            let customer = item.sender.id.0;
            parsed.events.push(message_event(
                tenant,
                ChannelRef::new(kind, page),
                &customer,
                EventType::MessageReceived,
                message_body(message, Direction::Inbound, sent_at),
                now,
            )?);
        }
    } else if let Some(postback) = item.postback {
        let page = item.recipient.id.0;
        let customer = item.sender.id.0;
        let id = postback.mid.unwrap_or_else(|| {
            format!(
                "postback:{customer}:{}:{}",
                item.timestamp.unwrap_or_default(),
                postback.payload.as_deref().unwrap_or_default()
            )
        });
        let message = Message {
            id,
            direction: Direction::Inbound,
            text: postback.title.unwrap_or_default(),
            subject: None,
            attachments: Vec::new(),
            reply_to: None,
            payload: postback.payload,
            sent_at,
        };
        parsed.events.push(message_event(
            tenant,
            ChannelRef::new(kind, page),
            &customer,
            EventType::MessageReceived,
            message,
            now,
        )?);
    } else if let Some((signal, mark)) = item
        .delivery
        .map(|d| (SignalKind::Delivered, d))
        .or_else(|| item.read.map(|r| (SignalKind::Read, r)))
    {
        let page = item.recipient.id.0;
        let customer = item.sender.id.0;
        let channel = ChannelRef::new(kind, page);
        parsed.events.push(signal_event(
            tenant, channel, &customer, signal, mark, sent_at, now,
        )?);
    } else {
        parsed.ignored.push(ignored_kind(raw));
    }
    Ok(())
}

/// The normalized message of a Messenger `message` object.
fn message_body(
    message: ItemMessage,
    direction: Direction,
    sent_at: Option<DateTime<Utc>>,
) -> Message {
    let attachments = message
        .attachments
        .into_iter()
        .filter_map(|a| {
            let payload = a.payload?;
            let url = match (payload.url, payload.coordinates) {
                (Some(url), _) => url,
                // A shared location has no URL: RFC 5870 `geo:` carries it.
                (None, Some(c)) => format!("geo:{},{}", c.lat, c.long),
                (None, None) => return None,
            };
            Some(Attachment {
                url,
                content_type: content_type_family(&a.kind),
                name: payload.title,
                size: None,
            })
        })
        .collect();
    Message {
        id: message.mid,
        direction,
        text: message.text.unwrap_or_default(),
        subject: None,
        attachments,
        reply_to: message.reply_to.map(|r| r.mid),
        payload: message.quick_reply.map(|q| q.payload),
        sent_at,
    }
}

/// Messenger's attachment `type` as a MIME family (the exact type is not in the webhook).
fn content_type_family(kind: &str) -> Option<String> {
    match kind {
        "image" => Some("image/*".into()),
        "video" => Some("video/*".into()),
        "audio" => Some("audio/*".into()),
        "file" => Some("application/octet-stream".into()),
        _ => None,
    }
}

fn message_event(
    tenant: &TenantId,
    channel: ChannelRef,
    customer: &str,
    event_type: EventType,
    message: Message,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    PreparedEvent::message(
        tenant,
        channel,
        Contact::new(customer),
        event_type,
        message,
        now,
    )
}

fn signal_event(
    tenant: &TenantId,
    channel: ChannelRef,
    customer: &str,
    signal: SignalKind,
    mark: Watermark,
    occurred_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    let kind = match signal {
        SignalKind::Read => "read",
        _ => "delivery",
    };
    let data = ChannelSignal {
        tenant: tenant.clone(),
        conversation_id: ConversationId::derive(tenant, &channel, customer, None),
        channel,
        contact: Contact::new(customer),
        signal,
        message_ids: mark.mids,
        watermark: time_from_millis(mark.watermark),
        payload: None,
        occurred_at: occurred_at.unwrap_or(now),
    };
    PreparedEvent::signal(&format!("{kind}:{customer}:{}", mark.watermark), data, now)
}
