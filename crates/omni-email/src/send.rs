//! Agent replies out over SMTP with lettre.
//!
//! A reply gets a Message-ID derived from its outbound event id (`<event id>.omni@<mailbox
//! domain>`, so a retried send carries the same id and the customer's client shows it once),
//! `In-Reply-To: <parent>`, `References: <the parent's References> <parent>` (from the
//! [`ThreadIndex`], which every replica shares through the thread topic; the parent alone when
//! nobody recorded it), the subject
//! as `Re: …` without stacked prefixes, a UTF-8 text body, and attachments taken from the
//! attachment store (`file://` or base URLs it handed out) or fetched over http(s), bounded in
//! size.
//!
//! SMTP answers are classified for the dispatcher: 4xx and connection failures may pass and are
//! retried; 5xx are permanent — `invalid_recipient` for mailbox errors (550, 551, 553, enhanced
//! status 5.1.x), `bad_token` for authentication refusals (530, 534, 535), `invalid_message`
//! for size refusals (552, 5.3.4), `rejected` otherwise.

use lettre::message::header::ContentType;
use lettre::message::{Attachment as MimeAttachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use omni_channel::{
    sender_account, AccountMap, ChannelSender, FailureReason, SendError, SendFuture, SendProgress,
    SendReceipt, SendRequest,
};
use omni_core::{Attachment, ChannelKind};
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::EmailError;
use crate::oauth2::TokenSources;
use crate::settings::{AttachmentStore, MailboxSettings, Security};
use crate::store::Store;
use crate::thread::{bare_id, reply_references, reply_subject, ThreadEntry, ThreadIndex};

/// Limits of the sender, shared by every mailbox.
#[derive(Debug, Clone)]
pub struct EmailSendSettings {
    /// The most attachment bytes one reply may carry (all attachments together).
    pub max_attachment_bytes: u64,
}

impl Default for EmailSendSettings {
    fn default() -> Self {
        Self {
            max_attachment_bytes: 20 * 1024 * 1024,
        }
    }
}

mod xoauth2;

/// How a mailbox's replies reach its SMTP server.
enum Login {
    /// A password, or no login (a local relay): one transport, built at start.
    Fixed(AsyncSmtpTransport<Tokio1Executor>),
    /// XOAUTH2 with the mailbox's current access token.
    OAuth2(xoauth2::XOAuth2Smtp),
}

/// One mailbox that can send.
struct Account {
    login: Login,
    from: Mailbox,
    domain: String,
    store: AttachmentStore,
}

/// Sends e-mail replies for every configured mailbox with SMTP settings.
pub struct EmailSender {
    /// By (tenant, lowercased address).
    accounts: AccountMap<Account>,
    settings: EmailSendSettings,
    threads: Arc<ThreadIndex>,
    /// Reads attachments that are not in the mailbox's store: our media store directly,
    /// anything else safely.
    media: Option<Arc<omni_media::Media>>,
}

impl EmailSender {
    /// A sender for `mailboxes` (those without SMTP settings are skipped; replies to them fail
    /// as `account_not_configured`). `threads` is the index the readers fill. Mailboxes that
    /// log in with OAuth 2.0 get token sources of their own: the daemon uses
    /// [`EmailSender::with_tokens`] to share the readers'.
    pub fn new<'a>(
        mailboxes: impl IntoIterator<Item = &'a MailboxSettings>,
        settings: EmailSendSettings,
        threads: Arc<ThreadIndex>,
    ) -> Result<Self, EmailError> {
        let mailboxes: Vec<&MailboxSettings> = mailboxes.into_iter().collect();
        let counter = crate::oauth2::unregistered_refresh_counter()?;
        let tokens = TokenSources::build(mailboxes.iter().copied(), &counter)?;
        Self::with_tokens(mailboxes, settings, threads, &tokens)
    }

    /// As [`EmailSender::new`], taking OAuth 2.0 access tokens from `tokens`.
    pub fn with_tokens<'a>(
        mailboxes: impl IntoIterator<Item = &'a MailboxSettings>,
        settings: EmailSendSettings,
        threads: Arc<ThreadIndex>,
        tokens: &TokenSources,
    ) -> Result<Self, EmailError> {
        let mut accounts = HashMap::new();
        for mailbox in mailboxes {
            let Some(smtp) = &mailbox.smtp else {
                continue;
            };
            let config = |reason: String| EmailError::Config {
                key: "smtp".into(),
                reason,
            };
            let address = mailbox
                .address
                .parse()
                .map_err(|e| config(format!("address {}: {e}", mailbox.address)))?;
            accounts
                .entry((
                    mailbox.tenant.as_str().to_owned(),
                    mailbox.address.to_ascii_lowercase(),
                ))
                .or_insert(Account {
                    login: login(mailbox, smtp, tokens)?,
                    from: Mailbox::new(mailbox.display_name.clone(), address),
                    domain: mailbox.domain().to_owned(),
                    store: mailbox.attachments.clone(),
                });
        }
        Ok(Self {
            accounts,
            settings,
            threads,
            media: None,
        })
    }

    /// Reads attachments through `media` (the daemon's store and fetch policy) instead of
    /// the strictest default.
    pub fn with_media(mut self, media: Arc<omni_media::Media>) -> Self {
        self.media = Some(media);
        self
    }

    async fn send_one(
        &self,
        request: &SendRequest,
        progress: &mut SendProgress,
    ) -> Result<SendReceipt, SendError> {
        let message = &request.message;
        if progress.parts_sent > 0 {
            // The SMTP server took it on an earlier attempt: never send the mail twice.
            return Ok(SendReceipt {
                provider_message_id: progress.provider_message_ids.first().cloned(),
                segments: None,
            });
        }
        if message.channel.kind != ChannelKind::Email {
            return Err(SendError::permanent(
                FailureReason::ChannelNotConfigured,
                format!("not an e-mail reply: {}", message.channel.kind),
            ));
        }
        let address = message.channel.account.to_ascii_lowercase();
        let account = sender_account(&self.accounts, &message.tenant, &address, || {
            format!("no smtp settings for mailbox {}", message.channel.account)
        })?;
        let to: Mailbox = message.recipient.trim().parse().map_err(|e| {
            SendError::permanent(
                FailureReason::InvalidRecipient,
                format!("recipient {:?}: {e}", message.recipient),
            )
        })?;
        let message_id = format!("{}.omni@{}", request.event_id, account.domain);
        let parent = message
            .reply_to
            .as_deref()
            .map(bare_id)
            .filter(|p| !p.is_empty());
        let subject = match parent {
            Some(_) => reply_subject(message.subject.as_deref()),
            None => message.subject.clone().unwrap_or_default(),
        };
        let mut builder = lettre::Message::builder()
            .from(account.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<{message_id}>")))
            .date_now();
        if let Some(parent) = parent {
            let entry = self.threads.lookup(parent).await;
            let refs = reply_references(parent, entry.as_ref());
            builder = builder.in_reply_to(format!("<{parent}>")).references(
                refs.iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            // Before it goes out: the customer's answer to it may name only this reply.
            let mine = ThreadEntry {
                root: entry.map_or_else(|| parent.to_owned(), |e| e.root),
                refs,
                from: Some(address.clone()),
                suspect: false,
            };
            if let Err(e) = self.threads.remember(&message_id, mine).await {
                tracing::warn!(message_id = %message_id, error = %e,
                    "cannot record the reply's thread: an answer naming only this reply may start a new conversation");
            }
        }
        let files = self.attachments(account, &message.attachments).await?;
        let text = message.text.clone();
        let email = if files.is_empty() {
            builder.header(ContentType::TEXT_PLAIN).body(text)
        } else {
            let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(text));
            for (name, content_type, bytes) in files {
                parts = parts.singlepart(MimeAttachment::new(name).body(bytes, content_type));
            }
            builder.multipart(parts)
        }
        .map_err(|e| SendError::permanent(FailureReason::InvalidMessage, e.to_string()))?;
        progress.begin_part(0).await?;
        match &account.login {
            Login::Fixed(transport) => transport
                .send(email)
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))?,
            Login::OAuth2(smtp) => smtp.send(&email).await?,
        }
        progress.part_sent(0, message_id.clone()).await?;
        Ok(SendReceipt {
            provider_message_id: Some(message_id),
            segments: None,
        })
    }

    /// The attachments' bytes, bounded in total.
    async fn attachments(
        &self,
        account: &Account,
        list: &[Attachment],
    ) -> Result<Vec<(String, ContentType, Vec<u8>)>, SendError> {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(list.len());
        let too_big = || {
            SendError::permanent(
                FailureReason::InvalidMessage,
                format!(
                    "attachments exceed {} bytes",
                    self.settings.max_attachment_bytes
                ),
            )
        };
        for (n, a) in list.iter().enumerate() {
            let left = self.settings.max_attachment_bytes.saturating_sub(total);
            let bytes = if let Some(path) = Store::new(&account.store).local_path(&a.url) {
                let meta = tokio::fs::metadata(&path).await.map_err(|e| {
                    SendError::permanent(
                        FailureReason::InvalidMessage,
                        format!("attachment {}: {e}", n + 1),
                    )
                })?;
                if meta.len() > left {
                    return Err(too_big());
                }
                tokio::fs::read(&path).await.map_err(|e| {
                    SendError::retryable(
                        FailureReason::ProviderUnavailable,
                        format!("attachment {}: {e}", n + 1),
                    )
                })?
            } else {
                // The media store's own URLs are read from it; anything else is fetched
                // safely (http(s) only, never an internal address).
                self.fetch(&a.url, left, n + 1).await?
            };
            total += bytes.len() as u64;
            if total > self.settings.max_attachment_bytes {
                return Err(too_big());
            }
            let content_type = a
                .content_type
                .as_deref()
                .and_then(|c| ContentType::parse(c).ok())
                .unwrap_or_else(|| {
                    ContentType::parse("application/octet-stream")
                        .unwrap_or(ContentType::TEXT_PLAIN)
                });
            let name = a.name.clone().unwrap_or_else(|| {
                a.url
                    .rsplit('/')
                    .next()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("attachment")
                    .to_owned()
            });
            out.push((name, content_type, bytes));
        }
        Ok(out)
    }

    async fn fetch(&self, url: &str, limit: u64, n: usize) -> Result<Vec<u8>, SendError> {
        omni_channel::provider::fetch_attachment(self.media.as_deref(), url, limit)
            .await
            .map_err(|e| SendError {
                detail: format!("attachment {n}: {}", e.detail),
                ..e
            })
    }
}

