//! The generic API channel: `POST /v1/inbound/{tenant}` with a JSON message, for sites, apps
//! and systems that have no provider of their own. Authenticated per tenant by a bearer token
//! (`Authorization: Bearer …`) or an HMAC-SHA256 of the raw body
//! (`X-Omni-Signature: sha256=<hex>`).
//!
//! A signed request may carry its time, `X-Omni-Timestamp: <Unix seconds>`; the HMAC then
//! covers `<timestamp>.<raw body>`, so the time cannot be changed without the key, and a
//! request outside the tenant's replay window is refused. A tenant in strict mode refuses a
//! signed request that has neither a timestamp nor a `client_message_id` (which the dedupe
//! cache recognises): such a request could be replayed for ever as a new message.

use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, CloudEvent, Contact, ConversationId, Direction, EventId,
    EventType, Message, MessageReceived, Secret, TenantId,
};
use serde::Deserialize;
use std::collections::HashMap;

use crate::error::IngressError;
use crate::signature::{secrets_match, verify_hmac_sha256_hex};
use crate::webhook::{Accepted, Parsed, PreparedEvent, WebhookAdapter};

/// The header carrying the body's HMAC-SHA256, as `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-omni-signature";

/// The header carrying the signed request's time in Unix seconds, inside the HMAC.
pub const TIMESTAMP_HEADER: &str = "x-omni-timestamp";

/// Longest id (contact, client message id) accepted, to keep keys and caches bounded.
const MAX_ID_LEN: usize = 256;

/// A tenant's credentials for the API channel; at least one is set (checked at start-up).
#[derive(Debug, Clone)]
pub struct ApiCredentials {
    /// Accepted as `Authorization: Bearer <token>`.
    pub bearer_token: Option<Secret>,
    /// Key for `X-Omni-Signature: sha256=<hex HMAC-SHA256(key, raw body)>`.
    pub hmac_secret: Option<Secret>,
    /// How far `X-Omni-Timestamp` may be from now; `None` accepts any signed time.
    pub replay_window: Option<crate::ReplayWindow>,
    /// Refuse signed requests with neither `X-Omni-Timestamp` nor `client_message_id`.
    pub strict_replay: bool,
}

impl ApiCredentials {
    /// Credentials with the default replay window and strict mode off.
    pub fn new(bearer_token: Option<Secret>, hmac_secret: Option<Secret>) -> Self {
        Self {
            bearer_token,
            hmac_secret,
            replay_window: crate::ReplayWindow::from_config_secs(None),
            strict_replay: false,
        }
    }
}

/// The bytes `X-Omni-Signature` covers: the raw body, or `<timestamp>.<raw body>` when the
/// request carries `X-Omni-Timestamp` (public so clients' tests and docs build it one way).
pub fn signed_bytes(timestamp: Option<&str>, body: &[u8]) -> Vec<u8> {
    match timestamp {
        None => body.to_vec(),
        Some(t) => {
            let mut bytes = Vec::with_capacity(t.len() + 1 + body.len());
            bytes.extend_from_slice(t.as_bytes());
            bytes.push(b'.');
            bytes.extend_from_slice(body);
            bytes
        }
    }
}

/// The API channel adapter: the configured tenants and their credentials.
pub struct ApiChannel {
    tenants: HashMap<String, (TenantId, ApiCredentials)>,
}

impl ApiChannel {
    /// An adapter serving these tenants.
    pub fn new(tenants: impl IntoIterator<Item = (TenantId, ApiCredentials)>) -> Self {
        Self {
            tenants: tenants
                .into_iter()
                .map(|(t, c)| (t.as_str().to_owned(), (t, c)))
                .collect(),
        }
    }
}

/// The request body of `POST /v1/inbound/{tenant}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiInbound {
    contact: Contact,
    #[serde(default)]
    text: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    client_message_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    sent_at: Option<DateTime<Utc>>,
    #[serde(default)]
    account: Option<String>,
}

impl WebhookAdapter for ApiChannel {
    type Account = ApiCredentials;
    const CHANNEL: ChannelKind = ChannelKind::Api;

    fn account(&self, tenant: &str) -> Option<(&TenantId, &ApiCredentials)> {
        self.tenants.get(tenant).map(|(t, c)| (t, c))
    }

