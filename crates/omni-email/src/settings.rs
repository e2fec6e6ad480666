//! Typed settings for one mailbox: where to read (IMAP), where to send (SMTP) and where
//! attachments go. The daemon parses its config file into these; nothing here does I/O.

use omni_core::{Secret, TenantId};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::EmailError;

/// How a connection to a mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Tls,
    /// A plain connection upgraded with STARTTLS before login (IMAP 143, submission 587).
    /// The upgrade is required: a server that does not offer it is an error, never a
    /// silent fall-back to plain text.
    StartTls,
    /// No encryption. Only for servers on the loopback interface (tests, a local relay).
    Plain,
}

impl Security {
    /// Parses `tls`, `starttls` or `plain` (the config file's spelling).
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "tls" | "ssl" => Some(Self::Tls),
            "starttls" => Some(Self::StartTls),
            "plain" | "none" => Some(Self::Plain),
            _ => None,
        }
    }
}

/// Where mail is read from.
#[derive(Debug, Clone)]
pub struct ImapSettings {
    /// Server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Server port (993 for TLS, 143 for STARTTLS).
    pub port: u16,
    /// Connection protection.
    pub security: Security,
    /// Login name (often the mailbox address).
    pub user: String,
    /// Password, or an app password for Gmail / Microsoft 365 style servers; `None` when the
    /// mailbox logs in with OAuth 2.0 ([`MailboxSettings::oauth2`]).
    pub password: Option<Secret>,
    /// Folder to watch (`INBOX`).
    pub folder: String,
    /// IDLE is ended and re-issued after this long (RFC 2177: at most 29 minutes, as servers
    /// may drop a client idle for 30).
    pub idle_refresh: Duration,
    /// Longest wait for a server's answer to a command before the connection is dropped and
    /// re-made.
    pub command_timeout: Duration,
    /// First wait before reconnecting after a failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Mails larger than this are read only up to this many bytes (the event says what could
    /// be read from that prefix); protects memory against a multi-gigabyte mail.
    pub max_message_bytes: u32,
    /// What to publish the first time a mailbox is read (no checkpoint yet).
    pub first_start: FirstStart,
}

/// What the first read of a mailbox (no checkpoint on the topic yet) publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStart {
    /// Only mail that arrives from now on: the checkpoint is set at the folder's current end.
    /// The default, so connecting a years-old inbox does not route its whole history.
    New,
    /// Every mail in the folder, oldest first.
    All,
}

/// Where replies are sent through.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Server host name.
    pub host: String,
    /// Server port (465 for TLS, 587 for STARTTLS, 25 for a local relay).
    pub port: u16,
    /// Connection protection.
    pub security: Security,
    /// Login name; `None` sends without authentication (a local relay).
    pub user: Option<String>,
    /// Password or app password, with `user`.
    pub password: Option<Secret>,
    /// Timeout of one SMTP conversation.
    pub timeout: Duration,
}

/// How a mailbox gets OAuth 2.0 access tokens: a refresh token exchanged at the provider's
/// token endpoint (RFC 6749 §6). One set serves IMAP and SMTP, as providers grant both scopes
/// to one consent.
#[derive(Debug, Clone)]
pub struct OAuth2Settings {
    /// The token endpoint (`https://oauth2.googleapis.com/token`, or
    /// `https://login.microsoftonline.com/<directory>/oauth2/v2.0/token`).
    pub token_url: String,
    /// The app registration's client id.
    pub client_id: String,
    /// The client secret; `None` for a public client (Microsoft allows them).
    pub client_secret: Option<Secret>,
    /// The refresh token from the mailbox owner's consent; a rotated one replaces it in
    /// memory only.
    pub refresh_token: Secret,
    /// Scopes asked for on refresh (space-separated); `None` keeps the consented ones
    /// (Microsoft wants them named, Google ignores them).
    pub scope: Option<String>,
    /// Timeout of one call to the token endpoint.
    pub timeout: Duration,
}

/// Where attachment contents are kept (never on Kafka).
#[derive(Debug, Clone)]
pub struct AttachmentStore {
    /// Directory the daemon writes attachments under (`<dir>/<tenant>/<event id>/<n>-<name>`).
    pub dir: PathBuf,
    /// Public base URL that serves `dir` (e.g. `https://files.example.vn/mail`); when `None`,
    /// attachment URLs on events are `file://` URLs, useful only to consumers on this host.
    pub base_url: Option<String>,
    /// Largest single attachment stored; a larger one is listed on the event without a
    /// stored copy (its URL points at the original mail, see the crate docs).
    pub max_attachment_bytes: u64,
}

