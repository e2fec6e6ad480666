//! A tenant's SMS setup, as the daemon validated it from config: which provider accounts it
//! has, which of our numbers go out through which one, and the public URL providers call back.
//! Also the config as written (`[sms]`, `[tenants.<id>.sms]`) and its validation, which names
//! the bad key; each provider folder's `config` holds its own account's raw settings.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use omni_channel::config::{check_http_url, InvalidKey};
use omni_core::Secret;
use serde::Deserialize;

use crate::esms::config::RawEsms;
use crate::gateway::config::RawGateway;
use crate::reassembly::ReassemblerConfig;
use crate::twilio::config::RawTwilio;
use crate::vonage::config::RawVonage;
use crate::{Address, PhoneNumber};

pub use crate::esms::EsmsAccount;
use crate::esms::SmsType;
pub use crate::gateway::GatewayAccount;
pub use crate::twilio::TwilioAccount;
pub use crate::vonage::VonageAccount;

/// One tenant's SMS channel.
#[derive(Debug, Clone)]
pub struct SmsTenant {
    /// The scheme, host (and port, and path prefix, if any) providers reach this daemon at,
    /// without a trailing `/`: `https://sms.shop.example.vn`. Twilio signs the URL it called,
    /// so behind a TLS-terminating proxy this is what the request URL is rebuilt from; callback
    /// URLs sent to providers are built from it too.
    pub public_base_url: String,
    /// The country calling code of national numbers (`0901234567` → `+84901234567`).
    pub country_code: String,
    /// The Twilio account, if the tenant has one.
    pub twilio: Option<TwilioAccount>,
    /// The Vonage account, if the tenant has one.
    pub vonage: Option<VonageAccount>,
    /// The eSMS.vn account, if the tenant has one.
    pub esms: Option<EsmsAccount>,
    /// Generic inbound gateways, by the name in their webhook path.
    pub gateways: HashMap<String, GatewayAccount>,
    /// Our numbers, short codes and brandnames (normalized), and how each sends.
    pub numbers: HashMap<String, NumberRoute>,
    /// The `token` query parameter that authenticates callbacks providers do not sign (eSMS,
    /// unsigned Vonage and gateway webhooks), compared in constant time.
    pub callback_token: Option<Secret>,
}

/// How one of our numbers sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberRoute {
    /// Through the tenant's Twilio account.
    Twilio {
        /// `MessagingServiceSid` to send from a messaging service instead of `From`.
        messaging_service_sid: Option<String>,
    },
    /// Through the tenant's Vonage account.
    Vonage,
    /// Through the tenant's eSMS.vn account.
    Esms {
        /// `SmsType`: brandname customer care (`2`, the number key is the brandname) or an
        /// eSMS fixed number (`8`).
        sms_type: SmsType,
    },
}

/// Provider API endpoints and limits, shared by every tenant.
#[derive(Debug, Clone)]
pub struct SmsApiSettings {
    /// `https://api.twilio.com` in production.
    pub twilio_base_url: String,
    /// `https://rest.nexmo.com` in production.
    pub vonage_base_url: String,
    /// `https://rest.esms.vn` in production.
    pub esms_base_url: String,
    /// Timeout of one provider call.
    pub timeout: Duration,
    /// Sends per second per sending number (0: no limit).
    pub rate_per_number: f64,
}

