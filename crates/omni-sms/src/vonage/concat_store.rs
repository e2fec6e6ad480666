//! Vonage inbound messages, with multipart (`concat-*`) messages reassembled before they are
//! published, and without ever acknowledging a part that is not durable.
//!
//! Design (several replicas behind one load balancer, DESIGN "One owner per tenant"):
//! - A part is checked (signature, fields, part number within its total) and written to the
//!   compacted `omni.sms-parts.v1` topic, keyed `<tenant>/<sender>/<to>/<concat-ref>/<part>`;
//!   Vonage gets its 200 once Kafka acknowledged it, on whichever replica it reached. A part
//!   is never refused after it was stored.
//! - Every replica follows the parts topic ([`ConcatStore::apply`], fed by an
//!   `omni_bus::table::tail`); the replica owning the tenant's partition reassembles
//!   ([`ConcatStore::run`]), so the parts of one message, delivered to replicas A, B and A,
//!   meet in one place. When ownership moves, the new owner offers the tenant's stored parts
//!   with their original arrival times and the old one forgets them.
//! - When the last part arrives, the whole message is published to `omni.inbound.v1` with an
//!   event id derived from the sorted part ids (an owner replaced mid-way publishes the same
//!   id), and then the parts are deleted (tombstones).
//! - A message still incomplete after the TTL is published with the parts that arrived (never
//!   lost), counted in `omni_sms_concat_partials_total`; so is a part that contradicts its
//!   siblings' total.
//! - If publishing a completed message fails, the parts stay on the topic and the message is
//!   retried every second; a crash meanwhile makes the next owner complete it again with the
//!   same id. Remaining window: an owner killed between the publish and the tombstones makes
//!   the next owner publish the message again, with the same event id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::http::request::Parts;
use axum::response::Response;
use chrono::{DateTime, Utc};
use omni_channel::{Ingress, IngressError, Parsed, PreparedEvent, WebhookAdapter};
use omni_core::{
    ChannelKind, ChannelRef, CloudEvent, ConversationId, Direction, EventId, EventType, Message,
    MessageReceived, TenantId,
};
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};

use super::webhook::{to_ingress, verify};
use super::VonageInbound;
use crate::inbound::address;
use crate::reassembly::{ConcatKey, Offer, Part, Reassembler, ReassemblerConfig};
use crate::webhook::{request_params, Endpoint, SmsTenants, SmsWebhook};

/// A part as kept on the parts topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPart {
    tenant: String,
    sender: String,
    to: String,
    reference: String,
    number: u16,
    total: u16,
    message_id: String,
    text: String,
    received_at: DateTime<Utc>,
}

impl StoredPart {
    fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.tenant, self.sender, self.to, self.reference, self.number
        )
    }

    fn part(&self) -> Part {
        Part {
            key: ConcatKey {
                sender: self.sender.clone(),
                to: self.to.clone(),
                reference: self.reference.clone(),
            },
            number: self.number,
            total: self.total,
            message_id: self.message_id.clone(),
            text: self.text.clone(),
        }
    }
}

/// A message ready to publish (complete or partial), with the keys of its stored parts.
struct Ready {
    tenant: TenantId,
    key: ConcatKey,
    text: String,
    message_ids: Vec<String>,
    first_received_at: DateTime<Utc>,
    total: u16,
    part_numbers: Vec<u16>,
}

/// Metric families of multipart reassembly.
#[derive(Clone)]
pub struct ConcatMetrics {
    /// Incomplete messages held.
    pub pending: IntGauge,
    /// Messages published incomplete after the TTL (or evicted).
    pub partials: IntCounter,
}

impl ConcatMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let pending = IntGauge::with_opts(Opts::new(
            "omni_sms_concat_pending",
            "Multipart SMS waiting for missing parts in this instance.",
        ))?;
        let partials = IntCounter::with_opts(Opts::new(
            "omni_sms_concat_partials_total",
            "Multipart SMS published with parts missing after the reassembly TTL.",
        ))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(partials.clone()))?;
        Ok(Self { pending, partials })
    }
}

