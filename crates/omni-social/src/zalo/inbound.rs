//! The Zalo OA webhook adapter.

use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_channel::signature::{hex_digests_match, sha256_hex};
use omni_channel::{Accepted, IngressError, Parsed, PreparedEvent, WebhookAdapter};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, ChannelSignal, Contact, ConversationId, Direction,
    EventType, Message, SignalKind, TenantId,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

use super::ZaloTenant;
use crate::wire::{time_from_millis, IdText};

/// The signature header.
const SIGNATURE: &str = "x-zevent-signature";

/// Zalo retries a webhook not answered within 2 s; answer (503 at worst) before that.
const DEADLINE: Duration = Duration::from_millis(1800);

/// The Zalo OA webhook adapter: the configured tenants and their OAs.
pub struct ZaloChannel {
    tenants: HashMap<String, (TenantId, ZaloTenant)>,
}

impl ZaloChannel {
    /// An adapter serving these tenants.
    pub fn new(tenants: impl IntoIterator<Item = (TenantId, ZaloTenant)>) -> Self {
        Self {
            tenants: tenants
                .into_iter()
                .map(|(t, z)| (t.as_str().to_owned(), (t, z)))
                .collect(),
        }
    }
}

/// The fields every event has that the signature and routing need.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    app_id: Option<IdText>,
    #[serde(default)]
    timestamp: Option<IdText>,
}

#[derive(Deserialize)]
struct Event {
    event_name: String,
    #[serde(default)]
    timestamp: Option<IdText>,
    #[serde(default)]
    sender: Option<Party>,
    #[serde(default)]
    recipient: Option<Party>,
    #[serde(default)]
    oa_id: Option<IdText>,
    #[serde(default)]
    follower: Option<Party>,
    #[serde(default)]
    message: Option<ZaloMessage>,
}

#[derive(Deserialize)]
struct Party {
    id: IdText,
}

#[derive(Deserialize, Default)]
struct ZaloMessage {
    #[serde(default)]
    msg_id: Option<IdText>,
    #[serde(default)]
    msg_ids: Vec<IdText>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    quote_msg_id: Option<IdText>,
    #[serde(default)]
    attachments: Vec<ZaloAttachment>,
}

#[derive(Deserialize)]
struct ZaloAttachment {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
}

/// Accepts a signed event whose `timestamp` (milliseconds) is within the tenant's replay
/// window of `now`: the MAC covers the timestamp, so a captured event cannot be made fresh.
fn check_window(
    account: &ZaloTenant,
    timestamp: &IdText,
    now: DateTime<Utc>,
) -> Result<(), IngressError> {
    let Some(window) = account.replay_window else {
        return Ok(());
    };
    let signed_at = timestamp
        .0
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(time_from_millis)
        .ok_or_else(|| IngressError::InvalidField {
            field: "timestamp".into(),
            reason: "must be Unix milliseconds".into(),
        })?;
    Ok(window.check(signed_at, now)?)
}

/// Events that are customer messages.
const USER_MESSAGES: &[&str] = &[
    "user_send_text",
    "user_send_image",
    "user_send_link",
    "user_send_file",
    "user_send_sticker",
    "user_send_gif",
    "user_send_audio",
    "user_send_video",
    "user_send_location",
    "user_send_business_card",
];

/// Known events we knowingly do not publish, as bounded metric labels.
const IGNORED_EVENTS: &[&str] = &[
    "user_submit_info",
    "user_reacted_message",
    "oa_reacted_message",
    "user_asking_product",
    "shop_has_order",
    "add_user_to_tag",
    "change_oa_daily_quota",
    "change_oa_template_tags",
    "change_template_status",
    "user_click_chatnow",
    "anonymous_send_text",
];

impl WebhookAdapter for ZaloChannel {
    type Account = ZaloTenant;
    const CHANNEL: ChannelKind = ChannelKind::Zalo;

    fn account(&self, tenant: &str) -> Option<(&TenantId, &ZaloTenant)> {
        self.tenants.get(tenant).map(|(t, z)| (t, z))
    }