impl Default for SmsApiSettings {
    fn default() -> Self {
        Self {
            twilio_base_url: "https://api.twilio.com".into(),
            vonage_base_url: "https://rest.nexmo.com".into(),
            esms_base_url: "https://rest.esms.vn".into(),
            timeout: Duration::from_secs(15),
            rate_per_number: 10.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The config as written, and its validation (no I/O)
// ---------------------------------------------------------------------------------------------

/// `[sms]`: the SMS providers' APIs and multipart reassembly, shared by every tenant.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSmsApi {
    /// Twilio's REST API base URL.
    pub twilio_base_url: String,
    /// Vonage's SMS API base URL.
    pub vonage_base_url: String,
    /// eSMS.vn's API base URL.
    pub esms_base_url: String,
    /// Timeout of one provider call.
    pub timeout_secs: u64,
    /// Sends per second per sending number (0: no limit).
    pub rate_per_number: f64,
    /// How long a multipart SMS waits for its missing parts before it is published as it is.
    pub concat_ttl_secs: u64,
    /// Incomplete multipart SMS held at most per tenant (the oldest is published when full).
    pub concat_max_pending: usize,
}

impl Default for RawSmsApi {
    fn default() -> Self {
        let api = SmsApiSettings::default();
        Self {
            twilio_base_url: api.twilio_base_url,
            vonage_base_url: api.vonage_base_url,
            esms_base_url: api.esms_base_url,
            timeout_secs: api.timeout.as_secs(),
            rate_per_number: api.rate_per_number,
            concat_ttl_secs: 900,
            concat_max_pending: 10_000,
        }
    }
}

impl RawSmsApi {
    /// Checks the section into the providers' APIs and the multipart reassembly settings;
    /// errors name `sms.<key>`.
    pub fn validate(self) -> Result<(SmsApiSettings, ReassemblerConfig), InvalidKey> {
        check_http_url("sms.twilio_base_url", &self.twilio_base_url)?;
        check_http_url("sms.vonage_base_url", &self.vonage_base_url)?;
        check_http_url("sms.esms_base_url", &self.esms_base_url)?;
        if self.timeout_secs == 0 || self.concat_ttl_secs == 0 {
            return Err(InvalidKey::new(
                "sms.timeout_secs / sms.concat_ttl_secs",
                "must be at least 1",
            ));
        }
        if !self.rate_per_number.is_finite() || self.rate_per_number < 0.0 {
            return Err(InvalidKey::new(
                "sms.rate_per_number",
                "must be 0 (no limit) or a positive number",
            ));
        }
        let api = SmsApiSettings {
            twilio_base_url: self.twilio_base_url,
            vonage_base_url: self.vonage_base_url,
            esms_base_url: self.esms_base_url,
            timeout: Duration::from_secs(self.timeout_secs),
            rate_per_number: self.rate_per_number,
        };
        let concat = ReassemblerConfig {
            ttl: Duration::from_secs(self.concat_ttl_secs),
            max_pending: self.concat_max_pending.max(1),
            ..Default::default()
        };
        Ok((api, concat))
    }
}

/// `[tenants.<id>.sms]`: a tenant's SMS providers and numbers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSms {
    /// `https://host[:port][/prefix]` providers reach this daemon at (Twilio signs it).
    pub public_base_url: String,
    /// Country calling code of national numbers (`0901234567` → `+84901234567`).
    #[serde(default = "default_country_code")]
    pub country_code: String,
    /// `?token=` of callbacks providers do not sign (eSMS; unsigned Vonage and gateways).
    #[serde(default)]
    pub callback_token: Option<Secret>,
    /// The Twilio account.
    #[serde(default)]
    pub twilio: Option<RawTwilio>,
    /// The Vonage account.
    #[serde(default)]
    pub vonage: Option<RawVonage>,
    /// The eSMS.vn account.
    #[serde(default)]
    pub esms: Option<RawEsms>,
    /// Generic inbound gateways by name (`/v1/webhooks/sms/gateway/<tenant>/<name>`).
    #[serde(default)]
    pub gateways: BTreeMap<String, RawGateway>,
    /// Our numbers, short codes and brandnames, and the provider each sends through.
    #[serde(default)]
    pub numbers: BTreeMap<String, RawNumber>,
}

fn default_country_code() -> String {
    "84".into()
}

/// `[tenants.<id>.sms.numbers."<number>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNumber {
    /// `twilio`, `vonage` or `esms`.
    pub provider: String,
    /// Twilio: send from this messaging service instead of the number.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// eSMS: `2` (brandname customer care, the default) or `8` (eSMS fixed number).
    #[serde(default)]
    pub sms_type: Option<String>,
}

impl RawSms {
    /// Checks the tenant's SMS setup; errors name `<tenant_key>.sms.<key>` (`tenant_key`:
    /// `tenants.<id>`).
    pub fn validate(self, tenant_key: &str) -> Result<SmsTenant, InvalidKey> {
        let sms_key = format!("{tenant_key}.sms");
        let base = self.public_base_url.trim_end_matches('/').to_owned();
        let host = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(['?', '#'])) {
            return Err(InvalidKey::new(
                format!("{sms_key}.public_base_url"),
                format!("{base:?} is not an http(s) URL without query"),
            ));
        }
        if PhoneNumber::parse("0901234567", &self.country_code).is_err() {
            return Err(InvalidKey::new(
                format!("{sms_key}.country_code"),
                "give a country calling code such as 84",
            ));
        }
        let callback_token = self.callback_token.filter(|s| !s.is_empty());
        let has_token = callback_token.is_some();
        let twilio = self.twilio.map(|t| t.validate(&sms_key)).transpose()?;
        let vonage = self
            .vonage
            .map(|v| v.validate(&sms_key, has_token))
            .transpose()?;
        let esms = self.esms.map(|e| e.validate(&sms_key)).transpose()?;
        let mut gateways = HashMap::new();
        for (name, g) in self.gateways {
            let gateway = g.validate(&sms_key, &name, has_token)?;
            gateways.insert(name, gateway);
        }
        let mut tenant = SmsTenant {
            public_base_url: base,
            country_code: self.country_code,
            twilio,
            vonage,
            esms,
            gateways,
            numbers: HashMap::new(),
            callback_token,
        };
        for (number, n) in self.numbers {
            let (address, route) = tenant.number_route(tenant_key, &number, n)?;
            tenant.numbers.insert(address, route);
        }
        Ok(tenant)
    }
}

