//! The webhook adapter trait and the one generic handler every inbound endpoint goes through.
//!
//! Order of checks, the same for every provider: tenant known → body within the limit → the
//! provider's signature on the raw bytes → parse → dedupe → publish and await Kafka's
//! acknowledgement → answer. A request refused at any step publishes nothing.
//!
//! Adapters see the request's head ([`Parts`]: method, URI, headers), not only its headers:
//! Twilio signs the full public URL, and Vonage may call with `GET` and its fields in the query.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use omni_core::{
    ChannelKind, ChannelRef, ChannelSignal, CloudEvent, Contact, ConversationId, DeliveryUpdate,
    EventId, EventType, Message, MessageReceived, TenantId,
};
use std::sync::Arc;
use std::time::Instant;

use crate::dedupe::DedupeCache;
use crate::delivery::delivery_event;
use crate::error::IngressError;
use crate::media::{InboundMedia, MediaSource};
use crate::metrics::IngressMetrics;
use crate::sink::EventSink;

/// Which topic an accepted event goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `omni.inbound.v1`: customer messages and channel signals.
    #[default]
    Inbound,
    /// `omni.delivery.v1`: the fate of an outbound message, reported by a provider's status
    /// callback (Twilio `StatusCallback`, Vonage DLR, eSMS `CallbackUrl`).
    Delivery,
}

/// One normalized event ready to publish.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// The CloudEvents id (deterministic from the provider's message id when there is one).
    pub id: EventId,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// The topic it goes to.
    pub destination: Destination,
    /// The serialized CloudEvent.
    pub payload: Vec<u8>,
    /// How its attachments are copied into the media store: set for a customer message with
    /// `http(s)` attachments, `None` for everything else.
    pub media: Option<MediaSource>,
}

impl PreparedEvent {
    /// Serializes a CloudEvent for publishing on the inbound topic.
    pub fn from_event<T: serde::Serialize>(event: &CloudEvent<T>) -> Result<Self, IngressError> {
        let payload = serde_json::to_vec(event)
            .map_err(|e| IngressError::Malformed(format!("cannot serialize event: {e}")))?;
        Ok(Self {
            id: event.id,
            conversation_id: event.subject,
            destination: Destination::Inbound,
            payload,
            media: None,
        })
    }

    /// A provider's report on an outbound message, for the delivery topic. Its id is derived
    /// from the outbound event and the status, exactly as the dispatcher derives the `sent`
    /// and `failed` events, so a provider's `sent` callback repeats the dispatcher's own event
    /// id (consumers keep one) and a callback retried by the provider yields the same id.
    pub fn delivery(update: DeliveryUpdate, now: DateTime<Utc>) -> Result<Self, IngressError> {
        let mut prepared = Self::from_event(&delivery_event(update, now))?;
        prepared.destination = Destination::Delivery;
        Ok(prepared)
    }

    /// A customer message (`MessageReceived`) or an echo of one the business sent elsewhere
    /// (`MessageEchoed`) from `contact` on `channel`, in the contact's conversation, with an
    /// id derived from the provider's message id.
    pub fn message(
        tenant: &TenantId,
        channel: ChannelRef,
        contact: Contact,
        event_type: EventType,
        message: Message,
        now: DateTime<Utc>,
    ) -> Result<Self, IngressError> {
        let conversation = ConversationId::derive(tenant, &channel, &contact.id, None);
        let kind = match event_type {
            EventType::MessageEchoed => "echo",
            _ => "message",
        };
        let id = EventId::from_provider(tenant, &channel, kind, &message.id);
        let media = match event_type {
            EventType::MessageReceived => MediaSource::for_message(&message),
            _ => None,
        };
        let data = MessageReceived {
            tenant: tenant.clone(),
            conversation_id: conversation,
            channel: channel.clone(),
            contact,
            message,
            received_at: now,
            authentication: None,
            flags: Vec::new(),
        };
        let mut event = Self::from_event(&CloudEvent::new(
            id,
            event_type,
            tenant.clone(),
            &channel,
            conversation,
            now,
            data,
        ))?;
        event.media = media;
        Ok(event)
    }