    fn verify(
        &self,
        account: &ZaloTenant,
        request: &Parts,
        body: &[u8],
    ) -> Result<(), IngressError> {
        let headers = &request.headers;
        let presented = headers
            .get(SIGNATURE)
            .ok_or(IngressError::MissingCredentials(
                "X-ZEvent-Signature header is required",
            ))?
            .to_str()
            .ok()
            .and_then(|s| s.trim().strip_prefix("mac="))
            .ok_or(IngressError::BadCredentials(
                "X-ZEvent-Signature must be mac=<hex>",
            ))?;
        // The MAC covers the body's own app_id and timestamp, so read them first; the
        // signature still covers the exact raw bytes.
        let head: Head = serde_json::from_slice(body)
            .map_err(|e| IngressError::Malformed(format!("not a Zalo event: {e}")))?;
        let app_id = head
            .app_id
            .ok_or(IngressError::MissingField("app_id".into()))?;
        let timestamp = head
            .timestamp
            .ok_or(IngressError::MissingField("timestamp".into()))?;
        let mut known_app = false;
        let mut matched = false;
        for oa in account.oas.values().filter(|oa| oa.app_id == app_id.0) {
            known_app = true;
            let expected = sha256_hex(&[
                app_id.0.as_bytes(),
                body,
                timestamp.0.as_bytes(),
                oa.oa_secret_key.expose().as_bytes(),
            ]);
            matched |= hex_digests_match(presented, &expected);
        }
        match (known_app, matched) {
            (_, true) => check_window(account, &timestamp, Utc::now()),
            (false, _) => Err(IngressError::BadCredentials(
                "no OA of this tenant is registered with the event's app_id",
            )),
            (true, false) => Err(IngressError::BadCredentials(
                "X-ZEvent-Signature does not match the body",
            )),
        }
    }

    fn parse(
        &self,
        tenant: &TenantId,
        account: &ZaloTenant,
        _request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let event: Event = serde_json::from_slice(body)
            .map_err(|e| IngressError::Malformed(format!("not a Zalo event: {e}")))?;
        if let Some(oa) = event.oa().filter(|oa| !account.oas.contains_key(*oa)) {
            // Tenants sharing one Zalo app share its OA secret key: the signature alone does
            // not say whose OA this is.
            tracing::warn!(channel = "zalo", tenant = %tenant, oa = %oa,
                "signed event for an OA this tenant does not have, refused");
            return Ok(Parsed {
                refused: vec!["unknown_account"],
                ..Parsed::default()
            });
        }
        let occurred_at = event
            .timestamp
            .as_ref()
            .and_then(|t| t.0.parse::<i64>().ok())
            .and_then(time_from_millis);
        let name = event.event_name.as_str();
        let mut parsed = Parsed::default();
        if USER_MESSAGES.contains(&name) {
            let (oa, user) = parties(&event.recipient, &event.sender)?;
            let message = message_body(event.message, Direction::Inbound, occurred_at)?;
            parsed.events.push(message_event(
                tenant,
                oa,
                user,
                EventType::MessageReceived,
                message,
                now,
            )?);
        } else if name.starts_with("oa_send_") {
            // An OA echo: the OA is the sender, the customer the recipient.
            let (oa, user) = parties(&event.sender, &event.recipient)?;
            let message = message_body(event.message, Direction::Outbound, occurred_at)?;
            parsed.events.push(message_event(
                tenant,
                oa,
                user,
                EventType::MessageEchoed,
                message,
                now,
            )?);
        } else if let Some(signal) = signal_kind(name) {
            parsed
                .events
                .push(signal_event(tenant, &event, signal, occurred_at, now)?);
        } else {
            parsed.ignored.push(
                IGNORED_EVENTS
                    .iter()
                    .find(|k| **k == name)
                    .copied()
                    .unwrap_or("unknown"),
            );
        }
        Ok(parsed)
    }

    fn respond(&self, _accepted: Accepted) -> Response {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"error": 0, "message": "Success"})),
        )
            .into_response()
    }

    fn deadline(&self) -> Option<Duration> {
        Some(DEADLINE)
    }
}

impl Event {
    /// The OA the event belongs to, when it names one: the sender of an OA echo, the `oa_id`
    /// of a follow, else the recipient.
    fn oa(&self) -> Option<&str> {
        let party = if self.event_name.starts_with("oa_send_") {
            &self.sender
        } else if let Some(oa) = &self.oa_id {
            return Some(oa.0.as_str());
        } else {
            &self.recipient
        };
        party.as_ref().map(|p| p.id.0.as_str())
    }
}

fn signal_kind(event_name: &str) -> Option<SignalKind> {
    match event_name {
        "follow" => Some(SignalKind::Follow),
        "unfollow" => Some(SignalKind::Unfollow),
        "user_click_button" => Some(SignalKind::Action),
        "user_received_message" => Some(SignalKind::Delivered),
        "user_seen_message" => Some(SignalKind::Read),
        _ => None,
    }
}

