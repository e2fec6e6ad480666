//! `[tenants.<id>.sms.esms]` as written, validated into an [`EsmsAccount`].

use omni_channel::InvalidKey;
use omni_core::Secret;
use serde::Deserialize;

use super::{EsmsAccount, EsmsCredentials, SmsType};

/// `[tenants.<id>.sms.esms]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEsms {
    /// `ApiKey`.
    pub api_key: Secret,
    /// `SecretKey`.
    pub secret_key: Secret,
    /// `Sandbox=1`: requests are checked, nothing is delivered.
    #[serde(default)]
    pub sandbox: bool,
}

impl RawEsms {
    /// Checks the account; errors name `<sms_key>.esms.…` (`sms_key`: `tenants.<id>.sms`).
    pub fn validate(self, sms_key: &str) -> Result<EsmsAccount, InvalidKey> {
        if self.api_key.is_empty() || self.secret_key.is_empty() {
            return Err(InvalidKey::new(
                format!("{sms_key}.esms.api_key / esms.secret_key"),
                "must not be empty",
            ));
        }
        Ok(EsmsAccount {
            credentials: EsmsCredentials {
                api_key: self.api_key,
                secret_key: self.secret_key,
            },
            sandbox: self.sandbox,
        })
    }
}

/// A number's `sms_type` as written: `2`/`brandname_care` (the default) or
/// `8`/`fixed_number`; `Err` holds the reason.
pub fn sms_type(written: Option<&str>) -> Result<SmsType, String> {
    match written.map(str::trim) {
        None | Some("2") | Some("brandname_care") => Ok(SmsType::BrandnameCare),
        Some("8") | Some("fixed_number") => Ok(SmsType::FixedNumber),
        Some(other) => Err(format!(
            "{other:?} is not 2 (brandname care) or 8 (fixed number)"
        )),
    }
}
