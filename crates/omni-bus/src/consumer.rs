//! Consumer groups with commit-after-processing (at least once): an offset is committed only
//! after the handler finished with the record, so a crash replays, never skips.

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::config::BusConfig;
use crate::dead_letter::DeadLetters;
use crate::error::BusError;
use crate::gate::{GroupContext, PartitionGate};
use crate::lanes::{Fetched, Lanes, Position};
use crate::metrics::{BusMetrics, MetricsContext};
use crate::resume::{ResumeGuard, Resumed};

/// One consumed record, owned so a handler may hold it across awaits.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic it came from.
    pub topic: String,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The record key (the tenant, for omnirouter topics).
    pub key: Option<Vec<u8>>,
    /// The record value.
    pub payload: Option<Vec<u8>>,
    /// The record headers (a CRM's `traceparent`, …), kept for a dead letter.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a handler did with a record, which decides whether its offset is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Processed: commit.
    Done,
    /// Can never be processed (malformed, a required field missing): count, copy to the
    /// dead-letter topic when the consumer has one ([`Consumer::with_dead_letters`]), then
    /// commit, so one bad record does not stop the partition.
    Skip(String),
    /// Failed for a reason that may pass (a provider or broker down): retry the same record
    /// with backoff; nothing after it is processed meanwhile, preserving order.
    Retry(String),
    /// The record's partition was revoked before the work was done: leave it uncommitted
    /// for the partition's next owner, without retrying it here.
    Abandon(String),
}

/// A record's headers, owned and in order (a header without a value as an empty one): what a
/// dead letter keeps and what carries the trace context.
pub(crate) fn headers_of(m: &impl rdkafka::message::Message) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A member of a consumer group reading some topics.
pub struct Consumer {
    inner: StreamConsumer<GroupContext>,
    group: String,
    metrics: Arc<BusMetrics>,
    unfinished: Unfinished,
    /// The subscribed topics, to subscribe again on a rejoin.
    topics: Vec<String>,
    /// Where skipped records go; `None`: they are only counted and logged.
    dead_letters: Option<DeadLetters>,
    /// Set by [`Consumer::rejoin_handle`]'s holders: leave and rejoin the group.
    rejoin: Arc<tokio::sync::Notify>,
}

/// How many records a consumer has taken and not finished (running, queued behind a record
/// of the same key, or abandoned on shutdown while retrying): none of them is committed, so
/// each is redelivered to the next owner. Readable from outside the consumer's loop, e.g. to
/// report what a shutdown left behind.
#[derive(Debug, Clone, Default)]
pub struct Unfinished(Arc<AtomicUsize>);

impl Unfinished {
    /// Records taken and not finished right now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, n: usize) {
        self.0.store(n, Ordering::Relaxed);
    }
}

