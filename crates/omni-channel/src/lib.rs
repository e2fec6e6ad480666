//! What every channel adapter shares, so no adapter copies another.
//!
//! A webhook adapter implements [`WebhookAdapter`]: find the tenant's account, verify the
//! provider's signature on the raw bytes, parse the body into prepared events, and shape the
//! provider's answer. Everything else lives once, in [`Ingress::handle`]: the body limit, the
//! order of checks, dedupe of provider retries, publishing and waiting for Kafka's
//! acknowledgement before answering, the status codes, and the metrics. On the way out, a
//! channel implements [`ChannelSender`] and the [`Dispatcher`] does the rest.
//!
//! # Layout
//! - [`webhook`]: the adapter trait and the generic handler.
//! - [`sink`]: where accepted events go ([`EventSink`]: Kafka in the daemon).
//! - [`dedupe`]: the bounded, windowed cache of recently published event ids.
//! - [`delivery`]: the delivery event, built one way by the dispatcher, status callbacks and
//!   live chat.
//! - [`media`]: inbound attachments copied into the media store before publishing.
//! - [`replay`]: replay windows on signed times (Vonage, Zalo, the API channel).
//! - [`signature`]: constant-time bearer and HMAC checks shared by adapters.
//! - [`component`]: what a channel's entry point hands the daemon: routes, senders, tasks.
//! - [`config`]: what channels' raw config shares ([`InvalidKey`], body limits).
//! - [`api`]: the generic API channel (`POST /v1/inbound/{tenant}`).
//! - [`outbound`]: the way out: [`ChannelSender`] per channel, and the [`Dispatcher`] that
//!   takes replies from the outbound topic, retries what may pass and publishes each reply's
//!   fate on the delivery topic.
//! - [`progress`]: the durable progress of outbound replies (the progress topic), so the
//!   next owner of an outbound partition never sends a part twice.
//! - [`provider`]: calling providers' HTTP APIs the same way from every sender.
//! - [`ratelimit`]: per-account send rate limits.
//! - [`metrics`]: ingress metric families.
//! - [`error`]: why a request was refused, with its status code and metric label.

pub mod api;
pub mod component;
pub mod config;
pub mod dedupe;
pub mod delivery;
pub mod error;
pub mod media;
pub mod metrics;
pub mod outbound;
pub mod progress;
pub mod provider;
pub mod ratelimit;
pub mod replay;
pub mod signature;
pub mod sink;
pub mod webhook;

pub use api::{ApiChannel, ApiCredentials};
pub use component::{webhook_route, Component, Swappable};
pub use config::InvalidKey;
pub use dedupe::DedupeCache;
pub use delivery::{delivery_event, delivery_event_id};
pub use error::IngressError;
pub use media::{InboundMedia, MediaLookup, MediaSource};
pub use metrics::IngressMetrics;
/// Which per-tenant state this instance keeps: adapters follow the router group's assignment.
pub use omni_bus::ownership::{run_per_owned_key, Owned, Ownership};
pub use outbound::{
    sender_account, AccountMap, ChannelSender, Checkpoint, CheckpointFuture, DispatchMetrics,
    Dispatcher, FailureReason, RetryPolicy, SendError, SendFuture, SendOwnership, SendProgress,
    SendReceipt, SendRequest, SenderAccounts,
};
pub use progress::{KafkaStore, PartitionedStore, ProgressLog, ReplyProgress};
pub use ratelimit::RateLimiter;
pub use replay::ReplayWindow;
pub use sink::{EventSink, SinkError};
pub use webhook::{
    request_head, Accepted, Destination, Ingress, Parsed, PreparedEvent, WebhookAdapter,
};

#[cfg(test)]
mod tests;
