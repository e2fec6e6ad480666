//! `[tenants.<id>.sms.vonage]` as written, validated into a [`VonageAccount`].

use omni_channel::InvalidKey;
use omni_core::Secret;
use serde::Deserialize;
use std::time::Duration;

use super::{SignatureMethod, SignatureSettings, VonageAccount};

/// `[tenants.<id>.sms.vonage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVonage {
    /// `api_key`.
    pub api_key: String,
    /// `api_secret`.
    pub api_secret: Secret,
    /// Signed webhooks: `md5hash`, `md5`, `sha1`, `sha256` or `sha512` (the dashboard's).
    #[serde(default)]
    pub signature_method: Option<SignatureMethod>,
    /// The dashboard's signature secret.
    #[serde(default)]
    pub signature_secret: Option<Secret>,
    /// Refuse signed requests whose `timestamp` is further than this from now.
    #[serde(default)]
    pub signature_max_age_secs: Option<u64>,
}

impl RawVonage {
    /// Checks the account; unsigned webhooks need the tenant's callback token
    /// (`has_callback_token`). Errors name `<sms_key>.vonage…` (`sms_key`: `tenants.<id>.sms`).
    pub fn validate(
        self,
        sms_key: &str,
        has_callback_token: bool,
    ) -> Result<VonageAccount, InvalidKey> {
        let invalid = |k: &str, reason: &str| InvalidKey::new(format!("{sms_key}.{k}"), reason);
        if self.api_key.trim().is_empty() || self.api_secret.is_empty() {
            return Err(invalid(
                "vonage.api_key / vonage.api_secret",
                "must not be empty",
            ));
        }
        let signature = match (
            self.signature_method,
            self.signature_secret.filter(|s| !s.is_empty()),
        ) {
            (Some(method), Some(secret)) => Some((
                SignatureSettings {
                    method,
                    max_age: self.signature_max_age_secs.map(Duration::from_secs),
                },
                secret,
            )),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "vonage.signature_method / vonage.signature_secret",
                    "give both for signed webhooks, or neither",
                ))
            }
        };
        if signature.is_none() && !has_callback_token {
            return Err(invalid(
                "vonage",
                "unsigned Vonage webhooks need callback_token (in their URL as ?token=)",
            ));
        }
        Ok(VonageAccount {
            api_key: self.api_key.trim().to_owned(),
            api_secret: self.api_secret,
            signature,
        })
    }
}