/// The (OA, user) ids of a message event, given which party is which.
fn parties<'a>(
    oa: &'a Option<Party>,
    user: &'a Option<Party>,
) -> Result<(&'a str, &'a str), IngressError> {
    let oa = oa
        .as_ref()
        .map(|p| p.id.0.as_str())
        .filter(|s| !s.is_empty())
        .ok_or(IngressError::MissingField(
            "recipient.id / sender.id".into(),
        ))?;
    let user = user
        .as_ref()
        .map(|p| p.id.0.as_str())
        .filter(|s| !s.is_empty())
        .ok_or(IngressError::MissingField(
            "sender.id / recipient.id".into(),
        ))?;
    Ok((oa, user))
}

fn message_body(
    message: Option<ZaloMessage>,
    direction: Direction,
    sent_at: Option<DateTime<Utc>>,
) -> Result<Message, IngressError> {
    let message = message.ok_or(IngressError::MissingField("message".into()))?;
    let id = message
        .msg_id
        .map(|m| m.0)
        .filter(|m| !m.is_empty())
        .ok_or(IngressError::MissingField("message.msg_id".into()))?;
    let attachments = message
        .attachments
        .into_iter()
        .filter_map(|a| attachment(&a))
        .collect();
    Ok(Message {
        id,
        direction,
        text: message.text.unwrap_or_default(),
        subject: None,
        attachments,
        reply_to: message.quote_msg_id.map(|q| q.0),
        payload: None,
        sent_at,
    })
}

/// A Zalo attachment as a normalized one: its URL (or thumbnail), a `geo:` URI for a
/// location, with the MIME family of its type.
fn attachment(a: &ZaloAttachment) -> Option<Attachment> {
    let text = |key: &str| {
        a.payload
            .get(key)
            .and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
    };
    let url = text("url").or_else(|| text("thumbnail")).or_else(|| {
        let c = a.payload.get("coordinates")?;
        let coord = |k: &str| match c.get(k)? {
            serde_json::Value::String(s) => s.parse::<f64>().ok(),
            serde_json::Value::Number(n) => n.as_f64(),
            _ => None,
        };
        Some(format!(
            "geo:{},{}",
            coord("latitude")?,
            coord("longitude")?
        ))
    })?;
    let content_type = match a.kind.as_str() {
        "image" | "gif" | "sticker" => Some("image/*".to_owned()),
        "video" => Some("video/*".to_owned()),
        "audio" => Some("audio/*".to_owned()),
        "file" => Some("application/octet-stream".to_owned()),
        _ => None,
    };
    Some(Attachment {
        url,
        content_type,
        name: text("name").or_else(|| text("title")),
        size: text("size").and_then(|s| s.parse().ok()),
    })
}

fn message_event(
    tenant: &TenantId,
    oa: &str,
    user: &str,
    event_type: EventType,
    message: Message,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    PreparedEvent::message(
        tenant,
        ChannelRef::new(ChannelKind::Zalo, oa),
        Contact::new(user),
        event_type,
        message,
        now,
    )
}

fn signal_event(
    tenant: &TenantId,
    event: &Event,
    signal: SignalKind,
    occurred_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    let (oa, user) = match signal {
        SignalKind::Follow | SignalKind::Unfollow => {
            let oa = event
                .oa_id
                .as_ref()
                .map(|o| o.0.as_str())
                .or_else(|| event.recipient.as_ref().map(|p| p.id.0.as_str()))
                .ok_or(IngressError::MissingField("oa_id".into()))?;
            let user = event
                .follower
                .as_ref()
                .or(event.sender.as_ref())
                .map(|p| p.id.0.as_str())
                .ok_or(IngressError::MissingField("follower.id".into()))?;
            (oa, user)
        }
        _ => parties(&event.recipient, &event.sender)?,
    };
    let message = event.message.as_ref();
    let message_ids: Vec<String> = message
        .map(|m| {
            m.msg_ids
                .iter()
                .map(|i| i.0.clone())
                .chain(m.msg_id.iter().map(|i| i.0.clone()))
                .collect()
        })
        .unwrap_or_default();
    let timestamp = event.timestamp.as_ref().map_or("", |t| t.0.as_str());
    // Follows and clicks have no id of their own: (event, user, time) names one.
    let provider_id = format!("{}:{user}:{timestamp}", event.event_name);
    let channel = ChannelRef::new(ChannelKind::Zalo, oa);
    let data = ChannelSignal {
        tenant: tenant.clone(),
        conversation_id: ConversationId::derive(tenant, &channel, user, None),
        channel,
        contact: Contact::new(user),
        signal,
        message_ids,
        watermark: matches!(signal, SignalKind::Delivered | SignalKind::Read)
            .then_some(occurred_at)
            .flatten(),
        payload: match signal {
            SignalKind::Action => message.and_then(|m| m.text.clone()),
            _ => None,
        },
        occurred_at: occurred_at.unwrap_or(now),
    };
    PreparedEvent::signal(&provider_id, data, now)
}