impl ChannelSender for EmailSender {
    fn send<'a>(
        &'a self,
        request: &'a SendRequest,
        progress: &'a mut SendProgress,
    ) -> SendFuture<'a> {
        Box::pin(self.send_one(request, progress))
    }

    /// A mail sent again carries the same Message-ID (derived from the outbound event id),
    /// which mail clients show once.
    fn deduplicates(&self, _request: &SendRequest) -> bool {
        true
    }
}

/// How `mailbox` logs in to `smtp`: XOAUTH2 with its token source, else a transport built
/// once with its password (or none).
fn login(
    mailbox: &MailboxSettings,
    smtp: &crate::settings::SmtpSettings,
    tokens: &TokenSources,
) -> Result<Login, EmailError> {
    let config = |reason: String| EmailError::Config {
        key: "smtp".into(),
        reason,
    };
    let tls = match smtp.security {
        Security::Tls | Security::StartTls => {
            Some(TlsParameters::new(smtp.host.clone()).map_err(|e| config(format!("tls: {e}")))?)
        }
        Security::Plain => None,
    };
    if mailbox.oauth2.is_some() {
        let source = tokens
            .get(mailbox)
            .ok_or_else(|| config(format!("no oauth2 token source for {}", mailbox.address)))?;
        let user = smtp.user.clone().unwrap_or_else(|| mailbox.address.clone());
        return Ok(Login::OAuth2(xoauth2::XOAuth2Smtp::new(
            smtp, user, tls, source,
        )));
    }
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(smtp.timeout))
        .tls(match (smtp.security, tls) {
            (Security::Tls, Some(tls)) => Tls::Wrapper(tls),
            (Security::StartTls, Some(tls)) => Tls::Required(tls),
            _ => Tls::None,
        });
    if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(Login::Fixed(builder.build()))
}

