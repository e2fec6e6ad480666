//! The contract between the dispatcher and a channel: what a sender implements, how a send
//! fails (classified so the dispatcher knows whether to try again) and how a multi-part send
//! records its progress.

use omni_core::EventId;
use omni_core::OutboundMessage;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

    /// Whether this sender sends a reply's `template` (Zalo ZNS). Others never get one: the
    /// dispatcher fails it as `unsupported` rather than send its text without the template.
    fn sends_templates(&self) -> bool {
        false
    }
}