/// One watched mailbox of a tenant. A tenant may have several (sales@, support@…).
#[derive(Debug, Clone)]
pub struct MailboxSettings {
    /// The routing domain its mail belongs to.
    pub tenant: TenantId,
    /// The mailbox's address: the channel account (`support@shop.example.vn`), the `From` of
    /// replies, and the Message-ID domain of replies.
    pub address: String,
    /// Display name on replies (`CSKH Shop`), if any.
    pub display_name: Option<String>,
    /// Reading.
    pub imap: ImapSettings,
    /// Sending; `None` for a read-only mailbox (replies to it fail as not configured).
    pub smtp: Option<SmtpSettings>,
    /// OAuth 2.0 login (XOAUTH2) for both IMAP and SMTP instead of passwords: Gmail and
    /// Microsoft 365 no longer accept passwords.
    pub oauth2: Option<OAuth2Settings>,
    /// Attachment storage.
    pub attachments: AttachmentStore,
    /// Receiving servers (authserv-ids, lowercase) whose `Authentication-Results` are
    /// believed; see [`crate::auth`].
    pub trusted_authserv_ids: Vec<String>,
}

impl MailboxSettings {
    /// Checks values that cannot be checked by their types, with no I/O. The error names the
    /// setting (relative to the mailbox) and why.
    pub fn validate(&self) -> Result<(), EmailError> {
        let bad = |key: &str, reason: &str| EmailError::Config {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if !is_address(&self.address) {
            return Err(bad(
                "address",
                "must be an e-mail address like support@example.vn",
            ));
        }
        if self.imap.host.trim().is_empty() {
            return Err(bad("imap.host", "must not be empty"));
        }
        if self.imap.folder.trim().is_empty() {
            return Err(bad("imap.folder", "must not be empty"));
        }
        if self.imap.idle_refresh.is_zero() || self.imap.idle_refresh > Duration::from_secs(29 * 60)
        {
            return Err(bad(
                "imap.idle_refresh",
                "must be between 1 s and 29 minutes (RFC 2177)",
            ));
        }
        if self.imap.command_timeout.is_zero() {
            return Err(bad("imap.command_timeout", "must be greater than 0"));
        }
        if self.imap.max_message_bytes < 64 * 1024 {
            return Err(bad("imap.max_message_bytes", "must be at least 65536"));
        }
        if self.imap.initial_backoff.is_zero() || self.imap.max_backoff < self.imap.initial_backoff
        {
            return Err(bad(
                "imap.max_backoff",
                "backoffs must be > 0 and max_backoff >= initial_backoff",
            ));
        }
        self.validate_login()?;
        if self.imap.security == Security::Plain && !is_loopback(&self.imap.host) {
            return Err(bad(
                "imap.security",
                "plain is allowed only for a server on 127.0.0.1/localhost; use tls or starttls",
            ));
        }
        if let Some(smtp) = &self.smtp {
            if smtp.host.trim().is_empty() {
                return Err(bad("smtp.host", "must not be empty"));
            }
            let logs_in = smtp.user.is_some() || self.oauth2.is_some();
            if smtp.security == Security::Plain && !is_loopback(&smtp.host) && logs_in {
                return Err(bad(
                    "smtp.security",
                    "refusing to send credentials unencrypted to a remote server; use tls or starttls",
                ));
            }
        }
        if self.attachments.dir.as_os_str().is_empty() {
            return Err(bad("attachments.dir", "must not be empty"));
        }
        Ok(())
    }

    /// A mailbox logs in with a password or with OAuth 2.0, never both (which one would be
    /// meant is a guess); the error names the key to remove or set.
    fn validate_login(&self) -> Result<(), EmailError> {
        let bad = |key: &str, reason: &str| EmailError::Config {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let smtp_password = self.smtp.as_ref().and_then(|s| s.password.as_ref());
        let Some(oauth2) = &self.oauth2 else {
            if self.imap.password.is_none() {
                return Err(bad(
                    "imap.password",
                    "set a password (or app password), or log in with an [oauth2] table",
                ));
            }
            if let Some(smtp) = &self.smtp {
                if smtp.user.is_some() != smtp.password.is_some() {
                    return Err(bad(
                        "smtp.password",
                        "give both user and password, or neither",
                    ));
                }
            }
            return Ok(());
        };
        let both = "remove it: this mailbox logs in with oauth2 (a password and oauth2 together are ambiguous)";
        if self.imap.password.is_some() {
            return Err(bad("imap.password", both));
        }
        if smtp_password.is_some() {
            return Err(bad("smtp.password", both));
        }
        oauth2.validate()
    }

    /// The key of this mailbox's checkpoint on the checkpoint topic.
    pub fn checkpoint_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.tenant,
            self.address.to_ascii_lowercase(),
            self.imap.folder
        )
    }

