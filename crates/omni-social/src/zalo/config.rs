//! Zalo's config as written (`[zalo]` and `[tenants.<id>.zalo]`), validated into
//! [`ZaloApi`] and [`ZaloTenant`] with no I/O.

use omni_channel::config::{check_http_url, InvalidKey};
use omni_channel::ReplayWindow;
use omni_core::Secret;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use super::shared::TokenSealing;
use super::token::RefreshSettings;
use super::{OaSettings, ZaloSendSettings, ZaloTenant};

/// `[zalo]`: the Zalo OA and OAuth APIs, shared by every tenant's OAs.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawZaloApi {
    /// The OA API base URL.
    pub openapi_base_url: String,
    /// The OAuth base URL (token refresh).
    pub oauth_base_url: String,
    /// The Zalo Notification Service (ZNS) base URL, for template messages.
    pub zns_base_url: String,
    /// OA API calls per second per OA.
    pub rate_per_oa: f64,
    /// Timeout of one API call.
    pub timeout_secs: u64,
    /// Refresh an access token this long before it expires.
    pub refresh_before_secs: u64,
    /// The key (32 bytes, base64) sealing OA token pairs on the shared tokens topic.
    pub token_key: Option<Secret>,
    /// Write token pairs to Kafka in clear text instead (when no `token_key` is set).
    pub tokens_in_clear: bool,
}

impl Default for RawZaloApi {
    fn default() -> Self {
        Self {
            openapi_base_url: "https://openapi.zalo.me".into(),
            oauth_base_url: "https://oauth.zaloapp.com".into(),
            zns_base_url: "https://business.openapi.zalo.me".into(),
            rate_per_oa: 50.0,
            timeout_secs: 15,
            refresh_before_secs: 3600,
            token_key: None,
            tokens_in_clear: false,
        }
    }
}

/// The validated `[zalo]` section.
#[derive(Debug, Clone)]
pub struct ZaloApi {
    /// The OA API.
    pub send: ZaloSendSettings,
    /// Token refresh.
    pub refresh: RefreshSettings,
    /// How token pairs are written to the shared tokens topic.
    pub sealing: TokenSealing,
}

impl RawZaloApi {
    /// Checks the section; `has_oas` says whether any tenant has an OA (their token pairs
    /// then travel through Kafka and must be sealed or explicitly clear). Errors name
    /// `zalo.<key>`.
    pub fn validate(self, has_oas: bool) -> Result<ZaloApi, InvalidKey> {
        check_http_url("zalo.openapi_base_url", &self.openapi_base_url)?;
        check_http_url("zalo.oauth_base_url", &self.oauth_base_url)?;
        check_http_url("zalo.zns_base_url", &self.zns_base_url)?;
        let sealing = match (&self.token_key, self.tokens_in_clear) {
            (Some(key), _) => TokenSealing::from_base64(key.expose())
                .map_err(|e| InvalidKey::new("zalo.token_key", e.to_string()))?,
            (None, true) => TokenSealing::Clear,
            (None, false) if !has_oas => TokenSealing::Clear,
            (None, false) => {
                return Err(InvalidKey::new(
                    "zalo.token_key",
                    "Zalo OAs are configured: their token pairs are shared between replicas through Kafka; set a key to seal them (`openssl rand -base64 32`, e.g. in OMNI__ZALO__TOKEN_KEY) or allow clear text with zalo.tokens_in_clear = true",
                ))
            }
        };
        if self.timeout_secs == 0 {
            // One message for both API timeouts, as operators have always seen it.
            return Err(InvalidKey::new(
                "messenger.timeout_secs / zalo.timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(ZaloApi {
            send: ZaloSendSettings {
                openapi_base_url: self.openapi_base_url,
                zns_base_url: self.zns_base_url,
                rate_per_oa: self.rate_per_oa,
                timeout: Duration::from_secs(self.timeout_secs),
            },
            refresh: RefreshSettings {
                oauth_base_url: self.oauth_base_url,
                refresh_before: Duration::from_secs(self.refresh_before_secs),
                timeout: Duration::from_secs(self.timeout_secs),
            },
            sealing,
        })
    }
}

/// `[tenants.<id>.zalo]`: a tenant's Official Accounts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZalo {
    /// OAs by OA id.
    pub oas: BTreeMap<String, RawOa>,
    /// Refuse events whose signed `timestamp` is further than this from now (either way);
    /// five minutes when absent, `0` turns the window off.
    #[serde(default)]
    pub webhook_max_age_secs: Option<u64>,
}

