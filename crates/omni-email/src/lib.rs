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
//! - No duplicates: event ids are `EventId::from_provider(tenant, email/<address>, "message",
//!   <Message-ID>)` (`imap:<folder>:<uidvalidity>:<uid>` for mail without one), so a mail read
//!   again after a crash yields the same id; a UIDVALIDITY change rescans the folder and skips
//!   mail the checkpoint remembers as published (its last 2,000 ids).
//! - Nothing read is marked: mail is fetched with `BODY.PEEK[]`, so `\Seen` stays as it was.
//! - Threading needs no lookup: see [`thread`] for the rule.
//! - Auto-replies and bounces (`Auto-Submitted`, `X-Autoreply`, `Precedence: bulk|junk|
//!   auto_reply`, `multipart/report`, MAILER-DAEMON, null return path) are not routed: they
//!   are skipped and counted in `omni_email_messages_skipped_total{reason}`.
//! - The normalized `text` is the customer's own words (plain part preferred, HTML reduced to
//!   text, quoted history trimmed, at most 64 KiB); the full mail is kept as `original.eml`
//!   in the attachment store beside the attachments, at `<store>/<tenant>/<event id>/`.
//!
//! # Layout
//! - [`settings`]: typed mailbox settings (IMAP, SMTP, attachment store) and their validation.
//! - [`reader`]: the per-mailbox task: connect, catch up, publish, checkpoint, IDLE, reconnect.
//! - `conn` (private): TCP, TLS / STARTTLS / plain, the greeting and LOGIN.
//! - [`parse`]: raw mail → ids, sender, subject, text, attachments, auto-reply detection.
//! - [`text`]: text normalization, quoted-history trimming, size bounds.
//! - [`thread`]: the threading rule, reply subjects and references, the thread index.
//! - [`event`]: a parsed mail → its identity and its CloudEvent.
//! - [`store`]: attachment and original-mail files, and the URLs on events.
//! - [`checkpoint`]: the checkpoint record and where it is kept (Kafka, memory).
//! - [`send`]: the SMTP sender and SMTP error classification.
//! - [`metrics`]: `omni_email_*` metric families.
//! - [`error`]: the crate's error type.

pub mod checkpoint;
mod conn;
pub mod error;
pub mod event;
pub mod metrics;
pub mod parse;
pub mod reader;
pub mod send;
pub mod settings;
pub mod store;
pub mod text;
pub mod thread;

pub use checkpoint::{Checkpoint, CheckpointStore, KafkaCheckpoints, MemoryCheckpoints};
pub use error::EmailError;
pub use metrics::Metrics;
pub use reader::{run_mailbox, MailboxReader};
pub use send::{EmailSendSettings, EmailSender};
pub use settings::{
    AttachmentStore, FirstStart, ImapSettings, MailboxSettings, Security, SmtpSettings,
};
pub use thread::ThreadIndex;
