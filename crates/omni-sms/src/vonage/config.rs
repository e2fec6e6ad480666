//! `[tenants.<id>.sms.vonage]` as written, validated into a [`VonageAccount`].

use omni_channel::{InvalidKey, ReplayWindow};
use omni_core::Secret;
use serde::Deserialize;

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
    /// Refuse signed requests whose `timestamp` is further than this from now (either way).
    /// On by default (five minutes, [`omni_channel::replay::DEFAULT_MAX_AGE`]): a captured
    /// signed request must not replay for ever. `0` turns the window off.
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
                    max_age: ReplayWindow::from_config_secs(self.signature_max_age_secs)
                        .map(|w| w.max_age()),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn raw(max_age: Option<u64>) -> RawVonage {
        RawVonage {
            api_key: "key".into(),
            api_secret: Secret::new("secret"),
            signature_method: Some(SignatureMethod::HmacSha256),
            signature_secret: Some(Secret::new("sig")),
            signature_max_age_secs: max_age,
        }
    }

    fn window(max_age: Option<u64>) -> Option<Duration> {
        let account = raw(max_age).validate("tenants.t.sms", false).unwrap();
        account.signature.unwrap().0.max_age
    }

    #[test]
    fn signed_webhooks_have_a_replay_window_unless_turned_off() {
        assert_eq!(window(None), Some(omni_channel::replay::DEFAULT_MAX_AGE));
        assert_eq!(window(Some(60)), Some(Duration::from_secs(60)));
        assert_eq!(window(Some(0)), None);
    }
}
