//! E-mail's config as written (`[email]` and `[tenants.<id>.email]`), validated into
//! [`MailboxSettings`] with no I/O; errors name the key to fix.

use omni_channel::InvalidKey;
use omni_core::{Secret, TenantId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::EmailError;
use crate::settings::{
    AttachmentStore, FirstStart, ImapSettings, MailboxSettings, OAuth2Settings, Security,
    SmtpSettings,
};

/// Google's token endpoint (`provider = "google"`).
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Microsoft's token endpoint for multi-tenant app registrations (`provider = "microsoft"`);
/// a single-tenant registration names its directory instead of `common` in `token_url`.
pub const MICROSOFT_TOKEN_URL: &str = "https://login.microsoftonline.com/common/oauth2/v2.0/token";
/// The scopes Microsoft wants named on every refresh: IMAP, SMTP AUTH, and a refresh token.
pub const MICROSOFT_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access";

/// `[email]`: where mail content is kept, shared by every mailbox.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEmail {
    /// Attachments and each mail's original (`<dir>/<tenant>/<event id>/`), never in Kafka.
    pub attachment_dir: std::path::PathBuf,
    /// The URL where a file server publishes `attachment_dir`; without it events carry
    /// `file://` URLs.
    pub attachment_base_url: Option<String>,
    /// Largest attachment stored (a larger one is listed with the original's URL).
    pub max_attachment_bytes: u64,
    /// Largest mail read whole; longer mail is read up to this and marked truncated.
    pub max_message_bytes: u32,
}

impl Default for RawEmail {
    fn default() -> Self {
        Self {
            attachment_dir: "/var/lib/omnirouter/mail".into(),
            attachment_base_url: None,
            max_attachment_bytes: 20 * 1024 * 1024,
            max_message_bytes: 50 * 1024 * 1024,
        }
    }
}

/// `[tenants.<id>.email]`: the tenant's mailboxes, by a short name of your choosing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantEmail {
    /// Mailboxes by name (`[tenants.<id>.email.mailboxes.support]`).
    pub mailboxes: BTreeMap<String, RawMailbox>,
}

/// One mailbox: read over IMAP, replied to over SMTP from the same address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailbox {
    /// The mailbox's address (the channel account; replies come from it).
    pub address: String,
    /// The name replies are sent under.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Reading.
    pub imap: RawImap,
    /// Sending; without it replies on this mailbox fail as `account_not_configured`.
    #[serde(default)]
    pub smtp: Option<RawSmtp>,
    /// OAuth 2.0 (XOAUTH2) login for IMAP and SMTP instead of passwords.
    #[serde(default)]
    pub oauth2: Option<RawOAuth2>,
    /// The authserv-ids of the receiving servers whose `Authentication-Results` are believed
    /// (the mailbox provider's, e.g. `mx.google.com`); empty: none is.
    #[serde(default)]
    pub trusted_authserv_ids: Vec<String>,
}

/// `…mailboxes.<name>.oauth2`: a refresh token exchanged for access tokens, shared by IMAP
/// and SMTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    /// `google` or `microsoft` fill in `token_url` (and Microsoft's `scope`); leave it out
    /// for another provider and give `token_url`.
    #[serde(default)]
    pub provider: Option<String>,
    /// The token endpoint; default by `provider`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// The app registration's client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The client secret (none for a public client).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// The refresh token from the mailbox owner's consent.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// Scopes asked for on refresh, space-separated; default by `provider`.
    #[serde(default)]
    pub scope: Option<String>,
    /// Timeout of one token request.
    #[serde(default = "default_oauth2_timeout")]
    pub timeout_secs: u64,
}

/// `…mailboxes.<name>.imap`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImap {
    /// Server host.
    pub host: String,
    /// Port; default 993 for `tls`, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls` (default), `starttls`, or `plain` (127.0.0.1 only).
    #[serde(default = "default_tls")]
    pub security: String,
    /// Login; default the address.
    #[serde(default)]
    pub user: Option<String>,
    /// Password or app password (not with `oauth2`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Folder to watch.
    #[serde(default = "default_inbox")]
    pub folder: String,
    /// Re-issue IDLE this often (at most 29 minutes).
    #[serde(default = "default_idle_refresh")]
    pub idle_refresh_secs: u64,
    /// `new` (default): only mail arriving from the first start on; `all`: import the folder.
    #[serde(default = "default_first_start")]
    pub first_start: String,
}