/// `[tenants.<id>.zalo.oas.<oa id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOa {
    /// The Zalo app connected to the OA.
    pub app_id: String,
    /// The OA secret key (webhook signatures).
    pub oa_secret_key: Secret,
    /// The app secret key (token refresh).
    pub app_secret: Secret,
    /// Where the current token pair is kept (written before a new refresh token is used).
    pub token_file: PathBuf,
    /// The first refresh token, used only when `token_file` does not exist yet.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// An access token to start with, used only when `token_file` does not exist yet.
    #[serde(default)]
    pub access_token: Option<Secret>,
}

impl RawZalo {
    /// Checks the tenant's OAs; errors name `<tenant_key>.zalo.oas.<oa id>.<key>`.
    pub fn validate(self, tenant_key: &str) -> Result<ZaloTenant, InvalidKey> {
        let mut oas = HashMap::new();
        for (oa, o) in self.oas {
            let invalid = |k: &str, reason: &str| {
                InvalidKey::new(format!("{tenant_key}.zalo.oas.{oa}.{k}"), reason)
            };
            if oa.is_empty() || !oa.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("", "an OA id is digits"));
            }
            if o.app_id.is_empty() {
                return Err(invalid("app_id", "must not be empty"));
            }
            if o.oa_secret_key.is_empty() || o.app_secret.is_empty() {
                return Err(invalid("oa_secret_key / app_secret", "must not be empty"));
            }
            if o.token_file.as_os_str().is_empty() {
                return Err(invalid("token_file", "must name a file"));
            }
            oas.insert(
                oa.clone(),
                OaSettings {
                    app_id: o.app_id,
                    oa_secret_key: o.oa_secret_key,
                    app_secret: o.app_secret,
                    token_file: o.token_file,
                    initial_refresh_token: o.refresh_token.filter(|s| !s.is_empty()),
                    initial_access_token: o.access_token.filter(|s| !s.is_empty()),
                },
            );
        }
        Ok(ZaloTenant {
            oas,
            replay_window: ReplayWindow::from_config_secs(self.webhook_max_age_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oas_without_a_sealing_key_or_clear_consent_are_refused() {
        let err = RawZaloApi::default().validate(true).unwrap_err();
        assert_eq!(err.key, "zalo.token_key");
        assert!(RawZaloApi::default().validate(false).is_ok());
    }

    #[test]
    fn the_replay_window_is_five_minutes_unless_set_and_zero_turns_it_off() {
        let window = |extra: serde_json::Value| {
            let mut v = serde_json::json!({ "oas": { "1": {
                "app_id": "1", "oa_secret_key": "k", "app_secret": "s", "token_file": "/tmp/t"
            } } });
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            let raw: RawZalo = serde_json::from_value(v).unwrap();
            raw.validate("tenants.a")
                .unwrap()
                .replay_window
                .map(|w| w.max_age())
        };
        assert_eq!(
            window(serde_json::json!({})),
            Some(omni_channel::replay::DEFAULT_MAX_AGE)
        );
        assert_eq!(
            window(serde_json::json!({ "webhook_max_age_secs": 30 })),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            window(serde_json::json!({ "webhook_max_age_secs": 0 })),
            None
        );
    }

    #[test]
    fn an_oa_id_that_is_not_digits_is_refused_by_key() {
        let raw: RawZalo = serde_json::from_value(serde_json::json!({ "oas": { "x": {
            "app_id": "1", "oa_secret_key": "k", "app_secret": "s", "token_file": "/tmp/t"
        } } }))
        .unwrap();
        let err = raw.validate("tenants.a").unwrap_err();
        assert_eq!(err.key, "tenants.a.zalo.oas.x.");
    }
}
