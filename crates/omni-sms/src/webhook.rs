//! The SMS webhook adapters `omni_channel::Ingress` drives: inbound messages (Twilio, Vonage
//! single-part, generic gateways) to `omni.inbound.v1`, and status callbacks (Twilio
//! `StatusCallback`, Vonage delivery receipts, eSMS `CallbackUrl`) to `omni.delivery.v1`.
//! Multipart Vonage messages go through [`crate::concat_store`] instead, which reuses the checks
//! here.
//!
//! Every endpoint is one [`SmsWebhook`] over the same tenants, told apart by [`Endpoint`]:
//! | endpoint | path | authenticated by |
//! |---|---|---|
//! | Twilio message | `POST /v1/webhooks/sms/twilio/{tenant}` | `X-Twilio-Signature` over the public URL, and `AccountSid` |
//! | Twilio status | `POST /v1/webhooks/sms/twilio/{tenant}/status` | the same |
//! | Vonage message | `GET`/`POST /v1/webhooks/sms/vonage/{tenant}` | `sig` (md5hash or HMAC), else `?token=` |
//! | Vonage receipt | `GET`/`POST /v1/webhooks/sms/vonage/{tenant}/dlr` | the same |
//! | eSMS callback | `GET`/`POST /v1/webhooks/sms/esms/{tenant}/callback` | `?token=` (eSMS signs nothing) |
//! | gateway | `POST /v1/webhooks/sms/gateway/{tenant}/{name}` | the mapping's HMAC-SHA256 header, else `?token=` |
//!
//! Addresses: the sender becomes the contact, normalized to E.164 (`Address::parse(from,
//! country code)`; short codes and brandnames as they are), with `contact.phone` for E.164;
//! the receiving number (normalized the same way) is the channel account.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_channel::signature::secrets_match;
use omni_channel::{Accepted, IngressError, Parsed, PreparedEvent, WebhookAdapter};
use omni_core::{
    Attachment, ChannelKind, ChannelRef, Contact, Direction, EventType, Message, TenantId,
};

use crate::callback::{delivery_event, CallbackRef, Provider};
use crate::params::Params;
use crate::phone::Address;
use crate::settings::SmsTenant;
use crate::status::StatusReport;
use crate::{esms, twilio, vonage};

/// The empty TwiML document Twilio expects in answer to a message webhook.
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// The configured tenants, shared by every endpoint.
pub type SmsTenants = Arc<HashMap<String, (TenantId, SmsTenant)>>;

/// Builds the shared tenant map.
pub fn tenants(list: impl IntoIterator<Item = (TenantId, SmsTenant)>) -> SmsTenants {
    Arc::new(
        list.into_iter()
            .map(|(t, s)| (t.as_str().to_owned(), (t, s)))
            .collect(),
    )
}

/// Which webhook a [`SmsWebhook`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Twilio inbound SMS/MMS.
    TwilioMessage,
    /// Twilio `StatusCallback`.
    TwilioStatus,
    /// Vonage inbound SMS (single part; multipart goes through [`crate::concat_store`]).
    VonageMessage,
    /// Vonage delivery receipt.
    VonageDlr,
    /// eSMS `CallbackUrl`.
    EsmsCallback,
    /// A configured generic gateway (its name is the last path segment).
    Gateway,
}

/// One SMS webhook endpoint.
pub struct SmsWebhook {
    tenants: SmsTenants,
    endpoint: Endpoint,
}

impl SmsWebhook {
    /// The adapter for `endpoint` over `tenants`.
    pub fn new(tenants: SmsTenants, endpoint: Endpoint) -> Self {
        Self { tenants, endpoint }
    }

    /// The tenants served (shared with the other endpoints built over them).
    pub fn tenants(&self) -> SmsTenants {
        self.tenants.clone()
    }

    /// The endpoint served.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}

impl WebhookAdapter for SmsWebhook {
    type Account = SmsTenant;
    const CHANNEL: ChannelKind = ChannelKind::Sms;

