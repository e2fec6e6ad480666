//! Twilio's two endpoints: inbound SMS/MMS (`AccountSid` must be the tenant's) and
//! `StatusCallback`, both signed over the public URL and answered with empty TwiML.

use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_channel::signature::secrets_match;
use omni_channel::{IngressError, Parsed};
use omni_core::{Attachment, TenantId};

use super::{status_from_params, verify_request, TwilioError, TwilioInbound, SIGNATURE_HEADER};
use crate::callback::{status_event, Provider};
use crate::inbound::{inbound_message, message_event};
use crate::settings::SmsTenant;
use crate::webhook::{body_params, query, ProviderEndpoint};

/// The empty TwiML document Twilio expects in answer to a message webhook.
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

/// Twilio's endpoints.
pub(crate) enum TwilioWebhook {
    /// Inbound SMS/MMS.
    Message,
    /// `StatusCallback` of a message we sent.
    Status,
}

impl ProviderEndpoint for TwilioWebhook {
    fn serves(&self, sms: &SmsTenant) -> bool {
        sms.twilio.is_some()
    }

    fn verify(&self, sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
        let account = sms.twilio.as_ref().ok_or(IngressError::UnknownTenant)?;
        let signature = request
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        verify_request(
            account.auth_token.expose().as_bytes(),
            &public_url(sms, request),
            body,
            signature,
        )
        .map_err(to_ingress)
    }

    fn parse(
        &self,
        tenant: &TenantId,
        sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        match self {
            Self::Message => message(tenant, sms, request, body, now),
            Self::Status => {
                let params = body_params(request, body)?;
                let report = status_from_params(&params).map_err(to_ingress)?;
                let refs = query(request);
                let account = refs.get("account").map(str::to_owned);
                status_event(tenant, &refs, account, Provider::Twilio, &report, now)
            }
        }
    }

    fn respond(&self) -> Response {
        twiml()
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

fn message(
    tenant: &TenantId,
    sms: &SmsTenant,
    request: &Parts,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Parsed, IngressError> {
    let params = body_params(request, body)?;
    let inbound = TwilioInbound::from_params(&params).map_err(to_ingress)?;
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
    let message = inbound_message(
        inbound.message_sid.clone(),
        inbound.body.clone(),
        attachments,
        None,
    );
    let event = message_event(tenant, sms, &inbound.from, &inbound.to, message, now)?;
    // Media URLs may need the account's credentials ("HTTP Basic Auth for media"); Twilio
    // redirects to a signed CDN URL, where they are not sent on.
    let event = event.with_media_source(omni_channel::MediaSource {
        auth: sms.twilio.as_ref().map(|t| omni_media::FetchAuth::Basic {
            user: t.account_sid.clone(),
            password: t.auth_token.clone(),
        }),
        lookup: omni_channel::MediaLookup::Direct,
    });
    Ok(vec![event].into())
}

/// What a refused Twilio request answers.
fn to_ingress(e: TwilioError) -> IngressError {
    match e {
        TwilioError::MissingSignature => {
            IngressError::MissingCredentials("X-Twilio-Signature header is required")
        }
        TwilioError::SignatureMismatch => {
            IngressError::BadCredentials("X-Twilio-Signature does not match the URL and body")
        }
        TwilioError::BodyHashMismatch => {
            IngressError::BadCredentials("bodySHA256 does not match the body")
        }
        TwilioError::MissingField { field } => IngressError::MissingField(field),
        other => IngressError::Malformed(other.to_string()),
    }
}
