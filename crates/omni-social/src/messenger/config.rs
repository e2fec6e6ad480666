//! Messenger's config as written (`[messenger]` and `[tenants.<id>.messenger]`), validated
//! into [`MessengerSendSettings`] and [`MessengerTenant`] with no I/O.

use omni_channel::config::{check_http_url, InvalidKey};
use omni_core::Secret;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{MessengerSendSettings, MessengerTenant, PageSettings};

/// `[messenger]`: the Graph API, shared by every tenant's pages.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMessengerApi {
    /// The Graph API base URL.
    pub graph_base_url: String,
    /// The Graph API version in request paths.
    pub api_version: String,
    /// Send API calls per second per page.
    pub rate_per_page: f64,
    /// Timeout of one Send API call.
    pub timeout_secs: u64,
}

impl Default for RawMessengerApi {
    fn default() -> Self {
        Self {
            graph_base_url: "https://graph.facebook.com".into(),
            api_version: "v23.0".into(),
            rate_per_page: 250.0,
            timeout_secs: 15,
        }
    }
}

impl RawMessengerApi {
    /// Checks the section; errors name `messenger.<key>`.
    pub fn validate(self) -> Result<MessengerSendSettings, InvalidKey> {
        check_http_url("messenger.graph_base_url", &self.graph_base_url)?;
        if self.timeout_secs == 0 {
            // One message for both API timeouts, as operators have always seen it.
            return Err(InvalidKey::new(
                "messenger.timeout_secs / zalo.timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(MessengerSendSettings {
            graph_base_url: self.graph_base_url,
            api_version: self.api_version,
            rate_per_page: self.rate_per_page,
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }
}

/// `[tenants.<id>.messenger]`: a tenant's Meta app and pages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessenger {
    /// The Meta app secret (signs webhooks).
    pub app_secret: Secret,
    /// The verify token typed into Meta's webhook settings.
    pub verify_token: Secret,
    /// Accept the legacy `X-Hub-Signature` (SHA-1) when the SHA-256 header is absent.
    #[serde(default)]
    pub accept_sha1: bool,
    /// Pages by page id.
    #[serde(default)]
    pub pages: BTreeMap<String, RawPage>,
    /// Instagram professional accounts by Instagram account id (Instagram Direct through this
    /// app; the same settings as a page).
    #[serde(default)]
    pub instagram: BTreeMap<String, RawPage>,
}

/// `[tenants.<id>.messenger.pages.<page id>]` and
/// `[tenants.<id>.messenger.instagram.<Instagram account id>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPage {
    /// The page access token for the Send API.
    pub access_token: Secret,
    /// Send human replies 24 h–7 days after the customer's last message with `HUMAN_AGENT`.
    #[serde(default)]
    pub human_agent_tag: bool,
}

impl RawMessenger {
    /// Checks the tenant's app and pages; errors name `<tenant_key>.messenger.<key>`
    /// (`tenant_key` is `tenants.<id>`).
    pub fn validate(self, tenant_key: &str) -> Result<MessengerTenant, InvalidKey> {
        let invalid =
            |k: &str, reason: &str| InvalidKey::new(format!("{tenant_key}.messenger.{k}"), reason);
        if self.app_secret.is_empty() {
            return Err(invalid("app_secret", "must not be empty"));
        }
        if self.verify_token.is_empty() {
            return Err(invalid("verify_token", "must not be empty"));
        }
        let pages = accounts(self.pages, &format!("{tenant_key}.messenger.pages"))?;
        let instagram = accounts(self.instagram, &format!("{tenant_key}.messenger.instagram"))?;
        Ok(MessengerTenant {
            app_secret: self.app_secret,
            verify_token: self.verify_token,
            accept_sha1: self.accept_sha1,
            pages,
            instagram,
        })
    }
}

/// Checks one product's accounts; errors name `<section>.<account id>[.<key>]`.
fn accounts(
    raw: BTreeMap<String, RawPage>,
    section: &str,
) -> Result<HashMap<String, PageSettings>, InvalidKey> {
    let mut accounts = HashMap::new();
    for (id, p) in raw {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidKey::new(
                format!("{section}.{id}"),
                "an account id is digits",
            ));
        }
        if p.access_token.is_empty() {
            return Err(InvalidKey::new(
                format!("{section}.{id}.access_token"),
                "must not be empty",
            ));
        }
        let settings = PageSettings {
            access_token: p.access_token,
            human_agent_tag: p.human_agent_tag,
        };
        accounts.insert(id, settings);
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: serde_json::Value) -> RawMessenger {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_page_id_that_is_not_digits_is_refused_by_key() {
        let err = raw(serde_json::json!({
            "app_secret": "s", "verify_token": "v",
            "pages": { "p1": { "access_token": "t" } }
        }))
        .validate("tenants.a")
        .unwrap_err();
        assert_eq!(err.key, "tenants.a.messenger.pages.p1");
    }

    #[test]
    fn instagram_accounts_are_validated_like_pages_and_named_by_key() {
        let ok = raw(serde_json::json!({
            "app_secret": "s", "verify_token": "v",
            "instagram": { "17841400000000001": { "access_token": "t", "human_agent_tag": true } }
        }))
        .validate("tenants.a")
        .unwrap();
        assert!(ok.instagram["17841400000000001"].human_agent_tag);
        assert!(ok.pages.is_empty());
        let err = raw(serde_json::json!({
            "app_secret": "s", "verify_token": "v",
            "instagram": { "17841400000000001": { "access_token": "" } }
        }))
        .validate("tenants.a")
        .unwrap_err();
        assert_eq!(
            err.key,
            "tenants.a.messenger.instagram.17841400000000001.access_token"
        );
    }

    #[test]
    fn an_empty_app_secret_is_refused_by_key() {
        let err = raw(serde_json::json!({ "app_secret": "", "verify_token": "v" }))
            .validate("tenants.a")
            .unwrap_err();
        assert_eq!(err.key, "tenants.a.messenger.app_secret");
    }
}
