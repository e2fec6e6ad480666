//! The consume → decide → write state → publish events → commit loop: batches, revoked
//! partitions, held records of unknown tenants, misrouted records, config reloads. See the
//! crate docs for the protocol and [`crate::ownership`] for the fencing.
//!
//! Beside it: `rebalance` (what the consumer group tells the loop), `step` (one batch applied
//! and written), `takeover` (claiming a partition and restoring its tenants), `reconfigure` (a
//! reloaded config applied), `writes` (one step's records and their single write to Kafka),
//! `ticker` (timers, gauges, claim renewal and the search for orphaned partitions).

use omni_bus::batch::{BatchConsumer, BatchRecord as Rec, ClientError, Commit, Offsets};
use omni_bus::{partition_for, BusConfig, BusError, BusMetrics, OutRecord, Producer};
use omni_core::{ConversationId, EventId, EventType, TenantId};
use omni_routing::{Engine, Input, Output, RoutingConfig, StateEntry, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::RouterMetrics;
use crate::ownership::{self, OwnerRecord, Owners, EPOCH_HEADER, MEMBER_HEADER};
use crate::wire::{decode_input, time_of, Envelope};

mod rebalance;
mod reconfigure;
mod step;
mod takeover;
mod ticker;
mod writes;

use rebalance::{Assignment, RouterContext};
use writes::Writes;

/// How many routing events per conversation the API can show.
const HISTORY_LEN: usize = 50;

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// Router settings from the daemon's config.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Consumer group of the router instances.
    pub group_id: String,
    /// How often due timers are checked (and gauges refreshed).
    pub tick_interval: Duration,
    /// Routing configuration per tenant at start-up; [`Router::set_tenants`] replaces it.
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
    Kafka(#[from] ClientError),
    /// The input topics are not co-partitioned.
    #[error("router input topics must have the same partition count: {0}")]
    Partitions(String),
    /// A routing config is invalid.
    #[error(transparent)]
    Config(#[from] omni_routing::ConfigError),
    /// A record could not be encoded (a programming error: nothing is written in its place).
    #[error(transparent)]
    Encode(#[from] omni_core::EncodeError),
}

/// One tenant's engine on this instance.
pub struct TenantSlot {
    /// The engine.
    pub engine: Engine,
    /// The config the engine was built with (a reload compares against it).
    pub config: RoutingConfig,
    /// The partition the tenant lives on.
    pub partition: i32,
    /// Recent routing events per conversation, as written to Kafka (for the API; not
    /// durable).
    pub history: HashMap<ConversationId, VecDeque<Box<str>>>,
}

/// A partition this instance owns: the epoch of its claim and how fresh its state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// The owner epoch this instance claimed the partition with.
    pub epoch: u64,
    /// Time of the last input applied (ms since the epoch): what the state reflects.
    pub as_of: u64,
}

/// The input offset last applied on a (topic, partition), with the events of the last batch
/// per input offset, so a replay re-publishes them instead of applying the inputs again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    offset: i64,
    time: u64,
    events: Vec<(i64, Vec<EventJson>)>,
}

/// A routing event as written to the routing topic: encoded once, when the engine emits it,
/// and then written as the routing record and, verbatim, inside the progress record (which a
/// replay re-publishes from). A parsed `serde_json::Value` here cost a conversion per event
/// and a second, slower encoding per write.
type EventJson = Box<serde_json::value::RawValue>;

/// Most input records applied together, with one write to Kafka for all of them.
const MAX_BATCH: usize = 500;

/// State shared by the loop, the ticker and the API.
#[derive(Default)]
pub struct SharedState {
    /// Engines of the tenants this instance owns.
    pub tenants: BTreeMap<TenantId, TenantSlot>,
    /// Partitions whose state this instance holds, with their claim.
    pub owned: BTreeMap<i32, Owned>,
    /// Partition count of the co-partitioned input topics (0 until known).
    pub partitions: usize,
    /// Who owns which partition, from the owners topic (for forwarded reads).
    pub owners: Owners,
    /// This instance's name in owner claims.
    pub member: String,
    /// This instance's base URL for forwarded reads (`router.advertised_url`).
    pub url: Option<String>,
    progress: HashMap<(String, i32), Progress>,
    pending_ticks: BTreeSet<TenantId>,
}

impl SharedState {
    /// The partition the contract puts `tenant` on, once the partition count is known.
    pub fn partition_of(&self, tenant: &TenantId) -> Option<i32> {
        (self.partitions > 0).then(|| partition_for(tenant.as_str().as_bytes(), self.partitions))
    }
}

/// The router's consumer: the input topics, rebalances told to [`RouterContext`].
type InputConsumer = BatchConsumer<RouterContext>;

/// What became of one input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Given to its tenant's engine.
    Applied,
    /// Applied before (at or below the recorded progress): its events were re-published.
    Replayed,
    /// Nothing for the router (no value, an event type it does not route).
    Ignored,
    /// Undecodable; logged and passed.
    Skipped,
    /// On the wrong partition for its key: copied to the right one.
    Forwarded,
    /// Its partition was claimed by a newer owner: not applied, not committed.
    Fenced,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Replayed => "replayed",
            Outcome::Ignored => "ignored",
            Outcome::Skipped => "skipped",
            Outcome::Forwarded => "forwarded",
            Outcome::Fenced => "fenced",
        }
    }
}

