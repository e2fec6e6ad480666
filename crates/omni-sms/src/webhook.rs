//! The SMS webhook adapters `omni_channel::Ingress` drives: inbound messages (Twilio, Vonage
//! single-part, generic gateways) to `omni.inbound.v1`, and status callbacks (Twilio
//! `StatusCallback`, Vonage delivery receipts, eSMS `CallbackUrl`) to `omni.delivery.v1`.
//! Multipart Vonage messages go through [`crate::vonage::concat_store`] instead, which reuses
//! the Vonage checks.
//!
//! Every endpoint is one [`SmsWebhook`] over the same tenants, told apart by [`Endpoint`]; what
//! an endpoint checks and publishes lives in its provider's folder (`twilio/webhook.rs`…), and
//! this file only holds what they share:
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
use omni_channel::{Accepted, IngressError, Parsed, WebhookAdapter};
use omni_core::{ChannelKind, TenantId};

use crate::esms::webhook::EsmsCallback;
use crate::gateway::webhook::GatewayWebhook;
use crate::params::Params;
use crate::settings::SmsTenant;
use crate::twilio::webhook::TwilioWebhook;
use crate::vonage::webhook::VonageWebhook;

#[cfg(test)]
mod tests;

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
    /// Vonage inbound SMS (single part; multipart goes through
    /// [`crate::vonage::concat_store`]).
    VonageMessage,
    /// Vonage delivery receipt.
    VonageDlr,
    /// eSMS `CallbackUrl`.
    EsmsCallback,
    /// A configured generic gateway (its name is the last path segment).
    Gateway,
}

impl Endpoint {
    /// The provider code behind the endpoint.
    fn provider(self) -> &'static dyn ProviderEndpoint {
        match self {
            Endpoint::TwilioMessage => &TwilioWebhook::Message,
            Endpoint::TwilioStatus => &TwilioWebhook::Status,
            Endpoint::VonageMessage => &VonageWebhook::Message,
            Endpoint::VonageDlr => &VonageWebhook::Receipt,
            Endpoint::EsmsCallback => &EsmsCallback,
            Endpoint::Gateway => &GatewayWebhook,
        }
    }
}

/// What a provider says about one of its endpoints: the rest of [`WebhookAdapter`] (body
/// limits, dedupe, publishing, status codes) is the shared handler's.
pub(crate) trait ProviderEndpoint {
    /// True when the tenant has this endpoint's provider (others answer 404).
    fn serves(&self, sms: &SmsTenant) -> bool;

    /// Authenticates the request on its raw bytes.
    fn verify(&self, sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError>;

    /// What the request becomes.
    fn parse(
        &self,
        tenant: &TenantId,
        sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError>;

    /// The answer once the events are published: a plain `OK` unless the provider wants
    /// something else.
    fn respond(&self) -> Response {
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "OK").into_response()
    }
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
        self.endpoint.provider().serves(sms).then_some((id, sms))
    }

    fn verify(&self, sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
        self.endpoint.provider().verify(sms, request, body)
    }

    fn parse(
        &self,
        tenant: &TenantId,
        sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        self.endpoint
            .provider()
            .parse(tenant, sms, request, body, now)
    }

    fn respond(&self, _accepted: Accepted) -> Response {
        self.endpoint.provider().respond()
    }
}

/// Checks the `token` query parameter against the tenant's callback token: the credential of
/// the callbacks a provider does not sign.
pub(crate) fn verify_token(sms: &SmsTenant, request: &Parts) -> Result<(), IngressError> {
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

/// The query's parameters (where our callback URLs carry their references and token).
pub(crate) fn query(request: &Parts) -> Params {
    Params::from_query(request.uri.query().unwrap_or(""))
}

fn content_type(request: &Parts) -> Option<&str> {
    request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// The body's parameters (form or flat JSON).
pub(crate) fn body_params(request: &Parts, body: &[u8]) -> Result<Params, IngressError> {
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
