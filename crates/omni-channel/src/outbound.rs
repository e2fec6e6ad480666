//! Outbound dispatch shared by every channel: replies from `omni.outbound.v1` go to the
//! channel's [`ChannelSender`], with retries for retryable failures only, and their fate is
//! published on `omni.delivery.v1` before the outbound record is committed. A reply is never
//! dropped silently: it ends as `sent` or as `failed` with a bounded [`FailureReason`].
//!
//! A sender reports progress in [`SendProgress`] so a message sent in several provider calls
//! (text, then each attachment) resumes after the last part that went out when a later part
//! is retried, instead of sending the first parts twice.
//!
//! # Never twice, across replicas
//! With a [`ProgressLog`] and the consumer's [`PartitionGate`] (the daemon's set-up):
//! - **Progress is durable before the next call.** A sender calls
//!   [`SendProgress::begin_part`] before each provider call and [`SendProgress::part_sent`]
//!   after the provider accepted the part; both are on the progress topic (acks=all) before
//!   the sender goes on. The reply's fate is marked finished once it is on the delivery topic.
//!   Whichever replica gets the record next skips a finished reply (also one sent in full
//!   whose offset was not committed), resumes after the parts sent, and does not resend a part
//!   whose provider call had started: that part's fate is unknown, so the reply fails with
//!   `outcome_unknown` unless the sender [deduplicates](ChannelSender::deduplicates) (eSMS's
//!   `RequestId`), in which case the part is sent again and the provider drops the repeat.
//! - **No blind retry.** A call that fails after the request went out (a timeout, a connection
//!   lost mid-request, an unreadable answer) is `outcome_unknown`, not retried; only failures
//!   where the provider certainly did not take the part (connect errors, HTTP errors it
//!   answered with) are retried.
//! - **One sender per tenant.** Replies are sent only from their tenant's partition (the
//!   partitioning contract: murmur2 of the tenant); a record keyed otherwise or on another
//!   partition is forwarded there, same bytes, and not sent where it landed. So a tenant's
//!   replies, and the rate limits of its pages, OAs and numbers, live in one process at a
//!   time, and a hand-over waits for the old owner's running attempts ([`PartitionGate`]).
//! - **Every partition has a sender.** The daemon runs `omni_bus::Liveness` next to the
//!   outbound consumer: a partition nobody renewed a claim for in `session.timeout.ms` + 5 s
//!   makes the replicas rejoin the group (a broker that did not rebalance after a member died,
//!   as tansu 0.6 can), so a dead replica's tenants get their replies from a live one.
//! - **What remains (at least once):** a replica cut off from the group longer than the
//!   session timeout while it was at the provider (a zombie, until librdkafka revokes its
//!   partitions), and an SMTP server that took a mail whose answer was lost (e-mail is resent
//!   with the same Message-ID, which mail clients show once).

use chrono::Utc;
use omni_bus::{partition_for, HandlerOutcome, PartitionGate, Record};
use omni_core::{
    ChannelKind, CloudEvent, DeliveryStatus, DeliveryUpdate, EventId, EventType, OutboundMessage,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::progress::{PartitionedStore, ProgressLog, ReplyProgress};
use crate::sink::EventSink;

/// Why a reply could not be delivered: a bounded label for metrics and the delivery event's
/// `reason`, so CRMs and alerts can switch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The channel's reply window is closed (Messenger 24 h / 7 days, Zalo's 48 h).
    OutsideWindow,
    /// The recipient blocked the account, left, or cannot receive messages.
    UserUnavailable,
    /// The provider refused our credentials (expired or revoked token).
    BadToken,
    /// The provider's rate limit was hit and retries ran out.
    RateLimited,
    /// A messaging quota (free replies, daily quota) is used up.
    QuotaExceeded,
    /// The recipient's address is not valid on this channel.
    InvalidRecipient,
    /// The message itself was refused (too long, bad attachment).
    InvalidMessage,
    /// The message has content the channel cannot carry.
    Unsupported,
    /// The provider refused it for another reason (see the delivery's `detail`).
    Rejected,
    /// The provider was unreachable or failing and retries ran out.
    ProviderUnavailable,
    /// This daemon has no sender for the channel kind.
    ChannelNotConfigured,
    /// The tenant has no credentials for the channel account.
    AccountNotConfigured,
    /// The reply was older than the dispatcher's maximum age when taken: not sent.
    Expired,
    /// A provider call failed after the request went out (timeout, connection lost, answer
    /// unreadable), or a replica stopped during one: the provider may have taken the part.
    /// Not retried, so the customer never gets it twice; check before sending it again.
    OutcomeUnknown,
}

