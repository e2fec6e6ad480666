//! The webhook adapter trait and the one generic handler every inbound endpoint goes through.
//!
//! Order of checks, the same for every provider: tenant known → body within the limit → the
//! provider's signature on the raw bytes → parse → dedupe → publish and await Kafka's
//! acknowledgement → answer. A request refused at any step publishes nothing.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_core::{ChannelKind, ConversationId, EventId, TenantId};
use std::sync::Arc;
use std::time::Instant;

use crate::dedupe::DedupeCache;
use crate::error::IngressError;
use crate::metrics::IngressMetrics;
use crate::sink::EventSink;

/// One normalized event ready to publish on the inbound topic.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// The CloudEvents id (deterministic from the provider's message id when there is one).
    pub id: EventId,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// The serialized CloudEvent.
    pub payload: Vec<u8>,
}

/// What a request produced, for the adapter to shape its answer.
#[derive(Debug, Clone, Default)]
pub struct Accepted {
    /// Each event's id, conversation, and whether it was a repeat answered from the cache.
    pub events: Vec<(EventId, ConversationId, bool)>,
}

/// A provider (or the generic API): the pure parts that differ between channels.
pub trait WebhookAdapter: Send + Sync + 'static {
    /// The per-tenant settings this adapter needs (credentials, accounts).
    type Account: Send + Sync;

    /// The channel kind, for metric labels.
    const CHANNEL: ChannelKind;

    /// The tenant's account for this channel, or `None` if the tenant is unknown here.
    fn account(&self, tenant: &str) -> Option<(&TenantId, &Self::Account)>;

    /// Checks the provider's credentials or signature over the exact bytes received.
    fn verify(
        &self,
        account: &Self::Account,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), IngressError>;

    /// Turns a verified body into events. Never panics on any input.
    fn parse(
        &self,
        tenant: &TenantId,
        account: &Self::Account,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Vec<PreparedEvent>, IngressError>;

    /// The answer the provider expects once every event is acknowledged.
    fn respond(&self, accepted: Accepted) -> Response;
}

/// The shared machinery behind every inbound endpoint: where events go, the dedupe cache, the
/// body limit and the metrics.
pub struct Ingress {
    sink: Arc<dyn EventSink>,
    topic: String,
    dedupe: DedupeCache,
    max_body_bytes: usize,
    metrics: IngressMetrics,
}

impl Ingress {
    /// Ingress publishing to `topic` on `sink`.
    pub fn new(
        sink: Arc<dyn EventSink>,
        topic: impl Into<String>,
        dedupe: DedupeCache,
        max_body_bytes: usize,
        metrics: IngressMetrics,
    ) -> Self {
        Self {
            sink,
            topic: topic.into(),
            dedupe,
            max_body_bytes,
            metrics,
        }
    }

    /// Handles one inbound request for `adapter` and answers it. Never panics on input.
    pub async fn handle<A: WebhookAdapter>(
        &self,
        adapter: &A,
        tenant: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        let started = Instant::now();
        match self.accept(adapter, tenant, headers, body).await {
            Ok(accepted) => {
                self.metrics
                    .duration
                    .with_label_values(&[A::CHANNEL.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                adapter.respond(accepted)
            }
            Err(err) => {
                self.metrics
                    .rejected
                    .with_label_values(&[A::CHANNEL.as_str(), err.reason()])
                    .inc();
                if matches!(err, IngressError::Unavailable) {
                    tracing::warn!(channel = %A::CHANNEL, "kafka unavailable, answered 503");
                } else {
                    tracing::debug!(channel = %A::CHANNEL, reason = err.reason(), error = %err,
                        "inbound request refused");
                }
                err.into_response()
            }
        }
    }

    async fn accept<A: WebhookAdapter>(
        &self,
        adapter: &A,
        tenant: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Accepted, IngressError> {
        let (tenant, account) = adapter.account(tenant).ok_or(IngressError::UnknownTenant)?;
        let body = read_limited(headers, body, self.max_body_bytes).await?;
        adapter.verify(account, headers, &body)?;
        let events = adapter.parse(tenant, account, headers, &body, Utc::now())?;
        let mut accepted = Accepted {
            events: Vec::with_capacity(events.len()),
        };
        for event in events {
            let id = event.id.as_u128();
            if self.dedupe.contains(id, Instant::now()) {
                self.metrics
                    .duplicates
                    .with_label_values(&[A::CHANNEL.as_str()])
                    .inc();
                accepted
                    .events
                    .push((event.id, event.conversation_id, true));
                continue;
            }
            self.sink
                .publish(&self.topic, tenant.as_str().as_bytes(), &event.payload)
                .await
                .map_err(|e| {
                    tracing::warn!(channel = %A::CHANNEL, tenant = %tenant, error = %e, "publish failed");
                    IngressError::Unavailable
                })?;
            self.dedupe.insert(id, Instant::now());
            self.metrics
                .received
                .with_label_values(&[A::CHANNEL.as_str(), tenant.as_str()])
                .inc();
            accepted
                .events
                .push((event.id, event.conversation_id, false));
        }
        Ok(accepted)
    }
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit` (by its
/// Content-Length, or while streaming for chunked bodies).
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, IngressError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngressError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return IngressError::PayloadTooLarge { limit };
            }
            source = err.source();
        }
        IngressError::BodyRead
    })
}