/// `…mailboxes.<name>.smtp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Server host.
    pub host: String,
    /// Port; default 465 for `tls`, 587 for `starttls`, 25 for `plain`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls`, or `plain` (127.0.0.1 only).
    #[serde(default = "default_starttls")]
    pub security: String,
    /// Login; default the address when a password is set.
    #[serde(default)]
    pub user: Option<String>,
    /// Password or app password; none for an unauthenticated relay.
    #[serde(default)]
    pub password: Option<Secret>,
}

fn default_tls() -> String {
    "tls".into()
}
fn default_starttls() -> String {
    "starttls".into()
}
fn default_inbox() -> String {
    "INBOX".into()
}
fn default_idle_refresh() -> u64 {
    25 * 60
}
fn default_first_start() -> String {
    "new".into()
}
fn default_oauth2_timeout() -> u64 {
    30
}

impl RawOAuth2 {
    /// The settings, with the provider's defaults filled in; errors name the key relative to
    /// the mailbox (`oauth2.<key>`). The rest is checked by [`OAuth2Settings::validate`].
    pub fn settings(self) -> Result<OAuth2Settings, Invalid> {
        let bad = |key: &str, reason: &str| (format!("oauth2.{key}"), reason.to_owned());
        let (default_url, default_scope) = match self.provider.as_deref() {
            None => (None, None),
            Some(p) if p.eq_ignore_ascii_case("google") => (Some(GOOGLE_TOKEN_URL), None),
            Some(p) if p.eq_ignore_ascii_case("microsoft") => {
                (Some(MICROSOFT_TOKEN_URL), Some(MICROSOFT_SCOPE))
            }
            Some(other) => {
                return Err(bad(
                    "provider",
                    &format!(
                        "{other:?}: use google or microsoft, or leave it out and set token_url"
                    ),
                ))
            }
        };
        let token_url = self
            .token_url
            .or_else(|| default_url.map(str::to_owned))
            .ok_or_else(|| bad("token_url", "set it, or set provider = google or microsoft"))?;
        Ok(OAuth2Settings {
            token_url,
            client_id: self
                .client_id
                .ok_or_else(|| bad("client_id", "set the app registration's client id"))?,
            client_secret: self.client_secret.filter(|s| !s.is_empty()),
            refresh_token: self.refresh_token.ok_or_else(|| {
                bad(
                    "refresh_token",
                    "set the refresh token from the mailbox owner's consent",
                )
            })?,
            scope: self
                .scope
                .or_else(|| default_scope.map(str::to_owned))
                .filter(|s| !s.trim().is_empty()),
            timeout: Duration::from_secs(self.timeout_secs),
        })
    }
}

impl RawTenantEmail {
    /// The tenant's mailboxes, checked, with the shared `[email]` settings applied; errors
    /// name `<tenant_key>.email.mailboxes.<name>.<key>`.
    pub fn validate(
        self,
        tenant_key: &str,
        tenant: &TenantId,
        email: &RawEmail,
    ) -> Result<Vec<MailboxSettings>, InvalidKey> {
        mailboxes(tenant_key, tenant, self, email)
    }
}

