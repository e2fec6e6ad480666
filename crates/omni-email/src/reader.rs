//! One task per mailbox folder: connect, catch up from the checkpoint, IDLE, repeat.
//!
//! For each mail, in UID order: fetch it with `BODY.PEEK[]` (never sets `\Seen`; bounded by
//! `max_message_bytes`), parse it, store its attachments and original, publish its event
//! through omni-channel's [`Ingress`] (the inbound path every channel takes: its dedupe, and
//! `omni_messages_received_total{channel="email"}`) and wait for Kafka's acknowledgement, then
//! advance the checkpoint and wait for that too (`publish`: one mail's way out). A
//! crash anywhere in between re-reads the mail on restart and publishes the same event id.
//! Auto-replies, bounces, mail from the mailbox itself, mail with no sender and unreadable
//! bytes are counted in `omni_email_messages_skipped_total` and passed (the checkpoint
//! moves on, so one bad mail never blocks a mailbox).
//!
//! # Once, across crashes and takeovers
//! Before its first publish in a run, and whenever it is older than [`MARK_REFRESH`] (while
//! idling, [`MARK_IDLE_REFRESH`]), the reader writes into the checkpoint a *mark*: the end offset of the tenant's inbound partition
//! (so every event it publishes after that lands at or after the mark). A run that starts from
//! a checkpoint (a restart, or another replica taking the mailbox over) first waits
//! `takeover_grace` (the daemon sets the publish deadline plus a second: whatever the previous
//! owner had in flight has landed or failed by then, and it writes nothing after its stop),
//! then, before it publishes anything, reads the inbound partition from the mark and skips the
//! mail whose event is already there: a mail published and not yet checkpointed when the
//! previous reader died or stopped is not published again.
//!
//! # UIDVALIDITY changes
//! When the folder's UIDVALIDITY differs from the checkpoint's, every UID is void. With
//! `first_start = "new"` the mail already in the folder is skipped (counted in
//! `omni_email_messages_skipped_total{reason="uidvalidity_changed"}`, one log line says how
//! many); with `"all"` the folder is read again from UID 1, skipping mail published before by
//! Message-ID: the checkpoint's last 2,000 and, beyond them, the published topic (read once for
//! the re-read), with a log line when the re-read is done saying what was published and
//! skipped. Both count in `omni_email_uidvalidity_changes_total`.

use async_imap::extensions::idle::IdleResponse;
use chrono::Utc;
use futures_util::TryStreamExt;
use omni_channel::{DedupeCache, EventSink, Ingress, IngressMetrics};
use omni_core::{ChannelKind, ChannelRef};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, CheckpointStore, InboundMark};
use crate::conn::{connect, ImapSession};
use crate::error::EmailError;
use crate::metrics::Metrics;
use crate::oauth2::TokenSource;
use crate::settings::{FirstStart, MailboxSettings};
use crate::thread::ThreadIndex;

mod publish;

/// A mark older than this is taken again before the next publish, so a takeover reads at most
/// this much of the inbound partition back before the last mail published.
pub const MARK_REFRESH: Duration = Duration::from_secs(30);

/// The dedupe window of a reader built without the daemon's ingress ([`MailboxReader::new`]).
const OWN_DEDUPE_WINDOW: Duration = Duration::from_secs(600);

/// How many event ids that reader's own dedupe cache keeps.
const OWN_DEDUPE_CAPACITY: usize = 10_000;

/// While the mailbox idles, the mark is taken again this often (a checkpoint write), so what a
/// takeover reads back stays short however long the mailbox has been quiet.
pub const MARK_IDLE_REFRESH: Duration = Duration::from_secs(300);

/// Reads one mailbox folder until told to stop.
#[derive(Clone)]
pub struct MailboxReader {
    settings: MailboxSettings,
    /// Where events go: the shared inbound path (dedupe, `omni_messages_received_total`).
    ingress: Arc<Ingress>,
    checkpoints: Arc<dyn CheckpointStore>,
    metrics: Metrics,
    threads: Arc<ThreadIndex>,
    channel: ChannelRef,
    label: String,
    takeover_grace: Duration,
    /// Access tokens of a mailbox that logs in with OAuth 2.0 (shared with its sender).
    tokens: Option<Arc<TokenSource>>,
    /// The daemon's media store, when one is configured: originals and attachments go there
    /// instead of the mailbox's attachment directory.
    media: Option<omni_media::MediaStore>,
}