    /// Fetches this message's attachments as `source` says (the provider's credentials, or
    /// a media lookup) when they are copied into the media store.
    pub fn with_media_source(mut self, source: MediaSource) -> Self {
        if self.media.is_some() {
            self.media = Some(source);
        }
        self
    }

    /// A channel signal, with an id derived from `provider_id` (what names it at the
    /// provider: a watermark, or the event, user and time).
    pub fn signal(
        provider_id: &str,
        data: ChannelSignal,
        now: DateTime<Utc>,
    ) -> Result<Self, IngressError> {
        let id = EventId::from_provider(&data.tenant, &data.channel, "signal", provider_id);
        Self::from_event(&CloudEvent::new(
            id,
            EventType::ChannelSignal,
            data.tenant.clone(),
            &data.channel.clone(),
            data.conversation_id,
            now,
            data,
        ))
    }
}

/// What an adapter made of a verified body.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Events to publish, in order.
    pub events: Vec<PreparedEvent>,
    /// Items the body carried that we knowingly do not publish (unknown event kinds, our own
    /// echoes), by a bounded kind label: accepted and counted, never failed, so a provider
    /// adding a new event kind does not make it retry forever.
    pub ignored: Vec<&'static str>,
    /// Correctly signed items this tenant may not publish (an account another tenant of a
    /// shared provider app owns), by a bounded reason label: counted in
    /// `omni_ingress_refused_items_total`, never published. They do not fail the request: the
    /// provider would retry the same items forever and hold up the valid ones beside them.
    pub refused: Vec<&'static str>,
    /// The channel kind the items are counted under when one endpoint serves several (Meta's
    /// webhook carries Messenger `page` and `instagram` objects); the adapter's own otherwise.
    pub channel: Option<ChannelKind>,
}

