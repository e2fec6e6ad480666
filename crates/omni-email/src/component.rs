//! The e-mail channel's entry point: one IMAP reader per configured mailbox this instance owns
//! (a background task), and the SMTP reply sender when this instance sends replies.

use omni_bus::BusConfig;
use omni_channel::component::Component;
use omni_channel::{EventSink, Ingress, Ownership};
use omni_core::ChannelKind;
use prometheus::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::{
    CheckpointStore, EmailError, EmailSendSettings, EmailSender, KafkaCheckpoints, MailboxReader,
    MailboxSettings, Metrics, ThreadIndex, TokenSources,
};

/// What the e-mail channel is built with besides its mailboxes.
pub struct EmailDeps<'a> {
    /// Kafka: the inbound and checkpoint topics.
    pub kafka: &'a BusConfig,
    /// Where checkpoints are published.
    pub sink: Arc<dyn EventSink>,
    /// The inbound path every channel publishes through (dedupe, `omni_messages_received_total`).
    pub ingress: Arc<Ingress>,
    /// Where the e-mail metric families are registered.
    pub registry: &'a Registry,
    /// Threads recorded by readers and looked up by the sender.
    pub threads: Arc<ThreadIndex>,
    /// Which mailboxes this instance reads: the router group's partition of each mailbox's
    /// checkpoint key.
    pub ownership: Ownership,
    /// A reader taking over from another instance waits this long first, then resumes from
    /// the latest checkpoint (see [`crate::reader`]).
    pub takeover_grace: Duration,
    /// Whether this instance sends replies (then mailboxes with SMTP get a sender).
    pub send: bool,
    /// Reads replies' attachments that are not in the mailbox's store.
    pub media: Arc<omni_media::Media>,
    /// Ends the readers.
    pub stop: watch::Receiver<bool>,
}

/// Why the e-mail channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A mailbox's reader could not be built.
    #[error("mailbox {address}: {source}")]
    Mailbox {
        /// The mailbox's address.
        address: String,
        /// Why.
        #[source]
        source: EmailError,
    },
    /// Two mailboxes read the same folder of the same account.
    #[error("two mailboxes read the same folder ({0}): configure each once")]
    SameFolder(String),
    /// The SMTP senders could not be built.
    #[error("building the e-mail senders: {0}")]
    Sender(#[source] EmailError),
    /// A metric family could not be registered.
    #[error("registering e-mail metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the e-mail channel over `mailboxes` (empty: nothing runs, nothing sends).
pub fn build(mailboxes: &[MailboxSettings], deps: EmailDeps<'_>) -> Result<Component, BuildError> {
    let mut component = Component::default();
    if mailboxes.is_empty() {
        return Ok(component);
    }
    let metrics = Metrics::register(deps.registry)?;
    // One token source per OAuth 2.0 mailbox, shared by its reader and the sender.
    let tokens =
        TokenSources::build(mailboxes, &metrics.oauth2_refreshes).map_err(BuildError::Sender)?;
    if deps.send {
        let sender = EmailSender::with_tokens(
            mailboxes,
            EmailSendSettings::default(),
            deps.threads.clone(),
            &tokens,
        )
        .map_err(BuildError::Sender)?
        .with_media(deps.media.clone());
        component = component.with_sender(ChannelKind::Email, Arc::new(sender));
    }
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(KafkaCheckpoints::new(deps.kafka, deps.sink.clone()));
    let mut readers = BTreeMap::new();
    for mailbox in mailboxes {
        let address = mailbox.address.clone();
        let reader = MailboxReader::new(
            mailbox.clone(),
            deps.kafka.topics.inbound.clone(),
            deps.sink.clone(),
            checkpoints.clone(),
            metrics.clone(),
            deps.threads.clone(),
        )
        .map_err(|source| BuildError::Mailbox {
            address: address.clone(),
            source,
        })?
        .with_ingress(deps.ingress.clone())
        .with_media_store(deps.media.store().cloned())
        .with_takeover_grace(deps.takeover_grace);
        let reader = match tokens.get(mailbox) {
            Some(source) => reader.with_tokens(source),
            None => reader,
        };
        if readers
            .insert(mailbox.checkpoint_key(), (address, reader))
            .is_some()
        {
            return Err(BuildError::SameFolder(mailbox.checkpoint_key()));
        }
    }
    let keys: Vec<String> = readers.keys().cloned().collect();
    let readers = Arc::new(readers);
    let supervisor = omni_bus::ownership::run_per_owned_key(
        deps.ownership,
        keys,
        move |key, stop| {
            let reader = readers.get(&key).cloned();
            async move {
                let Some((address, reader)) = reader else {
                    return;
                };
                if let Err(e) = reader.run(stop).await {
                    tracing::error!(mailbox = %address, error = %e, "mailbox reader stopped");
                }
            }
        },
        deps.stop,
    );
    Ok(component.with_task(tokio::spawn(supervisor)))
}
