//! eSMS's `CallbackUrl`: unsigned, so authenticated by the tenant's callback token, and filed
//! by the reference our callback URL carries (or the `RequestId` eSMS echoes).

use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use omni_channel::{IngressError, Parsed};
use omni_core::TenantId;

use super::{parse_delivery_callback, EsmsError};
use crate::callback::{status_event, Provider};
use crate::settings::SmsTenant;
use crate::webhook::{query, request_params, verify_token, ProviderEndpoint};

/// eSMS's delivery callback endpoint.
pub(crate) struct EsmsCallback;

impl ProviderEndpoint for EsmsCallback {
    fn serves(&self, sms: &SmsTenant) -> bool {
        sms.esms.is_some()
    }

    fn verify(&self, sms: &SmsTenant, request: &Parts, _body: &[u8]) -> Result<(), IngressError> {
        verify_token(sms, request)
    }

    fn parse(
        &self,
        tenant: &TenantId,
        _sms: &SmsTenant,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError> {
        let params = request_params(request, body)?;
        let report = parse_delivery_callback(&params).map_err(|e| match e {
            EsmsError::MissingField { field } => IngressError::MissingField(field.into()),
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
}
