//! The WhatsApp Cloud API webhook adapter.

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_channel::delivery::CallbackRef;
use omni_channel::{
    Accepted, IngressError, MediaLookup, MediaSource, Parsed, PreparedEvent, WebhookAdapter,
};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, Contact, DeliveryStatus, DeliveryUpdate, Direction,
    EventType, Message, TenantId,
};
use omni_media::FetchAuth;
use serde::Deserialize;
use std::collections::HashMap;

use super::send::classify_code;
use super::WhatsappTenant;
use crate::meta::{MetaApp, MetaWebhook};

/// The WhatsApp webhook adapter: the configured tenants and where media ids are resolved.
pub struct WhatsappChannel {
    tenants: HashMap<String, (TenantId, WhatsappTenant)>,
    /// `<graph_base_url>/<version>`: an inbound media id's URL is `<media_base>/<id>`.
    media_base: String,
}

impl WhatsappChannel {
    /// An adapter serving these tenants; media URLs point under `media_base`
    /// (`<graph_base_url>/<version>`).
    pub fn new(
        tenants: impl IntoIterator<Item = (TenantId, WhatsappTenant)>,
        media_base: impl Into<String>,
    ) -> Self {
        Self {
            tenants: tenants
                .into_iter()
                .map(|(t, w)| (t.as_str().to_owned(), (t, w)))
                .collect(),
            media_base: media_base.into(),
        }
    }
}

impl MetaWebhook for WhatsappChannel {
    fn app(&self, tenant: &str) -> Option<MetaApp<'_>> {
        self.account(tenant).map(|(_, account)| meta_app(account))
    }
}

/// The tenant's app credentials: WhatsApp signs with SHA-256 only.
fn meta_app(account: &WhatsappTenant) -> MetaApp<'_> {
    MetaApp {
        app_secret: &account.app_secret,
        verify_token: &account.verify_token,
        accept_sha1: false,
    }
}

/// The webhook object of WhatsApp Business Account changes.
const OBJECT: &str = "whatsapp_business_account";

#[derive(Deserialize)]
struct Webhook {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: serde_json::Value,
}

/// A `messages` change's value.
#[derive(Deserialize)]
struct Value {
    metadata: Metadata,
    #[serde(default)]
    contacts: Vec<WaContact>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: String,
}

#[derive(Deserialize)]
struct WaContact {
    wa_id: String,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct WaMessage {
    from: String,
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<Text>,
    #[serde(default)]
    image: Option<Media>,
    #[serde(default)]
    video: Option<Media>,
    #[serde(default)]
    audio: Option<Media>,
    #[serde(default)]
    document: Option<Media>,
    #[serde(default)]
    sticker: Option<Media>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    contacts: Vec<SharedContact>,
    #[serde(default)]
    interactive: Option<Interactive>,
    #[serde(default)]
    button: Option<Button>,
    #[serde(default)]
    context: Option<Context>,
}

#[derive(Deserialize)]
struct Text {
    body: String,
}

#[derive(Deserialize)]
struct Media {
    id: String,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Deserialize)]
struct SharedContact {
    #[serde(default)]
    name: Option<ContactName>,
    #[serde(default)]
    phones: Vec<ContactPhone>,
}

#[derive(Deserialize)]
struct ContactName {
    #[serde(default)]
    formatted_name: Option<String>,
}

#[derive(Deserialize)]
struct ContactPhone {
    #[serde(default)]
    phone: Option<String>,
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(default)]
    button_reply: Option<Choice>,
    #[serde(default)]
    list_reply: Option<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    id: String,
    title: String,
}

#[derive(Deserialize)]
struct Button {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<StatusError>,
}

#[derive(Deserialize)]
struct StatusError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_data: Option<crate::meta::ErrorData>,
}

/// The message types we knowingly do not publish, as bounded metric labels.
const IGNORED_TYPES: &[&str] = &[
    "reaction",
    "system",
    "unsupported",
    "order",
    "request_welcome",
    "ephemeral",
];

impl WebhookAdapter for WhatsappChannel {
    type Account = WhatsappTenant;
    const CHANNEL: ChannelKind = ChannelKind::Whatsapp;

    fn account(&self, tenant: &str) -> Option<(&TenantId, &WhatsappTenant)> {
        self.tenants.get(tenant).map(|(t, w)| (t, w))
    }

    fn verify(
        &self,
        account: &WhatsappTenant,
        request: &Parts,
        body: &[u8],
    ) -> Result<(), IngressError> {
        meta_app(account).verify(request, body)
    }