impl Consumer {
    /// Joins `group` and subscribes to `topics`.
    pub fn new(
        config: &BusConfig,
        group: &str,
        topics: &[&str],
        metrics: Arc<BusMetrics>,
    ) -> Result<Self, BusError> {
        let context = GroupContext {
            metrics: MetricsContext {
                client: group.to_owned(),
                group: Some(group.to_owned()),
                metrics: metrics.clone(),
            },
            gate: Arc::new(PartitionGate::default()),
            resume: Arc::new(ResumeGuard::default()),
        };
        let inner: StreamConsumer<GroupContext> =
            StreamConsumer::from_config_and_context(&config.consumer_config(group), context)
                .map_err(BusError::Client)?;
        inner.subscribe(topics).map_err(BusError::Consume)?;
        Ok(Self {
            inner,
            group: group.to_owned(),
            metrics,
            unfinished: Unfinished::default(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            rejoin: Arc::new(tokio::sync::Notify::new()),
            dead_letters: None,
        })
    }

    /// Records a handler skips are copied to the dead-letter topic (acknowledged by Kafka)
    /// before their offset is committed.
    #[must_use]
    pub fn with_dead_letters(mut self, dead_letters: DeadLetters) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// A handle that asks this consumer to leave its group and join it again (unsubscribe,
    /// subscribe), at the next turn of [`Consumer::run`] or [`Consumer::run_concurrent`]:
    /// leaving revokes every partition (the usual revocation: the gate drains, positions are
    /// committed) and joining makes the coordinator rebalance with the live members. Used by
    /// [`crate::liveness`] when a partition has had no live owner for too long.
    pub fn rejoin_handle(&self) -> Arc<tokio::sync::Notify> {
        self.rejoin.clone()
    }

    fn rejoin_now(&self) {
        self.metrics
            .group_rejoins
            .with_label_values(&[self.group.as_str()])
            .inc();
        tracing::warn!(group = %self.group, "leaving and rejoining the consumer group");
        self.inner.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.inner.subscribe(&topics) {
            tracing::warn!(group = %self.group, error = %e, "rejoining the consumer group failed");
        }
    }

    /// The partitions this member holds, for handlers that must not overlap with the next
    /// owner's (see [`PartitionGate`]).
    pub fn gate(&self) -> Arc<PartitionGate> {
        self.inner.context().gate.clone()
    }

    /// A live count of the records this consumer took and has not finished.
    pub fn unfinished(&self) -> Unfinished {
        self.unfinished.clone()
    }

    /// Feeds records to `handler` one at a time until `shutdown` resolves, committing each
    /// record's offset after the handler returned `Done` or `Skip`. On shutdown, a record whose
    /// handler was still retrying is not committed and will be redelivered.
    pub async fn run<H, Fut, S>(&self, mut handler: H, shutdown: S) -> Result<(), BusError>
    where
        H: FnMut(Record) -> Fut,
        Fut: Future<Output = HandlerOutcome>,
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut processed_any = false;
        loop {
            let message = tokio::select! {
                // Shutdown first: once asked to stop, take no new record.
                biased;
                () = &mut shutdown => break,
                () = self.rejoin.notified() => {
                    self.rejoin_now();
                    continue;
                }
                m = self.inner.recv() => m,
            };
            let Some(record) = self.take(message).await else {
                continue;
            };
            if !self.resumes(&record) {
                continue;
            }
            let gate = self.gate();
            let Some(generation) = gate.generation(&record.topic, record.partition) else {
                self.left_unheld(&record);
                continue;
            };
            let still_held =
                || gate.generation(&record.topic, record.partition) == Some(generation);
            self.unfinished.set(1);
            let mut backoff = Duration::from_millis(100);
            let mut finished = false;
            loop {
                if !still_held() {
                    tracing::info!(group = %self.group, topic = %record.topic,
                        partition = record.partition, offset = record.offset,
                        "partition reassigned: record left to its owner");
                    break;
                }
                let outcome = handler(record.clone()).await;
                if let HandlerOutcome::Retry(reason) = outcome {
                    tracing::warn!(group = %self.group, topic = %record.topic,
                        partition = record.partition, offset = record.offset, %reason,
                        retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "record processing failed, will retry");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
                self.count(&record, &outcome);
                if let HandlerOutcome::Skip(reason) = &outcome {
                    if !dead_letter(
                        self.dead_letters.as_ref(),
                        &self.group,
                        &record,
                        reason,
                        &mut shutdown,
                    )
                    .await
                    {
                        return Ok(());
                    }
                }
                finished = !matches!(outcome, HandlerOutcome::Abandon(_));
                break;
            }
            self.unfinished.set(0);
            // Committed only under the assignment it was fetched in: a partition revoked and
            // given back meanwhile is read again from its committed offset.
            if finished && still_held() {
                self.commit(&record)?;
                processed_any = true;
            }
        }
        // Between records every fetched record is processed, so the position is exactly what
        // may be committed; commit it synchronously so a successor starts right after it.
        if processed_any {
            if let Err(e) = self.inner.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(group = %self.group, error = %e, "final commit failed");
            }
        }
        Ok(())
    }