/// The Vonage inbound handler with durable multipart reassembly.
pub struct ConcatStore {
    /// The Vonage message endpoint; replaced by [`ConcatStore::set_tenants`], read once per
    /// request. Parts already stored are kept whatever the new tenants are.
    adapter: RwLock<Arc<SmsWebhook>>,
    parts_topic: String,
    config: ReassemblerConfig,
    reassemblers: Mutex<HashMap<String, Reassembler>>,
    retry: Mutex<Vec<Ready>>,
    metrics: ConcatMetrics,
    /// Every part stored on the topic and not deleted yet, whoever reassembles it.
    stored: Mutex<BTreeMap<String, StoredPart>>,
    /// Keys of parts read from the topic and not yet looked at by [`ConcatStore::run`].
    arrived: Mutex<Vec<String>>,
    wake: tokio::sync::Notify,
    /// Tenants reassembled here (owned, with parts seen).
    owned: Mutex<BTreeSet<String>>,
}

impl ConcatStore {
    /// A store for the Vonage message endpoint `adapter`, keeping parts on `parts_topic`.
    pub fn new(
        adapter: SmsWebhook,
        parts_topic: impl Into<String>,
        config: ReassemblerConfig,
        metrics: ConcatMetrics,
    ) -> Self {
        Self {
            adapter: RwLock::new(Arc::new(adapter)),
            parts_topic: parts_topic.into(),
            config,
            reassemblers: Mutex::new(HashMap::new()),
            retry: Mutex::new(Vec::new()),
            metrics,
            stored: Mutex::new(BTreeMap::new()),
            arrived: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            owned: Mutex::new(BTreeSet::new()),
        }
    }