    fn parse(
        &self,
        tenant: &TenantId,
        account: &WhatsappTenant,
        _request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let webhook: Webhook = serde_json::from_slice(body)
            .map_err(|e| IngressError::Malformed(format!("not a WhatsApp webhook: {e}")))?;
        let mut parsed = Parsed::default();
        if webhook.object != OBJECT {
            tracing::debug!(tenant = %tenant, object = %webhook.object,
                "webhook object not handled, ignored");
            parsed.ignored.push("unhandled_object");
            return Ok(parsed);
        }
        for change in webhook.entry.into_iter().flat_map(|e| e.changes) {
            if change.field != "messages" {
                // Template status, quality or account updates: nothing to route.
                parsed.ignored.push("unhandled_field");
                continue;
            }
            let value: Value = match serde_json::from_value(change.value) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e,
                        "WhatsApp change without metadata.phone_number_id, ignored");
                    parsed.ignored.push("malformed_item");
                    continue;
                }
            };
            let number = &value.metadata.phone_number_id;
            let Some(settings) = account.numbers.get(number) else {
                tracing::warn!(channel = "whatsapp", tenant = %tenant, account = %number,
                    "signed change for a number this tenant does not have, refused");
                let items = value.messages.len() + value.statuses.len();
                parsed
                    .refused
                    .extend(std::iter::repeat_n("unknown_account", items.max(1)));
                continue;
            };
            let ctx = ChangeContext {
                tenant,
                // Media ids are looked up, and their content fetched, with the number's token.
                media: MediaSource {
                    auth: Some(FetchAuth::Bearer(settings.access_token.clone())),
                    lookup: MediaLookup::GraphMedia,
                },
                channel: ChannelRef::new(ChannelKind::Whatsapp, number.clone()),
                media_base: &self.media_base,
                now,
            };
            ctx.messages(&value, &mut parsed)?;
            ctx.statuses(value.statuses, &mut parsed)?;
        }
        Ok(parsed)
    }

    fn respond(&self, _accepted: Accepted) -> Response {
        (StatusCode::OK, "EVENT_RECEIVED").into_response()
    }
}

/// What every event of one change shares.
struct ChangeContext<'a> {
    tenant: &'a TenantId,
    media: MediaSource,
    channel: ChannelRef,
    media_base: &'a str,
    now: DateTime<Utc>,
}