    /// Like [`Consumer::run`], but up to `max_in_flight` records are processed at once: records
    /// with the same `order_key` (a conversation) one after another in arrival order, others
    /// side by side. A partition's offset is committed only up to its oldest unfinished record.
    /// On shutdown no new record is taken, running handlers finish (retries stop), and what was
    /// not finished is redelivered to the next owner.
    pub async fn run_concurrent<K, H, Fut, S>(
        &self,
        max_in_flight: usize,
        order_key: K,
        handler: H,
        shutdown: S,
    ) -> Result<(), BusError>
    where
        K: Fn(&Record) -> u64,
        H: Fn(Record) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerOutcome> + Send + 'static,
        S: Future<Output = ()>,
    {
        let handler = Arc::new(handler);
        let gate = self.gate();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut lanes = Lanes::default();
        let mut running: JoinSet<(u64, Fetched, Option<HandlerOutcome>)> = JoinSet::new();
        let spawn = |running: &mut JoinSet<_>, key: u64, fetched: Fetched| {
            let handler = handler.clone();
            let gate = gate.clone();
            let mut stop = stop_rx.clone();
            let dead_letters = self.dead_letters.clone();
            let group = self.group.clone();
            running.spawn(async move {
                let still_held = || {
                    gate.generation(&fetched.record.topic, fetched.record.partition)
                        == Some(fetched.generation)
                };
                let mut outcome =
                    retry_until_final(&*handler, &fetched.record, &mut stop, still_held).await;
                if let Some(HandlerOutcome::Skip(reason)) = &outcome {
                    let mut stopped = Box::pin(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    });
                    if !dead_letter(
                        dead_letters.as_ref(),
                        &group,
                        &fetched.record,
                        reason,
                        &mut stopped,
                    )
                    .await
                    {
                        outcome = None;
                    }
                }
                (key, fetched, outcome)
            });
        };
        tokio::pin!(shutdown);
        let mut stopping = false;
        loop {
            if stopping && running.is_empty() {
                break;
            }
            let room = !stopping && lanes.held() < max_in_flight.max(1);
            tokio::select! {
                biased;
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    let _ = stop_tx.send(true);
                }
                () = self.rejoin.notified(), if !stopping => self.rejoin_now(),
                Some(joined) = running.join_next() => {
                    let (key, fetched, outcome) = match joined {
                        Ok(done) => done,
                        Err(e) => {
                            // A handler panicked: its record stays uncommitted forever in this
                            // session (the partition stops advancing) and is redelivered.
                            tracing::error!(group = %self.group, error = %e, "record handler failed");
                            continue;
                        }
                    };
                    let Some(outcome) = outcome else {
                        // Stopped while retrying: leave it uncommitted for the next owner.
                        continue;
                    };
                    self.count(&fetched.record, &outcome);
                    tracing::debug!(group = %self.group, topic = %fetched.record.topic,
                        partition = fetched.record.partition, offset = fetched.record.offset,
                        generation = fetched.generation, ?outcome, "record finished");
                    let (next, commit) = lanes.finish(key, &fetched);
                    self.unfinished.set(lanes.held());
                    if let Some(next) = next {
                        spawn(&mut running, key, next);
                    }
                    if let Some(position) = commit {
                        self.commit_if_held(&gate, &position, CommitMode::Async)?;
                    }
                }
                m = self.inner.recv(), if room => {
                    let Some(record) = self.take(m).await else {
                        continue;
                    };
                    if !self.resumes(&record) {
                        continue;
                    }
                    let Some(generation) = gate.generation(&record.topic, record.partition) else {
                        self.left_unheld(&record);
                        continue;
                    };
                    let key = order_key(&record);
                    tracing::debug!(group = %self.group, topic = %record.topic,
                        partition = record.partition, offset = record.offset, generation,
                        "record taken");
                    let start = lanes.admit(key, Fetched { record, generation });
                    self.unfinished.set(lanes.held());
                    if let Some(record) = start {
                        spawn(&mut running, key, record);
                    }
                }
            }
        }
        self.commit_finished(&gate, &lanes);
        Ok(())
    }

    /// At the end of a run: commits, synchronously, every partition's position up to its
    /// oldest unfinished record, where this member still holds the partition.
    fn commit_finished(&self, gate: &PartitionGate, lanes: &Lanes) {
        for position in lanes.positions() {
            if let Err(e) = self.commit_if_held(gate, &position, CommitMode::Sync) {
                tracing::debug!(group = %self.group, error = %e, "final commit failed");
            }
        }
    }

    /// A received message as an owned record; after a receive error, a short pause and `None`.
    async fn take(
        &self,
        message: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) -> Option<Record> {
        match message {
            Ok(m) => Some(Record {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: headers_of(&m),
            }),
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        }
    }

    /// Whether `record` is to be processed: false for a record before its partition's committed
    /// offset, and for one past it that the broker reached by skipping records (the partition
    /// is then rewound; see [`crate::resume`]).
    fn resumes(&self, record: &Record) -> bool {
        let resume = &self.inner.context().resume;
        match resume.check(&record.topic, record.partition, record.offset) {
            Resumed::Take => true,
            Resumed::Drop => false,
            Resumed::Rewind(to) => {
                if let Err(e) = self.inner.seek(
                    &record.topic,
                    record.partition,
                    Offset::Offset(to),
                    Duration::from_secs(5),
                ) {
                    // The record stays unprocessed; the next one of the partition rewinds
                    // further (a revoked partition is no longer checked).
                    tracing::warn!(group = %self.group, topic = %record.topic,
                        partition = record.partition, error = %e, "rewinding failed");
                }
                false
            }
        }
    }

    /// A record of a partition this member does not hold (fetched before a revocation): not
    /// processed, not committed; the partition's owner reads it.
    fn left_unheld(&self, record: &Record) {
        tracing::info!(group = %self.group, topic = %record.topic, partition = record.partition,
            offset = record.offset, "record of a partition not held: left to its owner");
    }

    fn count(&self, record: &Record, outcome: &HandlerOutcome) {
        match outcome {
            HandlerOutcome::Skip(reason) => {
                self.metrics
                    .consume_skipped
                    .with_label_values(&[self.group.as_str(), record.topic.as_str()])
                    .inc();
                tracing::warn!(group = %self.group, topic = %record.topic,
                    partition = record.partition, offset = record.offset, %reason,
                    "skipping unprocessable record");
            }
            HandlerOutcome::Abandon(reason) => {
                tracing::info!(group = %self.group, topic = %record.topic,
                    partition = record.partition, offset = record.offset, %reason,
                    "record left to the partition's next owner");
            }
            HandlerOutcome::Done | HandlerOutcome::Retry(_) => self
                .metrics
                .consumed
                .with_label_values(&[self.group.as_str(), record.topic.as_str()])
                .inc(),
        }
    }

    /// Commits `position` if its partition is still held under the assignment it was computed
    /// in: a revoked partition's position is the next owner's to commit, and one given back to
    /// this member is read again from its committed offset, so an older position must not
    /// move it.
    fn commit_if_held(
        &self,
        gate: &PartitionGate,
        position: &Position,
        mode: CommitMode,
    ) -> Result<(), BusError> {
        let held = gate.generation(&position.topic, position.partition);
        tracing::debug!(group = %self.group, topic = %position.topic,
            partition = position.partition, offset = position.offset,
            generation = position.generation, held = ?held, "position to commit");
        if held != Some(position.generation) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &position.topic,
            position.partition,
            Offset::Offset(position.offset),
        )
        .map_err(BusError::Consume)?;
        self.inner.commit(&tpl, mode).map_err(BusError::Consume)
    }

    fn commit(&self, record: &Record) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &record.topic,
            record.partition,
            Offset::Offset(record.offset + 1),
        )
        .map_err(BusError::Consume)?;
        self.inner
            .commit(&tpl, CommitMode::Async)
            .map_err(BusError::Consume)
    }
}