    /// Only tenants with the endpoint's provider are known here: others answer 404.
    fn account(&self, tenant: &str) -> Option<(&TenantId, &SmsTenant)> {
        let (id, sms) = self.tenants.get(tenant)?;
        let has = match self.endpoint {
            Endpoint::TwilioMessage | Endpoint::TwilioStatus => sms.twilio.is_some(),
            Endpoint::VonageMessage | Endpoint::VonageDlr => sms.vonage.is_some(),
            Endpoint::EsmsCallback => sms.esms.is_some(),
            Endpoint::Gateway => !sms.gateways.is_empty(),
        };
        has.then_some((id, sms))
    }

    fn verify(&self, sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
        match self.endpoint {
            Endpoint::TwilioMessage | Endpoint::TwilioStatus => verify_twilio(sms, request, body),
            Endpoint::VonageMessage | Endpoint::VonageDlr => {
                verify_vonage(sms, request, &request_params(request, body)?, Utc::now())
            }
            Endpoint::EsmsCallback => verify_token(sms, request),
            Endpoint::Gateway => {
                let gateway = gateway_account(sms, request)?;
                if gateway.gateway.signature_header().is_none() {
                    return verify_token(sms, request);
                }
                let header = gateway
                    .gateway
                    .signature_header()
                    .and_then(|h| request.headers.get(h))
                    .and_then(|v| v.to_str().ok());
                let secret = gateway.secret.as_ref().map_or("", |s| s.expose());
                gateway
                    .gateway
                    .verify(secret.as_bytes(), header, body)
                    .map(|_| ())
                    .map_err(|e| match e {
                        crate::gateway::GatewayError::MissingSignature { .. } => {
                            IngressError::MissingCredentials(
                                "the gateway's signature header is required",
                            )
                        }
                        _ => IngressError::BadCredentials(
                            "gateway signature does not match the body",
                        ),
                    })
            }
        }
    }

    fn parse(
        &self,
        tenant: &TenantId,
        sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        match self.endpoint {
            Endpoint::TwilioMessage => twilio_message(tenant, sms, request, body, now),
            Endpoint::TwilioStatus => {
                let params = body_params(request, body)?;
                let report = twilio::status_from_params(&params).map_err(twilio_error)?;
                let account = query(request).get("account").map(str::to_owned);
                status_event(
                    tenant,
                    &query(request),
                    account,
                    Provider::Twilio,
                    &report,
                    now,
                )
            }
            Endpoint::VonageMessage => {
                let params = request_params(request, body)?;
                let inbound = vonage::VonageInbound::from_params(&params).map_err(vonage_error)?;
                if inbound.concat.is_some() {
                    return Err(IngressError::InvalidField {
                        field: "concat".into(),
                        reason: "multipart parts go through the reassembling handler".into(),
                    });
                }
                let message = Message {
                    id: inbound.message_id.clone(),
                    direction: Direction::Inbound,
                    text: inbound.text.clone(),
                    subject: None,
                    attachments: vec![],
                    reply_to: None,
                    payload: None,
                    sent_at: inbound.message_timestamp,
                };
                Ok(vec![message_event(
                    tenant,
                    sms,
                    &inbound.msisdn,
                    &inbound.to,
                    message,
                    now,
                )?]
                .into())
            }
            Endpoint::VonageDlr => {
                let params = request_params(request, body)?;
                let report = vonage::parse_delivery_receipt(&params).map_err(vonage_error)?;
                let Some(reference) = report
                    .client_ref
                    .as_deref()
                    .and_then(CallbackRef::from_client_ref)
                else {
                    return Ok(uncorrelated());
                };
                let account = params
                    .get("to")
                    .and_then(|to| Address::parse(to, &sms.country_code).ok())
                    .map(|a| a.as_str().to_owned())
                    .ok_or(IngressError::MissingField("to".into()))?;
                Ok(
                    delivery_event(tenant, &reference, &account, Provider::Vonage, &report, now)?
                        .map_or_else(pending, |e| vec![e].into()),
                )
            }
            Endpoint::EsmsCallback => {
                let params = request_params(request, body)?;
                let report = esms::parse_delivery_callback(&params).map_err(|e| match e {
                    esms::EsmsError::MissingField { field } => {
                        IngressError::MissingField(field.into())
                    }
                    other => IngressError::Malformed(other.to_string()),
                })?;
                let mut refs = query(request);
                if refs.get("ref").is_none() {
                    if let Some(request_id) = &report.client_ref {
                        refs.push("ref", request_id.clone());
                    }
                }
                let account = refs.get("account").map(str::to_owned);
                status_event(tenant, &refs, account, Provider::Esms, &report, now)
            }
            Endpoint::Gateway => {
                let gateway = gateway_account(sms, request)?;
                let m = gateway.gateway.extract(body).map_err(|e| match e {
                    crate::gateway::GatewayError::MissingField { role, field } => {
                        IngressError::MissingField(format!("{role} ({field})"))
                    }
                    other => IngressError::Malformed(other.to_string()),
                })?;
                let message = Message {
                    id: m.message_id,
                    direction: Direction::Inbound,
                    text: m.text,
                    subject: None,
                    attachments: vec![],
                    reply_to: None,
                    payload: None,
                    sent_at: m.timestamp,
                };
                Ok(vec![message_event(tenant, sms, &m.from, &m.to, message, now)?].into())
            }
        }
    }

