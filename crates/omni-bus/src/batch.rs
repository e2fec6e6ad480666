//! The router's consumer: a group member whose records are taken in batches, whose
//! rebalances are told to its owner through [`Rebalanced`] (the callbacks run inside `recv`,
//! on the loop's own task, so a revocation is known before the loop looks at another record),
//! which resumes each assigned partition exactly at its committed offset ([`crate::resume`]),
//! and which commits only the offsets its owner says were applied: on revocation,
//! synchronously, so the next owner starts right after them.
//!
//! Records come out as plain [`BatchRecord`]s and commits go in as [`Offsets`]: the owner
//! decides what a record means and which offsets may be committed, never sees librdkafka.

use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::BusConfig;
use crate::metrics::{BusMetrics, MetricsContext};
use crate::resume::{ResumeGuard, Resumed};

/// A librdkafka call failed; shown as librdkafka's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct ClientError(#[from] KafkaError);

/// Next offset to commit per (topic, partition): everything before it is applied. Written by
/// the owner after it applied records, committed by the revocation callback.
pub type Applied = BTreeMap<(String, i32), i64>;

/// What the owner of a [`BatchConsumer`] is told about rebalances. Called inside `recv`, on the
/// task that awaits it.
pub trait Rebalanced: Send + Sync + 'static {
    /// `partitions` are being revoked: nothing of them may be applied or written after this.
    /// Their applied offsets are committed synchronously right after it returns.
    fn revoking(&self, partitions: &BTreeSet<i32>);
    /// The synchronous commit of revoked partitions failed (their next owner replays).
    fn revocation_commit_failed(&self, error: &ClientError);
    /// `partitions` were assigned (their committed offsets read for [`BatchConsumer::resumes`]).
    fn assigned(&self, partitions: &[i32]);
    /// The group coordinator reported a failed rebalance.
    fn rebalance_failed(&self, error: &ClientError);
}

/// A record detached from the consumer, with everything a router step or a forward needs.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    /// Topic it came from.
    pub topic: String,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The record key (empty when it has none).
    pub key: Vec<u8>,
    /// The record value (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
    /// The record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record timestamp (ms since the epoch), if any.
    pub timestamp: Option<i64>,
}

/// Copies what the owner needs out of a consumed message.
fn detach(m: &rdkafka::message::BorrowedMessage<'_>) -> BatchRecord {
    BatchRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: crate::consumer::headers_of(m),
        timestamp: m.timestamp().to_millis(),
    }
}

/// Offsets to commit: the next offset to read per (topic, partition).
#[derive(Debug, Default)]
pub struct Offsets(TopicPartitionList);

impl Offsets {
    /// No offsets yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `offset` (the next one to read) for `topic`/`partition`.
    pub fn add(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), ClientError> {
        self.0
            .add_partition_offset(topic, partition, Offset::Offset(offset))?;
        Ok(())
    }

    /// How many partitions have an offset.
    pub fn count(&self) -> usize {
        self.0.count()
    }
}

/// How a commit waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Until the coordinator answered (revocations, shutdown).
    Sync,
    /// In the background (after each batch; a lost commit only means a replay).
    Async,
}

/// The consumer context: metrics; rebalances told to the owner; on revocation, a synchronous
/// commit of what was applied, so the next owner starts right after it.
struct BatchContext<L> {
    metrics: MetricsContext,
    listener: Arc<L>,
    /// Next offset to commit per (topic, partition): everything before it is applied.
    applied: Arc<Mutex<Applied>>,
    /// The committed offsets of new assignments, checked against their first records (a
    /// broker that skips the rest of a batch; see `crate::resume`).
    resume: Arc<ResumeGuard>,
}

impl<L: Rebalanced> ClientContext for BatchContext<L> {
    fn stats(&self, statistics: Statistics) {
        self.metrics.stats(statistics);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.error(error, reason);
    }
}

impl<L: Rebalanced> ConsumerContext for BatchContext<L> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        self.resume.revoked(tpl);
        let revoked: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        // Stop owning first: nothing of these partitions is applied or written after this.
        self.listener.revoking(&revoked);
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), offset) in applied.iter() {
            if revoked.contains(partition) {
                let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            }
        }
        applied.retain(|(_, p), _| !revoked.contains(p));
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                self.listener.revocation_commit_failed(&ClientError(e));
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.resume.assigned(consumer, tpl);
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.listener.assigned(&partitions);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => self.listener.rebalance_failed(&ClientError(e.clone())),
        }
    }
}

