//! The e-mail channel's metric families, registered into a registry the caller passes.
//! Labels are bounded: `mailbox` is a configured address, `reason`/`error` fixed words.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Counters and gauges of every mailbox.
#[derive(Clone)]
pub struct Metrics {
    /// Mails fetched from IMAP.
    pub fetched: IntCounterVec,
    /// Customer mails published on the inbound topic (acknowledged by Kafka).
    pub published: IntCounterVec,
    /// Mails not published, by reason (`auto_reply`, `bounce`, `duplicate`, `unreadable`,
    /// `no_sender`, `uidvalidity_changed`).
    pub skipped: IntCounterVec,
    /// Mails read only up to the size limit.
    pub truncated: IntCounterVec,
    /// Checkpoints written.
    pub checkpoint_writes: IntCounterVec,
    /// UIDVALIDITY changes seen (each voids the folder's UIDs; see the reader).
    pub uidvalidity_changes: IntCounterVec,
    /// Connections re-made after a failure, by error kind.
    pub reconnects: IntCounterVec,
    /// IDLE commands ended by the refresh timer and re-issued.
    pub idle_refreshes: IntCounterVec,
    /// 1 while the mailbox is connected and idling or fetching.
    pub connected: IntGaugeVec,
    /// The last checkpointed UID.
    pub last_uid: IntGaugeVec,
    /// 1 while this instance is the one reading the mailbox (its replicas show 0).
    pub owned: IntGaugeVec,
    /// OAuth 2.0 token refreshes by result (`ok`, `invalid_grant`, `refused`, `unavailable`):
    /// `invalid_grant` means the mailbox must be re-authorized.
    pub oauth2_refreshes: IntCounterVec,
    /// Mails published with a flag (`thread_refused`, `message_id_reused`): someone may be
    /// forging mail to this mailbox.
    pub suspicious: IntCounterVec,
}

impl Metrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let m = Self {
            fetched: counter(
                "omni_email_messages_fetched_total",
                "Mails fetched over IMAP.",
                &["mailbox"],
            )?,
            published: counter(
                "omni_email_messages_published_total",
                "Customer mails published on the inbound topic and acknowledged by Kafka.",
                &["mailbox"],
            )?,
            skipped: counter(
                "omni_email_messages_skipped_total",
                "Mails not published as customer messages, by reason.",
                &["mailbox", "reason"],
            )?,
            truncated: counter(
                "omni_email_messages_truncated_total",
                "Mails larger than the size limit, read only up to it.",
                &["mailbox"],
            )?,
            checkpoint_writes: counter(
                "omni_email_checkpoint_writes_total",
                "Mailbox checkpoints written to the checkpoint topic.",
                &["mailbox"],
            )?,
            uidvalidity_changes: counter(
                "omni_email_uidvalidity_changes_total",
                "UIDVALIDITY changes of a mailbox folder (recreated, migrated): its mail is skipped or read again per first_start.",
                &["mailbox"],
            )?,
            reconnects: counter(
                "omni_email_imap_reconnects_total",
                "IMAP connections re-made after a failure, by error kind.",
                &["mailbox", "error"],
            )?,
            idle_refreshes: counter(
                "omni_email_idle_refreshes_total",
                "IDLE commands ended by the refresh timer and issued again.",
                &["mailbox"],
            )?,
            connected: IntGaugeVec::new(
                Opts::new(
                    "omni_email_imap_connected",
                    "1 while the mailbox has a logged-in IMAP connection.",
                ),
                &["mailbox"],
            )?,
            last_uid: IntGaugeVec::new(
                Opts::new(
                    "omni_email_checkpoint_last_uid",
                    "The last UID of the mailbox folder whose mail Kafka acknowledged.",
                ),
                &["mailbox"],
            )?,
            oauth2_refreshes: counter(
                "omni_email_oauth2_refreshes_total",
                "OAuth 2.0 access token refreshes of a mailbox, by result (ok, invalid_grant: re-authorize the mailbox, refused: check the client, unavailable: retried).",
                &["mailbox", "result"],
            )?,
            suspicious: counter(
                "omni_email_messages_suspicious_total",
                "Mails published with a suspicion flag, by reason (thread_refused: failed DMARC while naming an existing thread; message_id_reused: a known Message-ID from another sender).",
                &["mailbox", "reason"],
            )?,
            owned: IntGaugeVec::new(
                Opts::new(
                    "omni_email_mailbox_owned",
                    "1 while this instance reads the mailbox (exactly one replica does).",
                ),
                &["mailbox"],
            )?,
        };
        registry.register(Box::new(m.fetched.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.truncated.clone()))?;
        registry.register(Box::new(m.checkpoint_writes.clone()))?;
        registry.register(Box::new(m.uidvalidity_changes.clone()))?;
        registry.register(Box::new(m.owned.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.idle_refreshes.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.last_uid.clone()))?;
        registry.register(Box::new(m.oauth2_refreshes.clone()))?;
        registry.register(Box::new(m.suspicious.clone()))?;
        Ok(m)
    }
}
