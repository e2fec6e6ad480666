//! Vonage's two endpoints: inbound messages (single part; parts go through
//! [`super::concat_store`]) and delivery receipts, signed with `sig` or else authenticated by
//! the tenant's callback token.

use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use omni_channel::{IngressError, Parsed};
use omni_core::TenantId;

use super::{parse_delivery_receipt, verify_signature, VonageError, VonageInbound};
use crate::callback::{reference_event, uncorrelated, CallbackRef, Provider};
use crate::inbound::{inbound_message, message_event};
use crate::params::Params;
use crate::phone::Address;
use crate::settings::SmsTenant;
use crate::webhook::{request_params, verify_token, ProviderEndpoint};

/// Vonage's endpoints.
pub(crate) enum VonageWebhook {
    /// Inbound SMS.
    Message,
    /// Delivery receipt of a message we sent.
    Receipt,
}

impl ProviderEndpoint for VonageWebhook {
    fn serves(&self, sms: &SmsTenant) -> bool {
        sms.vonage.is_some()
    }

    fn verify(&self, sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
        verify(sms, request, &request_params(request, body)?, Utc::now())
    }

    fn parse(
        &self,
        tenant: &TenantId,
        sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let params = request_params(request, body)?;
        match self {
            Self::Message => {
                let inbound = VonageInbound::from_params(&params).map_err(to_ingress)?;
                if inbound.concat.is_some() {
                    return Err(IngressError::InvalidField {
                        field: "concat".into(),
                        reason: "multipart parts go through the reassembling handler".into(),
                    });
                }
                let message = inbound_message(
                    inbound.message_id.clone(),
                    inbound.text.clone(),
                    vec![],
                    inbound.message_timestamp,
                );
                let event = message_event(tenant, sms, &inbound.msisdn, &inbound.to, message, now)?;
                Ok(vec![event].into())
            }
            Self::Receipt => {
                let report = parse_delivery_receipt(&params).map_err(to_ingress)?;
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
                reference_event(tenant, &reference, &account, Provider::Vonage, &report, now)
            }
        }
    }
}

/// Checks a Vonage request's `sig` when the account signs webhooks, else the `token` query.
pub(crate) fn verify(
    sms: &SmsTenant,
    request: &Parts,
    params: &Params,
    now: DateTime<Utc>,
) -> Result<(), IngressError> {
    let account = sms.vonage.as_ref().ok_or(IngressError::UnknownTenant)?;
    match &account.signature {
        Some((settings, secret)) => {
            verify_signature(settings, secret.expose().as_bytes(), params, now).map_err(to_ingress)
        }
        None => verify_token(sms, request),
    }
}

/// What a refused Vonage request answers.
pub(crate) fn to_ingress(e: VonageError) -> IngressError {
    match e {
        VonageError::MissingSignature => {
            IngressError::MissingCredentials("the sig parameter is required")
        }
        VonageError::SignatureMismatch => {
            IngressError::BadCredentials("sig does not match the parameters")
        }
        VonageError::StaleTimestamp(stale) => stale.into(),
        VonageError::MissingField { field } => IngressError::MissingField(field.into()),
        other => IngressError::Malformed(other.to_string()),
    }
}