fn mailboxes(
    key: &str,
    tenant: &TenantId,
    raw: RawTenantEmail,
    email: &RawEmail,
) -> Result<Vec<MailboxSettings>, InvalidKey> {
    let mut out = Vec::new();
    for (name, m) in raw.mailboxes {
        let base = format!("{key}.email.mailboxes.{name}");
        let invalid =
            |(k, reason): (String, String)| InvalidKey::new(format!("{base}.{k}"), reason);
        let oauth2 = match m.oauth2 {
            Some(raw) => Some(raw.settings().map_err(invalid)?),
            None => None,
        };
        let login_by_oauth2 = oauth2.is_some();
        let settings = MailboxSettings {
            tenant: tenant.clone(),
            imap: imap(m.imap, &m.address, email).map_err(invalid)?,
            smtp: match m.smtp {
                Some(s) => Some(smtp(s, &m.address, login_by_oauth2).map_err(invalid)?),
                None => None,
            },
            address: m.address,
            display_name: m.display_name,
            oauth2,
            trusted_authserv_ids: m
                .trusted_authserv_ids
                .iter()
                .map(|id| id.trim().to_ascii_lowercase())
                .filter(|id| !id.is_empty())
                .collect(),
            attachments: AttachmentStore {
                dir: email.attachment_dir.clone(),
                base_url: email.attachment_base_url.clone(),
                max_attachment_bytes: email.max_attachment_bytes,
            },
        };
        settings.validate().map_err(|e| match e {
            EmailError::Config { key, reason } => invalid((key, reason)),
            other => invalid((String::new(), other.to_string())),
        })?;
        out.push(settings);
    }
    Ok(out)
}

/// A key relative to the mailbox and why it is wrong.
type Invalid = (String, String);

fn security(key: &str, value: &str) -> Result<Security, Invalid> {
    Security::parse(value).ok_or_else(|| {
        (
            key.to_owned(),
            format!("{value:?}: use tls, starttls or plain"),
        )
    })
}

fn imap(raw: RawImap, address: &str, email: &RawEmail) -> Result<ImapSettings, Invalid> {
    let sec = security("imap.security", &raw.security)?;
    let port = raw.port.unwrap_or(match sec {
        Security::Tls => 993,
        _ => 143,
    });
    let user = raw.user.unwrap_or_else(|| address.to_owned());
    let mut imap = ImapSettings::with_login(raw.host, port, sec, user, raw.password);
    imap.folder = raw.folder;
    if raw.idle_refresh_secs == 0 || raw.idle_refresh_secs > 29 * 60 {
        return Err((
            "imap.idle_refresh_secs".into(),
            "between 1 and 1740 (RFC 2177: at most 29 minutes)".into(),
        ));
    }
    imap.idle_refresh = Duration::from_secs(raw.idle_refresh_secs);
    imap.max_message_bytes = email.max_message_bytes;
    imap.first_start = match raw.first_start.as_str() {
        "new" => FirstStart::New,
        "all" => FirstStart::All,
        other => {
            return Err((
                "imap.first_start".into(),
                format!("{other:?}: use new or all"),
            ))
        }
    };
    Ok(imap)
}