    /// The domain of the mailbox address (Message-IDs of replies end in it).
    pub fn domain(&self) -> &str {
        self.address
            .rsplit_once('@')
            .map_or("localhost", |(_, d)| d)
    }
}

impl OAuth2Settings {
    /// Checks the token endpoint and the client with no I/O: the client secret and refresh
    /// token go only to an https endpoint (or one on this host, for tests and local proxies).
    pub fn validate(&self) -> Result<(), EmailError> {
        let bad = |key: &str, reason: String| EmailError::Config {
            key: format!("oauth2.{key}"),
            reason,
        };
        let url = reqwest::Url::parse(&self.token_url).map_err(|e| {
            bad(
                "token_url",
                format!("{:?} is not a URL: {e}", self.token_url),
            )
        })?;
        let local = url.host_str().is_some_and(is_loopback);
        match url.scheme() {
            "https" => {}
            "http" if local => {}
            _ => {
                return Err(bad(
                    "token_url",
                    "must be https:// (http:// only for 127.0.0.1/localhost)".into(),
                ))
            }
        }
        if self.client_id.trim().is_empty() {
            return Err(bad("client_id", "must not be empty".into()));
        }
        if self.refresh_token.expose().trim().is_empty() {
            return Err(bad(
                "refresh_token",
                "must not be empty: authorize the mailbox (docs/channels.md: E-mail, OAuth 2.0)"
                    .into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(bad("timeout", "must be greater than 0".into()));
        }
        Ok(())
    }
}

impl ImapSettings {
    /// Settings with the usual defaults for everything but the server and the login.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        security: Security,
        user: impl Into<String>,
        password: Secret,
    ) -> Self {
        Self::with_login(host, port, security, user, Some(password))
    }

    /// As [`ImapSettings::new`], with no password for a mailbox that logs in with OAuth 2.0.
    pub fn with_login(
        host: impl Into<String>,
        port: u16,
        security: Security,
        user: impl Into<String>,
        password: Option<Secret>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            security,
            user: user.into(),
            password,
            folder: "INBOX".into(),
            idle_refresh: Duration::from_secs(25 * 60),
            command_timeout: Duration::from_secs(60),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_message_bytes: 50 * 1024 * 1024,
            first_start: FirstStart::New,
        }
    }
}