    /// Applies one record of the parts topic (every replica follows it): a stored part, or
    /// the tombstone of one published.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        match value.map(serde_json::from_slice::<StoredPart>) {
            None => {
                stored.remove(&key);
                return;
            }
            Some(Ok(part)) => {
                stored.insert(key.clone(), part);
            }
            Some(Err(e)) => {
                tracing::warn!(key = %key, error = %e, "ignoring an unreadable stored SMS part");
                return;
            }
        }
        drop(stored);
        self.arrived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key);
        self.wake.notify_one();
    }

    /// Serves `tenants` from now on (a reloaded config). Parts waiting for their siblings stay
    /// and are published as usual.
    pub fn set_tenants(&self, tenants: SmsTenants) {
        let adapter = Arc::new(SmsWebhook::new(tenants, Endpoint::VonageMessage));
        *self.adapter.write().unwrap_or_else(|p| p.into_inner()) = adapter;
    }

    fn adapter(&self) -> Arc<SmsWebhook> {
        self.adapter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Handles `GET`/`POST /v1/webhooks/sms/vonage/{tenant}`: single-part messages as any
    /// webhook, parts durably stored and reassembled. Never panics on input.
    pub async fn handle(
        &self,
        ingress: &Ingress,
        tenant: &str,
        request: &Parts,
        body: Body,
    ) -> Response {
        let started = Instant::now();
        match self.accept(ingress, tenant, request, body).await {
            Ok(()) => {
                ingress.observe_accepted(ChannelKind::Sms, started);
                self.adapter().respond(Default::default())
            }
            Err(e) => ingress.refuse(ChannelKind::Sms, e),
        }
    }

    async fn accept(
        &self,
        ingress: &Ingress,
        tenant: &str,
        request: &Parts,
        body: Body,
    ) -> Result<(), IngressError> {
        let _admitted = ingress.admit()?;
        let adapter = self.adapter();
        let (tenant, sms) = adapter.account(tenant).ok_or(IngressError::UnknownTenant)?;
        let body = ingress.read_body(request, body).await?;
        let params = request_params(request, &body)?;
        let now = Utc::now();
        verify(sms, request, &params, now)?;
        let inbound = VonageInbound::from_params(&params).map_err(to_ingress)?;
        let Some(concat) = &inbound.concat else {
            let parsed = adapter.parse(tenant, sms, request, &body, now)?;
            ingress.publish(ChannelKind::Sms, tenant, parsed).await?;
            return Ok(());
        };
        let sender = address(sms, "msisdn", &inbound.msisdn)?;
        let to = address(sms, "to", &inbound.to)?;
        let stored = StoredPart {
            tenant: tenant.as_str().to_owned(),
            sender: sender.as_str().to_owned(),
            to: to.as_str().to_owned(),
            reference: concat.reference.clone(),
            number: concat.part,
            total: concat.total,
            message_id: inbound.message_id.clone(),
            text: inbound.text.clone(),
            received_at: now,
        };
        // Everything that can be refused is refused before the part is stored.
        if concat.total == 0
            || concat.total > self.config.max_parts
            || concat.part == 0
            || concat.part > concat.total
        {
            return Err(IngressError::InvalidField {
                field: "concat-part".into(),
                reason: format!(
                    "part {} of {} is outside 1..={} parts",
                    concat.part, concat.total, self.config.max_parts
                ),
            });
        }
        let payload = serde_json::to_vec(&stored)
            .map_err(|e| IngressError::Malformed(format!("cannot store the part: {e}")))?;
        ingress
            .sink()
            .publish(&self.parts_topic, stored.key().as_bytes(), &payload)
            .await
            .map_err(|e| {
                tracing::warn!(tenant = %tenant, error = %e, "cannot store an SMS part");
                IngressError::Unavailable
            })?;
        // The owner of the tenant reassembles it when it reads the part back.
        Ok(())
    }

    /// Offers a durable part; what became publishable.
    fn offer(
        &self,
        tenant: &TenantId,
        stored: StoredPart,
        now: DateTime<Utc>,
    ) -> Result<Vec<Ready>, IngressError> {
        let mut reassemblers = self.reassemblers.lock().unwrap_or_else(|p| p.into_inner());
        let reassembler = reassemblers
            .entry(tenant.as_str().to_owned())
            .or_insert_with(|| Reassembler::new(self.config.clone()));
        let mut ready = Vec::new();
        let offer = match reassembler.offer(stored.part(), stored.received_at.min(now)) {
            Ok(offer) => offer,
            Err(e) => {
                // Stored and acknowledged: never dropped. It goes out on its own.
                tracing::warn!(tenant = %tenant, error = %e,
                    "SMS part does not fit its siblings: published on its own");
                self.metrics.partials.inc();
                ready.push(Ready {
                    tenant: tenant.clone(),
                    text: stored.text.clone(),
                    message_ids: vec![stored.message_id.clone()],
                    part_numbers: vec![stored.number],
                    key: stored.part().key,
                    first_received_at: stored.received_at,
                    total: stored.total,
                });
                return Ok(ready);
            }
        };
        match offer {
            Offer::Duplicate => {}
            Offer::Stored { evicted, .. } => {
                if let Some(p) = evicted {
                    self.metrics.partials.inc();
                    ready.push(Ready {
                        tenant: tenant.clone(),
                        text: p.text(),
                        message_ids: p.message_ids(),
                        part_numbers: p.parts.iter().map(|x| x.number).collect(),
                        key: p.key,
                        first_received_at: p.first_received_at,
                        total: p.total,
                    });
                }
            }
            Offer::Complete(done) => {
                ready.push(Ready {
                    tenant: tenant.clone(),
                    part_numbers: (1..=stored.total).collect(),
                    total: stored.total,
                    text: done.text,
                    message_ids: done.message_ids,
                    key: done.key,
                    first_received_at: done.first_received_at,
                });
            }
        }
        let pending: usize = reassemblers.values().map(Reassembler::pending_len).sum();
        self.metrics
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        Ok(ready)
    }

    /// Publishes each ready message, then deletes its parts; failures wait for the ticker.
    async fn publish_ready(&self, ingress: &Ingress, ready: Vec<Ready>) {
        for r in ready {
            let event = match assembled_event(&r, Utc::now()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build an assembled SMS");
                    continue;
                }
            };
            let parsed = Parsed::from(vec![event]);
            if let Err(e) = ingress.publish(ChannelKind::Sms, &r.tenant, parsed).await {
                tracing::warn!(tenant = %r.tenant, error = %e,
                    "assembled SMS not published yet, will retry");
                self.retry.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                continue;
            }
            for number in &r.part_numbers {
                let key = format!(
                    "{}/{}/{}/{}/{number}",
                    r.tenant, r.key.sender, r.key.to, r.key.reference
                );
                if let Err(e) = ingress
                    .sink()
                    .delete(&self.parts_topic, key.as_bytes())
                    .await
                {
                    // Left on the topic: a restart reassembles it again with the same id.
                    tracing::warn!(error = %e, "cannot delete a stored SMS part");
                }
            }
        }
    }

    /// Expires incomplete messages past their TTL and retries unpublished ones, once.
    pub async fn tick(&self, ingress: &Ingress, now: DateTime<Utc>) {
        let mut ready: Vec<Ready> =
            std::mem::take(&mut *self.retry.lock().unwrap_or_else(|p| p.into_inner()));
        {
            let mut reassemblers = self.reassemblers.lock().unwrap_or_else(|p| p.into_inner());
            for (tenant, reassembler) in reassemblers.iter_mut() {
                let Ok(tenant) = TenantId::new(tenant.clone()) else {
                    continue;
                };
                for p in reassembler.expire(now) {
                    self.metrics.partials.inc();
                    tracing::warn!(tenant = %tenant, missing = ?p.missing(),
                        "multipart SMS incomplete after the TTL, published with the parts received");
                    ready.push(Ready {
                        tenant: tenant.clone(),
                        text: p.text(),
                        message_ids: p.message_ids(),
                        part_numbers: p.parts.iter().map(|x| x.number).collect(),
                        key: p.key,
                        first_received_at: p.first_received_at,
                        total: p.total,
                    });
                }
            }
            let pending: usize = reassemblers.values().map(Reassembler::pending_len).sum();
            self.metrics
                .pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
        self.publish_ready(ingress, ready).await;
    }

    /// Reassembles the tenants `ownership` gives this replica until `stop` turns true (see
    /// [`ConcatStore::settle`]), expiring and retrying every second.
    pub async fn run(
        &self,
        ingress: &Ingress,
        mut ownership: omni_channel::Ownership,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut owner = ownership.now();
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.settle(ingress, &owner).await;
            let stopped = async {
                // The guard `wait_for` returns is not `Send`: drop it here.
                let _ = stop.wait_for(|s| *s).await;
            };
            let tick = tokio::select! {
                () = stopped => return,
                () = self.wake.notified() => false,
                next = ownership.changed() => {
                    owner = next;
                    false
                }
                _ = ticker.tick() => true,
            };
            if tick {
                self.tick(ingress, Utc::now()).await;
            }
        }
    }

    /// Brings the reassembly in line with `owner` and the parts read so far: forgets the
    /// tenants no longer owned here, offers a newly owned tenant's stored parts (oldest first),
    /// offers each part read since whose tenant is owned here, and publishes what completed.
    pub async fn settle(&self, ingress: &Ingress, owner: &omni_channel::Owned) {
        let tenants: BTreeSet<String> = self
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| p.tenant.clone())
            .collect();
        let (gone, gained) = {
            let owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = owned.iter().filter(|t| !owner.owns(t)).cloned().collect();
            let gained: Vec<String> = tenants
                .into_iter()
                .filter(|t| owner.owns(t) && !owned.contains(t))
                .collect();
            (gone, gained)
        };
        for tenant in gone {
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&tenant);
            self.forget(&tenant);
        }
        let mut ready = Vec::new();
        for tenant in gained {
            ready.extend(self.take_over(&tenant));
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant);
        }
        let arrived: Vec<String> =
            std::mem::take(&mut *self.arrived.lock().unwrap_or_else(|p| p.into_inner()));
        for key in arrived {
            let part = self
                .stored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            let Some(part) = part.filter(|p| owner.owns(&p.tenant)) else {
                continue;
            };
            let Ok(tenant) = TenantId::new(part.tenant.clone()) else {
                continue;
            };
            self.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(part.tenant.clone());
            if let Ok(r) = self.offer(&tenant, part, Utc::now()) {
                ready.extend(r);
            }
        }
        self.publish_ready(ingress, ready).await;
    }

    /// Offers every stored part of `tenant`, oldest first, to a fresh reassembler: this replica
    /// has just become its owner.
    fn take_over(&self, tenant: &str) -> Vec<Ready> {
        let Ok(id) = TenantId::new(tenant.to_owned()) else {
            return Vec::new();
        };
        let mut parts: Vec<StoredPart> = self
            .stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|p| p.tenant == tenant)
            .cloned()
            .collect();
        parts.sort_by_key(|p| p.received_at);
        tracing::info!(tenant = %tenant, parts = parts.len(), "reassembling this tenant's multipart SMS here");
        let now = Utc::now();
        let mut ready = Vec::new();
        for part in parts {
            if let Ok(r) = self.offer(&id, part, now) {
                ready.extend(r);
            }
        }
        ready
    }

    /// Drops what this replica held for `tenant` (another one reassembles it now; the parts
    /// stay on the topic).
    fn forget(&self, tenant: &str) {
        let mut reassemblers = self.reassemblers.lock().unwrap_or_else(|p| p.into_inner());
        reassemblers.remove(tenant);
        let pending: usize = reassemblers.values().map(Reassembler::pending_len).sum();
        self.metrics
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        drop(reassemblers);
        self.retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| r.tenant.as_str() != tenant);
        tracing::info!(tenant = %tenant, "multipart SMS of this tenant now reassembled elsewhere");
    }
}

