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
            EmailError::Store { .. } => "store",
            EmailError::Stopped => "stopped",
        }
    }
}
