//! E-mail's config as written (`[email]` and `[tenants.<id>.email]`), validated into
//! [`MailboxSettings`] with no I/O; errors name the key to fix.

use omni_channel::InvalidKey;
use omni_core::{Secret, TenantId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::EmailError;
use crate::settings::{
    AttachmentStore, FirstStart, ImapSettings, MailboxSettings, Security, SmtpSettings,
};

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
    /// Password or app password.
    pub password: Secret,
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
        let invalid = |k: &str, reason: String| InvalidKey::new(format!("{base}.{k}"), reason);
        let security = |k: &str, v: &str| {
            Security::parse(v)
                .ok_or_else(|| invalid(k, format!("{v:?}: use tls, starttls or plain")))
        };
        let imap_security = security("imap.security", &m.imap.security)?;
        let mut imap = ImapSettings::new(
            m.imap.host,
            m.imap.port.unwrap_or(match imap_security {
                Security::Tls => 993,
                _ => 143,
            }),
            imap_security,
            m.imap.user.unwrap_or_else(|| m.address.clone()),
            m.imap.password,
        );
        imap.folder = m.imap.folder;
        if m.imap.idle_refresh_secs == 0 || m.imap.idle_refresh_secs > 29 * 60 {
            return Err(invalid(
                "imap.idle_refresh_secs",
                "between 1 and 1740 (RFC 2177: at most 29 minutes)".into(),
            ));
        }
        imap.idle_refresh = Duration::from_secs(m.imap.idle_refresh_secs);
        imap.max_message_bytes = email.max_message_bytes;
        imap.first_start = match m.imap.first_start.as_str() {
            "new" => FirstStart::New,
            "all" => FirstStart::All,
            other => {
                return Err(invalid(
                    "imap.first_start",
                    format!("{other:?}: use new or all"),
                ))
            }
        };
        let smtp = match m.smtp {
            Some(s) => {
                let sec = security("smtp.security", &s.security)?;
                Some(SmtpSettings {
                    port: s.port.unwrap_or(match sec {
                        Security::Tls => 465,
                        Security::StartTls => 587,
                        Security::Plain => 25,
                    }),
                    host: s.host,
                    security: sec,
                    user: s
                        .user
                        .or_else(|| s.password.as_ref().map(|_| m.address.clone())),
                    password: s.password,
                    timeout: Duration::from_secs(30),
                })
            }
            None => None,
        };
        let settings = MailboxSettings {
            tenant: tenant.clone(),
            address: m.address,
            display_name: m.display_name,
            imap,
            smtp,
            attachments: AttachmentStore {
                dir: email.attachment_dir.clone(),
                base_url: email.attachment_base_url.clone(),
                max_attachment_bytes: email.max_attachment_bytes,
            },
        };
        settings.validate().map_err(|e| match e {
            EmailError::Config { key, reason } => invalid(&key, reason),
            other => invalid("", other.to_string()),
        })?;
        out.push(settings);
    }
    Ok(out)
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
}
