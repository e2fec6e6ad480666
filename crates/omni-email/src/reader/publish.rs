//! One mail's way to the inbound topic: what it is, whether a predecessor published it
//! already, its thread, its attachments, and its event through the shared ingress (the dedupe
//! and `omni_messages_received_total` every channel goes through), acknowledged before the
//! caller checkpoints it.

use chrono::Utc;
use omni_channel::Parsed;
use omni_core::{ChannelKind, MessageFlag};
use tokio::sync::watch;

use super::{Handled, MailboxReader, Run, MARK_REFRESH};
use crate::checkpoint::{provider_hash, Checkpoint};
use crate::error::EmailError;
use crate::event::{identify, message_event, Identity, Location};
use crate::parse::{parse_mail, MailKind, ParsedMail};
use crate::store::Store;
use crate::thread::{bounded_chain, ThreadEntry};

impl MailboxReader {
    /// Decides what a mail is and publishes it if a customer wrote it and it was not published
    /// before.
    pub(super) async fn publish_mail(
        &self,
        raw: &[u8],
        uid: u32,
        cp: &mut Checkpoint,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Handled, EmailError> {
        let Some((mail, mut identity)) = self.customer_mail(raw, uid, cp) else {
            return Ok(Handled::Skipped);
        };
        let tenant = &self.settings.tenant;
        // Before any repeat check: another sender's mail under a known Message-ID is not a
        // repeat, and must neither be dropped nor take over the id's thread.
        let reused =
            match &mail.message_id {
                Some(id) => self.threads.lookup(id).await.is_some_and(|known| {
                    known.reused_by(&identity.contact, identity.fails_dmarc())
                }),
                None => false,
            };
        if reused {
            identity = identity.reusing_message_id(tenant, &self.channel);
            self.metrics
                .suspicious
                .with_label_values(&[&self.label, "message_id_reused"])
                .inc();
            tracing::warn!(mailbox = %self.label, uid, event_id = %identity.event_id,
                "a known Message-ID reused by another sender: published under an id of its own");
        }
        if identity.flags.contains(&MessageFlag::ThreadRefused) {
            self.metrics
                .suspicious
                .with_label_values(&[&self.label, "thread_refused"])
                .inc();
            tracing::warn!(mailbox = %self.label, uid, event_id = %identity.event_id,
                "mail failing DMARC named an existing thread: given a conversation of its own");
        }
        let hash = provider_hash(&identity.provider_id);
        let known = run.rescan.as_ref().is_some_and(|r| r.known.contains(&hash));
        if cp.seen(&identity.provider_id) || known {
            if let Some(r) = run.rescan.as_mut() {
                r.skipped += 1;
            }
            self.skip("duplicate", uid);
            return Ok(Handled::Skipped);
        }
        if self.published_before(&identity, uid, run, stop).await? {
            cp.remember(&identity.provider_id);
            return Ok(Handled::Published(hash));
        }
        // A thread the index knows under another root (an answer naming only our reply).
        if identity.root != identity.provider_id {
            if let Some(known) = self.threads.lookup(&identity.root).await {
                if known.root != identity.root {
                    identity = identity.rooted_at(tenant, &self.channel, known.root);
                }
            }
        }
        let attachments = Store::new(&self.settings.attachments)
            .in_media_store(self.media.as_ref())
            .put(tenant, identity.event_id, raw, &mail.attachments)
            .await?;
        let event = message_event(
            tenant,
            &self.channel,
            &mail,
            &identity,
            attachments,
            Utc::now(),
        )
        .map_err(|e| EmailError::Checkpoint {
            key: self.settings.checkpoint_key(),
            reason: format!("cannot build the event of uid {uid}: {e}"),
        })?;
        // Never left more than MARK_REFRESH behind what is published.
        if run.mark_taken.is_none_or(|t| t.elapsed() > MARK_REFRESH) {
            self.refresh_mark(cp, run, stop).await?;
        }
        // The thread before the event: whoever answers it finds its chain. A reused id keeps
        // pointing at the mail that had it first.
        if !reused {
            self.remember_thread(&mail, &identity, stop).await?;
        }
        let parsed = Parsed::from(vec![event]);
        let accepted = self
            .until_done(stop, "publish", || {
                self.ingress
                    .publish(ChannelKind::Email, tenant, parsed.clone())
            })
            .await?;
        if accepted.events.iter().any(|(_, _, repeat)| *repeat) {
            // Published and acknowledged by this process already (the ingress's dedupe).
            if let Some(r) = run.rescan.as_mut() {
                r.skipped += 1;
            }
            self.skip("duplicate", uid);
        } else {
            self.metrics
                .published
                .with_label_values(&[&self.label])
                .inc();
            if let Some(r) = run.rescan.as_mut() {
                r.published += 1;
            }
            tracing::debug!(mailbox = %self.label, uid, event_id = %identity.event_id, "mail published");
        }
        cp.remember(&identity.provider_id);
        Ok(Handled::Published(hash))
    }

    /// The mail and who wrote it, if it is a customer's: unreadable mail, automatic mail,
    /// mail with no sender and mail from the mailbox itself are skipped (and counted).
    fn customer_mail(
        &self,
        raw: &[u8],
        uid: u32,
        cp: &Checkpoint,
    ) -> Option<(ParsedMail, Identity)> {
        let Ok(mail) = parse_mail(raw) else {
            self.skip("unreadable", uid);
            return None;
        };
        if mail.kind != MailKind::Person {
            tracing::info!(mailbox = %self.label, uid, kind = mail.kind.as_str(),
                message_id = mail.message_id.as_deref().unwrap_or(""), "automatic mail not routed");
            self.skip(mail.kind.as_str(), uid);
            return None;
        }
        let at = Location {
            folder: &self.settings.imap.folder,
            uidvalidity: cp.uidvalidity,
            uid,
        };
        let Some(identity) = identify(
            &self.settings.tenant,
            &self.channel,
            &mail,
            at,
            &self.settings.trusted_authserv_ids,
        ) else {
            self.skip("no_sender", uid);
            return None;
        };
        if identity.contact == self.label {
            self.skip("own_address", uid);
            return None;
        }
        Some((mail, identity))
    }

    /// Whether the previous reader published this mail after its last checkpoint (read back
    /// from the checkpoint's mark on the first mail of a takeover; module docs of the reader).
    async fn published_before(
        &self,
        identity: &Identity,
        uid: u32,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, EmailError> {
        // Taking over: what did the previous run publish after its last checkpoint?
        if let Some(mark) = run.handover {
            let found = self
                .until_done(stop, "read back the inbound topic", || {
                    self.checkpoints.published_since(mark, &self.label)
                })
                .await?;
            tracing::debug!(mailbox = %self.label, events = found.len(),
                "read the inbound topic back from the checkpoint's mark");
            run.published_before = found;
            run.handover = None;
        }
        if run.published_before.remove(&identity.event_id.to_string()) {
            tracing::info!(mailbox = %self.label, uid, event_id = %identity.event_id,
                "published by the previous reader and not checkpointed: not published again");
            self.skip("duplicate", uid);
            return Ok(true);
        }
        // The previous reader published in UID order: past the first mail it did not publish,
        // nothing else of it is ahead.
        run.published_before.clear();
        Ok(false)
    }

    /// Records the mail's place in its thread, so whoever answers it finds its chain.
    async fn remember_thread(
        &self,
        mail: &ParsedMail,
        identity: &Identity,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EmailError> {
        let Some(id) = &mail.message_id else {
            return Ok(());
        };
        let own = if mail.references.is_empty() {
            mail.in_reply_to.iter().cloned().collect()
        } else {
            mail.references.clone()
        };
        let entry = ThreadEntry {
            root: identity.root.clone(),
            refs: bounded_chain(own),
            from: Some(identity.contact.clone()),
            suspect: identity.fails_dmarc(),
        };
        self.until_done(stop, "thread", || self.threads.remember(id, entry.clone()))
            .await
    }

    /// Takes a new mark (where the next event will land at the earliest) and writes it into
    /// the checkpoint before anything is published after it.
    pub(super) async fn refresh_mark(
        &self,
        cp: &mut Checkpoint,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EmailError> {
        let tenant = self.settings.tenant.as_str();
        let mark = self
            .until_done(stop, "inbound mark", || {
                self.checkpoints.inbound_mark(tenant)
            })
            .await?;
        if let Some(mark) = mark {
            cp.mark = Some(mark);
            self.save(cp, stop).await?;
        }
        run.mark_taken = Some(std::time::Instant::now());
        Ok(())
    }
}