impl FailureReason {
    /// The label value, as written to metrics and delivery events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::OutsideWindow => "outside_window",
            FailureReason::UserUnavailable => "user_unavailable",
            FailureReason::BadToken => "bad_token",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::QuotaExceeded => "quota_exceeded",
            FailureReason::InvalidRecipient => "invalid_recipient",
            FailureReason::InvalidMessage => "invalid_message",
            FailureReason::Unsupported => "unsupported",
            FailureReason::Rejected => "rejected",
            FailureReason::ProviderUnavailable => "provider_unavailable",
            FailureReason::ChannelNotConfigured => "channel_not_configured",
            FailureReason::AccountNotConfigured => "account_not_configured",
            FailureReason::Expired => "expired",
            FailureReason::OutcomeUnknown => "outcome_unknown",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call, classified so the dispatcher knows whether to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct SendError {
    /// Why, as a bounded label.
    pub reason: FailureReason,
    /// Whether trying again later may succeed.
    pub retryable: bool,
    /// What the provider said (never contains secrets).
    pub detail: String,
    /// How long the provider asked us to wait, if it said.
    pub retry_after: Option<Duration>,
}

impl SendError {
    /// A failure that retrying cannot fix.
    pub fn permanent(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            retryable: false,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// A failure that may pass.
    pub fn retryable(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            retryable: true,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The same failure, with the provider's requested wait.
    pub fn after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }

    /// Classifies a transport error: connection failures and timeouts may pass.
    pub fn from_transport(err: &reqwest::Error) -> Self {
        // `without_url`: provider URLs can carry tokens (Graph's `access_token` query).
        let detail = format!("{}", ErrorWithoutUrl(err));
        SendError::retryable(FailureReason::ProviderUnavailable, detail)
    }

    /// Classifies a transport error of a call that sends a message: a connect error (nothing
    /// went out) may pass and is retried; anything after the request was written (a timeout,
    /// a connection lost, a body that could not be read) leaves the outcome unknown, and is
    /// never retried blindly.
    pub fn from_send_transport(err: &reqwest::Error) -> Self {
        let detail = format!("{}", ErrorWithoutUrl(err));
        if err.is_connect() {
            SendError::retryable(FailureReason::ProviderUnavailable, detail)
        } else {
            SendError::permanent(
                FailureReason::OutcomeUnknown,
                format!("{detail} (the provider may have accepted it: not resent)"),
            )
        }
    }

    /// Classifies an HTTP status that carried no more specific provider error.
    pub fn from_status(status: reqwest::StatusCode, retry_after: Option<Duration>) -> Self {
        let detail = format!("provider answered HTTP {status}");
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            SendError::retryable(FailureReason::RateLimited, detail).after(retry_after)
        } else if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            SendError::retryable(FailureReason::ProviderUnavailable, detail).after(retry_after)
        } else if status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::FORBIDDEN
        {
            SendError::permanent(FailureReason::BadToken, detail)
        } else {
            SendError::permanent(FailureReason::Rejected, detail)
        }
    }
}

/// Displays a reqwest error and its causes without the request URL.
struct ErrorWithoutUrl<'a>(&'a reqwest::Error);

impl std::fmt::Display for ErrorWithoutUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.0.is_timeout() {
            "timed out"
        } else if self.0.is_connect() {
            "connection failed"
        } else if self.0.is_body() || self.0.is_decode() {
            "bad response body"
        } else {
            "request failed"
        };
        f.write_str(kind)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// The `Retry-After` header in seconds, if the provider sent one.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// What a successful send produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReceipt {
    /// The provider's id for the message (the first part's, when sent in several calls).
    pub provider_message_id: Option<String>,
    /// SMS segments used, when the channel counts them.
    pub segments: Option<u32>,
}

/// How far a multi-part send got, kept across retries of the same reply and, through its
/// [`Checkpoint`], across replicas.
#[derive(Clone, Default)]
pub struct SendProgress {
    /// Parts already accepted by the provider; a retry starts after them.
    pub parts_sent: usize,
    /// The provider ids of the parts sent so far, in order.
    pub provider_message_ids: Vec<String>,
    /// The last call for part `parts_sent` ended without knowing whether the provider took it;
    /// only a sender that [deduplicates](ChannelSender::deduplicates) tries again.
    pub uncertain: bool,
    checkpoint: Option<Arc<dyn Checkpoint>>,
}

impl std::fmt::Debug for SendProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendProgress")
            .field("parts_sent", &self.parts_sent)
            .field("provider_message_ids", &self.provider_message_ids)
            .field("uncertain", &self.uncertain)
            .field("durable", &self.checkpoint.is_some())
            .finish()
    }
}

impl PartialEq for SendProgress {
    fn eq(&self, other: &Self) -> bool {
        self.parts_sent == other.parts_sent
            && self.provider_message_ids == other.provider_message_ids
            && self.uncertain == other.uncertain
    }
}

impl Eq for SendProgress {}

impl SendProgress {
    /// Progress found stored, made durable through `checkpoint` from now on.
    pub fn resumed(
        parts_sent: usize,
        provider_message_ids: Vec<String>,
        uncertain: bool,
        checkpoint: Option<Arc<dyn Checkpoint>>,
    ) -> Self {
        Self {
            parts_sent,
            provider_message_ids,
            uncertain,
            checkpoint,
        }
    }

    /// Call right before the provider call for part `index` (= `parts_sent`): records that the
    /// part is at the provider, durably, so a replica that takes over after a crash does not
    /// send it again blindly. An error means nothing was sent: return it.
    pub async fn begin_part(&mut self, index: usize) -> Result<(), SendError> {
        debug_assert_eq!(index, self.parts_sent);
        match &self.checkpoint {
            Some(c) => {
                c.save(self.parts_sent, &self.provider_message_ids, true)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Call once the provider accepted part `index`: records it, durably, before the next
    /// call. An error (only when the daemon is stopping) means the part went out but is not
    /// recorded as sent; the next owner then treats it as of unknown fate.
    pub async fn part_sent(&mut self, index: usize, provider_id: String) -> Result<(), SendError> {
        self.parts_sent = index + 1;
        self.provider_message_ids.push(provider_id);
        self.uncertain = false;
        match &self.checkpoint {
            Some(c) => {
                c.save(self.parts_sent, &self.provider_message_ids, false)
                    .await
            }
            None => Ok(()),
        }
    }
}

/// A boxed checkpoint future.
pub type CheckpointFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// Where a reply's progress is made durable (the progress topic, in the daemon).
pub trait Checkpoint: Send + Sync {
    /// Stores `parts_sent` parts with their ids, and whether the next part is at the
    /// provider; resolves once durable. Fails only when the daemon is stopping.
    fn save<'a>(
        &'a self,
        parts_sent: usize,
        provider_message_ids: &'a [String],
        at_provider: bool,
    ) -> CheckpointFuture<'a>;
}

/// A reply to send, with the id of the outbound event it came from.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The outbound event's id (providers that deduplicate get it as their request id).
    pub event_id: EventId,
    /// The reply.
    pub message: OutboundMessage,
}

/// A boxed send future.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<SendReceipt, SendError>> + Send + 'a>>;

/// One channel's way out: sends one reply through the provider's API.
pub trait ChannelSender: Send + Sync + 'static {
    /// Sends `request`, skipping the parts `progress` says were already sent and recording
    /// each part that goes out, so a retry resumes where this attempt stopped.
    fn send<'a>(
        &'a self,
        request: &'a SendRequest,
        progress: &'a mut SendProgress,
    ) -> SendFuture<'a>;

    /// Whether the provider drops a repeat of a part this sender already sent for `request`
    /// (eSMS by `RequestId`): only then is a part of unknown fate sent again.
    fn deduplicates(&self, _request: &SendRequest) -> bool {
        false
    }
}

