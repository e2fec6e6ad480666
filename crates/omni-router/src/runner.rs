//! The consume → decide → write state → publish events → commit loop, partition recovery, and
//! the ticker. See the crate docs for the protocol.

use omni_bus::metrics::MetricsContext;
use omni_bus::{BusConfig, BusError, BusMetrics, OutRecord, Producer};
use omni_core::{ConversationId, EventId, TenantId};
use omni_routing::{Engine, Input, Output, RoutingConfig, RoutingEvent, StateEntry, Timestamp};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::RouterMetrics;
use crate::wire::{decode_input, routing_subject, routing_type, time_of, Envelope, TICK_TYPE};

/// How many routing events per conversation the API can show.
const HISTORY_LEN: usize = 50;

/// Router settings from the daemon's config.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Consumer group of the router instances.
    pub group_id: String,
    /// How often due timers are checked (and gauges refreshed).
    pub tick_interval: Duration,
    /// Routing configuration per tenant; tenants not listed are not routed.
    pub tenants: BTreeMap<TenantId, RoutingConfig>,
}

/// The router's errors.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Kafka failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A librdkafka call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The input topics are not co-partitioned.
    #[error("router input topics must have the same partition count: {0}")]
    Partitions(String),
    /// A routing config is invalid.
    #[error(transparent)]
    Config(#[from] omni_routing::ConfigError),
}

/// One tenant's engine on this instance.
pub struct TenantSlot {
    /// The engine.
    pub engine: Engine,
    /// The partition the tenant lives on.
    pub partition: i32,
    /// Recent routing events per conversation (for the API; not durable).
    pub history: HashMap<ConversationId, VecDeque<serde_json::Value>>,
}

/// The input offset last applied on a (topic, partition), with the events of the last batch
/// per input offset, so a replay re-publishes them instead of applying the inputs again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    offset: i64,
    time: u64,
    events: Vec<(i64, Vec<serde_json::Value>)>,
}

/// Most input records applied together, with one write to Kafka for all of them.
const MAX_BATCH: usize = 500;

/// State shared by the loop, the ticker and the API.
#[derive(Default)]
pub struct SharedState {
    /// Engines of the tenants this instance owns.
    pub tenants: BTreeMap<TenantId, TenantSlot>,
    loaded: BTreeSet<i32>,
    progress: HashMap<(String, i32), Progress>,
    pending_ticks: BTreeSet<TenantId>,
}

/// The consumer context: metrics, plus the partitions revoked by rebalances, which the loop
/// forgets before it processes another record.
struct RouterContext {
    metrics: MetricsContext,
    revoked: Arc<Mutex<Vec<i32>>>,
}

impl ClientContext for RouterContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.stats(statistics);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error(error, reason);
    }
}

impl ConsumerContext for RouterContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            revoked.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

/// Copies what the router needs out of a consumed message.
fn detach(m: &rdkafka::message::BorrowedMessage<'_>) -> Rec {
    Rec {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
        payload: m.payload().map(<[u8]>::to_vec),
        timestamp: m.timestamp().to_millis(),
    }
}

/// A record detached from the consumer.
struct Rec {
    topic: String,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    timestamp: Option<i64>,
}

/// The router: one per daemon instance.
pub struct Router {
    settings: RouterSettings,
    bus: BusConfig,
    producer: Producer,
    metrics: RouterMetrics,
    bus_metrics: Arc<BusMetrics>,
    shared: Arc<Mutex<SharedState>>,
}

impl Router {
    /// A router writing with `producer`.
    pub fn new(
        settings: RouterSettings,
        bus: BusConfig,
        producer: Producer,
        metrics: RouterMetrics,
        bus_metrics: Arc<BusMetrics>,
    ) -> Self {
        Self {
            settings,
            bus,
            producer,
            metrics,
            bus_metrics,
            shared: Arc::new(Mutex::new(SharedState::default())),
        }
    }

    /// The state the API reads.
    pub fn shared(&self) -> Arc<Mutex<SharedState>> {
        self.shared.clone()
    }

