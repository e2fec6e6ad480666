//! OAuth 2.0 access tokens for a mailbox's XOAUTH2 logins (IMAP and SMTP).
//!
//! A [`TokenSource`] exchanges the mailbox's refresh token at the provider's token endpoint
//! (RFC 6749 §6: a form-encoded POST of `grant_type=refresh_token`, `refresh_token`,
//! `client_id`, `client_secret` when there is one, and `scope` when configured), keeps the
//! access token, and exchanges again once less than a minute (a tenth of the lifetime for
//! short-lived tokens) is left ([`grant::refresh_margin`]), so a login never presents a token
//! about to expire. The lifetime is counted from before the request went out.
//!
//! - One refresh at a time: the state lock is held across the call, so the reader and the
//!   sender of a mailbox asking together wait for one refresh and share its token.
//! - Rotation: a refresh token in the answer (Microsoft sends one every time) replaces the
//!   configured one in memory, and a log line says it rotated (never the value). A restart
//!   starts from the configured one again; Microsoft keeps it valid until it expires.
//! - Errors: `invalid_grant` → [`EmailError::OAuth2Reauthorize`] (re-authorize the mailbox);
//!   a refused client → [`EmailError::OAuth2Refused`]; anything that may pass →
//!   [`EmailError::OAuth2Unavailable`], retried by the reader's reconnect backoff and the
//!   sender's retries. Each refresh counts in `omni_email_oauth2_refreshes_total{result}`.
//! - A server that refuses a cached token (revoked early) gets a fresh one: callers
//!   [`TokenSource::invalidate`] it and ask again, once.

use omni_core::Secret;
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::error::EmailError;
use crate::settings::{MailboxSettings, OAuth2Settings};

pub mod grant;

#[cfg(test)]
mod tests;

pub use grant::xoauth2_sasl;

/// The time source of a [`TokenSource`]: `Instant::now` in the daemon, a hand-moved clock in
/// tests of the renewal timing.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// An access token handed to a login.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub token: Secret,
    /// True when this call obtained it; a refused fresh token is not worth another refresh.
    pub fresh: bool,
}

/// The token in use and when to stop using it.
struct Cached {
    token: Secret,
    renew_at: Instant,
}

struct State {
    refresh_token: Secret,
    cached: Option<Cached>,
}

/// One mailbox's access tokens, shared by its IMAP reader and its SMTP sender.
pub struct TokenSource {
    mailbox: String,
    settings: OAuth2Settings,
    http: reqwest::Client,
    state: tokio::sync::Mutex<State>,
    refreshes: IntCounterVec,
    clock: Clock,
}