/// What one run of a reader (one ownership of the mailbox) keeps beside its checkpoint.
#[derive(Default)]
struct Run {
    /// The mark of the checkpoint the run started from, until the inbound partition was read
    /// back from it.
    handover: Option<InboundMark>,
    /// Events of this mailbox found after that mark, by event id, until the first mail after
    /// the checkpoint that is not among them (the previous run published in UID order).
    published_before: HashSet<String>,
    /// When this run last took the mark.
    mark_taken: Option<Instant>,
    /// The re-read after a UIDVALIDITY change, while it lasts.
    rescan: Option<Rescan>,
}

/// A folder read again after a UIDVALIDITY change.
struct Rescan {
    /// Hashes of every mail the mailbox published before (the published topic).
    known: HashSet<String>,
    published: u64,
    skipped: u64,
}

/// What became of one mail.
enum Handled {
    /// Published now, or found published by the previous run: remembered by this hash.
    Published(String),
    /// Not published (automatic mail, duplicate, …).
    Skipped,
}

/// Reads `settings`' folder until `stop` turns true (or its sender is dropped). See
/// [`MailboxReader::run`].
pub async fn run_mailbox(
    settings: MailboxSettings,
    inbound_topic: String,
    sink: Arc<dyn EventSink>,
    checkpoints: Arc<dyn CheckpointStore>,
    metrics: Metrics,
    threads: Arc<ThreadIndex>,
    stop: watch::Receiver<bool>,
) -> Result<(), EmailError> {
    MailboxReader::new(settings, inbound_topic, sink, checkpoints, metrics, threads)?
        .run(stop)
        .await
}

impl MailboxReader {
    /// A reader publishing on `inbound_topic` through `sink` (the daemon's acknowledged Kafka
    /// producer), keeping its checkpoint in `checkpoints`, recording threads in `threads` (the
    /// same index the [`crate::EmailSender`] reads). Fails only on invalid settings.
    pub fn new(
        settings: MailboxSettings,
        inbound_topic: String,
        sink: Arc<dyn EventSink>,
        checkpoints: Arc<dyn CheckpointStore>,
        metrics: Metrics,
        threads: Arc<ThreadIndex>,
    ) -> Result<Self, EmailError> {
        settings.validate()?;
        let label = settings.address.to_ascii_lowercase();
        // Counted into a registry of its own until the daemon's ingress replaces it.
        let registry = prometheus::Registry::new();
        let metrics_of_own =
            IngressMetrics::register(&registry).map_err(|e| EmailError::Config {
                key: "ingress metrics".into(),
                reason: e.to_string(),
            })?;
        let ingress = Ingress::new(
            sink,
            inbound_topic,
            String::new(),
            DedupeCache::new(OWN_DEDUPE_WINDOW, OWN_DEDUPE_CAPACITY),
            0,
            metrics_of_own,
        );
        let tokens = match &settings.oauth2 {
            Some(oauth2) => Some(Arc::new(TokenSource::new(
                &label,
                oauth2.clone(),
                metrics.oauth2_refreshes.clone(),
            )?)),
            None => None,
        };
        Ok(Self {
            channel: ChannelRef::new(ChannelKind::Email, label.clone()),
            settings,
            ingress: Arc::new(ingress),
            checkpoints,
            metrics,
            threads,
            label,
            takeover_grace: Duration::ZERO,
            tokens,
            media: None,
        })
    }

    /// Stores originals and attachments in `store` (the daemon's `[media]` store: a
    /// directory or S3) instead of the mailbox's attachment directory.
    pub fn with_media_store(mut self, store: Option<omni_media::MediaStore>) -> Self {
        self.media = store;
        self
    }