    fn respond(&self, _accepted: Accepted) -> Response {
        match self.endpoint {
            Endpoint::TwilioMessage | Endpoint::TwilioStatus => twiml(),
            _ => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "OK").into_response(),
        }
    }
}

/// The empty TwiML answer, `text/xml`.
pub fn twiml() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        EMPTY_TWIML,
    )
        .into_response()
}

/// The URL Twilio called: the tenant's public base URL + the path and query received.
pub fn public_url(sms: &SmsTenant, request: &Parts) -> String {
    let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", sms.public_base_url.trim_end_matches('/'))
}

fn verify_twilio(sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
    let account = sms.twilio.as_ref().ok_or(IngressError::UnknownTenant)?;
    let signature = request
        .headers
        .get(twilio::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    twilio::verify_request(
        account.auth_token.expose().as_bytes(),
        &public_url(sms, request),
        body,
        signature,
    )
    .map_err(twilio_error)
}

/// Checks a Vonage request's `sig` when the account signs webhooks, else the `token` query.
pub(crate) fn verify_vonage(
    sms: &SmsTenant,
    request: &Parts,
    params: &Params,
    now: DateTime<Utc>,
) -> Result<(), IngressError> {
    let account = sms.vonage.as_ref().ok_or(IngressError::UnknownTenant)?;
    match &account.signature {
        Some((settings, secret)) => {
            vonage::verify_signature(settings, secret.expose().as_bytes(), params, now)
                .map_err(vonage_error)
        }
        None => verify_token(sms, request),
    }
}

/// Checks the `token` query parameter against the tenant's callback token.
fn verify_token(sms: &SmsTenant, request: &Parts) -> Result<(), IngressError> {
    let expected = sms
        .callback_token
        .as_ref()
        .ok_or(IngressError::BadCredentials(
            "no callback_token is configured for this tenant",
        ))?;
    let params = query(request);
    let presented = params.get("token").ok_or(IngressError::MissingCredentials(
        "the callback URL's ?token= is required",
    ))?;
    if secrets_match(presented.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(IngressError::BadCredentials("callback token is not valid"))
    }
}

fn gateway_account<'a>(
    sms: &'a SmsTenant,
    request: &Parts,
) -> Result<&'a crate::settings::GatewayAccount, IngressError> {
    let name = request.uri.path().rsplit('/').next().unwrap_or("");
    sms.gateways.get(name).ok_or(IngressError::UnknownTenant)
}

fn query(request: &Parts) -> Params {
    Params::from_query(request.uri.query().unwrap_or(""))
}