impl TokenSource {
    /// The token source of `mailbox` (its address, the metric label), counting refreshes in
    /// `refreshes` (`omni_email_oauth2_refreshes_total`). Fails only if no HTTP client can
    /// be built.
    pub fn new(
        mailbox: &str,
        settings: OAuth2Settings,
        refreshes: IntCounterVec,
    ) -> Result<Self, EmailError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(std::time::Duration::from_secs(10)))
            // A token endpoint answers itself; following a redirect could post the secrets
            // elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EmailError::Config {
                key: "oauth2".into(),
                reason: format!("http client: {e}"),
            })?;
        Ok(Self {
            mailbox: mailbox.to_ascii_lowercase(),
            state: tokio::sync::Mutex::new(State {
                refresh_token: settings.refresh_token.clone(),
                cached: None,
            }),
            settings,
            http,
            refreshes,
            clock: Arc::new(Instant::now),
        })
    }

    /// Uses `clock` instead of the system's monotonic clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A token valid for at least the refresh margin: the cached one, or a new one from the
    /// token endpoint (one refresh at a time; concurrent callers share it).
    pub async fn access_token(&self) -> Result<AccessToken, EmailError> {
        let mut state = self.state.lock().await;
        let asked_at = (self.clock)();
        if let Some(cached) = state.cached.as_ref().filter(|c| asked_at < c.renew_at) {
            return Ok(AccessToken {
                token: cached.token.clone(),
                fresh: false,
            });
        }
        let granted = match self.exchange(&state.refresh_token).await {
            Ok(granted) => granted,
            Err(e) => {
                self.count(e.label().trim_start_matches("oauth2_"));
                return Err(e);
            }
        };
        self.count("ok");
        if let Some(rotated) = granted
            .refresh_token
            .filter(|r| r.expose() != state.refresh_token.expose())
        {
            state.refresh_token = rotated;
            tracing::info!(mailbox = %self.mailbox,
                "the token endpoint rotated the oauth2 refresh token: using the new one (kept in memory; a restart uses the configured one)");
        }
        let lifetime = granted.expires_in.unwrap_or(grant::DEFAULT_LIFETIME);
        tracing::debug!(mailbox = %self.mailbox, expires_in_secs = lifetime.as_secs(),
            "oauth2 access token refreshed");
        state.cached = Some(Cached {
            token: granted.access_token.clone(),
            renew_at: asked_at + grant::usable_for(lifetime),
        });
        Ok(AccessToken {
            token: granted.access_token,
            fresh: true,
        })
    }

    /// Forgets `token` after a server refused it, so the next [`Self::access_token`] refreshes;
    /// a token already replaced (by a concurrent caller's refresh) is left alone.
    pub async fn invalidate(&self, token: &Secret) {
        let mut state = self.state.lock().await;
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.token.expose() == token.expose())
        {
            state.cached = None;
        }
    }

    /// One refresh call (RFC 6749 §6).
    async fn exchange(&self, refresh_token: &Secret) -> Result<grant::Granted, EmailError> {
        let s = &self.settings;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("client_id", s.client_id.as_str()),
        ];
        if let Some(secret) = &s.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        if let Some(scope) = &s.scope {
            form.push(("scope", scope.as_str()));
        }
        let unavailable = |detail: String| EmailError::OAuth2Unavailable {
            mailbox: self.mailbox.clone(),
            detail,
        };
        let response = self
            .http
            .post(&s.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(format!("{}: {e}", s.token_url)))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(format!("reading the answer: {e}")))?;
        grant::parse(status, &body).map_err(|refusal| match refusal {
            grant::Refusal::InvalidGrant(detail) => EmailError::OAuth2Reauthorize {
                mailbox: self.mailbox.clone(),
                detail,
            },
            grant::Refusal::Refused { error, detail } => EmailError::OAuth2Refused {
                mailbox: self.mailbox.clone(),
                error,
                detail,
            },
            grant::Refusal::Unavailable(detail) => unavailable(detail),
        })
    }

    fn count(&self, result: &str) {
        self.refreshes
            .with_label_values(&[self.mailbox.as_str(), result])
            .inc();
    }
}

/// The token sources of the mailboxes that log in with OAuth 2.0, by tenant and address: built
/// once, so a mailbox's reader and its sender share one token and one refresh.
#[derive(Clone, Default)]
pub struct TokenSources(HashMap<(String, String), Arc<TokenSource>>);

impl TokenSources {
    /// A source for each of `mailboxes` with `oauth2` settings, counting in `refreshes`.
    pub fn build<'a>(
        mailboxes: impl IntoIterator<Item = &'a MailboxSettings>,
        refreshes: &IntCounterVec,
    ) -> Result<Self, EmailError> {
        let mut sources = HashMap::new();
        for mailbox in mailboxes {
            let Some(oauth2) = &mailbox.oauth2 else {
                continue;
            };
            let source = TokenSource::new(&mailbox.address, oauth2.clone(), refreshes.clone())?;
            sources.insert(Self::key(mailbox), Arc::new(source));
        }
        Ok(Self(sources))
    }

    /// The source of `mailbox`, if it logs in with OAuth 2.0.
    pub fn get(&self, mailbox: &MailboxSettings) -> Option<Arc<TokenSource>> {
        self.0.get(&Self::key(mailbox)).cloned()
    }

    fn key(mailbox: &MailboxSettings) -> (String, String) {
        (
            mailbox.tenant.as_str().to_owned(),
            mailbox.address.to_ascii_lowercase(),
        )
    }
}

/// A refresh counter registered nowhere, for a reader or sender built on its own (tests, a
/// library user): the daemon passes the registered one.
pub fn unregistered_refresh_counter() -> Result<IntCounterVec, EmailError> {
    IntCounterVec::new(
        prometheus::Opts::new("omni_email_oauth2_refreshes_total", "unregistered"),
        &["mailbox", "result"],
    )
    .map_err(|e| EmailError::Config {
        key: "oauth2 metrics".into(),
        reason: e.to_string(),
    })
}

/// The XOAUTH2 exchange for async-imap: the SASL string first; an empty answer to the
/// server's error challenge (a JSON status), after which the server says NO.
pub(crate) struct XOAuth2 {
    sasl: Option<String>,
}

impl XOAuth2 {
    /// Logs `user` in with `token`.
    pub(crate) fn new(user: &str, token: &Secret) -> Self {
        Self {
            sasl: Some(xoauth2_sasl(user, token.expose())),
        }
    }
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        self.sasl.take().unwrap_or_default()
    }
}
