//! An IMAP connection: TCP, then TLS from the first byte, STARTTLS, or plain (loopback only,
//! enforced by settings validation), the greeting, and LOGIN with the password or
//! `AUTHENTICATE XOAUTH2` with an OAuth 2.0 access token.

use async_imap::{Client, Session};
use std::fmt::Debug;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::EmailError;
use crate::oauth2::{TokenSource, XOAuth2};
use crate::settings::{ImapSettings, Security};

/// Any byte stream an IMAP session can run over (plain TCP or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Debug> Io for T {}

/// A logged-in IMAP session over either kind of stream.
pub(crate) type ImapSession = Session<Box<dyn Io>>;

/// An unauthenticated client over either kind of stream.
type ImapClient = Client<Box<dyn Io>>;

/// Connects and logs in (with `tokens` when the mailbox uses OAuth 2.0, else with the
/// password), within `settings.command_timeout` for each step.
pub(crate) async fn connect(
    settings: &ImapSettings,
    mailbox: &str,
    tokens: Option<&TokenSource>,
) -> Result<ImapSession, EmailError> {
    let limit = settings.command_timeout;
    let imap_err = |stage: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| EmailError::Imap {
            mailbox: mailbox.to_owned(),
            stage,
            source: e,
        }
    };
    let timed_out = |stage: &'static str| {
        move |_| EmailError::Timeout {
            mailbox: mailbox.to_owned(),
            stage,
        }
    };
    let tcp = tokio::time::timeout(
        limit,
        TcpStream::connect((settings.host.as_str(), settings.port)),
    )
    .await
    .map_err(timed_out("connect"))?
    .map_err(|e| imap_err("connect")(e.into()))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match settings.security {
        Security::Tls => Box::new(
            tokio::time::timeout(limit, tls(settings, tcp))
                .await
                .map_err(timed_out("tls"))?
                .map_err(imap_err("tls"))?,
        ),
        Security::StartTls | Security::Plain => Box::new(tcp),
    };
    let mut client = Client::new(stream);
    let greeting = tokio::time::timeout(limit, client.read_response())
        .await
        .map_err(timed_out("greeting"))?
        .map_err(|e| imap_err("greeting")(e.into()))?;
    if greeting.is_none() {
        return Err(imap_err("greeting")(
            "connection closed before the greeting".into(),
        ));
    }
    if settings.security == Security::StartTls {
        tokio::time::timeout(limit, client.run_command_and_check_ok("STARTTLS", None))
            .await
            .map_err(timed_out("starttls"))?
            .map_err(|e| imap_err("starttls")(e.into()))?;
        let plain = client.into_inner();
        let secured = tokio::time::timeout(limit, tls(settings, plain))
            .await
            .map_err(timed_out("starttls"))?
            .map_err(imap_err("starttls"))?;
        client = Client::new(Box::new(secured));
    }
    match tokens {
        Some(tokens) => login_xoauth2(client, settings, mailbox, tokens).await,
        None => {
            let password = settings
                .password
                .as_ref()
                .ok_or_else(|| EmailError::Config {
                    key: "imap.password".into(),
                    reason: "not set and no oauth2 login".into(),
                })?;
            tokio::time::timeout(limit, client.login(&settings.user, password.expose()))
                .await
                .map_err(timed_out("login"))?
                .map_err(|(e, _)| imap_err("login")(e.into()))
        }
    }
}

/// `AUTHENTICATE XOAUTH2`; a cached token the server refuses (revoked before its expiry) is
/// replaced by a fresh one and the login tried once more on the same connection.
async fn login_xoauth2(
    client: ImapClient,
    settings: &ImapSettings,
    mailbox: &str,
    tokens: &TokenSource,
) -> Result<ImapSession, EmailError> {
    let refused = |e: async_imap::error::Error| EmailError::Imap {
        mailbox: mailbox.to_owned(),
        stage: "authenticate",
        source: e.into(),
    };
    let first = tokens.access_token().await?;
    let client = match authenticate(client, settings, mailbox, &first.token).await? {
        Ok(session) => return Ok(session),
        Err((async_imap::error::Error::No(_), client)) if !first.fresh => client,
        Err((e, _)) => return Err(refused(e)),
    };
    tracing::info!(mailbox = %mailbox,
        "the server refused the cached oauth2 access token: refreshing it and logging in again");
    tokens.invalidate(&first.token).await;
    let second = tokens.access_token().await?;
    authenticate(client, settings, mailbox, &second.token)
        .await?
        .map_err(|(e, _)| refused(e))
}

/// One XOAUTH2 attempt within the command timeout; the server's refusal comes back with the
/// client, so the caller may try again.
async fn authenticate(
    client: ImapClient,
    settings: &ImapSettings,
    mailbox: &str,
    token: &omni_core::Secret,
) -> Result<Result<ImapSession, (async_imap::error::Error, ImapClient)>, EmailError> {
    tokio::time::timeout(
        settings.command_timeout,
        client.authenticate("XOAUTH2", XOAuth2::new(&settings.user, token)),
    )
    .await
    .map_err(|_| EmailError::Timeout {
        mailbox: mailbox.to_owned(),
        stage: "authenticate",
    })
}

async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &ImapSettings,
    stream: S,
) -> Result<tokio_native_tls::TlsStream<S>, Box<dyn std::error::Error + Send + Sync>> {
    let connector = native_tls::TlsConnector::new()?;
    let connector = tokio_native_tls::TlsConnector::from(connector);
    Ok(connector.connect(&settings.host, stream).await?)
}