/// A member of a consumer group whose owner takes records in batches and commits what it
/// applied. See the module docs.
pub struct BatchConsumer<L: Rebalanced> {
    inner: StreamConsumer<BatchContext<L>>,
    /// The subscribed topics, in order: to subscribe again on a rejoin, and the topics a
    /// partition number is paused or resumed on.
    topics: Vec<String>,
}

impl<L: Rebalanced> BatchConsumer<L> {
    /// Joins `group` and subscribes to `topics` (co-partitioned: a partition number means the
    /// same partition of each). `applied` is what the revocation callback commits.
    pub fn new(
        config: &BusConfig,
        group: &str,
        topics: &[&str],
        metrics: Arc<BusMetrics>,
        listener: Arc<L>,
        applied: Arc<Mutex<Applied>>,
    ) -> Result<Self, ClientError> {
        let context = BatchContext {
            metrics: MetricsContext {
                client: group.to_owned(),
                group: Some(group.to_owned()),
                metrics,
            },
            listener,
            applied,
            resume: Arc::default(),
        };
        let inner: StreamConsumer<BatchContext<L>> =
            StreamConsumer::from_config_and_context(&config.consumer_config(group), context)?;
        inner.subscribe(topics)?;
        Ok(Self {
            inner,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        })
    }

    /// The next record (rebalance callbacks run while it waits).
    pub async fn recv(&self) -> Result<BatchRecord, ClientError> {
        let m = self.inner.recv().await?;
        Ok(detach(&m))
    }

    /// Adds to `batch` whatever else is already fetched, up to `max` records, without waiting:
    /// so one write to Kafka covers many inputs.
    pub async fn fetched(&self, batch: &mut Vec<BatchRecord>, max: usize) {
        while batch.len() < max {
            match tokio::time::timeout(Duration::ZERO, self.inner.recv()).await {
                Ok(Ok(m)) => batch.push(detach(&m)),
                _ => break,
            }
        }
    }

    /// Whether `rec` is to be processed: false for a record before its partition's committed
    /// offset, and for one past it that the broker reached by skipping records (the partition
    /// is then rewound; see [`crate::resume`]).
    pub fn resumes(&self, rec: &BatchRecord) -> bool {
        match self
            .inner
            .context()
            .resume
            .check(&rec.topic, rec.partition, rec.offset)
        {
            Resumed::Take => true,
            Resumed::Drop => false,
            Resumed::Rewind(to) => {
                if let Err(e) = self.inner.seek(
                    &rec.topic,
                    rec.partition,
                    Offset::Offset(to),
                    Duration::from_secs(5),
                ) {
                    tracing::warn!(partition = rec.partition, error = %e, "rewinding failed");
                }
                false
            }
        }
    }

    /// Leaves the group and joins it again: leaving revokes everything (the callbacks commit
    /// and forget it); joining again makes the coordinator run a rebalance with the live
    /// members.
    pub fn rejoin(&self) -> Result<(), ClientError> {
        self.inner.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.inner.subscribe(&topics)?;
        Ok(())
    }

    /// Stops fetching `partitions` (their number on every subscribed topic).
    pub fn pause(&self, partitions: &BTreeSet<i32>) -> Result<(), ClientError> {
        self.inner.pause(&self.partition_list(partitions))?;
        Ok(())
    }

    /// Fetches `partitions` again after [`BatchConsumer::pause`].
    pub fn resume(&self, partitions: &BTreeSet<i32>) -> Result<(), ClientError> {
        self.inner.resume(&self.partition_list(partitions))?;
        Ok(())
    }

    fn partition_list(&self, partitions: &BTreeSet<i32>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            for topic in &self.topics {
                tpl.add_partition(topic, *p);
            }
        }
        tpl
    }

    /// Commits `offsets`.
    pub fn commit(&self, offsets: &Offsets, mode: Commit) -> Result<(), ClientError> {
        let mode = match mode {
            Commit::Sync => CommitMode::Sync,
            Commit::Async => CommitMode::Async,
        };
        self.inner.commit(&offsets.0, mode)?;
        Ok(())
    }
}
