//! The e-mail channel: customer mail in over IMAP IDLE, agent replies out over SMTP.
//!
//! One [`MailboxReader`] task runs per configured mailbox folder (a tenant may have several).
//! It publishes every customer mail as an `omni.message.received` CloudEvent on the inbound
//! topic (key = tenant) through an [`omni_channel::EventSink`], and only after Kafka
//! acknowledged it records its checkpoint (UIDVALIDITY, last UID) on the compacted
//! `omni.email-checkpoints.v1` topic ([`KafkaCheckpoints`]). The [`EmailSender`] is the
//! channel's [`omni_channel::ChannelSender`]: the shared dispatcher hands it replies from the
//! outbound topic, retries what may pass and publishes each reply's fate.
//!
//! # Guarantees
//! - No mail lost: the checkpoint never passes a mail before its event was acknowledged, and
//!   Kafka being down stalls the mailbox instead of skipping mail.
//! - One reader per mailbox across replicas: the daemon runs a reader only where the router
//!   group owns the partition of the mailbox's checkpoint key
//!   (`omni_bus::ownership::run_per_owned_key`); a reader that takes a mailbox over waits for
//!   its predecessor's last writes, then resumes from the latest checkpoint.
//! - No duplicates: event ids are `EventId::from_provider(tenant, email/<address>, "message",
//!   <Message-ID>)` (`imap:<folder>:<uidvalidity>:<uid>` for mail without one); a reader that
//!   starts from a checkpoint reads the inbound partition back from the checkpoint's mark and
//!   skips what its predecessor published and did not checkpoint (see [`reader`]).
//! - A UIDVALIDITY change follows `first_start`: `new` skips the folder's mail, `all` reads it
//!   again skipping mail published before (the checkpoint's last 2,000 ids and the published
//!   topic beyond them); a metric and a log line say what was skipped.
//! - Nothing read is marked: mail is fetched with `BODY.PEEK[]`, so `\Seen` stays as it was.
//! - Threads are shared by every replica through the compacted thread topic: a reply from any
//!   replica carries the whole `References` chain; see [`thread`] for the rule.
//! - Sender authentication: with `trusted_authserv_ids`, the SPF/DKIM/DMARC results the
//!   receiving server wrote go into the event; a mail that fails DMARC cannot join an existing
//!   thread by naming it (it starts its own conversation, flagged `thread_refused`), and a
//!   known Message-ID reused by another sender is published under an id of its own, flagged
//!   `message_id_reused`, instead of being dropped as a repeat. See [`auth`].
//! - Auto-replies and bounces (`Auto-Submitted`, `X-Autoreply`, `Precedence: bulk|junk|
//!   auto_reply`, `multipart/report`, MAILER-DAEMON, null return path) are not routed: they
//!   are skipped and counted in `omni_email_messages_skipped_total{reason}`.
//! - The normalized `text` is the customer's own words (plain part preferred, HTML reduced to
//!   text, quoted history trimmed, at most 64 KiB); the full mail is kept as `original.eml`
//!   in the attachment store beside the attachments, at `<store>/<tenant>/<event id>/`.
//!
//! # Layout
//! - [`component`]: the channel's entry point: mailbox readers and the reply sender.
//! - [`config`]: `[email]` and the tenants' mailboxes as written, validated into settings.
//! - [`settings`]: typed mailbox settings (IMAP, SMTP, attachment store) and their validation.
//! - [`reader`]: the per-mailbox task: connect, catch up, publish, checkpoint, IDLE, reconnect.
//! - `conn` (private): TCP, TLS / STARTTLS / plain, the greeting, LOGIN or XOAUTH2.
//! - [`oauth2`]: OAuth 2.0 access tokens (refresh, renewal before expiry, rotation) shared
//!   by a mailbox's reader and sender, and the XOAUTH2 SASL string.
//! - [`auth`]: `Authentication-Results` of trusted servers → SPF/DKIM/DMARC results.
//! - [`parse`]: raw mail → ids, sender, subject, text, attachments, auto-reply detection.
//! - [`text`]: text normalization, quoted-history trimming, size bounds.
//! - [`thread`]: the threading rule, reply subjects and references, the thread index (shared
//!   through the thread topic).
//! - [`event`]: a parsed mail → its identity and its CloudEvent.
//! - [`store`]: attachment and original-mail files, and the URLs on events.
//! - [`checkpoint`]: the checkpoint record and where it is kept (Kafka, memory), the inbound
//!   mark read back on takeovers, and the published memory.
//! - [`send`]: the SMTP sender (password or XOAUTH2) and SMTP error classification.
//! - [`metrics`]: `omni_email_*` metric families.
//! - [`error`]: the crate's error type.

pub mod auth;
pub mod checkpoint;
pub mod component;
pub mod config;
mod conn;
pub mod error;
pub mod event;
pub mod metrics;
pub mod oauth2;
pub mod parse;
pub mod reader;
pub mod send;
pub mod settings;
pub mod store;
pub mod text;
pub mod thread;

pub use checkpoint::{
    Checkpoint, CheckpointStore, InboundMark, KafkaCheckpoints, MemoryCheckpoints,
};
pub use error::EmailError;
pub use metrics::Metrics;
pub use oauth2::{TokenSource, TokenSources};
pub use reader::{run_mailbox, MailboxReader};
pub use send::{EmailSendSettings, EmailSender};
pub use settings::{
    AttachmentStore, FirstStart, ImapSettings, MailboxSettings, OAuth2Settings, Security,
    SmtpSettings,
};
pub use thread::{ThreadEntry, ThreadIndex};
