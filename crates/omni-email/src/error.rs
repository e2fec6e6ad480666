//! The crate's error type. Messages are lowercase with no trailing period; each variant maps
//! to a bounded label for metrics and logs.

/// What went wrong in the e-mail channel.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// A setting is invalid; `key` names it relative to the mailbox.
    #[error("invalid e-mail setting {key}: {reason}")]
    Config {
        /// The setting.
        key: String,
        /// Why.
        reason: String,
    },
    /// The IMAP connection failed or the server refused a command.
    #[error("imap {stage} failed for {mailbox}")]
    Imap {
        /// The mailbox address.
        mailbox: String,
        /// What we were doing (`connect`, `login`, `select`, `fetch`, `idle`).
        stage: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server did not answer within the command timeout.
    #[error("imap {stage} timed out for {mailbox}")]
    Timeout {
        /// The mailbox address.
        mailbox: String,
        /// What we were doing.
        stage: &'static str,
    },
    /// The folder has no UIDVALIDITY (not a usable IMAP server).
    #[error("imap folder {folder} of {mailbox} has no UIDVALIDITY")]
    NoUidValidity {
        /// The mailbox address.
        mailbox: String,
        /// The folder.
        folder: String,
    },
    /// Reading or writing the checkpoint failed.
    #[error("checkpoint {key}: {reason}")]
    Checkpoint {
        /// The checkpoint key.
        key: String,
        /// Why.
        reason: String,
    },
    /// An attachment could not be written to the store.
    #[error("attachment store {path}")]
    Store {
        /// The file written.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An original or an attachment could not be written to the media store.
    #[error("media store")]
    MediaStore(#[source] Box<omni_media::StoreError>),
    /// The token endpoint refused the refresh token (`invalid_grant`: revoked, expired, the
    /// password changed, consent withdrawn). Only a new consent helps: the operator's to fix.
    #[error("the oauth2 refresh token of {mailbox} was refused ({detail}): re-authorize the mailbox and set a new oauth2.refresh_token")]
    OAuth2Reauthorize {
        /// The mailbox address.
        mailbox: String,
        /// The provider's description.
        detail: String,
    },
    /// The token endpoint refused the client or the request (`invalid_client`,
    /// `unauthorized_client`, `invalid_scope`…): the app registration or the config is wrong.
    #[error("the oauth2 token endpoint refused the client of {mailbox} ({error}: {detail}): check oauth2.client_id, client_secret and scope")]
    OAuth2Refused {
        /// The mailbox address.
        mailbox: String,
        /// The OAuth error code (RFC 6749 §5.2) or the HTTP status.
        error: String,
        /// The provider's description.
        detail: String,
    },
    /// The token endpoint could not be reached or gave an unusable answer: may pass, so the
    /// reader's reconnect backoff and the sender's retries try again.
    #[error("oauth2 token refresh for {mailbox} failed: {detail}")]
    OAuth2Unavailable {
        /// The mailbox address.
        mailbox: String,
        /// What happened.
        detail: String,
    },
    /// The reader was asked to stop.
    #[error("stopped")]
    Stopped,
}

impl EmailError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EmailError::Config { .. } => "config",
            EmailError::Imap { .. } => "imap",
            EmailError::Timeout { .. } => "timeout",
            EmailError::NoUidValidity { .. } => "no_uidvalidity",
            EmailError::Checkpoint { .. } => "checkpoint",
            EmailError::Store { .. } | EmailError::MediaStore(_) => "store",
            EmailError::OAuth2Reauthorize { .. } => "oauth2_invalid_grant",
            EmailError::OAuth2Refused { .. } => "oauth2_refused",
            EmailError::OAuth2Unavailable { .. } => "oauth2_unavailable",
            EmailError::Stopped => "stopped",
        }
    }

    /// Whether only the operator can fix it (a new consent, the client's registration, the
    /// config): retrying alone will not help, so it is logged as an error, not a warning.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            EmailError::Config { .. }
                | EmailError::OAuth2Reauthorize { .. }
                | EmailError::OAuth2Refused { .. }
        )
    }
}