/// Copies a skipped record to the dead-letter topic, trying again (with backoff) until Kafka
/// takes it; `false` if `stop` resolved first (the record then stays uncommitted and is read
/// again). Without a dead-letter topic there is nothing to do.
async fn dead_letter(
    dead_letters: Option<&DeadLetters>,
    group: &str,
    record: &Record,
    reason: &str,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    let Some(dead_letters) = dead_letters else {
        return true;
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match dead_letters.send(record, group, reason).await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(group, topic = %record.topic, partition = record.partition,
                offset = record.offset, error = %e,
                "cannot write the dead letter yet: the record stays uncommitted"),
        }
        tokio::select! {
            biased;
            () = &mut *stop => return false,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Runs `handler` on `record` until it returns `Done`, `Skip` or `Abandon`, backing off between
/// retries; `Abandon` without running it once its partition is no longer held under the
/// assignment it was fetched in. `None` if asked to stop while retrying.
async fn retry_until_final<H, Fut>(
    handler: &H,
    record: &Record,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    still_held: impl Fn() -> bool,
) -> Option<HandlerOutcome>
where
    H: Fn(Record) -> Fut,
    Fut: Future<Output = HandlerOutcome>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        if !still_held() {
            return Some(HandlerOutcome::Abandon(
                "partition reassigned before the record was done".into(),
            ));
        }
        match handler(record.clone()).await {
            HandlerOutcome::Retry(reason) => {
                tracing::warn!(topic = %record.topic, partition = record.partition,
                    offset = record.offset, %reason,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "record processing failed, will retry");
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            done => return Some(done),
        }
    }
}