/// SMTP logs in as `user`, by default the address when a password or OAuth 2.0 is set.
fn smtp(raw: RawSmtp, address: &str, oauth2: bool) -> Result<SmtpSettings, Invalid> {
    let sec = security("smtp.security", &raw.security)?;
    Ok(SmtpSettings {
        port: raw.port.unwrap_or(match sec {
            Security::Tls => 465,
            Security::StartTls => 587,
            Security::Plain => 25,
        }),
        host: raw.host,
        security: sec,
        user: raw
            .user
            .or_else(|| (raw.password.is_some() || oauth2).then(|| address.to_owned())),
        password: raw.password,
        timeout: Duration::from_secs(30),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_refresh_over_29_minutes_is_refused_by_key() {
        let raw: RawTenantEmail = serde_json::from_value(serde_json::json!({ "mailboxes": {
            "support": {
                "address": "support@shop.example.vn",
                "imap": { "host": "imap.example.vn", "password": "p", "idle_refresh_secs": 3600 }
            }
        } }))
        .unwrap();
        let tenant = TenantId::new("a").unwrap();
        let err = raw
            .validate("tenants.a", &tenant, &RawEmail::default())
            .unwrap_err();
        assert_eq!(
            err.key,
            "tenants.a.email.mailboxes.support.imap.idle_refresh_secs"
        );
    }

    fn validate(mailbox: serde_json::Value) -> Result<Vec<MailboxSettings>, InvalidKey> {
        let raw: RawTenantEmail =
            serde_json::from_value(serde_json::json!({ "mailboxes": { "support": mailbox } }))
                .unwrap();
        raw.validate(
            "tenants.a",
            &TenantId::new("a").unwrap(),
            &RawEmail::default(),
        )
    }

    fn oauth2_mailbox(oauth2: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "address": "support@shop.example.vn",
            "imap": { "host": "imap.gmail.com" },
            "smtp": { "host": "smtp.gmail.com" },
            "oauth2": oauth2,
        })
    }

    #[test]
    fn a_provider_fills_in_the_token_endpoint_and_scopes() {
        let google = validate(oauth2_mailbox(serde_json::json!({
            "provider": "google", "client_id": "id", "client_secret": "s", "refresh_token": "r"
        })))
        .unwrap();
        let o = google[0].oauth2.as_ref().unwrap();
        assert_eq!(o.token_url, GOOGLE_TOKEN_URL);
        assert_eq!(o.scope, None);
        assert_eq!(o.client_secret.as_ref().map(Secret::expose), Some("s"));
        assert!(google[0].imap.password.is_none());
        // SMTP logs in (with XOAUTH2) as the address unless told otherwise.
        let smtp = google[0].smtp.as_ref().unwrap();
        assert_eq!(smtp.user.as_deref(), Some("support@shop.example.vn"));

        let microsoft = validate(oauth2_mailbox(serde_json::json!({
            "provider": "microsoft", "client_id": "id", "refresh_token": "r",
            "token_url": "https://login.microsoftonline.com/0000-1111/oauth2/v2.0/token"
        })))
        .unwrap();
        let o = microsoft[0].oauth2.as_ref().unwrap();
        assert!(o.token_url.contains("/0000-1111/"), "token_url overrides");
        assert_eq!(o.scope.as_deref(), Some(MICROSOFT_SCOPE));
        assert!(o.client_secret.is_none(), "a public client has no secret");
    }

    #[test]
    fn oauth2_mistakes_are_refused_by_key() {
        let key = |mailbox| validate(mailbox).unwrap_err().key;
        let base = "tenants.a.email.mailboxes.support";
        let good = serde_json::json!({
            "provider": "google", "client_id": "id", "refresh_token": "r"
        });
        let mut with_password = oauth2_mailbox(good.clone());
        with_password["imap"]["password"] = "p".into();
        assert_eq!(key(with_password), format!("{base}.imap.password"));
        let mut with_smtp_password = oauth2_mailbox(good.clone());
        with_smtp_password["smtp"]["password"] = "p".into();
        assert_eq!(key(with_smtp_password), format!("{base}.smtp.password"));

        let mut neither = oauth2_mailbox(good);
        neither.as_object_mut().unwrap().remove("oauth2");
        assert_eq!(key(neither), format!("{base}.imap.password"));

        let oauth2_key = |o: serde_json::Value| key(oauth2_mailbox(o));
        assert_eq!(
            oauth2_key(
                serde_json::json!({"provider": "yahoo", "client_id": "i", "refresh_token": "r"})
            ),
            format!("{base}.oauth2.provider")
        );
        assert_eq!(
            oauth2_key(serde_json::json!({"client_id": "i", "refresh_token": "r"})),
            format!("{base}.oauth2.token_url")
        );
        assert_eq!(
            oauth2_key(serde_json::json!({"provider": "google", "refresh_token": "r"})),
            format!("{base}.oauth2.client_id")
        );
        assert_eq!(
            oauth2_key(serde_json::json!({"provider": "google", "client_id": "i"})),
            format!("{base}.oauth2.refresh_token")
        );
        assert_eq!(
            oauth2_key(serde_json::json!({
                "token_url": "http://idp.example.vn/token", "client_id": "i", "refresh_token": "r"
            })),
            format!("{base}.oauth2.token_url")
        );
        // A misspelled key is an error, never silently ignored.
        let typo: Result<RawOAuth2, _> = serde_json::from_value(serde_json::json!({
            "provider": "google", "client_id": "i", "refresh_tokne": "r"
        }));
        assert!(typo.unwrap_err().to_string().contains("refresh_tokne"));
    }
}
