//! WhatsApp's config as written (`[whatsapp]` and `[tenants.<id>.whatsapp]`), validated into
//! [`WhatsappSendSettings`] and [`WhatsappTenant`] with no I/O.

use omni_channel::config::{check_http_url, InvalidKey};
use omni_core::Secret;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{NumberSettings, WhatsappSendSettings, WhatsappTenant};

/// `[whatsapp]`: the Cloud API, shared by every tenant's numbers.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWhatsappApi {
    /// The Graph API base URL.
    pub graph_base_url: String,
    /// The Graph API version in request paths.
    pub api_version: String,
    /// Messages per second per business number (Cloud API's default throughput is 80).
    pub rate_per_number: f64,
    /// Timeout of one Cloud API call.
    pub timeout_secs: u64,
}

impl Default for RawWhatsappApi {
    fn default() -> Self {
        Self {
            graph_base_url: "https://graph.facebook.com".into(),
            api_version: "v23.0".into(),
            rate_per_number: 80.0,
            timeout_secs: 15,
        }
    }
}

impl RawWhatsappApi {
    /// Checks the section; errors name `whatsapp.<key>`.
    pub fn validate(self) -> Result<WhatsappSendSettings, InvalidKey> {
        check_http_url("whatsapp.graph_base_url", &self.graph_base_url)?;
        if self.api_version.is_empty() || self.api_version.contains('/') {
            return Err(InvalidKey::new(
                "whatsapp.api_version",
                "a Graph API version such as v23.0",
            ));
        }
        if self.rate_per_number.is_nan() || self.rate_per_number <= 0.0 {
            return Err(InvalidKey::new(
                "whatsapp.rate_per_number",
                "must be above 0",
            ));
        }
        if self.timeout_secs == 0 {
            return Err(InvalidKey::new(
                "whatsapp.timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(WhatsappSendSettings {
            graph_base_url: self.graph_base_url.trim_end_matches('/').to_owned(),
            api_version: self.api_version,
            rate_per_number: self.rate_per_number,
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }
}

/// `[tenants.<id>.whatsapp]`: a tenant's Meta app and WhatsApp business numbers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhatsapp {
    /// The Meta app secret (signs webhooks).
    pub app_secret: Secret,
    /// The verify token typed into the app's WhatsApp webhook settings.
    pub verify_token: Secret,
    /// Business numbers by phone number id (not the phone number itself: the id WhatsApp
    /// Manager shows beside it).
    #[serde(default)]
    pub numbers: BTreeMap<String, RawNumber>,
}

/// `[tenants.<id>.whatsapp.numbers.<phone number id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNumber {
    /// The access token for the Cloud API.
    pub access_token: Secret,
}

impl RawWhatsapp {
    /// Checks the tenant's app and numbers; errors name `<tenant_key>.whatsapp.<key>`
    /// (`tenant_key` is `tenants.<id>`).
    pub fn validate(self, tenant_key: &str) -> Result<WhatsappTenant, InvalidKey> {
        let key = |k: &str| format!("{tenant_key}.whatsapp.{k}");
        if self.app_secret.is_empty() {
            return Err(InvalidKey::new(key("app_secret"), "must not be empty"));
        }
        if self.verify_token.is_empty() {
            return Err(InvalidKey::new(key("verify_token"), "must not be empty"));
        }
        let mut numbers = HashMap::new();
        for (id, n) in self.numbers {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidKey::new(
                    key(&format!("numbers.{id}")),
                    "a phone number id is digits",
                ));
            }
            if n.access_token.is_empty() {
                return Err(InvalidKey::new(
                    key(&format!("numbers.{id}.access_token")),
                    "must not be empty",
                ));
            }
            numbers.insert(
                id,
                NumberSettings {
                    access_token: n.access_token,
                },
            );
        }
        Ok(WhatsappTenant {
            app_secret: self.app_secret,
            verify_token: self.verify_token,
            numbers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: serde_json::Value) -> RawWhatsapp {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn numbers_are_keyed_by_digit_ids_and_errors_name_the_key() {
        let ok = raw(serde_json::json!({
            "app_secret": "s", "verify_token": "v",
            "numbers": { "106540352242922": { "access_token": "t" } }
        }))
        .validate("tenants.a")
        .unwrap();
        assert_eq!(ok.numbers["106540352242922"].access_token.expose(), "t");
        let err = raw(serde_json::json!({
            "app_secret": "s", "verify_token": "v",
            "numbers": { "+84901234567": { "access_token": "t" } }
        }))
        .validate("tenants.a")
        .unwrap_err();
        assert_eq!(err.key, "tenants.a.whatsapp.numbers.+84901234567");
        let err = raw(serde_json::json!({ "app_secret": "s", "verify_token": "" }))
            .validate("tenants.a")
            .unwrap_err();
        assert_eq!(err.key, "tenants.a.whatsapp.verify_token");
    }

    #[test]
    fn the_api_section_refuses_a_zero_rate_and_trims_the_base_url() {
        let mut api = RawWhatsappApi {
            graph_base_url: "http://127.0.0.1:9/".into(),
            ..RawWhatsappApi::default()
        };
        assert_eq!(
            api_validate(&api).unwrap().graph_base_url,
            "http://127.0.0.1:9"
        );
        api.rate_per_number = 0.0;
        assert_eq!(
            api_validate(&api).unwrap_err().key,
            "whatsapp.rate_per_number"
        );
    }

    fn api_validate(api: &RawWhatsappApi) -> Result<WhatsappSendSettings, InvalidKey> {
        RawWhatsappApi {
            graph_base_url: api.graph_base_url.clone(),
            api_version: api.api_version.clone(),
            rate_per_number: api.rate_per_number,
            timeout_secs: api.timeout_secs,
        }
        .validate()
    }
}