    fn verify(
        &self,
        creds: &ApiCredentials,
        request: &Parts,
        body: &[u8],
    ) -> Result<(), IngressError> {
        let headers = &request.headers;
        if let Some(sig) = headers.get(SIGNATURE_HEADER) {
            let secret = creds
                .hmac_secret
                .as_ref()
                .ok_or(IngressError::BadCredentials(
                    "signatures are not enabled for this tenant",
                ))?;
            let sig = sig
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("sha256="))
                .ok_or(IngressError::BadCredentials(
                    "signature must be sha256=<hex>",
                ))?;
            let timestamp = match headers.get(TIMESTAMP_HEADER) {
                None => None,
                Some(t) => Some(t.to_str().map_err(|_| {
                    IngressError::BadCredentials("X-Omni-Timestamp must be Unix seconds")
                })?),
            };
            let signed = signed_bytes(timestamp, body);
            if !verify_hmac_sha256_hex(secret.expose().as_bytes(), &signed, sig) {
                return Err(IngressError::BadCredentials(if timestamp.is_some() {
                    "signature does not match <X-Omni-Timestamp>.<body>"
                } else {
                    "signature does not match the body"
                }));
            }
            if let (Some(t), Some(window)) = (timestamp, creds.replay_window) {
                let signed_at = t
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(|secs| DateTime::from_timestamp(secs, 0))
                    .ok_or(IngressError::BadCredentials(
                        "X-Omni-Timestamp must be Unix seconds",
                    ))?;
                window.check(signed_at, Utc::now())?;
            }
            return Ok(());
        }
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let token = creds
                .bearer_token
                .as_ref()
                .ok_or(IngressError::BadCredentials(
                    "bearer tokens are not enabled for this tenant",
                ))?;
            let presented =
                auth.as_bytes()
                    .strip_prefix(b"Bearer ")
                    .ok_or(IngressError::BadCredentials(
                        "authorization must be 'Bearer <token>'",
                    ))?;
            return if secrets_match(presented, token.expose().as_bytes()) {
                Ok(())
            } else {
                Err(IngressError::BadCredentials("bearer token is not valid"))
            };
        }
        Err(IngressError::MissingCredentials(
            "send Authorization: Bearer <token> or X-Omni-Signature: sha256=<hex>",
        ))
    }

    fn parse(
        &self,
        tenant: &TenantId,
        creds: &ApiCredentials,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let headers = &request.headers;
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let is_json = ct
                .to_str()
                .map(|s| {
                    s.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("application/json")
                })
                .unwrap_or(false);
            if !is_json {
                return Err(IngressError::UnsupportedMediaType("application/json"));
            }
        }
        let req: ApiInbound = serde_json::from_slice(body).map_err(json_error)?;
        validate(&req)?;
        let signed_without_time =
            headers.contains_key(SIGNATURE_HEADER) && !headers.contains_key(TIMESTAMP_HEADER);
        if creds.strict_replay && signed_without_time && req.client_message_id.is_none() {
            return Err(IngressError::BadCredentials(
                "this tenant requires X-Omni-Timestamp or client_message_id on signed requests",
            ));
        }

        let channel = ChannelRef::new(
            ChannelKind::Api,
            req.account.unwrap_or_else(|| "default".to_owned()),
        );
        let (message_id, event_id) = match req.client_message_id {
            Some(id) => {
                let event = EventId::from_provider(tenant, &channel, "message", &id);
                (id, event)
            }
            None => {
                let event = EventId::new_random();
                (event.to_string(), event)
            }
        };
        let conversation = ConversationId::derive(tenant, &channel, &req.contact.id, None);
        let data = MessageReceived {
            tenant: tenant.clone(),
            conversation_id: conversation,
            channel: channel.clone(),
            contact: req.contact,
            message: Message {
                id: message_id,
                direction: Direction::Inbound,
                text: req.text,
                subject: req.subject,
                attachments: req.attachments,
                reply_to: req.reply_to,
                payload: None,
                sent_at: req.sent_at,
            },
            received_at: now,
            authentication: None,
            flags: Vec::new(),
        };
        let event = CloudEvent::new(
            event_id,
            EventType::MessageReceived,
            tenant.clone(),
            &channel,
            conversation,
            now,
            data,
        );
        let mut prepared = PreparedEvent::from_event(&event)?;
        prepared.media = crate::media::MediaSource::for_message(&event.data.message);
        Ok(vec![prepared].into())
    }

    fn respond(&self, accepted: Accepted) -> Response {
        let (id, conversation, duplicate) = accepted
            .events
            .first()
            .map(|(id, c, d)| (id.to_string(), c.to_string(), *d))
            .unwrap_or_default();
        (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({
                "event_id": id,
                "conversation_id": conversation,
                "duplicate": duplicate,
            })),
        )
            .into_response()
    }
}

/// Maps serde_json's error to a missing-field or malformed-body refusal with its position.
fn json_error(e: serde_json::Error) -> IngressError {
    let msg = e.to_string();
    if msg.starts_with("missing field") {
        IngressError::MissingField(msg)
    } else {
        IngressError::Malformed(msg)
    }
}

fn validate(req: &ApiInbound) -> Result<(), IngressError> {
    let invalid = |field: &str, reason: &str| IngressError::InvalidField {
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    check_id("contact.id", &req.contact.id)?;
    if let Some(id) = &req.client_message_id {
        check_id("client_message_id", id)?;
    }
    if req.text.trim().is_empty() && req.attachments.is_empty() {
        return Err(IngressError::MissingField(
            "text (or at least one attachment)".into(),
        ));
    }
    for (i, a) in req.attachments.iter().enumerate() {
        if a.url.trim().is_empty() {
            return Err(IngressError::MissingField(format!("attachments[{i}].url")));
        }
    }
    if let Some(account) = &req.account {
        let ok = !account.is_empty()
            && account.len() <= 64
            && account.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+')
            });
        if !ok {
            return Err(invalid(
                "account",
                "use 1-64 chars of letters, digits, '.', '_', '-', '@', '+'",
            ));
        }
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<(), IngressError> {
    if id.trim().is_empty() {
        return Err(IngressError::MissingField(field.to_owned()));
    }
    if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(IngressError::InvalidField {
            field: field.to_owned(),
            reason: format!("at most {MAX_ID_LEN} bytes, no control characters"),
        });
    }
    Ok(())
}
