//! `[tenants.<id>.sms.gateways.<name>]` as written, validated into a [`GatewayAccount`].

use omni_channel::InvalidKey;
use omni_core::Secret;
use serde::Deserialize;

use super::{GatewayAccount, GatewayMapping};

/// `[tenants.<id>.sms.gateways.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Key of the mapping's HMAC-SHA256 signature header.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Where the fields are ([`GatewayMapping`]).
    pub mapping: GatewayMapping,
}

impl RawGateway {
    /// Checks the gateway `name`; an unsigned one needs the tenant's callback token
    /// (`has_callback_token`). Errors name `<sms_key>.gateways.<name>…`.
    pub fn validate(
        self,
        sms_key: &str,
        name: &str,
        has_callback_token: bool,
    ) -> Result<GatewayAccount, InvalidKey> {
        let key = format!("{sms_key}.gateways.{name}");
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(InvalidKey::new(
                key,
                "a gateway name is letters, digits, '-' and '_'",
            ));
        }
        let gateway = self
            .mapping
            .build()
            .map_err(|e| InvalidKey::new(format!("{key}.mapping"), e.to_string()))?;
        let secret = self.secret.filter(|s| !s.is_empty());
        if gateway.signature_header().is_some() && secret.is_none() {
            return Err(InvalidKey::new(
                format!("{key}.secret"),
                "the mapping has a signature header: give its HMAC key",
            ));
        }
        if gateway.signature_header().is_none() && !has_callback_token {
            return Err(InvalidKey::new(
                key,
                "an unsigned gateway needs callback_token (in its URL as ?token=)",
            ));
        }
        Ok(GatewayAccount { gateway, secret })
    }
}
