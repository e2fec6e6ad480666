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
//!
//! # Layout
//! - [`accounts`]: the accounts a sender sends from, found one way by every channel.
//! - [`sender`]: what a channel implements ([`ChannelSender`]) and how a send fails
//!   ([`SendError`], [`FailureReason`]) or progresses ([`SendProgress`]).
//! - [`retry`]: how hard to try ([`RetryPolicy`]).
//! - [`metrics`]: the dispatch metric families.
//! - `dispatch`: [`Dispatcher::handle`], one record from the outbound topic to its fate.
//! - `delivery`: counting a reply's fate and publishing it on the delivery topic.

pub mod accounts;
mod delivery;
mod dispatch;
pub mod metrics;
pub mod retry;
pub mod sender;

use omni_bus::PartitionGate;
use omni_core::ChannelKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::progress::{PartitionedStore, ProgressLog};
use crate::sink::EventSink;

pub use accounts::{sender_account, AccountMap, SenderAccounts};
pub use metrics::DispatchMetrics;
pub use retry::RetryPolicy;
pub use sender::{
    retry_after, ChannelSender, Checkpoint, CheckpointFuture, FailureReason, SendError, SendFuture,
    SendProgress, SendReceipt, SendRequest,
};

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
}

#[cfg(test)]
mod tests;
