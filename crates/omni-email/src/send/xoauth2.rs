//! Replies from a mailbox that logs in with OAuth 2.0: one SMTP connection per reply, logged
//! in with `AUTH XOAUTH2` and the mailbox's current access token (refreshed before expiry by
//! its [`TokenSource`]).
//!
//! lettre's transport fixes its credentials when built and reports a refused XOAUTH2 (the
//! server's JSON challenge) as a client error indistinguishable from others, so the
//! connection is driven step by step: a refusal at the AUTH step is known as such, a refused
//! cached token is replaced by a fresh one and the reply tried once more, and nothing has
//! been sent before AUTH succeeds.

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use omni_channel::{FailureReason, SendError};
use omni_core::Secret;
use std::sync::Arc;

use super::classify;
use crate::error::EmailError;
use crate::oauth2::TokenSource;
use crate::settings::{Security, SmtpSettings};

/// How one mailbox sends with XOAUTH2.
pub(super) struct XOAuth2Smtp {
    host: String,
    port: u16,
    security: Security,
    timeout: std::time::Duration,
    tls: Option<TlsParameters>,
    user: String,
    tokens: Arc<TokenSource>,
}

/// Why one attempt failed.
enum Attempt {
    /// The server refused the token at AUTH: nothing was sent.
    Refused(SendError),
    /// Anything else, classified as the password path classifies it.
    Failed(SendError),
}

impl XOAuth2Smtp {
    /// Sends as `user` (the mailbox's SMTP user) through `smtp` with `tokens`; `tls` are the
    /// parameters for `tls` and `starttls` security.
    pub(super) fn new(
        smtp: &SmtpSettings,
        user: String,
        tls: Option<TlsParameters>,
        tokens: Arc<TokenSource>,
    ) -> Self {
        Self {
            host: smtp.host.clone(),
            port: smtp.port,
            security: smtp.security,
            timeout: smtp.timeout,
            tls,
            user,
            tokens,
        }
    }

    /// Sends `email`; a cached token the server refuses is refreshed and the send tried once
    /// more.
    pub(super) async fn send(&self, email: &lettre::Message) -> Result<(), SendError> {
        let first = self.tokens.access_token().await.map_err(token_error)?;
        match self.attempt(email, &first.token).await {
            Ok(()) => Ok(()),
            Err(Attempt::Refused(_)) if !first.fresh => {
                tracing::info!(user = %self.user,
                    "the smtp server refused the cached oauth2 access token: refreshing it and sending again");
                self.tokens.invalidate(&first.token).await;
                let second = self.tokens.access_token().await.map_err(token_error)?;
                self.attempt(email, &second.token)
                    .await
                    .map_err(Attempt::into_error)
            }
            Err(e) => Err(e.into_error()),
        }
    }

    /// One connection: connect, TLS, AUTH XOAUTH2, the mail, QUIT.
    async fn attempt(&self, email: &lettre::Message, token: &Secret) -> Result<(), Attempt> {
        let failed = |e: lettre::transport::smtp::Error| Attempt::Failed(classify(&e));
        let hello = ClientId::default();
        let wrapper = match self.security {
            Security::Tls => self.tls.clone(),
            Security::StartTls | Security::Plain => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &hello,
            wrapper,
            None,
        )
        .await
        .map_err(failed)?;
        if let (Security::StartTls, Some(tls)) = (self.security, &self.tls) {
            conn.starttls(tls.clone(), &hello).await.map_err(failed)?;
        }
        let credentials = Credentials::new(self.user.clone(), token.expose().to_owned());
        if let Err(e) = conn.auth(&[Mechanism::Xoauth2], &credentials).await {
            conn.abort().await;
            return Err(auth_failure(&e));
        }
        let sent = conn.send(email.envelope(), &email.formatted()).await;
        if sent.is_ok() {
            let _ = conn.quit().await;
        } else {
            conn.abort().await;
        }
        sent.map(|_| ()).map_err(failed)
    }
}

impl Attempt {
    fn into_error(self) -> SendError {
        match self {
            Attempt::Refused(e) | Attempt::Failed(e) => e,
        }
    }
}

/// A failure at AUTH: a server refusal (5xx, or XOAUTH2's error challenge, which lettre
/// reports as a client error) is the token's fault; 4xx and network failures may pass.
fn auth_failure(e: &lettre::transport::smtp::Error) -> Attempt {
    if e.is_transient() || (e.status().is_none() && !e.is_client()) {
        return Attempt::Failed(classify(e));
    }
    Attempt::Refused(SendError::permanent(
        FailureReason::BadToken,
        format!("the smtp server refused the oauth2 access token: {e}"),
    ))
}

/// No token: re-authorizing or fixing the client is the operator's job (permanent); an
/// unreachable token endpoint may pass (retried).
fn token_error(e: EmailError) -> SendError {
    match e {
        EmailError::OAuth2Reauthorize { .. } | EmailError::OAuth2Refused { .. } => {
            SendError::permanent(FailureReason::BadToken, e.to_string())
        }
        other => SendError::retryable(FailureReason::ProviderUnavailable, other.to_string()),
    }
}