fn content_type(request: &Parts) -> Option<&str> {
    request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The body's parameters (form or flat JSON).
fn body_params(request: &Parts, body: &[u8]) -> Result<Params, IngressError> {
    Params::from_body(content_type(request), body)
        .map_err(|e| IngressError::Malformed(e.to_string()))
}

/// The query's parameters followed by the body's (Vonage and eSMS call with GET or POST).
pub(crate) fn request_params(request: &Parts, body: &[u8]) -> Result<Params, IngressError> {
    Params::from_request(
        request.uri.query().unwrap_or(""),
        content_type(request),
        body,
    )
    .map_err(|e| IngressError::Malformed(e.to_string()))
}

fn twilio_message(
    tenant: &TenantId,
    sms: &SmsTenant,
    request: &Parts,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Parsed, IngressError> {
    let params = body_params(request, body)?;
    let inbound = twilio::TwilioInbound::from_params(&params).map_err(twilio_error)?;
    let ours = sms.twilio.as_ref().map_or("", |t| t.account_sid.as_str());
    if !secrets_match(inbound.account_sid.as_bytes(), ours.as_bytes()) {
        return Err(IngressError::BadCredentials(
            "AccountSid is not this tenant's Twilio account",
        ));
    }
    let attachments = inbound
        .media
        .iter()
        .map(|m| Attachment {
            url: m.url.clone(),
            content_type: m.content_type.clone(),
            name: None,
            size: None,
        })
        .collect();
    let message = Message {
        id: inbound.message_sid.clone(),
        direction: Direction::Inbound,
        text: inbound.body.clone(),
        subject: None,
        attachments,
        reply_to: None,
        payload: None,
        sent_at: None,
    };
    Ok(vec![message_event(
        tenant,
        sms,
        &inbound.from,
        &inbound.to,
        message,
        now,
    )?]
    .into())
}

/// Normalizes an address for a contact id or channel account, naming the field when it is
/// not one.
pub(crate) fn address(sms: &SmsTenant, field: &str, raw: &str) -> Result<Address, IngressError> {
    Address::parse(raw, &sms.country_code).map_err(|e| IngressError::InvalidField {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

/// The contact for a sender address: E.164 numbers also fill `contact.phone`.
pub(crate) fn contact(sender: &Address) -> Contact {
    let mut contact = Contact::new(sender.as_str());
    contact.phone = sender.phone_number().map(|p| p.as_str().to_owned());
    contact
}

fn message_event(
    tenant: &TenantId,
    sms: &SmsTenant,
    from: &str,
    to: &str,
    message: Message,
    now: DateTime<Utc>,
) -> Result<PreparedEvent, IngressError> {
    let sender = address(sms, "from", from)?;
    let ours = address(sms, "to", to)?;
    PreparedEvent::message(
        tenant,
        ChannelRef::new(ChannelKind::Sms, ours.as_str()),
        contact(&sender),
        EventType::MessageReceived,
        message,
        now,
    )
}

fn status_event(
    tenant: &TenantId,
    refs: &Params,
    account: Option<String>,
    provider: Provider,
    report: &StatusReport,
    now: DateTime<Utc>,
) -> Result<Parsed, IngressError> {
    let (Some(reference), Some(account)) = (CallbackRef::from_query(refs), account) else {
        return Ok(uncorrelated());
    };
    Ok(
        delivery_event(tenant, &reference, &account, provider, report, now)?
            .map_or_else(pending, |e| vec![e].into()),
    )
}

/// A report on a message omnirouter did not send (or without our reference): accepted, not
/// published, so the provider does not retry it.
fn uncorrelated() -> Parsed {
    Parsed {
        events: vec![],
        ignored: vec!["uncorrelated_status"],
    }
}

/// A pending state: nothing new to publish.
fn pending() -> Parsed {
    Parsed {
        events: vec![],
        ignored: vec!["pending_status"],
    }
}

fn twilio_error(e: twilio::TwilioError) -> IngressError {
    match e {
        twilio::TwilioError::MissingSignature => {
            IngressError::MissingCredentials("X-Twilio-Signature header is required")
        }
        twilio::TwilioError::SignatureMismatch => {
            IngressError::BadCredentials("X-Twilio-Signature does not match the URL and body")
        }
        twilio::TwilioError::BodyHashMismatch => {
            IngressError::BadCredentials("bodySHA256 does not match the body")
        }
        twilio::TwilioError::MissingField { field } => IngressError::MissingField(field),
        other => IngressError::Malformed(other.to_string()),
    }
}

pub(crate) fn vonage_error(e: vonage::VonageError) -> IngressError {
    match e {
        vonage::VonageError::MissingSignature => {
            IngressError::MissingCredentials("the sig parameter is required")
        }
        vonage::VonageError::SignatureMismatch => {
            IngressError::BadCredentials("sig does not match the parameters")
        }
        vonage::VonageError::StaleTimestamp { .. } => {
            IngressError::BadCredentials("the signed timestamp is outside the allowed age")
        }
        vonage::VonageError::MissingField { field } => IngressError::MissingField(field.into()),
        other => IngressError::Malformed(other.to_string()),
    }
}