/// How hard to try before a retryable failure becomes a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based), honouring the provider's own request,
    /// with jitter so a burst of failures does not retry in lockstep.
    fn backoff(&self, retry: u32, requested: Option<Duration>, jitter_seed: u128) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        // Up to +25 % jitter, deterministic per message so tests can reason about it.
        let jitter_pct = u32::try_from(jitter_seed % 26).unwrap_or(0);
        let jittered = exp + exp * jitter_pct / 100;
        requested
            .map_or(jittered, |r| r.max(jittered))
            .min(self.max_backoff)
    }
}

/// Dispatch metric families.
#[derive(Clone)]
pub struct DispatchMetrics {
    /// Replies by final status (`sent`, `failed`), per channel.
    pub deliveries: IntCounterVec,
    /// Failed replies by reason, per channel.
    pub failures: IntCounterVec,
    /// Retries by the reason of the failed attempt, per channel.
    pub retries: IntCounterVec,
    /// Time from taking a reply to its final status, per channel.
    pub duration: HistogramVec,
    /// Outbound records not sent where they landed: forwarded to their tenant's partition
    /// (`reason`: `key` keyed otherwise, `partition` on another partition) or left to the
    /// router, which forwards them (`left_to_router`).
    pub misrouted: IntCounterVec,
    /// Replies taken again (redelivered, or a duplicate record) and not sent again because
    /// their progress says they were finished or a part is of unknown fate (`state`).
    pub resumed: IntCounterVec,
}

impl DispatchMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "omni_deliveries_total",
                "Outbound replies by final status (sent or failed).",
            ),
            &["channel", "status"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "omni_delivery_failures_total",
                "Outbound replies that could not be delivered, by reason.",
            ),
            &["channel", "reason"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "omni_delivery_retries_total",
                "Provider calls retried after a retryable failure, by reason.",
            ),
            &["channel", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "omni_delivery_duration_seconds",
                "Time from taking an outbound reply to its final status, retries included.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["channel"],
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        let misrouted = IntCounterVec::new(
            Opts::new(
                "omni_outbound_misrouted_total",
                "Outbound records not on their tenant's partition: forwarded there, never sent where they landed.",
            ),
            &["reason"],
        )?;
        let resumed = IntCounterVec::new(
            Opts::new(
                "omni_outbound_resumed_total",
                "Outbound replies taken again with stored progress (finished: skipped; partial: resumed after the parts sent; at_provider: a part of unknown fate).",
            ),
            &["state"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(misrouted.clone()))?;
        registry.register(Box::new(resumed.clone()))?;
        Ok(Self {
            deliveries,
            failures,
            retries,
            duration,
            misrouted,
            resumed,
        })
    }
}

/// Takes replies from the outbound topic to the right sender and records their fate.
pub struct Dispatcher {
    senders: HashMap<ChannelKind, Arc<dyn ChannelSender>>,
    /// Kinds delivered by someone else (the API channel's integrator; live chat's sockets).
    elsewhere: Vec<ChannelKind>,
    sink: Arc<dyn EventSink>,
    delivery_topic: String,
    policy: RetryPolicy,
    metrics: DispatchMetrics,
    stop: tokio::sync::watch::Receiver<bool>,
    max_age: Option<Duration>,
    ownership: Option<SendOwnership>,
}

/// What makes a reply's sending single across replicas (see the module docs).
pub struct SendOwnership {
    /// Partitions of the outbound topic (the partitioning contract's modulus).
    pub partitions: usize,
    /// Where misrouted records are forwarded to (the outbound topic, by partition).
    pub store: Arc<dyn PartitionedStore>,
    /// Forward records that are keyed by their tenant but on another partition. Off when the
    /// router runs in this daemon: it forwards them already (one copy is enough).
    pub forward_misrouted: bool,
    /// The partitions this replica holds (the outbound consumer's gate).
    pub gate: Arc<PartitionGate>,
    /// The replies' stored progress.
    pub progress: Arc<ProgressLog>,
}

/// How a reply's attempts ended.
enum Attempts {
    /// Sent, or failed for good.
    Finished(Result<SendReceipt, SendError>),
    /// The daemon is stopping: leave the record for redelivery.
    Stopped,
    /// The partition was revoked: leave the record to its next owner.
    Abandoned,
}