/// A plausible single address: one `@`, something on both sides, no spaces or brackets.
pub(crate) fn is_address(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | ',' | '"'))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox() -> MailboxSettings {
        MailboxSettings {
            tenant: TenantId::new("acme").unwrap_or_else(|_| unreachable!()),
            address: "support@shop.example.vn".into(),
            display_name: None,
            imap: ImapSettings::new(
                "imap.example.vn",
                993,
                Security::Tls,
                "support@shop.example.vn",
                Secret::new("app-password"),
            ),
            smtp: Some(SmtpSettings {
                host: "smtp.example.vn".into(),
                port: 587,
                security: Security::StartTls,
                user: Some("support@shop.example.vn".into()),
                password: Some(Secret::new("app-password")),
                timeout: Duration::from_secs(30),
            }),
            oauth2: None,
            attachments: AttachmentStore {
                dir: "/var/lib/omnirouter/mail".into(),
                base_url: None,
                max_attachment_bytes: 1 << 20,
            },
            trusted_authserv_ids: Vec::new(),
        }
    }

    fn key_of(m: &MailboxSettings) -> Option<String> {
        match m.validate() {
            Err(EmailError::Config { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn settings_are_validated_and_name_the_bad_key() {
        let ok = mailbox();
        assert_eq!(key_of(&ok), None);
        assert_eq!(ok.checkpoint_key(), "acme/support@shop.example.vn/INBOX");
        assert_eq!(ok.domain(), "shop.example.vn");

        let mut m = mailbox();
        m.address = "support".into();
        assert_eq!(key_of(&m).as_deref(), Some("address"));
        let mut m = mailbox();
        m.imap.idle_refresh = Duration::from_secs(30 * 60);
        assert_eq!(key_of(&m).as_deref(), Some("imap.idle_refresh"));
        let mut m = mailbox();
        m.imap.security = Security::Plain;
        assert_eq!(
            key_of(&m).as_deref(),
            Some("imap.security"),
            "no plain text to a remote server"
        );
        m.imap.host = "127.0.0.1".into();
        assert_eq!(key_of(&m), None);
        let mut m = mailbox();
        if let Some(smtp) = m.smtp.as_mut() {
            smtp.security = Security::Plain;
        }
        assert_eq!(key_of(&m).as_deref(), Some("smtp.security"));
        let mut m = mailbox();
        if let Some(smtp) = m.smtp.as_mut() {
            smtp.password = None;
        }
        assert_eq!(key_of(&m).as_deref(), Some("smtp.password"));
        assert_eq!(Security::parse("STARTTLS"), Some(Security::StartTls));
        assert_eq!(Security::parse("ssl"), Some(Security::Tls));
        assert_eq!(Security::parse("maybe"), None);
    }

    fn oauth2_mailbox() -> MailboxSettings {
        let mut m = mailbox();
        m.imap.password = None;
        if let Some(smtp) = m.smtp.as_mut() {
            smtp.password = None;
        }
        m.oauth2 = Some(OAuth2Settings {
            token_url: "https://oauth2.googleapis.com/token".into(),
            client_id: "123.apps.googleusercontent.com".into(),
            client_secret: Some(Secret::new("client-secret")),
            refresh_token: Secret::new("1//refresh"),
            scope: None,
            timeout: Duration::from_secs(30),
        });
        m
    }

    #[test]
    fn a_mailbox_logs_in_with_a_password_or_oauth2_never_both_nor_neither() {
        assert_eq!(key_of(&oauth2_mailbox()), None);

        let mut both = oauth2_mailbox();
        both.imap.password = Some(Secret::new("p"));
        assert_eq!(key_of(&both).as_deref(), Some("imap.password"));
        let mut both = oauth2_mailbox();
        if let Some(smtp) = both.smtp.as_mut() {
            smtp.password = Some(Secret::new("p"));
        }
        assert_eq!(key_of(&both).as_deref(), Some("smtp.password"));

        let mut neither = mailbox();
        neither.imap.password = None;
        assert_eq!(key_of(&neither).as_deref(), Some("imap.password"));
    }

    #[test]
    fn oauth2_secrets_go_only_to_https_or_this_host() {
        let with = |f: &dyn Fn(&mut OAuth2Settings)| {
            let mut m = oauth2_mailbox();
            if let Some(o) = m.oauth2.as_mut() {
                f(o);
            }
            key_of(&m)
        };
        let url = |u: &'static str| move |o: &mut OAuth2Settings| o.token_url = u.into();
        assert_eq!(
            with(&url("http://oauth2.example.vn/token")).as_deref(),
            Some("oauth2.token_url")
        );
        assert_eq!(with(&url("token")).as_deref(), Some("oauth2.token_url"));
        assert_eq!(with(&url("http://127.0.0.1:8080/token")), None);
        assert_eq!(with(&url("http://localhost/token")), None);
        assert_eq!(
            with(&|o| o.client_id = " ".into()).as_deref(),
            Some("oauth2.client_id")
        );
        assert_eq!(
            with(&|o| o.refresh_token = Secret::new("")).as_deref(),
            Some("oauth2.refresh_token")
        );
        // A bearer token is a credential: never in clear text to a remote SMTP server.
        let mut m = oauth2_mailbox();
        if let Some(smtp) = m.smtp.as_mut() {
            smtp.security = Security::Plain;
            smtp.user = None;
        }
        assert_eq!(key_of(&m).as_deref(), Some("smtp.security"));
    }
}
