//! A configured gateway's endpoint: the gateway is named by the last path segment, signed by
//! its mapping's header or else authenticated by the tenant's callback token.

use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use omni_channel::{IngressError, Parsed};
use omni_core::TenantId;

use super::{GatewayAccount, GatewayError};
use crate::inbound::{inbound_message, message_event};
use crate::settings::SmsTenant;
use crate::webhook::{verify_token, ProviderEndpoint};

/// The endpoint of every configured gateway.
pub(crate) struct GatewayWebhook;

impl ProviderEndpoint for GatewayWebhook {
    fn serves(&self, sms: &SmsTenant) -> bool {
        !sms.gateways.is_empty()
    }

    fn verify(&self, sms: &SmsTenant, request: &Parts, body: &[u8]) -> Result<(), IngressError> {
        let account = gateway_account(sms, request)?;
        let Some(header) = account.gateway.signature_header() else {
            return verify_token(sms, request);
        };
        let presented = request.headers.get(header).and_then(|v| v.to_str().ok());
        let secret = account.secret.as_ref().map_or("", |s| s.expose());
        account
            .gateway
            .verify(secret.as_bytes(), presented, body)
            .map(|_| ())
            .map_err(|e| match e {
                GatewayError::MissingSignature { .. } => {
                    IngressError::MissingCredentials("the gateway's signature header is required")
                }
                _ => IngressError::BadCredentials("gateway signature does not match the body"),
            })
    }

    fn parse(
        &self,
        tenant: &TenantId,
        sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let account = gateway_account(sms, request)?;
        let m = account.gateway.extract(body).map_err(|e| match e {
            GatewayError::MissingField { role, field } => {
                IngressError::MissingField(format!("{role} ({field})"))
            }
            other => IngressError::Malformed(other.to_string()),
        })?;
        let message = inbound_message(m.message_id, m.text, vec![], m.timestamp);
        Ok(vec![message_event(tenant, sms, &m.from, &m.to, message, now)?].into())
    }
}

/// The gateway the request's last path segment names.
fn gateway_account<'a>(
    sms: &'a SmsTenant,
    request: &Parts,
) -> Result<&'a GatewayAccount, IngressError> {
    let name = request.uri.path().rsplit('/').next().unwrap_or("");
    sms.gateways.get(name).ok_or(IngressError::UnknownTenant)
}