    /// Whether a tenant is routed at all (configured).
    pub fn routes(&self, tenant: &TenantId) -> bool {
        self.settings.tenants.contains_key(tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RouterError> {
        tokio::pin!(shutdown);
        let topics = &self.bus.topics;
        let inputs = [
            topics.inbound.as_str(),
            topics.outbound.as_str(),
            topics.commands.as_str(),
        ];
        // Co-partitioning is what makes "a tenant lives on partition p" true across topics.
        loop {
            match self.check_partitions(&inputs).await {
                Ok(()) => break,
                Err(RouterError::Partitions(msg)) => return Err(RouterError::Partitions(msg)),
                Err(e) => {
                    tracing::warn!(error = %e, "router waiting for kafka topics");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let revoked = Arc::new(Mutex::new(Vec::new()));
        let context = RouterContext {
            metrics: MetricsContext {
                client: self.settings.group_id.clone(),
                group: Some(self.settings.group_id.clone()),
                metrics: self.bus_metrics.clone(),
            },
            revoked: revoked.clone(),
        };
        let consumer: StreamConsumer<RouterContext> = StreamConsumer::from_config_and_context(
            &self.bus.consumer_config(&self.settings.group_id),
            context,
        )?;
        consumer.subscribe(&inputs)?;
        let ticker = tokio::spawn(self.clone().ticker());
        tracing::info!(group = %self.settings.group_id, "router started");
        loop {
            let message = tokio::select! {
                biased;
                () = &mut shutdown => break,
                m = consumer.recv() => m,
            };
            let first = match message {
                Ok(m) => detach(&m),
                Err(e) => {
                    tracing::warn!(error = %e, "router receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Take whatever else is already fetched, so one write to Kafka covers many inputs.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(detach(&m)),
                    _ => break,
                }
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                self.forget_revoked(&revoked);
                match self.step_batch(&batch).await {
                    Ok(outcomes) => {
                        for (rec, outcome) in batch.iter().zip(outcomes) {
                            self.metrics
                                .inputs
                                .with_label_values(&[rec.topic.as_str(), outcome])
                                .inc();
                        }
                        break;
                    }
                    Err(e) => {
                        // Memory may hold steps Kafka does not: forget the partitions and
                        // rebuild them from the changelog before trying the records again.
                        tracing::warn!(records = batch.len(), error = %e,
                            "router step failed, will reload and retry");
                        for rec in &batch {
                            self.unload(rec.partition);
                        }
                        tokio::select! {
                            biased;
                            () = &mut shutdown => { ticker.abort(); return Ok(()); }
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
            for rec in &batch {
                let o = next.entry((rec.topic.as_str(), rec.partition)).or_insert(0);
                *o = (*o).max(rec.offset + 1);
            }
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in next {
                tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "router commit failed (the records will be replayed)");
            }
        }
        ticker.abort();
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "router final commit");
        }
        tracing::info!("router stopped");
        Ok(())
    }

    async fn check_partitions(&self, topics: &[&str]) -> Result<(), RouterError> {
        let names: Vec<String> = topics
            .iter()
            .map(|t| (*t).to_owned())
            .chain([self.bus.topics.router_state.clone()])
            .collect();
        let producer = self.producer.clone();
        let counts = producer
            .partition_counts(&names, Duration::from_secs(5))
            .await?;
        let distinct: BTreeSet<usize> = counts.values().copied().collect();
        if distinct.len() > 1 {
            return Err(RouterError::Partitions(format!("{counts:?}")));
        }
        Ok(())
    }

    fn forget_revoked(&self, revoked: &Mutex<Vec<i32>>) {
        let gone: Vec<i32> =
            std::mem::take(&mut *revoked.lock().unwrap_or_else(|p| p.into_inner()));
        for p in gone {
            tracing::info!(partition = p, "router partition revoked");
            self.unload(p);
        }
    }

    fn unload(&self, partition: i32) {
        let mut s = self.lock();
        s.loaded.remove(&partition);
        for (tenant, slot) in s
            .tenants
            .iter()
            .filter(|(_, slot)| slot.partition == partition)
        {
            self.metrics
                .forget_tenant(tenant.as_str(), &slot.engine.queue_views());
        }
        s.tenants.retain(|_, slot| slot.partition != partition);
        s.progress.retain(|(_, p), _| *p != partition);
        let owned: BTreeSet<TenantId> = s.tenants.keys().cloned().collect();
        s.pending_ticks.retain(|t| owned.contains(t));
        self.metrics
            .partitions_owned
            .with_label_values(&[self.settings.group_id.as_str()])
            .set(s.loaded.len() as i64);
    }

    /// Applies a batch of records and writes their state, progress and events in one batch;
    /// returns each record's outcome label. On error nothing of the batch may be assumed
    /// written: the caller reloads the partitions and retries the whole batch.
    async fn step_batch(&self, batch: &[Rec]) -> Result<Vec<&'static str>, RouterError> {
        let partitions: BTreeSet<i32> = batch.iter().map(|r| r.partition).collect();
        for p in partitions {
            if !self.lock().loaded.contains(&p) {
                self.load(p).await?;
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        // Latest value per state key (several inputs may change one entity), in key order.
        let mut state: BTreeMap<(i32, String), Option<Vec<u8>>> = BTreeMap::new();
        let mut progress: BTreeMap<(String, i32), Progress> = BTreeMap::new();
        let mut events: Vec<(TenantId, serde_json::Value)> = Vec::new();
        let mut replayed: Vec<(Vec<u8>, serde_json::Value)> = Vec::new();
        let mut observations = Vec::new();
        for rec in batch {
            let progress_key = (rec.topic.clone(), rec.partition);
            let replay = self
                .lock()
                .progress
                .get(&progress_key)
                .filter(|p| rec.offset <= p.offset)
                .map(|p| {
                    p.events
                        .iter()
                        .find(|(o, _)| *o == rec.offset)
                        .map(|(_, e)| e.clone())
                });
            if let Some(stored) = replay {
                // Applied and recorded, but its events may not have been written: write them
                // again with their deterministic ids.
                for e in stored.unwrap_or_default() {
                    replayed.push((rec.key.clone(), e));
                }
                outcomes.push("replayed");
                continue;
            }
            let Some(payload) = rec.payload.as_deref() else {
                outcomes.push("ignored");
                continue;
            };
            let (tenant, input) = match decode_input(&rec.key, payload) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    outcomes.push("ignored");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic = %rec.topic, partition = rec.partition, offset = rec.offset,
                        error = %e, "skipping undecodable router input");
                    outcomes.push("skipped");
                    continue;
                }
            };
            let Some(config) = self.settings.tenants.get(&tenant) else {
                outcomes.push("ignored");
                continue;
            };
            let now = Timestamp(
                rec.timestamp
                    .and_then(|t| u64::try_from(t).ok())
                    .unwrap_or_else(wall_clock_ms),
            );
            let (outputs, changes) = {
                let mut s = self.lock();
                if matches!(input, Input::Tick) {
                    s.pending_ticks.remove(&tenant);
                }
                let slot = match s.tenants.entry(tenant.clone()) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(TenantSlot {
                        engine: Engine::new(config.clone())?,
                        partition: rec.partition,
                        history: HashMap::new(),
                    }),
                };
                let outputs = slot.engine.handle(now, &input);
                (outputs, slot.engine.take_changes())
            };
            for c in changes {
                let value = c
                    .entry
                    .as_ref()
                    .map(|e| serde_json::to_vec(e).unwrap_or_default());
                state.insert((rec.partition, format!("{}/{}", tenant, c.key)), value);
            }
            let mut step_events = Vec::new();
            for (i, out) in outputs.iter().enumerate() {
                match out {
                    Output::Event(ev) => {
                        let id = EventId::derived(
                            &tenant,
                            &[
                                &rec.topic,
                                &rec.partition.to_string(),
                                &rec.offset.to_string(),
                                &i.to_string(),
                            ],
                        );
                        let env = routing_envelope(&tenant, id, now, ev);
                        step_events.push(env.clone());
                        events.push((tenant.clone(), env));
                    }
                    Output::Observe(o) => observations.push((tenant.clone(), o.clone())),
                }
            }
            let p = progress.entry(progress_key).or_default();
            p.offset = rec.offset;
            p.time = now.0;
            p.events.push((rec.offset, step_events));
            outcomes.push("applied");
        }
        // State and progress on the tenant's partition, events on the routing topic, all in
        // one batch; then the caller commits. Their order does not matter: with events but no
        // state, a replay recomputes the same events (same ids) from the old state (the engine
        // is deterministic, timers included); with state but no events, the progress record
        // re-publishes them. Only the commit must come last.
        let state_topic = self.bus.topics.router_state.as_str();
        let routing_topic = self.bus.topics.routing.as_str();
        let progress_values: Vec<(i32, String, Vec<u8>)> = progress
            .iter()
            .map(|((topic, p), prog)| {
                (
                    *p,
                    format!("~progress/{topic}"),
                    serde_json::to_vec(prog).unwrap_or_default(),
                )
            })
            .collect();
        let event_values: Vec<(Vec<u8>, Vec<u8>)> = events
            .iter()
            .map(|(t, e)| {
                (
                    t.as_str().as_bytes().to_vec(),
                    serde_json::to_vec(e).unwrap_or_default(),
                )
            })
            .chain(
                replayed
                    .iter()
                    .map(|(k, e)| (k.clone(), serde_json::to_vec(e).unwrap_or_default())),
            )
            .collect();
        let records: Vec<OutRecord<'_>> = state
            .iter()
            .map(|((p, key), value)| OutRecord {
                topic: state_topic,
                partition: Some(*p),
                key: key.as_bytes(),
                payload: value.as_deref(),
            })
            .chain(progress_values.iter().map(|(p, key, value)| OutRecord {
                topic: state_topic,
                partition: Some(*p),
                key: key.as_bytes(),
                payload: Some(value),
            }))
            .chain(event_values.iter().map(|(key, value)| OutRecord {
                topic: routing_topic,
                partition: None,
                key,
                payload: Some(value),
            }))
            .collect();
        if !records.is_empty() {
            self.producer.send_batch(&records).await?;
        }
        {
            let mut s = self.lock();
            for (key, prog) in progress {
                s.progress.insert(key, prog);
            }
            for (tenant, ev) in &events {
                let Some(slot) = s.tenants.get_mut(tenant) else {
                    continue;
                };
                let conv = ev["subject"]
                    .as_str()
                    .and_then(|c| c.parse::<ConversationId>().ok());
                if let Some(c) = conv {
                    let h = slot.history.entry(c).or_default();
                    h.push_back(ev.clone());
                    if h.len() > HISTORY_LEN {
                        h.pop_front();
                    }
                }
            }
        }
        for (tenant, o) in &observations {
            self.metrics.observe(tenant.as_str(), o);
        }
        Ok(outcomes)
    }

    /// Reads a state partition to its end and restores the engines of its tenants.
    async fn load(&self, partition: i32) -> Result<(), RouterError> {
        let bus = self.bus.clone();
        let topic = self.bus.topics.router_state.clone();
        let records = tokio::task::spawn_blocking(move || {
            omni_bus::table::read_partition(&bus, &topic, partition)
        })
        .await
        .map_err(|e| RouterError::Bus(BusError::NotReady(format!("state load task: {e}"))))??;
        let mut by_tenant: BTreeMap<TenantId, Vec<StateEntry>> = BTreeMap::new();
        let mut progress = HashMap::new();
        let mut latest = 0u64;
        for (key, value) in records {
            if let Some(input_topic) = key.strip_prefix("~progress/") {
                if let Ok(p) = serde_json::from_slice::<Progress>(&value) {
                    latest = latest.max(p.time);
                    progress.insert((input_topic.to_owned(), partition), p);
                }
                continue;
            }
            let Some((tenant, _)) = key.split_once('/') else {
                continue;
            };
            let (Ok(tenant), Ok(entry)) = (
                TenantId::new(tenant),
                serde_json::from_slice::<StateEntry>(&value),
            ) else {
                tracing::warn!(key = %key, "ignoring unreadable router state record");
                continue;
            };
            by_tenant.entry(tenant).or_default().push(entry);
        }
        let mut restored = BTreeMap::new();
        for (tenant, entries) in by_tenant {
            let Some(config) = self.settings.tenants.get(&tenant) else {
                continue;
            };
            let engine = Engine::restore(config.clone(), entries, Timestamp(latest))?;
            restored.insert(tenant, engine);
        }
        let mut s = self.lock();
        let count = restored.len();
        for (tenant, engine) in restored {
            s.tenants.insert(
                tenant,
                TenantSlot {
                    engine,
                    partition,
                    history: HashMap::new(),
                },
            );
        }
        s.progress.extend(progress);
        s.loaded.insert(partition);
        self.metrics
            .partitions_owned
            .with_label_values(&[self.settings.group_id.as_str()])
            .set(s.loaded.len() as i64);
        tracing::info!(partition, tenants = count, "router state loaded");
        Ok(())
    }

    /// Publishes a tick for every owned tenant whose next timer is due, and refreshes gauges.
    async fn ticker(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.settings.tick_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = Timestamp(wall_clock_ms());
            let due: Vec<TenantId> = {
                let mut s = self.lock();
                let mut due = Vec::new();
                for (tenant, slot) in &s.tenants {
                    self.metrics.set_gauges(
                        tenant.as_str(),
                        now,
                        &slot.engine.queue_views(),
                        &slot.engine.agent_views(),
                    );
                    if slot.engine.next_timer().is_some_and(|t| t <= now)
                        && !s.pending_ticks.contains(tenant)
                    {
                        due.push(tenant.clone());
                    }
                }
                s.pending_ticks.extend(due.iter().cloned());
                due
            };
            for tenant in due {
                let env = Envelope::new(
                    EventId::new_random(),
                    tenant.clone(),
                    TICK_TYPE,
                    format!("/omnirouter/{tenant}/router"),
                    time_of(now.0),
                    None,
                    serde_json::json!({}),
                );
                let payload = serde_json::to_vec(&env).unwrap_or_default();
                if let Err(e) = self
                    .producer
                    .send(
                        &self.bus.topics.commands,
                        tenant.as_str().as_bytes(),
                        &payload,
                    )
                    .await
                {
                    tracing::warn!(tenant = %tenant, error = %e, "cannot publish router tick");
                    self.lock().pending_ticks.remove(&tenant);
                }
            }
        }
    }
}

fn routing_envelope(
    tenant: &TenantId,
    id: EventId,
    now: Timestamp,
    ev: &RoutingEvent,
) -> serde_json::Value {
    let env = Envelope::new(
        id,
        tenant.clone(),
        routing_type(ev),
        format!("/omnirouter/{tenant}/router"),
        time_of(now.0),
        routing_subject(ev),
        ev,
    );
    serde_json::to_value(&env).unwrap_or_default()
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