impl From<Vec<PreparedEvent>> for Parsed {
    fn from(events: Vec<PreparedEvent>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
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

    /// Checks the provider's credentials or signature over the exact bytes received (and, for
    /// providers that sign it, the request's URL).
    fn verify(
        &self,
        account: &Self::Account,
        request: &Parts,
        body: &[u8],
    ) -> Result<(), IngressError>;

    /// Turns a verified request into events. Never panics on any input.
    fn parse(
        &self,
        tenant: &TenantId,
        account: &Self::Account,
        request: &Parts,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Parsed, IngressError>;

    /// The answer the provider expects once every event is acknowledged.
    fn respond(&self, accepted: Accepted) -> Response;

    /// How long the provider waits for an answer, if it is shorter than Kafka's publish
    /// timeout: past it the request is answered 503 (the provider retries; the retry carries
    /// the same event ids, so a late acknowledgement only yields a duplicate id consumers
    /// already drop).
    fn deadline(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The shared machinery behind every inbound endpoint: where events go, the dedupe cache, the
/// body limit and the metrics.
pub struct Ingress {
    sink: Arc<dyn EventSink>,
    topic: String,
    delivery_topic: String,
    dedupe: DedupeCache,
    max_body_bytes: usize,
    metrics: IngressMetrics,
    /// Copies customer messages' attachments into the media store, when one is configured.
    media: Option<Arc<InboundMedia>>,
    /// Bounds the requests handled at once (see [`Ingress::admit`]); `None`: unbounded.
    admission: Option<Arc<tokio::sync::Semaphore>>,
}

/// A request's place among those handled at once; freed when dropped (after the answer).
pub struct Admitted {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    in_flight: prometheus::IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Ingress {
    /// Ingress publishing customer messages and signals to `topic` and providers' delivery
    /// reports to `delivery_topic`, on `sink`.
    pub fn new(
        sink: Arc<dyn EventSink>,
        topic: impl Into<String>,
        delivery_topic: impl Into<String>,
        dedupe: DedupeCache,
        max_body_bytes: usize,
        metrics: IngressMetrics,
    ) -> Self {
        Self {
            sink,
            topic: topic.into(),
            delivery_topic: delivery_topic.into(),
            dedupe,
            max_body_bytes,
            metrics,
            media: None,
            admission: None,
        }
    }

    /// Handles at most `max_in_flight` requests at once; more are answered `503 overloaded`
    /// with `Retry-After` before their body is read. Overload then costs a refusal, not memory:
    /// requests waiting on a slow Kafka or a saturated CPU can no longer pile up without bound
    /// (at most `max_in_flight` bodies of `max_body_bytes` are held).
    pub fn with_max_in_flight(self, max_in_flight: usize) -> Self {
        self.with_admission(Arc::new(tokio::sync::Semaphore::new(max_in_flight)))
    }

    /// As [`Ingress::with_max_in_flight`], with places shared with other ingresses of the
    /// same process (one bound for the whole instance).
    pub fn with_admission(mut self, places: Arc<tokio::sync::Semaphore>) -> Self {
        self.admission = Some(places);
        self
    }

    /// Takes a place for one request, or refuses it as [`IngressError::Overloaded`] at once.
    /// Handlers outside [`Ingress::handle`] that read and publish call it first and keep the
    /// guard until they answer.
    pub fn admit(&self) -> Result<Admitted, IngressError> {
        let permit = match &self.admission {
            Some(s) => Some(
                s.clone()
                    .try_acquire_owned()
                    .map_err(|_| IngressError::Overloaded)?,
            ),
            None => None,
        };
        self.metrics.in_flight.inc();
        Ok(Admitted {
            _permit: permit,
            in_flight: self.metrics.in_flight.clone(),
        })
    }

    /// Copies inbound attachments into the media store before publishing (see
    /// [`crate::media`]).
    pub fn with_media(mut self, media: Arc<InboundMedia>) -> Self {
        self.media = Some(media);
        self
    }

    /// An ingress of its own over `sink`, on the default topics (`omni.inbound.v1`,
    /// `omni.delivery.v1`) with a ten-minute dedupe window and its metrics in `registry`: what
    /// every adapter's unit tests drive, so none builds its own.
    pub fn standalone(
        sink: Arc<dyn EventSink>,
        registry: &prometheus::Registry,
        max_body_bytes: usize,
    ) -> prometheus::Result<Self> {
        Ok(Self::new(
            sink,
            "omni.inbound.v1",
            "omni.delivery.v1",
            DedupeCache::new(std::time::Duration::from_secs(600), 1000),
            max_body_bytes,
            IngressMetrics::register(registry)?,
        ))
    }

    /// Handles one inbound request for `adapter` and answers it. Never panics on input.
    pub async fn handle<A: WebhookAdapter>(
        &self,
        adapter: &A,
        tenant: &str,
        request: &Parts,
        body: Body,
    ) -> Response {
        let started = Instant::now();
        let _admitted = match self.admit() {
            Ok(admitted) => admitted,
            Err(err) => return self.refuse(A::CHANNEL, err),
        };
        let accepted = match adapter.deadline() {
            Some(deadline) => {
                match tokio::time::timeout(deadline, self.accept(adapter, tenant, request, body))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(IngressError::Unavailable),
                }
            }
            None => self.accept(adapter, tenant, request, body).await,
        };
        match accepted {
            Ok(accepted) => {
                self.metrics
                    .duration
                    .with_label_values(&[A::CHANNEL.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                adapter.respond(accepted)
            }
            Err(err) => self.refuse(A::CHANNEL, err),
        }
    }

    /// Counts and answers a refused request (also for endpoints outside [`Ingress::handle`],
    /// such as a subscription handshake).
    pub fn refuse(&self, channel: ChannelKind, err: IngressError) -> Response {
        self.metrics
            .rejected
            .with_label_values(&[channel.as_str(), err.reason()])
            .inc();
        if matches!(err, IngressError::Unavailable) {
            tracing::warn!(channel = %channel, "kafka unavailable, answered 503");
        } else {
            tracing::debug!(channel = %channel, reason = err.reason(), error = %err,
                "inbound request refused");
        }
        err.into_response()
    }

    async fn accept<A: WebhookAdapter>(
        &self,
        adapter: &A,
        tenant: &str,
        request: &Parts,
        body: Body,
    ) -> Result<Accepted, IngressError> {
        let (tenant, account) = adapter.account(tenant).ok_or(IngressError::UnknownTenant)?;
        let body = self.read_body(request, body).await?;
        adapter.verify(account, request, &body)?;
        let parsed = adapter.parse(tenant, account, request, &body, Utc::now())?;
        self.publish(A::CHANNEL, tenant, parsed).await
    }

    /// Reads a request's whole body within the configured limit (for handlers that drive the
    /// steps themselves, such as multipart SMS reassembly).
    pub async fn read_body(
        &self,
        request: &Parts,
        body: Body,
    ) -> Result<bytes::Bytes, IngressError> {
        read_limited(&request.headers, body, self.max_body_bytes).await
    }

    /// Dedupes and publishes what an adapter parsed, each event to its destination, and
    /// returns once Kafka acknowledged every one (metrics under [`Parsed::channel`] when set): the dedupe, publish and metrics steps of
    /// [`Ingress::handle`], for handlers that drive the steps themselves.
    pub async fn publish(
        &self,
        channel: ChannelKind,
        tenant: &TenantId,
        parsed: Parsed,
    ) -> Result<Accepted, IngressError> {
        let Parsed {
            events,
            ignored,
            refused,
            channel: items_channel,
        } = parsed;
        let channel = items_channel.unwrap_or(channel);
        for kind in ignored {
            self.metrics
                .ignored
                .with_label_values(&[channel.as_str(), kind])
                .inc();
        }
        for reason in refused {
            self.metrics
                .refused_items
                .with_label_values(&[channel.as_str(), tenant.as_str(), reason])
                .inc();
        }
        let mut accepted = Accepted {
            events: Vec::with_capacity(events.len()),
        };
        for mut event in events {
            let id = event.id.as_u128();
            if self.dedupe.contains(id, Instant::now()) {
                self.metrics
                    .duplicates
                    .with_label_values(&[channel.as_str()])
                    .inc();
                accepted
                    .events
                    .push((event.id, event.conversation_id, true));
                continue;
            }
            if let (Some(media), Some(source)) = (&self.media, event.media.take()) {
                media.copy(tenant, &source, &mut event).await;
            }
            let topic = match event.destination {
                Destination::Inbound => &self.topic,
                Destination::Delivery => &self.delivery_topic,
            };
            self.sink
                .publish(topic, tenant.as_str().as_bytes(), &event.payload)
                .await
                .map_err(|e| {
                    tracing::warn!(channel = %channel, tenant = %tenant, error = %e, "publish failed");
                    IngressError::Unavailable
                })?;
            self.dedupe.insert(id, Instant::now());
            if event.destination == Destination::Inbound {
                self.metrics
                    .received
                    .with_label_values(&[channel.as_str(), tenant.as_str()])
                    .inc();
            }
            accepted
                .events
                .push((event.id, event.conversation_id, false));
        }
        Ok(accepted)
    }

    /// Records the time an accepted request took, for handlers that drive the steps
    /// themselves.
    pub fn observe_accepted(&self, channel: ChannelKind, started: Instant) {
        self.metrics
            .duration
            .with_label_values(&[channel.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Where events go (for handlers that keep durable state of their own on Kafka).
    pub fn sink(&self) -> &Arc<dyn EventSink> {
        &self.sink
    }
}

/// A request head with `method`, `uri` and `headers`, as [`Ingress::handle`] takes it (for
/// tests, benches and callers that do not come through axum's router).
pub fn request_head(method: axum::http::Method, uri: &str, headers: HeaderMap) -> Parts {
    let mut request = axum::http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri.parse().unwrap_or_default();
    *request.headers_mut() = headers;
    request.into_parts().0
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