    /// Logs in with `tokens` (the mailbox's OAuth 2.0 token source, shared with its SMTP
    /// sender so both use one token and one refresh) instead of a source of its own.
    pub fn with_tokens(mut self, tokens: Arc<TokenSource>) -> Self {
        if self.settings.oauth2.is_some() {
            self.tokens = Some(tokens);
        }
        self
    }

    /// Publishes through `ingress` (the daemon's, on the inbound topic), so mail shares the
    /// dedupe and the metrics of every other channel's inbound path: the daemon passes its own.
    pub fn with_ingress(mut self, ingress: Arc<Ingress>) -> Self {
        self.ingress = ingress;
        self
    }

    /// Waits `grace` at the start of every run before reading the checkpoint, so a previous
    /// owner's last writes (in flight when it was stopped) have landed or failed: set it to the
    /// publish deadline (and a margin) wherever another instance may have read the mailbox
    /// until now. Zero (the default) for a reader that is the only one.
    pub fn with_takeover_grace(mut self, grace: Duration) -> Self {
        self.takeover_grace = grace;
        self
    }

    /// Runs until `stop` turns true: reconnects after any failure with exponential backoff
    /// (`initial_backoff` doubling to `max_backoff`), so it returns only when stopped.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), EmailError> {
        let owned = self.metrics.owned.with_label_values(&[&self.label]);
        owned.set(1);
        let result = self.run_owned(&mut stop).await;
        owned.set(0);
        result
    }

    async fn run_owned(&self, stop: &mut watch::Receiver<bool>) -> Result<(), EmailError> {
        let key = self.settings.checkpoint_key();
        let imap = &self.settings.imap;
        if !self.takeover_grace.is_zero() {
            tracing::info!(mailbox = %self.label,
                grace_ms = u64::try_from(self.takeover_grace.as_millis()).unwrap_or(u64::MAX),
                "reading the mailbox here from now on: waiting for the previous reader's last writes");
            if sleep_or_stop(stop, self.takeover_grace).await {
                return Ok(());
            }
        }
        let mut backoff = imap.initial_backoff;
        let mut checkpoint = loop {
            match self.checkpoints.load(&key).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(mailbox = %self.label, error = %e, "cannot read the mailbox checkpoint yet");
                    if sleep_or_stop(stop, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(imap.max_backoff);
                }
            }
        };
        let mut run = Run {
            handover: checkpoint.as_ref().and_then(|c| c.mark),
            ..Run::default()
        };
        backoff = imap.initial_backoff;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let result = self
                .session(&mut checkpoint, &mut run, stop, &mut backoff)
                .await;
            self.metrics
                .connected
                .with_label_values(&[&self.label])
                .set(0);
            match result {
                Ok(()) | Err(EmailError::Stopped) => return Ok(()),
                Err(e) => {
                    self.metrics
                        .reconnects
                        .with_label_values(&[self.label.as_str(), e.label()])
                        .inc();
                    self.log_failure(&e, backoff);
                    if sleep_or_stop(stop, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(imap.max_backoff);
                }
            }
        }
    }

    /// A failed session: a warning while it may pass, an error when only the operator can
    /// fix it (a refresh token to re-authorize, a refused OAuth client).
    fn log_failure(&self, e: &EmailError, backoff: Duration) {
        let cause = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default();
        let retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        if e.needs_operator() {
            tracing::error!(mailbox = %self.label, error = %e, retry_in_ms,
                "mailbox cannot log in until the operator acts, retrying");
        } else {
            tracing::warn!(mailbox = %self.label, error = %e, cause = %cause, retry_in_ms,
                "imap session failed, reconnecting");
        }
    }

    /// One connection: select, settle the checkpoint, then catch up and idle until an error
    /// or a stop.
    async fn session(
        &self,
        checkpoint: &mut Option<Checkpoint>,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> Result<(), EmailError> {
        let imap = &self.settings.imap;
        let mut session = self
            .step("connect", stop, async {
                connect(imap, &self.label, self.tokens.as_deref())
                    .await
                    .map_err(|e| Box::new(e) as BoxError)
            })
            .await?;
        let mailbox = self
            .step("select", stop, session.select(&imap.folder))
            .await?;
        self.metrics
            .connected
            .with_label_values(&[&self.label])
            .set(1);
        *backoff = imap.initial_backoff;
        let uidvalidity = mailbox
            .uid_validity
            .ok_or_else(|| EmailError::NoUidValidity {
                mailbox: self.label.clone(),
                folder: imap.folder.clone(),
            })?;
        let mut cp = match checkpoint.take() {
            Some(cp) if cp.uidvalidity == uidvalidity => cp,
            Some(old) => {
                self.metrics
                    .uidvalidity_changes
                    .with_label_values(&[&self.label])
                    .inc();
                let top = match mailbox.uid_next {
                    Some(next) => next.saturating_sub(1),
                    None => self.highest_uid(&mut session, stop).await?,
                };
                let mut cp = Checkpoint {
                    uidvalidity,
                    last_uid: 0,
                    recent: old.recent,
                    mark: old.mark,
                    rescan_until: None,
                    updated_at: None,
                };
                match imap.first_start {
                    FirstStart::New => {
                        cp.last_uid = top;
                        self.metrics
                            .skipped
                            .with_label_values(&[&self.label, "uidvalidity_changed"])
                            .inc_by(u64::from(mailbox.exists));
                        tracing::warn!(mailbox = %self.label, folder = %imap.folder,
                            old = old.uidvalidity, new = uidvalidity, skipped = mailbox.exists,
                            first_start = "new",
                            "UIDVALIDITY changed (folder recreated or server migrated): the mail already in the folder was not published, only mail arriving from now on is");
                    }
                    FirstStart::All => {
                        cp.rescan_until = (top > 0).then_some(top);
                        tracing::warn!(mailbox = %self.label, folder = %imap.folder,
                            old = old.uidvalidity, new = uidvalidity, to_read = mailbox.exists,
                            first_start = "all",
                            "UIDVALIDITY changed (folder recreated or server migrated): reading the folder again, skipping mail already published (by Message-ID)");
                    }
                }
                self.save(&cp, stop).await?;
                cp
            }
            None => {
                let last_uid = match imap.first_start {
                    FirstStart::All => 0,
                    FirstStart::New => match mailbox.uid_next {
                        Some(next) => next.saturating_sub(1),
                        None => self.highest_uid(&mut session, stop).await?,
                    },
                };
                let cp = Checkpoint {
                    uidvalidity,
                    last_uid,
                    ..Checkpoint::default()
                };
                self.save(&cp, stop).await?;
                tracing::info!(mailbox = %self.label, uidvalidity, last_uid, "first read of the mailbox");
                cp
            }
        };
        let mut slot = Some(session);
        let result = self.serve(&mut slot, &mut cp, run, stop).await;
        *checkpoint = Some(cp);
        if let (Err(EmailError::Stopped), Some(mut session)) = (&result, slot) {
            // Best effort: a polite goodbye.
            let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
        }
        result
    }

    /// Catch up, then IDLE until something changes, forever.
    async fn serve(
        &self,
        session: &mut Option<ImapSession>,
        cp: &mut Checkpoint,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EmailError> {
        let imap = &self.settings.imap;
        loop {
            let s = session.as_mut().ok_or(EmailError::Stopped)?;
            self.catch_up(s, cp, run, stop).await?;
            // Mail that arrived while we were fetching was announced (EXISTS) in answers we
            // have already read; IDLE would not announce it again. Catch up once more first.
            if announced_new_mail(s) {
                continue;
            }
            let Some(s) = session.take() else {
                return Err(EmailError::Stopped);
            };
            let mut idle = s.idle();
            self.step("idle", stop, idle.init()).await?;
            let mut mark_failed = None;
            let outcome = {
                let (wait, _interrupt) = idle.wait_with_timeout(imap.idle_refresh);
                tokio::pin!(wait);
                loop {
                    let mark_due = run.mark_taken.map_or(Duration::ZERO, |t| {
                        MARK_IDLE_REFRESH.saturating_sub(t.elapsed())
                    });
                    let woke = tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => Some(None),
                        r = &mut wait => Some(Some(r)),
                        // Keep what a takeover would read back short while nothing arrives
                        // (Kafka only: the IMAP session stays in IDLE).
                        () = tokio::time::sleep(mark_due) => None,
                    };
                    match woke {
                        Some(outcome) => break outcome,
                        None => {
                            if let Err(e) = self.refresh_mark(cp, run, stop).await {
                                mark_failed = Some(e);
                                break None;
                            }
                        }
                    }
                }
            };
            if let Some(e) = mark_failed {
                return Err(e);
            }
            match outcome {
                None => {
                    // Stopping: leave IDLE politely so the server is not left waiting.
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(2), idle.done()).await
                    {
                        *session = Some(s);
                    }
                    return Err(EmailError::Stopped);
                }
                Some(Err(e)) => {
                    return Err(self.imap_error("idle", e.into()));
                }
                Some(Ok(IdleResponse::Timeout)) => {
                    self.metrics
                        .idle_refreshes
                        .with_label_values(&[&self.label])
                        .inc();
                }
                Some(Ok(IdleResponse::NewData(_) | IdleResponse::ManualInterrupt)) => {}
            }
            *session = Some(self.step("idle done", stop, idle.done()).await?);
        }
    }

    /// Handles every mail after the checkpoint, in UID order.
    async fn catch_up(
        &self,
        session: &mut ImapSession,
        cp: &mut Checkpoint,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EmailError> {
        if cp.rescan_until.is_some() && run.rescan.is_none() {
            let key = self.settings.checkpoint_key();
            let known = self
                .until_done(stop, "read the published mail", || {
                    self.checkpoints.published(&key)
                })
                .await?;
            tracing::info!(mailbox = %self.label, known = known.len(),
                "read what the mailbox published before, for the re-read of the folder");
            run.rescan = Some(Rescan {
                known,
                published: 0,
                skipped: 0,
            });
        }
        let query = format!("UID {}:*", cp.last_uid.saturating_add(1));
        let found = self
            .step("search", stop, session.uid_search(&query))
            .await?;
        // `n:*` always matches the last mail, even below n: keep only new UIDs.
        let mut uids: Vec<u32> = found.into_iter().filter(|u| *u > cp.last_uid).collect();
        uids.sort_unstable();
        for uid in uids {
            if *stop.borrow() {
                return Err(EmailError::Stopped);
            }
            self.handle(session, uid, cp, run, stop).await?;
        }
        // Every mail the folder held when the re-read began has been handled.
        if cp.rescan_until.take().is_some() {
            if let Some(r) = run.rescan.take() {
                tracing::warn!(mailbox = %self.label, folder = %self.settings.imap.folder,
                    published = r.published, skipped = r.skipped,
                    "folder read again after its UIDVALIDITY changed: mail published before was skipped");
            }
            self.save(cp, stop).await?;
        }
        Ok(())
    }

    /// Fetches, publishes and checkpoints one mail.
    async fn handle(
        &self,
        session: &mut ImapSession,
        uid: u32,
        cp: &mut Checkpoint,
        run: &mut Run,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EmailError> {
        let max = self.settings.imap.max_message_bytes;
        let query = format!("(UID RFC822.SIZE BODY.PEEK[]<0.{max}>)");
        let fetched = self
            .step("fetch", stop, async {
                let stream = session.uid_fetch(uid.to_string(), &query).await?;
                stream.try_collect::<Vec<_>>().await
            })
            .await?;
        let found = fetched
            .iter()
            .find(|f| f.uid == Some(uid))
            .map(|f| (f.body().unwrap_or_default(), f.size));
        let mut handled = Handled::Skipped;
        match found {
            None => self.skip("vanished", uid),
            Some((raw, size)) => {
                self.metrics.fetched.with_label_values(&[&self.label]).inc();
                if size.is_some_and(|s| s > max) {
                    self.metrics
                        .truncated
                        .with_label_values(&[&self.label])
                        .inc();
                    tracing::warn!(mailbox = %self.label, uid, size, max, "mail larger than the limit: read only its beginning");
                }
                handled = self.publish_mail(raw, uid, cp, run, stop).await?;
            }
        }
        cp.last_uid = uid;
        match handled {
            Handled::Skipped => self.save(cp, stop).await,
            Handled::Published(hash) => {
                let key = self.settings.checkpoint_key();
                let mut also = stop.clone();
                tokio::try_join!(
                    self.save(cp, stop),
                    self.until_done(&mut also, "remember published", || {
                        self.checkpoints.remember_published(&key, &hash)
                    }),
                )?;
                Ok(())
            }
        }
    }

    fn skip(&self, reason: &str, uid: u32) {
        tracing::debug!(mailbox = %self.label, uid, reason, "mail skipped");
        self.metrics
            .skipped
            .with_label_values(&[&self.label, reason])
            .inc();
    }

    /// Writes the checkpoint, retrying until it is durable or the reader stops.
    async fn save(
        &self,
        cp: &Checkpoint,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), EmailError> {
        let key = self.settings.checkpoint_key();
        let mut cp = cp.clone();
        cp.updated_at = Some(Utc::now());
        self.until_done(stop, "checkpoint", || self.checkpoints.save(&key, &cp))
            .await?;
        self.metrics
            .checkpoint_writes
            .with_label_values(&[&self.label])
            .inc();
        self.metrics
            .last_uid
            .with_label_values(&[&self.label])
            .set(i64::from(cp.last_uid));
        Ok(())
    }

    /// Retries `op` with backoff (200 ms doubling to 10 s) until it succeeds; `Stopped` if the
    /// reader is told to stop first. Kafka being down stalls the mailbox, never skips mail. A
    /// stopped reader starts no write: the next run finds what it left (module docs).
    async fn until_done<T, F, Fut, E>(
        &self,
        stop: &mut watch::Receiver<bool>,
        what: &'static str,
        mut op: F,
    ) -> Result<T, EmailError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut wait = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return Err(EmailError::Stopped);
            }
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(mailbox = %self.label, error = %e, what, "kafka did not take it yet, retrying");
                }
            }
            if sleep_or_stop(stop, wait).await {
                return Err(EmailError::Stopped);
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// The highest UID in the folder (for servers that do not announce UIDNEXT).
    async fn highest_uid(
        &self,
        session: &mut ImapSession,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<u32, EmailError> {
        let all = self.step("search", stop, session.uid_search("ALL")).await?;
        Ok(all.into_iter().max().unwrap_or(0))
    }

    /// Runs one IMAP step within the command timeout, giving up at once when told to stop.
    async fn step<T, E, Fut>(
        &self,
        stage: &'static str,
        stop: &mut watch::Receiver<bool>,
        fut: Fut,
    ) -> Result<T, EmailError>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let limit = self.settings.imap.command_timeout;
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => Err(EmailError::Stopped),
            r = tokio::time::timeout(limit, fut) => match r {
                Err(_) => Err(EmailError::Timeout { mailbox: self.label.clone(), stage }),
                Ok(Err(e)) => Err(self.imap_error(stage, e.into())),
                Ok(Ok(v)) => Ok(v),
            },
        }
    }

    fn imap_error(&self, stage: &'static str, source: BoxError) -> EmailError {
        // A connect error is already ours: keep it as it is.
        match source.downcast::<EmailError>() {
            Ok(e) => *e,
            Err(source) => EmailError::Imap {
                mailbox: self.label.clone(),
                stage,
                source,
            },
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Drains the responses the server sent unasked; true if one announced new mail.
fn announced_new_mail(session: &mut ImapSession) -> bool {
    let mut exists = false;
    while let Ok(response) = session.unsolicited_responses.try_recv() {
        exists |= matches!(
            response,
            async_imap::types::UnsolicitedResponse::Exists(_)
                | async_imap::types::UnsolicitedResponse::Recent(_)
        );
    }
    exists
}

/// Sleeps for `wait`; true if told to stop first (or the stop sender is gone).
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(wait) => false,
    }
}