/// How often a partition whose claim failed is claimed again when no record brings it up.
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The assigned partitions not in `owned` (claimed and restored), in order.
fn unrestored<V>(assigned: &BTreeSet<i32>, owned: &BTreeMap<i32, V>) -> Vec<i32> {
    assigned
        .iter()
        .filter(|p| !owned.contains_key(p))
        .copied()
        .collect()
}

/// Records held back per partition because their tenant is not configured here yet; the
/// partition is paused until a config that knows them arrives.
type Held = BTreeMap<i32, Vec<Rec>>;

/// The router: one per daemon instance.
pub struct Router {
    settings: RouterSettings,
    bus: BusConfig,
    producer: Producer,
    metrics: RouterMetrics,
    bus_metrics: Arc<BusMetrics>,
    shared: Arc<Mutex<SharedState>>,
    /// The tenants' routing configs now in force; replaced by [`Router::set_tenants`].
    tenants: tokio::sync::watch::Sender<Arc<BTreeMap<TenantId, RoutingConfig>>>,
    /// Asks the loop to leave and rejoin the consumer group (a partition has no live owner).
    rejoin: tokio::sync::Notify,
    /// The partitions this instance owns, for channels whose per-tenant state follows them.
    ownership: omni_bus::ownership::OwnershipSender,
    /// The input partitions the group gave this instance (kept by the rebalance callbacks).
    assignment: Arc<Mutex<Assignment>>,
    /// Set once the router is in its consumer group.
    started: AtomicBool,
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
        let tenants = tokio::sync::watch::Sender::new(Arc::new(settings.tenants.clone()));
        let shared = SharedState {
            member: member_name(),
            ..SharedState::default()
        };
        Self {
            settings,
            bus,
            producer,
            metrics,
            bus_metrics,
            shared: Arc::new(Mutex::new(shared)),
            tenants,
            rejoin: tokio::sync::Notify::new(),
            ownership: omni_bus::ownership::Ownership::channel(omni_bus::Owned::nothing()).0,
            assignment: Arc::default(),
            started: AtomicBool::new(false),
        }
    }

    /// Whether this instance may take traffic as far as routing goes (`/readyz`): `Err` says
    /// why not while the router is not in its group yet, or holds partitions whose state it
    /// has not restored (their conversations would be read as empty and nothing routed). An
    /// instance that holds no partition is ready: it forwards reads to the owners.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("router starting: waiting for the input topics and its group".into());
        }
        let assigned = self
            .assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .clone();
        let s = self.lock();
        let loading = unrestored(&assigned, &s.owned);
        if loading.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "router restoring the state of partition(s) {loading:?}"
            ))
        }
    }

    /// Assigned partitions not yet claimed and restored.
    fn unclaimed(&self) -> bool {
        let assigned = self
            .assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .clone();
        !unrestored(&assigned, &self.lock().owned).is_empty()
    }

    /// Follows the partitions this instance owns (claimed and restored, not yet revoked):
    /// channels keep the per-tenant state keyed onto them (mailboxes, Zalo tokens, SMS parts).
    pub fn ownership(&self) -> omni_bus::Ownership {
        omni_bus::Ownership::from_sender(&self.ownership)
    }

    /// Tells the channels what is owned now; called with the lock held after every change.
    fn publish_ownership(&self, s: &SharedState) {
        let now = omni_bus::Owned::partitions(s.partitions, s.owned.keys().copied().collect());
        self.ownership.send_if_modified(|o| {
            let changed = *o != now;
            *o = now;
            changed
        });
    }

    /// The consumers' `session.timeout.ms`: after it, a dead member's partitions must have a
    /// new owner.
    fn session_timeout(&self) -> Duration {
        let ms = [&self.bus.consumer, &self.bus.librdkafka]
            .iter()
            .flat_map(|m| m.iter())
            .find(|(k, _)| k.replace('_', ".") == "session.timeout.ms")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
        Duration::from_millis(ms)
    }

    /// Sets the base URL other instances forward this instance's tenants' API reads to
    /// (`router.advertised_url`, e.g. `http://10.1.2.3:8080`).
    pub fn set_advertised_url(&self, url: Option<String>) {
        self.lock().url = url;
    }

    /// Replaces every tenant's routing config (a reloaded config file). Takes effect between two
    /// batches: owned tenants whose config changed are rebuilt from their state under the new
    /// config, removed tenants stop being routed, and records held back for a tenant this
    /// instance did not know are applied once it appears.
    pub fn set_tenants(&self, tenants: BTreeMap<TenantId, RoutingConfig>) {
        self.tenants.send_replace(Arc::new(tenants));
    }

    /// The state the API reads.
    pub fn shared(&self) -> Arc<Mutex<SharedState>> {
        self.shared.clone()
    }

    /// Whether a tenant is routed at all (configured).
    pub fn routes(&self, tenant: &TenantId) -> bool {
        self.tenants.borrow().contains_key(tenant)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config_of(&self, tenant: &TenantId) -> Option<RoutingConfig> {
        self.tenants.borrow().get(tenant).cloned()
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
        let Some(partitions) = self.wait_for_partitions(&inputs, &mut shutdown).await? else {
            return Ok(());
        };
        let stop_owners = self.follow_owners(partitions);
        let assignment = self.assignment.clone();
        let applied = Arc::new(Mutex::new(BTreeMap::new()));
        let newly_assigned = Arc::new(tokio::sync::Notify::new());
        let context = RouterContext {
            assigned: newly_assigned.clone(),
            assignment: assignment.clone(),
        };
        let consumer = InputConsumer::new(
            &self.bus,
            &self.settings.group_id,
            &inputs,
            self.bus_metrics.clone(),
            Arc::new(context),
            applied.clone(),
        )?;
        let ticker = tokio::spawn(self.clone().ticker());
        let mut tenants_rx = self.tenants.subscribe();
        let mut held = Held::new();
        tracing::info!(group = %self.settings.group_id, partitions, member = %self.lock().member,
            "router started");
        self.started.store(true, Ordering::Relaxed);
        // A partition whose claim failed is claimed again with its next record, or here, so
        // a quiet partition does not stay unrestored (and the instance not ready).
        let mut claim_retry = tokio::time::interval(CLAIM_RETRY);
        claim_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let result = loop {
            let batch = tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                () = newly_assigned.notified() => {
                    self.claim_assigned(&assignment, &mut held).await;
                    continue;
                }
                _ = claim_retry.tick(), if self.unclaimed() => {
                    self.claim_assigned(&assignment, &mut held).await;
                    continue;
                }
                () = self.rejoin.notified() => {
                    // Leaving revokes everything (the callbacks commit and forget it); joining
                    // again makes the coordinator run a rebalance with the live members.
                    if let Err(e) = consumer.rejoin() {
                        tracing::warn!(error = %e, "rejoining the router group failed");
                    }
                    continue;
                }
                changed = tenants_rx.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let _ = tenants_rx.borrow_and_update();
                    match self.reconfigure(&consumer, &assignment, &applied, &mut held).await {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "applying the new routing config failed; its tenants' partitions will be reloaded");
                            continue;
                        }
                    }
                }
                m = consumer.recv() => match m {
                    Ok(rec) => {
                        // Take whatever else is already fetched, so one write to Kafka covers
                        // many inputs.
                        let mut batch = vec![rec];
                        consumer.fetched(&mut batch, MAX_BATCH).await;
                        batch
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "router receive failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            if let Err(stopped) = self
                .process(
                    &consumer,
                    &assignment,
                    &applied,
                    &mut held,
                    batch,
                    &mut shutdown,
                )
                .await
            {
                break stopped;
            }
        };
        ticker.abort();
        self.started.store(false, Ordering::Relaxed);
        stop_owners.store(true, Ordering::Relaxed);
        final_commit(&consumer, &applied);
        leave_group_within(consumer, LEAVE_GROUP_WAIT).await;
        tracing::info!("router stopped");
        result
    }

    /// Records the partition count and starts following the owners registry; setting the flag
    /// returned stops it.
    fn follow_owners(&self, partitions: usize) -> Arc<AtomicBool> {
        let owners = {
            let mut s = self.lock();
            s.partitions = partitions;
            s.owners.clone()
        };
        let stop_owners = Arc::new(AtomicBool::new(false));
        owners.tail(
            self.bus.clone(),
            self.bus.topics.router_owners.clone(),
            stop_owners.clone(),
        );
        stop_owners
    }

    /// The partition count of the input topics, once they exist (`None`: shut down first).
    /// Co-partitioning is what makes "a tenant lives on partition p" true across topics.
    async fn wait_for_partitions(
        &self,
        inputs: &[&str],
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<usize>, RouterError> {
        loop {
            match self.check_partitions(inputs).await {
                Ok(n) => return Ok(Some(n)),
                Err(RouterError::Partitions(msg)) => return Err(RouterError::Partitions(msg)),
                Err(e) => {
                    tracing::warn!(error = %e, "router waiting for kafka topics");
                    tokio::select! {
                        biased;
                        () = &mut *shutdown => return Ok(None),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Applies one batch of fetched records: drops those of revoked partitions, holds those of
    /// unknown tenants, applies the rest (retrying after a failed write), then commits what was
    /// applied. `Err` only when shutdown arrived during a retry.
    async fn process(
        &self,
        consumer: &InputConsumer,
        assignment: &Mutex<Assignment>,
        applied: &Mutex<BTreeMap<(String, i32), i64>>,
        held: &mut Held,
        batch: Vec<Rec>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), Result<(), RouterError>> {
        self.forget_revoked(assignment, held);
        let assigned = assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .clone();
        let mut ready = Vec::with_capacity(batch.len());
        let mut newly_held = BTreeSet::new();
        for rec in batch {
            if !assigned.contains(&rec.partition) {
                // Fetched before a revocation: the new owner reads it again.
                continue;
            }
            if !consumer.resumes(&rec) {
                continue;
            }
            if let Some(h) = held.get_mut(&rec.partition) {
                h.push(rec);
                continue;
            }
            if self.must_hold(&rec) {
                newly_held.insert(rec.partition);
                held.entry(rec.partition).or_default().push(rec);
                continue;
            }
            ready.push(rec);
        }
        if !newly_held.is_empty() {
            self.pause(consumer, &newly_held);
        }
        self.metrics
            .held
            .set(i64::try_from(held.values().map(Vec::len).sum::<usize>()).unwrap_or(i64::MAX));
        if ready.is_empty() {
            return Ok(());
        }
        let mut backoff = Duration::from_millis(100);
        let outcomes = loop {
            match self.step_batch(&ready).await {
                Ok(outcomes) => break outcomes,
                Err(e) => {
                    // Memory may hold steps Kafka does not: forget the partitions and rebuild
                    // them from the changelog before trying the records again.
                    tracing::warn!(records = ready.len(), error = %e,
                        "router step failed, will reload and retry");
                    let partitions: BTreeSet<i32> = ready.iter().map(|r| r.partition).collect();
                    for p in partitions {
                        self.unload(p);
                    }
                    tokio::select! {
                        biased;
                        () = &mut *shutdown => return Err(Ok(())),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.commit_applied(consumer, assignment, applied, &ready, outcomes);
        Ok(())
    }

    /// Counts the outcomes of a batch and commits what it applied on the partitions still
    /// assigned (a fenced partition is given up until a rebalance gives it back).
    fn commit_applied(
        &self,
        consumer: &InputConsumer,
        assignment: &Mutex<Assignment>,
        applied: &Mutex<BTreeMap<(String, i32), i64>>,
        ready: &[Rec],
        outcomes: Vec<Outcome>,
    ) {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (rec, outcome) in ready.iter().zip(outcomes) {
            self.metrics
                .inputs
                .with_label_values(&[rec.topic.as_str(), outcome.label()])
                .inc();
            if outcome == Outcome::Fenced {
                // Another instance owns it now: ignore it until a rebalance gives it back.
                assignment
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .assigned
                    .remove(&rec.partition);
                continue;
            }
            let o = next.entry((rec.topic.clone(), rec.partition)).or_insert(0);
            *o = (*o).max(rec.offset + 1);
        }
        let still: BTreeSet<i32> = assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .clone();
        let mut tpl = Offsets::new();
        {
            let mut applied = applied.lock().unwrap_or_else(|p| p.into_inner());
            for ((topic, partition), offset) in next {
                if !still.contains(&partition) {
                    continue;
                }
                if let Err(e) = tpl.add(&topic, partition, offset) {
                    tracing::warn!(error = %e, "router commit list");
                }
                applied.insert((topic, partition), offset);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, Commit::Async) {
                tracing::warn!(error = %e, "router commit failed (the records will be replayed)");
            }
        }
    }

    /// Claims every assigned partition not owned yet. A failure is logged: the partition is
    /// claimed again when its first record arrives.
    async fn claim_assigned(&self, assignment: &Mutex<Assignment>, held: &mut Held) {
        self.forget_revoked(assignment, held);
        let assigned = assignment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assigned
            .clone();
        for p in assigned {
            if self.lock().owned.contains_key(&p) {
                continue;
            }
            match self.claim(p).await {
                Ok(true) => {}
                // Another instance holds it: ignore it until a rebalance gives it back.
                Ok(false) => {
                    assignment
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .assigned
                        .remove(&p);
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "claiming an assigned partition failed; retrying with its next record");
                }
            }
        }
    }

    /// Whether `rec` must wait for a config that knows its tenant: its key is a tenant id this
    /// instance has no config for, and it is on that tenant's partition (a misrouted record is
    /// forwarded whatever its tenant).
    fn must_hold(&self, rec: &Rec) -> bool {
        if rec.payload.is_none() {
            return false;
        }
        let Ok(key) = std::str::from_utf8(&rec.key) else {
            return false;
        };
        let Ok(tenant) = TenantId::new(key) else {
            return false;
        };
        let home = self.lock().partition_of(&tenant);
        if home.is_some_and(|h| h != rec.partition) {
            return false;
        }
        let unknown = !self.tenants.borrow().contains_key(&tenant);
        if unknown {
            tracing::warn!(tenant = %tenant, partition = rec.partition, topic = %rec.topic,
                offset = rec.offset,
                "record for a tenant not in this instance's config: holding its partition until a config that knows it is loaded");
        }
        unknown
    }

    fn pause(&self, consumer: &InputConsumer, partitions: &BTreeSet<i32>) {
        if let Err(e) = consumer.pause(partitions) {
            tracing::warn!(error = %e, "cannot pause held partitions");
        }
    }

    async fn check_partitions(&self, topics: &[&str]) -> Result<usize, RouterError> {
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
        Ok(distinct.into_iter().next().unwrap_or(0))
    }

    fn forget_revoked(&self, assignment: &Mutex<Assignment>, held: &mut Held) {
        let gone: Vec<i32> =
            std::mem::take(&mut assignment.lock().unwrap_or_else(|p| p.into_inner()).revoked);
        for p in gone {
            tracing::info!(partition = p, "router partition revoked");
            held.remove(&p);
            self.unload(p);
        }
    }

    fn unload(&self, partition: i32) {
        let mut s = self.lock();
        s.owned.remove(&partition);
        self.publish_ownership(&s);
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
            .set(s.owned.len() as i64);
    }
}

/// On shutdown: what was applied is committed; held and unapplied records are not.
/// How long a stopping router waits for its consumer to leave the group.
const LEAVE_GROUP_WAIT: Duration = Duration::from_secs(10);

/// Drops (closes) the consumer: librdkafka leaves the group, which waits for the broker and for
/// a rebalance in progress, and blocks its thread meanwhile (a graceful stop once waited on it
/// past a 30 s grace period). So it runs on a blocking thread, waited for at most `wait`; past
/// it the member is left to expire as a crashed one would (its offsets are already committed).
async fn leave_group_within(consumer: InputConsumer, wait: Duration) {
    let closing = tokio::task::spawn_blocking(move || drop(consumer));
    if tokio::time::timeout(wait, closing).await.is_err() {
        tracing::warn!(
            waited_secs = wait.as_secs(),
            "the router's consumer did not leave its group in time: its membership expires \
             after the session timeout instead"
        );
    }
}

fn final_commit(consumer: &InputConsumer, applied: &Mutex<omni_bus::batch::Applied>) {
    let mut tpl = Offsets::new();
    for ((topic, partition), offset) in applied.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = tpl.add(topic, *partition, *offset);
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, Commit::Sync) {
            tracing::debug!(error = %e, "router final commit");
        }
    }
}

/// A name for this instance in owner claims: host, process id and a random part, so a
/// restarted process is a new member.
fn member_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "omnirouter".into());
    // A v7 id ends in random bits.
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[24..])
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_assigned_partitions_without_restored_state_hold_readiness_back() {
        let assigned: BTreeSet<i32> = [0, 2, 3].into();
        let owned: BTreeMap<i32, ()> = [(0, ()), (1, ())].into();
        assert_eq!(unrestored(&assigned, &owned), [2, 3]);
        assert!(unrestored(&BTreeSet::new(), &owned).is_empty());
        let all: BTreeMap<i32, ()> = [(0, ()), (2, ()), (3, ())].into();
        assert!(unrestored(&assigned, &all).is_empty());
    }
}