/// Classifies an SMTP failure (see the module docs).
pub fn classify(err: &lettre::transport::smtp::Error) -> SendError {
    let detail = err.to_string();
    match err.status().map(u16::from) {
        Some(code) => classify_code(code, &detail),
        None if err.is_client() => SendError::permanent(FailureReason::Rejected, detail),
        // Connection refused, TLS failure, timeout, connection dropped: may pass.
        None => SendError::retryable(FailureReason::ProviderUnavailable, detail),
    }
}

/// Classifies an SMTP reply code with its text (which may carry an enhanced status code).
pub fn classify_code(code: u16, detail: &str) -> SendError {
    let detail = detail.to_owned();
    let enhanced = |prefix: &str| detail.contains(prefix);
    match code {
        400..=499 => SendError::retryable(FailureReason::ProviderUnavailable, detail),
        530 | 534 | 535 | 538 => SendError::permanent(FailureReason::BadToken, detail),
        552 => SendError::permanent(FailureReason::InvalidMessage, detail),
        _ if enhanced("5.3.4") => SendError::permanent(FailureReason::InvalidMessage, detail),
        _ if enhanced("5.7.") => SendError::permanent(FailureReason::Rejected, detail),
        550 | 551 | 553 => SendError::permanent(FailureReason::InvalidRecipient, detail),
        _ if enhanced("5.1.") => SendError::permanent(FailureReason::InvalidRecipient, detail),
        _ => SendError::permanent(FailureReason::Rejected, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_codes_are_classified() {
        let c = |code, text| {
            let e = classify_code(code, text);
            (e.reason, e.retryable)
        };
        assert_eq!(
            c(421, "service not available"),
            (FailureReason::ProviderUnavailable, true)
        );
        assert_eq!(
            c(451, "4.3.0 try later"),
            (FailureReason::ProviderUnavailable, true)
        );
        assert_eq!(
            c(452, "4.2.2 mailbox full"),
            (FailureReason::ProviderUnavailable, true)
        );
        assert_eq!(
            c(550, "5.1.1 user unknown"),
            (FailureReason::InvalidRecipient, false)
        );
        assert_eq!(
            c(553, "invalid recipient"),
            (FailureReason::InvalidRecipient, false)
        );
        assert_eq!(
            c(550, "5.7.1 message rejected as spam"),
            (FailureReason::Rejected, false)
        );
        assert_eq!(
            c(554, "5.1.2 bad destination"),
            (FailureReason::InvalidRecipient, false)
        );
        assert_eq!(
            c(552, "5.3.4 message too big"),
            (FailureReason::InvalidMessage, false)
        );
        assert_eq!(
            c(535, "5.7.8 authentication failed"),
            (FailureReason::BadToken, false)
        );
        assert_eq!(
            c(554, "transaction failed"),
            (FailureReason::Rejected, false)
        );
    }
}