impl ChangeContext<'_> {
    /// The customer messages of a change, each from its sender with the profile name the
    /// change's `contacts` give.
    fn messages(&self, value: &Value, parsed: &mut Parsed) -> Result<(), IngressError> {
        for raw in &value.messages {
            let message = match WaMessage::deserialize(raw) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(channel = "whatsapp", tenant = %self.tenant, error = %e,
                        "WhatsApp message without from/id, ignored");
                    parsed.ignored.push("malformed_item");
                    continue;
                }
            };
            if let Some(kind) = IGNORED_TYPES.iter().find(|k| **k == message.kind) {
                parsed.ignored.push(kind);
                continue;
            }
            let mut contact = Contact::new(message.from.clone());
            contact.name = value
                .contacts
                .iter()
                .find(|c| c.wa_id == message.from)
                .and_then(|c| c.profile.as_ref()?.name.clone());
            // A WhatsApp id is the customer's phone number in international form, digits only.
            if message.from.bytes().all(|b| b.is_ascii_digit()) {
                contact.phone = Some(format!("+{}", message.from));
            }
            let Some(body) = self.message_body(message) else {
                parsed.ignored.push("unknown");
                continue;
            };
            let event = PreparedEvent::message(
                self.tenant,
                self.channel.clone(),
                contact,
                EventType::MessageReceived,
                body,
                self.now,
            )?;
            parsed
                .events
                .push(event.with_media_source(self.media.clone()));
        }
        Ok(())
    }

    /// The normalized message, or `None` for a type with nothing to route.
    fn message_body(&self, m: WaMessage) -> Option<Message> {
        let media = |media: Media, default_type: Option<&str>| Attachment {
            url: format!("{}/{}", self.media_base, media.id),
            content_type: media.mime_type.or_else(|| default_type.map(str::to_owned)),
            name: media.filename,
            size: None,
        };
        let (text, attachments, payload) = match m.kind.as_str() {
            "text" => (m.text?.body, vec![], None),
            "image" | "video" | "audio" | "document" | "sticker" => {
                let (item, default_type) = match m.kind.as_str() {
                    "image" => (m.image, None),
                    "video" => (m.video, None),
                    "audio" => (m.audio, None),
                    "document" => (m.document, None),
                    _ => (m.sticker, Some("image/webp")),
                };
                let mut item = item?;
                let caption = item.caption.take().unwrap_or_default();
                (caption, vec![media(item, default_type)], None)
            }
            "location" => {
                let l = m.location?;
                // RFC 5870 `geo:` carries a shared place, as on Messenger.
                let place = Attachment {
                    url: format!("geo:{},{}", l.latitude, l.longitude),
                    content_type: None,
                    name: l.name.clone(),
                    size: None,
                };
                let words: Vec<String> = [l.name, l.address].into_iter().flatten().collect();
                (words.join(", "), vec![place], None)
            }
            "contacts" => (contacts_text(&m.contacts), vec![], None),
            "interactive" => {
                let i = m.interactive?;
                let choice = i.button_reply.or(i.list_reply)?;
                (choice.title, vec![], Some(choice.id))
            }
            "button" => {
                let b = m.button?;
                (b.text.unwrap_or_default(), vec![], b.payload)
            }
            _ => return None,
        };
        Some(Message {
            id: m.id,
            direction: Direction::Inbound,
            text,
            subject: None,
            attachments,
            reply_to: m.context.and_then(|c| c.id),
            payload,
            sent_at: m.timestamp.as_deref().and_then(time_from_secs),
        })
    }

    /// The delivery events of a change's statuses: only those of replies we sent (they carry
    /// our [`CallbackRef`] in `biz_opaque_callback_data`).
    fn statuses(
        &self,
        statuses: Vec<serde_json::Value>,
        parsed: &mut Parsed,
    ) -> Result<(), IngressError> {
        for raw in statuses {
            let Ok(s) = serde_json::from_value::<Status>(raw) else {
                parsed.ignored.push("malformed_item");
                continue;
            };
            let status = match s.status.as_str() {
                "sent" => DeliveryStatus::Sent,
                "delivered" => DeliveryStatus::Delivered,
                "read" => DeliveryStatus::Read,
                "failed" => DeliveryStatus::Failed,
                _ => {
                    parsed.ignored.push("other_status");
                    continue;
                }
            };
            let Some(reference) = s
                .biz_opaque_callback_data
                .as_deref()
                .and_then(CallbackRef::from_client_ref)
            else {
                // A message sent from WhatsApp Manager or another app on this number.
                parsed.ignored.push("uncorrelated");
                continue;
            };
            let error = s.errors.first();
            let detail = match error {
                Some(e) => {
                    let words = e.message.as_deref().or(e.title.as_deref()).unwrap_or("");
                    let details = crate::meta::ErrorData::in_parens(e.error_data.as_ref());
                    format!(
                        "whatsapp status {}, error {}: {words}{details}",
                        s.status, e.code
                    )
                }
                None => format!("whatsapp status {}", s.status),
            };
            let reason = (status == DeliveryStatus::Failed).then(|| {
                classify_code(error.map_or(0, |e| e.code), String::new())
                    .reason
                    .as_str()
                    .to_owned()
            });
            let update = DeliveryUpdate {
                tenant: self.tenant.clone(),
                conversation_id: reference.conversation,
                outbound_event_id: reference.outbound,
                channel: self.channel.clone(),
                status,
                provider_message_id: Some(s.id),
                reason,
                detail: Some(detail.chars().take(500).collect()),
                segments: None,
                occurred_at: s
                    .timestamp
                    .as_deref()
                    .and_then(time_from_secs)
                    .unwrap_or(self.now),
            };
            parsed
                .events
                .push(PreparedEvent::delivery(update, self.now)?);
        }
        Ok(())
    }
}

/// Shared contact cards as text, one `name: phone, phone` line each.
fn contacts_text(contacts: &[SharedContact]) -> String {
    contacts
        .iter()
        .map(|c| {
            let name = c
                .name
                .as_ref()
                .and_then(|n| n.formatted_name.as_deref())
                .unwrap_or_default();
            let phones: Vec<&str> = c.phones.iter().filter_map(|p| p.phone.as_deref()).collect();
            format!("{name}: {}", phones.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// WhatsApp's timestamps: Unix seconds as a string.
fn time_from_secs(secs: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs.trim().parse().ok()?, 0)
}