/// The `omni.message.received` of a reassembled (or partial) message: its id is derived from
/// the sorted part ids, the message id is the first part's.
fn assembled_event(r: &Ready, now: DateTime<Utc>) -> Result<PreparedEvent, IngressError> {
    let channel = ChannelRef::new(ChannelKind::Sms, r.key.to.clone());
    let mut sorted = r.message_ids.clone();
    sorted.sort();
    let id = EventId::from_provider(&r.tenant, &channel, "message", &sorted.join(","));
    let mut contact = omni_core::Contact::new(r.key.sender.clone());
    if r.key.sender.starts_with('+') {
        contact.phone = Some(r.key.sender.clone());
    }
    let conversation = ConversationId::derive(&r.tenant, &channel, &contact.id, None);
    let complete = r.part_numbers.len() == usize::from(r.total);
    let data = MessageReceived {
        tenant: r.tenant.clone(),
        conversation_id: conversation,
        channel: channel.clone(),
        contact,
        message: Message {
            id: r.message_ids.first().cloned().unwrap_or_default(),
            direction: Direction::Inbound,
            text: r.text.clone(),
            subject: None,
            attachments: vec![],
            reply_to: None,
            payload: (!complete).then(|| {
                format!(
                    "sms_partial: received parts {:?} of {}",
                    r.part_numbers, r.total
                )
            }),
            sent_at: Some(r.first_received_at),
        },
        received_at: now,
        authentication: None,
        flags: Vec::new(),
    };
    PreparedEvent::from_event(&CloudEvent::new(
        id,
        EventType::MessageReceived,
        r.tenant.clone(),
        &channel,
        conversation,
        now,
        data,
    ))
}