impl SmsTenant {
    /// One of our numbers as written, normalized, and how it sends: through an account the
    /// tenant has. Errors name `<tenant_key>.sms.numbers.<number>…`.
    fn number_route(
        &self,
        tenant_key: &str,
        number: &str,
        raw: RawNumber,
    ) -> Result<(String, NumberRoute), InvalidKey> {
        let k = format!("{tenant_key}.sms.numbers.{number}");
        let address = Address::parse(number, &self.country_code)
            .map_err(|e| InvalidKey::new(k.clone(), e.to_string()))?;
        let route = match raw.provider.as_str() {
            "twilio" if self.twilio.is_some() => NumberRoute::Twilio {
                messaging_service_sid: raw.messaging_service_sid.filter(|s| !s.is_empty()),
            },
            "vonage" if self.vonage.is_some() => NumberRoute::Vonage,
            "esms" if self.esms.is_some() => NumberRoute::Esms {
                sms_type: crate::esms::config::sms_type(raw.sms_type.as_deref())
                    .map_err(|reason| InvalidKey::new(format!("{k}.sms_type"), reason))?,
            },
            p @ ("twilio" | "vonage" | "esms") => {
                return Err(InvalidKey::new(
                    format!("{k}.provider"),
                    format!("{p} is not configured: add [{tenant_key}.sms.{p}]"),
                ))
            }
            other => {
                return Err(InvalidKey::new(
                    format!("{k}.provider"),
                    format!("{other:?} is not twilio, vonage or esms"),
                ))
            }
        };
        Ok((address.as_str().to_owned(), route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(value: serde_json::Value) -> Result<SmsTenant, InvalidKey> {
        serde_json::from_value::<RawSms>(value)
            .unwrap()
            .validate("tenants.a")
    }

    fn with(extra: serde_json::Value) -> serde_json::Value {
        let mut base = serde_json::json!({
            "public_base_url": "https://sms.example.vn/",
            "callback_token": "t",
            "twilio": { "account_sid": "AC1", "auth_token": "x" },
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    #[test]
    fn sms_settings_are_validated_naming_the_key() {
        let ok = validate(with(serde_json::json!({
            "numbers": { "0281234567": { "provider": "twilio" } }
        })))
        .unwrap();
        assert_eq!(ok.public_base_url, "https://sms.example.vn");
        assert!(
            ok.numbers.contains_key("+84281234567"),
            "numbers are normalized"
        );
        for (extra, key) in [
            (
                serde_json::json!({ "numbers": { "0281234567": { "provider": "vonage" } } }),
                "tenants.a.sms.numbers.0281234567.provider",
            ),
            (
                serde_json::json!({ "numbers": { "OMNI CARE": { "provider": "esms" } } }),
                "tenants.a.sms.numbers.OMNI CARE.provider",
            ),
            (
                serde_json::json!({ "vonage": {
                    "api_key": "k", "api_secret": "s", "signature_method": "sha256"
                } }),
                "tenants.a.sms.vonage.signature_method",
            ),
        ] {
            let err = validate(with(extra)).unwrap_err();
            assert!(err.key.contains(key), "{err}");
        }
        let err = validate(serde_json::json!({
            "public_base_url": "ftp://x",
            "twilio": { "account_sid": "AC1", "auth_token": "x" },
        }))
        .unwrap_err();
        assert_eq!(err.key, "tenants.a.sms.public_base_url");
    }

    #[test]
    fn a_negative_send_rate_is_refused_by_key() {
        let raw = RawSmsApi {
            rate_per_number: -1.0,
            ..RawSmsApi::default()
        };
        assert_eq!(raw.validate().unwrap_err().key, "sms.rate_per_number");
    }
}
