//! `[tenants.<id>.sms.twilio]` as written, validated into a [`TwilioAccount`].

use omni_channel::InvalidKey;
use omni_core::Secret;
use serde::Deserialize;

use super::TwilioAccount;

/// `[tenants.<id>.sms.twilio]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTwilio {
    /// `AC…`.
    pub account_sid: String,
    /// The auth token (REST API password, webhook signature key).
    pub auth_token: Secret,
}

impl RawTwilio {
    /// Checks the account; errors name `<sms_key>.twilio.…` (`sms_key`: `tenants.<id>.sms`).
    pub fn validate(self, sms_key: &str) -> Result<TwilioAccount, InvalidKey> {
        if self.account_sid.trim().is_empty() || self.auth_token.is_empty() {
            return Err(InvalidKey::new(
                format!("{sms_key}.twilio.account_sid / twilio.auth_token"),
                "must not be empty",
            ));
        }
        Ok(TwilioAccount {
            account_sid: self.account_sid.trim().to_owned(),
            auth_token: self.auth_token,
        })
    }
}