/// The dispatcher's [`Checkpoint`]: one reply's progress on the progress topic, written again
/// until Kafka takes it (the provider is not called meanwhile).
struct ProgressCheckpoint {
    progress: Arc<ProgressLog>,
    partition: i32,
    id: String,
    time: i64,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Checkpoint for ProgressCheckpoint {
    fn save<'a>(
        &'a self,
        parts_sent: usize,
        provider_message_ids: &'a [String],
        at_provider: bool,
    ) -> CheckpointFuture<'a> {
        Box::pin(async move {
            let state = ReplyProgress {
                parts_sent,
                provider_message_ids: provider_message_ids.to_vec(),
                at_provider,
                finished: false,
                time: self.time,
            };
            let mut wait = Duration::from_millis(100);
            loop {
                match self.progress.put(self.partition, &self.id, &state).await {
                    Ok(()) => return Ok(()),
                    Err(e) => tracing::warn!(error = %e, event_id = %self.id,
                        "cannot record outbound progress yet, retrying"),
                }
                let mut stop = self.stop.clone();
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => {
                        return Err(SendError::retryable(
                            FailureReason::ProviderUnavailable,
                            "stopping before the progress was recorded",
                        ));
                    }
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        })
    }
}

impl Dispatcher {
    /// A dispatcher writing delivery events to `delivery_topic`. `stop` turning true ends
    /// retry waits early (the reply is then left for redelivery, not failed).
    pub fn new(
        sink: Arc<dyn EventSink>,
        delivery_topic: impl Into<String>,
        policy: RetryPolicy,
        metrics: DispatchMetrics,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            senders: HashMap::new(),
            elsewhere: vec![ChannelKind::Api],
            sink,
            delivery_topic: delivery_topic.into(),
            policy,
            metrics,
            stop,
            max_age: None,
            ownership: None,
        }
    }

    /// Fails replies older than `max_age` (by their event time) as `expired` instead of
    /// sending them: a new consumer group reading a long outbound topic from its beginning
    /// must not message customers with stale replies.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Sends each reply only from its tenant's partition, while this replica holds it, with
    /// durable progress (see the module docs). Without it (unit tests) replies are sent where
    /// they are taken, with progress in memory only.
    pub fn with_ownership(mut self, ownership: SendOwnership) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Registers the sender for a channel kind.
    pub fn with_sender(mut self, kind: ChannelKind, sender: Arc<dyn ChannelSender>) -> Self {
        self.senders.insert(kind, sender);
        self
    }

    /// Declares a channel kind delivered by another component: its replies are left alone.
    pub fn delivered_elsewhere(mut self, kind: ChannelKind) -> Self {
        self.elsewhere.push(kind);
        self
    }

    /// The conversation a record belongs to, for per-conversation ordering: replies in one
    /// conversation go out in the order they were written.
    pub fn order_key(payload: Option<&[u8]>) -> u64 {
        #[derive(serde::Deserialize)]
        struct Subject {
            subject: Option<String>,
        }
        let subject = payload
            .and_then(|p| serde_json::from_slice::<Subject>(p).ok())
            .and_then(|s| s.subject)
            .unwrap_or_default();
        // FNV-1a: stable and cheap; collisions only serialize two conversations.
        subject.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Handles one outbound record: send, retry while it may pass, publish the result.
    pub async fn handle(&self, record: &Record) -> HandlerOutcome {
        let key = record.key.as_deref();
        let Some(payload) = record.payload.as_deref() else {
            return HandlerOutcome::Skip("outbound record without a value".into());
        };
        let event: CloudEvent<serde_json::Value> = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => return HandlerOutcome::Skip(format!("not a CloudEvent: {e}")),
        };
        if event.event_type != EventType::MessageSend {
            return HandlerOutcome::Done;
        }
        tracing::debug!(event_id = %event.id, partition = record.partition,
            offset = record.offset, "outbound reply taken");
        let tenant_key = event.tenant.as_str().as_bytes();
        if let Some(own) = &self.ownership {
            // The partitioning contract: a tenant's replies are sent from its partition only.
            let home = partition_for(tenant_key, own.partitions);
            if key != Some(tenant_key) {
                return self.forward(own, record, tenant_key, home, "key").await;
            }
            if record.partition != home {
                if own.forward_misrouted {
                    return self
                        .forward(own, record, tenant_key, home, "partition")
                        .await;
                }
                self.metrics
                    .misrouted
                    .with_label_values(&["left_to_router"])
                    .inc();
                return HandlerOutcome::Done;
            }
        } else if key != Some(tenant_key) {
            return HandlerOutcome::Skip(format!(
                "record key does not match the event's tenant {}",
                event.tenant
            ));
        }
        let message: OutboundMessage = match serde_json::from_value(event.data) {
            Ok(m) => m,
            Err(e) => return HandlerOutcome::Skip(format!("bad omni.message.send data: {e}")),
        };
        let kind = message.channel.kind;
        if self.elsewhere.contains(&kind) {
            return HandlerOutcome::Done;
        }
        let request = SendRequest {
            event_id: event.id,
            message,
        };
        let started = Instant::now();
        let event_ms = event.time.timestamp_millis();
        // What an earlier owner (or an earlier copy of this record) did with this reply.
        let mut progress = SendProgress::default();
        let mut generation = None;
        if let Some(own) = &self.ownership {
            let Some(g) = own.gate.generation(&record.topic, record.partition) else {
                return HandlerOutcome::Abandon("partition no longer held".into());
            };
            generation = Some(g);
            let id = request.event_id.to_string();
            let gate = own.gate.clone();
            let topic = record.topic.clone();
            let stored = own
                .progress
                .get(
                    record.partition,
                    g,
                    &id,
                    Utc::now().timestamp_millis(),
                    |p| gate.holds(&topic, p),
                )
                .await;
            let stored = match stored {
                Ok(s) => s,
                Err(e) => {
                    return HandlerOutcome::Retry(format!("cannot read outbound progress: {e}"))
                }
            };
            let checkpoint: Arc<dyn Checkpoint> = Arc::new(ProgressCheckpoint {
                progress: own.progress.clone(),
                partition: record.partition,
                id,
                time: event_ms,
                stop: self.stop.clone(),
            });
            if let Some(p) = &stored {
                let state = match (p.finished, p.at_provider) {
                    (true, _) => "finished",
                    (false, true) => "at_provider",
                    (false, false) => "partial",
                };
                self.metrics.resumed.with_label_values(&[state]).inc();
                tracing::info!(event_id = %request.event_id, state, parts_sent = p.parts_sent,
                    "outbound reply taken again: resuming from its stored progress");
                if p.finished {
                    return HandlerOutcome::Done;
                }
            }
            progress = match stored {
                Some(p) => SendProgress::resumed(
                    p.parts_sent,
                    p.provider_message_ids,
                    p.at_provider,
                    Some(checkpoint),
                ),
                None => SendProgress::resumed(0, Vec::new(), false, Some(checkpoint)),
            };
        }
        let age = (Utc::now() - event.time).to_std().unwrap_or(Duration::ZERO);
        let result = match self.senders.get(&kind) {
            _ if self.max_age.is_some_and(|max| age > max) => Err(SendError::permanent(
                FailureReason::Expired,
                format!("written {}s ago, older than the maximum age", age.as_secs()),
            )),
            Some(sender) if progress.uncertain && !sender.deduplicates(&request) => {
                Err(SendError::permanent(
                    FailureReason::OutcomeUnknown,
                    format!(
                        "a replica stopped while part {} was at the provider: not sent again",
                        progress.parts_sent + 1
                    ),
                ))
            }
            Some(sender) => {
                let place = generation.map(|g| (record, g));
                match self
                    .send_with_retries(sender.as_ref(), &request, &mut progress, place)
                    .await
                {
                    Attempts::Finished(result) => result,
                    Attempts::Stopped => {
                        return HandlerOutcome::Retry("stopping while retrying a send".into())
                    }
                    Attempts::Abandoned => {
                        return HandlerOutcome::Abandon("partition revoked while sending".into())
                    }
                }
            }
            None => Err(SendError::permanent(
                FailureReason::ChannelNotConfigured,
                format!("this daemon has no {kind} sender configured"),
            )),
        };
        let update = self.record(&request, &result);
        self.metrics
            .duration
            .with_label_values(&[kind.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = self.publish(&request, update).await;
        if outcome == HandlerOutcome::Done {
            if let Some(own) = &self.ownership {
                let finished = ReplyProgress {
                    parts_sent: progress.parts_sent,
                    provider_message_ids: progress.provider_message_ids.clone(),
                    at_provider: false,
                    finished: true,
                    time: event_ms,
                };
                let id = request.event_id.to_string();
                // If this write is lost, the next owner publishes the same fate again (same
                // event id); nothing is sent again either way.
                if let Err(e) = own.progress.put(record.partition, &id, &finished).await {
                    tracing::warn!(error = %e, event_id = %id, "cannot mark the reply finished");
                }
            }
        }
        outcome
    }

    /// Copies a record to its tenant's partition, keyed by the tenant, same value; it is sent
    /// from there by the partition's owner.
    async fn forward(
        &self,
        own: &SendOwnership,
        record: &Record,
        tenant_key: &[u8],
        home: i32,
        reason: &str,
    ) -> HandlerOutcome {
        let value = record.payload.as_deref();
        match own.store.put(&record.topic, home, tenant_key, value).await {
            Ok(()) => {
                self.metrics.misrouted.with_label_values(&[reason]).inc();
                tracing::info!(
                    partition = record.partition,
                    offset = record.offset,
                    home,
                    reason,
                    "outbound record not on its tenant's partition: forwarded there"
                );
                HandlerOutcome::Done
            }
            Err(e) => HandlerOutcome::Retry(format!("cannot forward a misrouted reply: {e}")),
        }
    }

    /// Sends, retrying retryable failures per the policy. With ownership each attempt runs
    /// under a permit of the record's partition, so a revocation waits for it.
    async fn send_with_retries(
        &self,
        sender: &dyn ChannelSender,
        request: &SendRequest,
        progress: &mut SendProgress,
        place: Option<(&Record, u64)>,
    ) -> Attempts {
        let kind = request.message.channel.kind;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let permit = match (&self.ownership, place) {
                (Some(own), Some((record, generation))) => {
                    match own.gate.permit(&record.topic, record.partition) {
                        Some(p) if p.generation() == generation => Some(p),
                        _ => return Attempts::Abandoned,
                    }
                }
                _ => None,
            };
            let error = match sender.send(request, progress).await {
                Ok(receipt) => return Attempts::Finished(Ok(receipt)),
                Err(e) => e,
            };
            drop(permit);
            if *self.stop.borrow() && error.retryable {
                return Attempts::Stopped;
            }
            let wait = self
                .policy
                .backoff(attempt, error.retry_after, request.event_id.as_u128());
            let out_of_time = started.elapsed() + wait > self.policy.deadline;
            if !error.retryable || attempt >= self.policy.max_attempts || out_of_time {
                if progress.uncertain && error.reason != FailureReason::OutcomeUnknown {
                    // The last call's fate was never learnt: do not report a plain failure.
                    return Attempts::Finished(Err(SendError::permanent(
                        FailureReason::OutcomeUnknown,
                        format!("an earlier call's fate is unknown; last: {}", error.detail),
                    )));
                }
                return Attempts::Finished(Err(error));
            }
            self.metrics
                .retries
                .with_label_values(&[kind.as_str(), error.reason.as_str()])
                .inc();
            tracing::info!(channel = %kind, tenant = %request.message.tenant,
                event_id = %request.event_id, attempt, reason = %error.reason,
                detail = %error.detail, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(0),
                "send failed, will retry");
            let mut stop = self.stop.clone();
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return Attempts::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
        }
    }

    /// Counts the outcome and builds the delivery event.
    fn record(
        &self,
        request: &SendRequest,
        result: &Result<SendReceipt, SendError>,
    ) -> CloudEvent<DeliveryUpdate> {
        let message = &request.message;
        let kind = message.channel.kind.as_str();
        let (status, receipt, error) = match result {
            Ok(receipt) => (DeliveryStatus::Sent, Some(receipt), None),
            Err(e) => (DeliveryStatus::Failed, None, Some(e)),
        };
        let status_label = match status {
            DeliveryStatus::Sent => "sent",
            _ => "failed",
        };
        self.metrics
            .deliveries
            .with_label_values(&[kind, status_label])
            .inc();
        if let Some(e) = error {
            self.metrics
                .failures
                .with_label_values(&[kind, e.reason.as_str()])
                .inc();
            tracing::warn!(channel = kind, tenant = %message.tenant, event_id = %request.event_id,
                reason = %e.reason, detail = %e.detail, "reply not delivered");
        }
        let now = Utc::now();
        let update = DeliveryUpdate {
            tenant: message.tenant.clone(),
            conversation_id: message.conversation_id,
            outbound_event_id: request.event_id,
            channel: message.channel.clone(),
            status,
            provider_message_id: receipt.and_then(|r| r.provider_message_id.clone()),
            reason: error.map(|e| e.reason.as_str().to_owned()),
            detail: error.map(|e| e.detail.clone()),
            segments: receipt.and_then(|r| r.segments),
            occurred_at: now,
        };
        CloudEvent::new(
            crate::webhook::delivery_event_id(&message.tenant, request.event_id, status),
            EventType::DeliveryUpdated,
            message.tenant.clone(),
            &message.channel,
            message.conversation_id,
            now,
            update,
        )
    }

    /// Publishes the delivery event, retrying until Kafka takes it: the reply went out (or
    /// definitely failed), so the outbound record must not be committed before its fate is.
    async fn publish(
        &self,
        request: &SendRequest,
        update: CloudEvent<DeliveryUpdate>,
    ) -> HandlerOutcome {
        let payload = match serde_json::to_vec(&update) {
            Ok(p) => p,
            Err(e) => return HandlerOutcome::Skip(format!("cannot serialize delivery: {e}")),
        };
        let key = request.message.tenant.as_str().as_bytes();
        let mut wait = Duration::from_millis(200);
        loop {
            match self.sink.publish(&self.delivery_topic, key, &payload).await {
                Ok(()) => return HandlerOutcome::Done,
                Err(e) => {
                    tracing::warn!(error = %e, event_id = %request.event_id,
                        "cannot publish delivery result yet, retrying");
                }
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => {
                    // The reply will be redelivered to the next owner and sent again.
                    return HandlerOutcome::Retry("stopping before the delivery was published".into());
                }
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemorySink;
    use omni_core::{ChannelRef, ConversationId, TenantId};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A sender answering from a script, one answer per call, recording the progress it saw.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<SendReceipt, SendError>>>,
        seen: Mutex<Vec<usize>>,
    }

    impl ChannelSender for Scripted {
        fn send<'a>(
            &'a self,
            _request: &'a SendRequest,
            progress: &'a mut SendProgress,
        ) -> SendFuture<'a> {
            Box::pin(async move {
                self.seen.lock().unwrap().push(progress.parts_sent);
                let answer = self
                    .answers
                    .lock()
                    .unwrap()
                    .pop_front()
                    .expect("script ran out");
                // A failure after the first part went out: the retry must resume after it.
                if answer.is_err() && progress.parts_sent == 0 {
                    progress.parts_sent = 1;
                    progress.provider_message_ids.push("part-1".into());
                }
                answer
            })
        }
    }

    fn rec(key: &[u8], payload: Option<&[u8]>) -> Record {
        Record {
            topic: "omni.outbound.v1".into(),
            partition: 0,
            offset: 0,
            key: Some(key.to_vec()),
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    fn outbound(kind: ChannelKind) -> Vec<u8> {
        let tenant = TenantId::new("acme").unwrap();
        let channel = ChannelRef::new(kind, "page-1");
        let conversation = ConversationId::derive(&tenant, &channel, "psid-1", None);
        let data = OutboundMessage {
            tenant: tenant.clone(),
            conversation_id: conversation,
            channel: channel.clone(),
            recipient: "psid-1".into(),
            agent_id: Some("a1".into()),
            text: "Dạ, em kiểm tra đơn hàng ngay ạ".into(),
            subject: None,
            attachments: vec![],
            reply_to: None,
        };
        serde_json::to_vec(&CloudEvent::new(
            EventId::new_random(),
            EventType::MessageSend,
            tenant,
            &channel,
            conversation,
            Utc::now(),
            data,
        ))
        .unwrap()
    }

    fn dispatcher(
        sender: Arc<Scripted>,
        sink: Arc<MemorySink>,
        registry: &Registry,
    ) -> (Dispatcher, tokio::sync::watch::Sender<bool>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        };
        let d = Dispatcher::new(
            sink,
            "omni.delivery.v1",
            policy,
            DispatchMetrics::register(registry).unwrap(),
            stop_rx,
        )
        .with_sender(ChannelKind::Messenger, sender);
        (d, stop_tx)
    }

    fn delivery(sink: &MemorySink) -> DeliveryUpdate {
        let records = sink.records();
        assert_eq!(records.len(), 1, "exactly one delivery event");
        assert_eq!(records[0].topic, "omni.delivery.v1");
        assert_eq!(records[0].key, b"acme");
        serde_json::from_slice::<CloudEvent<DeliveryUpdate>>(&records[0].payload)
            .unwrap()
            .data
    }

    fn count(registry: &Registry, name: &str, label: &str) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == label))
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_resuming_after_sent_parts() {
        let sender = Arc::new(Scripted::default());
        sender.answers.lock().unwrap().extend([
            Err(SendError::retryable(FailureReason::RateLimited, "613")),
            Err(SendError::retryable(
                FailureReason::ProviderUnavailable,
                "502",
            )),
            Ok(SendReceipt {
                provider_message_id: Some("m_1".into()),
                segments: None,
            }),
        ]);
        let sink = Arc::new(MemorySink::default());
        let registry = Registry::new();
        let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
        let payload = outbound(ChannelKind::Messenger);
        let outcome = d.handle(&rec(b"acme", Some(&payload))).await;
        assert_eq!(outcome, HandlerOutcome::Done);
        assert_eq!(*sender.seen.lock().unwrap(), [0, 1, 1]);
        let update = delivery(&sink);
        assert_eq!(update.status, DeliveryStatus::Sent);
        assert_eq!(update.provider_message_id.as_deref(), Some("m_1"));
        assert_eq!(
            count(&registry, "omni_delivery_retries_total", "rate_limited"),
            1.0
        );
        assert_eq!(count(&registry, "omni_deliveries_total", "sent"), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_and_exhausted_retries_become_failed_deliveries() {
        for (script, reason, calls) in [
            (
                vec![Err(SendError::permanent(
                    FailureReason::OutsideWindow,
                    "(#10)",
                ))],
                "outside_window",
                1,
            ),
            (
                (0..4)
                    .map(|_| {
                        Err(SendError::retryable(
                            FailureReason::ProviderUnavailable,
                            "503",
                        ))
                    })
                    .collect(),
                "provider_unavailable",
                4,
            ),
        ] {
            let sender = Arc::new(Scripted::default());
            sender.answers.lock().unwrap().extend(script);
            let sink = Arc::new(MemorySink::default());
            let registry = Registry::new();
            let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
            let payload = outbound(ChannelKind::Messenger);
            assert_eq!(
                d.handle(&rec(b"acme", Some(&payload))).await,
                HandlerOutcome::Done
            );
            assert_eq!(sender.seen.lock().unwrap().len(), calls);
            let update = delivery(&sink);
            assert_eq!(update.status, DeliveryStatus::Failed);
            assert_eq!(update.reason.as_deref(), Some(reason));
            assert!(update.detail.is_some());
            assert_eq!(
                count(&registry, "omni_delivery_failures_total", reason),
                1.0
            );
        }
    }

    #[tokio::test]
    async fn unconfigured_channels_fail_loudly_and_api_replies_are_left_alone() {
        let sink = Arc::new(MemorySink::default());
        let registry = Registry::new();
        let (d, _stop) = dispatcher(Arc::new(Scripted::default()), sink.clone(), &registry);
        let api = outbound(ChannelKind::Api);
        assert_eq!(
            d.handle(&rec(b"acme", Some(&api))).await,
            HandlerOutcome::Done
        );
        assert!(
            sink.records().is_empty(),
            "the API channel's integrator delivers"
        );
        let sms = outbound(ChannelKind::Sms);
        assert_eq!(
            d.handle(&rec(b"acme", Some(&sms))).await,
            HandlerOutcome::Done
        );
        let update = delivery(&sink);
        assert_eq!(update.reason.as_deref(), Some("channel_not_configured"));
    }

    #[tokio::test]
    async fn bad_records_are_skipped_not_retried() {
        let sink = Arc::new(MemorySink::default());
        let registry = Registry::new();
        let (d, _stop) = dispatcher(Arc::new(Scripted::default()), sink.clone(), &registry);
        assert!(matches!(
            d.handle(&rec(b"acme", Some(b"{not json"))).await,
            HandlerOutcome::Skip(_)
        ));
        assert!(matches!(
            d.handle(&rec(b"acme", None)).await,
            HandlerOutcome::Skip(_)
        ));
        let payload = outbound(ChannelKind::Messenger);
        assert!(matches!(
            d.handle(&rec(b"other-tenant", Some(&payload))).await,
            HandlerOutcome::Skip(_)
        ));
        assert!(sink.records().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_is_published_once_kafka_is_back_and_stop_leaves_it_for_redelivery() {
        let sender = Arc::new(Scripted::default());
        sender.answers.lock().unwrap().extend([
            Ok(SendReceipt::default()),
            Err(SendError::retryable(
                FailureReason::ProviderUnavailable,
                "x",
            )),
        ]);
        let sink = Arc::new(MemorySink::default());
        let registry = Registry::new();
        let (d, stop) = dispatcher(sender.clone(), sink.clone(), &registry);
        let d = Arc::new(d);
        sink.set_failing(true);
        let payload = outbound(ChannelKind::Messenger);
        let task = {
            let (d, payload) = (d.clone(), payload.clone());
            tokio::spawn(async move { d.handle(&rec(b"acme", Some(&payload))).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !task.is_finished(),
            "waits for Kafka, does not drop the result"
        );
        sink.set_failing(false);
        assert_eq!(task.await.unwrap(), HandlerOutcome::Done);
        assert_eq!(sink.records().len(), 1);
        // Asked to stop while waiting to retry: not failed, left for the next owner.
        let payload = outbound(ChannelKind::Messenger);
        let task = {
            let d = d.clone();
            tokio::spawn(async move { d.handle(&rec(b"acme", Some(&payload))).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop.send(true).unwrap();
        assert!(matches!(task.await.unwrap(), HandlerOutcome::Retry(_)));
        assert_eq!(sink.records().len(), 1);
    }

    #[tokio::test]
    async fn stale_replies_are_failed_as_expired_not_sent() {
        let sender = Arc::new(Scripted::default());
        let sink = Arc::new(MemorySink::default());
        let registry = Registry::new();
        let (d, _stop) = dispatcher(sender.clone(), sink.clone(), &registry);
        let d = d.with_max_age(Duration::from_secs(3600));
        let mut event: serde_json::Value =
            serde_json::from_slice(&outbound(ChannelKind::Messenger)).unwrap();
        event["time"] = serde_json::json!((Utc::now() - chrono::Duration::hours(2)).to_rfc3339());
        let payload = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            d.handle(&rec(b"acme", Some(&payload))).await,
            HandlerOutcome::Done
        );
        assert!(sender.seen.lock().unwrap().is_empty(), "nothing sent");
        assert_eq!(delivery(&sink).reason.as_deref(), Some("expired"));
    }

    /// A dispatcher that owns partition `home` of 4, with durable progress in `store`.
    fn owning(
        sender: Arc<Scripted>,
        sink: Arc<MemorySink>,
        store: Arc<crate::progress::MemoryStore>,
    ) -> (Dispatcher, i32) {
        let registry = Registry::new();
        let (d, stop) = dispatcher(sender, sink, &registry);
        std::mem::forget(stop);
        let home = partition_for(b"acme", 4);
        let gate = Arc::new(PartitionGate::default());
        gate.assign([("omni.outbound.v1".to_owned(), home)]);
        let d = d.with_ownership(SendOwnership {
            partitions: 4,
            store: store.clone(),
            forward_misrouted: true,
            gate,
            progress: Arc::new(ProgressLog::new(
                store,
                "progress",
                Duration::from_secs(3600),
            )),
        });
        (d, home)
    }

    #[tokio::test]
    async fn a_reply_taken_again_is_not_sent_twice_and_misrouted_ones_are_forwarded() {
        let store = Arc::new(crate::progress::MemoryStore::default());
        let sink = Arc::new(MemorySink::default());
        let sender = Arc::new(Scripted::default());
        sender
            .answers
            .lock()
            .unwrap()
            .push_back(Ok(SendReceipt::default()));
        let (d, home) = owning(sender.clone(), sink.clone(), store.clone());
        let payload = outbound(ChannelKind::Messenger);
        let mut record = rec(b"acme", Some(&payload));
        record.partition = home;
        assert_eq!(d.handle(&record).await, HandlerOutcome::Done);
        assert_eq!(sender.seen.lock().unwrap().len(), 1);
        // Redelivered (an offset not committed), here or to another replica: finished, skipped.
        let (other, _) = owning(sender.clone(), sink.clone(), store.clone());
        assert_eq!(other.handle(&record).await, HandlerOutcome::Done);
        assert_eq!(sender.seen.lock().unwrap().len(), 1, "not sent again");
        assert_eq!(sink.records().len(), 1, "its fate published once");

        // A part left at the provider by a replica that died: unknown, not resent.
        let payload = outbound(ChannelKind::Messenger);
        let event: CloudEvent<serde_json::Value> = serde_json::from_slice(&payload).unwrap();
        let at_provider = ReplyProgress {
            at_provider: true,
            time: Utc::now().timestamp_millis(),
            ..ReplyProgress::default()
        };
        store
            .put(
                "progress",
                home,
                event.id.to_string().as_bytes(),
                Some(&serde_json::to_vec(&at_provider).unwrap()),
            )
            .await
            .unwrap();
        let (fresh, _) = owning(sender.clone(), sink.clone(), store.clone());
        let mut record = rec(b"acme", Some(&payload));
        record.partition = home;
        assert_eq!(fresh.handle(&record).await, HandlerOutcome::Done);
        assert_eq!(sender.seen.lock().unwrap().len(), 1, "not resent");
        let last: CloudEvent<DeliveryUpdate> =
            serde_json::from_slice(&sink.records().last().unwrap().payload).unwrap();
        assert_eq!(last.data.reason.as_deref(), Some("outcome_unknown"));

        // On another partition, or keyed otherwise: forwarded to the tenant's partition, not sent.
        let payload = outbound(ChannelKind::Messenger);
        let mut misrouted = rec(b"someone-else", Some(&payload));
        misrouted.partition = (home + 1) % 4;
        assert_eq!(fresh.handle(&misrouted).await, HandlerOutcome::Done);
        assert_eq!(sender.seen.lock().unwrap().len(), 1);
        let forwarded = store.writes();
        let (topic, partition, key, value) = forwarded.last().unwrap();
        assert_eq!(
            (topic.as_str(), *partition, key.as_slice()),
            ("omni.outbound.v1", home, b"acme".as_slice())
        );
        assert_eq!(value.as_deref(), Some(payload.as_slice()), "same bytes");
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_honours_retry_after() {
        let p = RetryPolicy::default();
        let b1 = p.backoff(1, None, 0);
        let b3 = p.backoff(3, None, 0);
        assert_eq!(b1, Duration::from_millis(500));
        assert_eq!(b3, Duration::from_secs(2));
        assert_eq!(p.backoff(1, None, 25), Duration::from_millis(625));
        assert_eq!(p.backoff(20, None, 0), p.max_backoff);
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(7)), 0),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn one_conversation_maps_to_one_order_key() {
        let a = outbound(ChannelKind::Messenger);
        let b = outbound(ChannelKind::Messenger);
        assert_eq!(
            Dispatcher::order_key(Some(&a)),
            Dispatcher::order_key(Some(&b))
        );
        let other = outbound(ChannelKind::Zalo);
        assert_ne!(
            Dispatcher::order_key(Some(&a)),
            Dispatcher::order_key(Some(&other))
        );
    }
}
