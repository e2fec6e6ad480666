//! The durable progress of outbound replies, so a reply is never sent twice by a replica that
//! takes over an outbound partition (after a crash, a rebalance or a redelivery).
//!
//! One compacted record per reply on `omni.outbound-progress.v1`, keyed by the outbound event
//! id and written to the same partition number as the outbound record (so the next owner of
//! outbound partition `p` reads only progress partition `p`, once, when it gets `p`):
//! - before each provider call: `at_provider: true` for the next part;
//! - after the provider accepted it: `parts_sent` + 1 with its id, `at_provider: false`;
//! - after the reply's fate is on the delivery topic: `finished: true`.
//!
//! Every write is acknowledged by Kafka (`acks=all`) before the next provider call. The next
//! owner skips a finished reply, resumes after the parts sent, and treats a part found
//! `at_provider` as of unknown fate: resent only where the provider deduplicates (eSMS by
//! `RequestId`), else reported `outcome_unknown`. Memory holds the progress of the partitions
//! this replica owns, and only of replies younger than `outbound.max_age_secs` (older ones
//! are never sent again anyway: they fail as `expired`); they are tombstoned when found.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sink::{PublishFuture, SinkError};

/// How many replies a partition's memory takes between two sweeps of expired ones.
const SWEEP_EVERY: usize = 1024;

/// What is known of one reply's sending, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyProgress {
    /// Parts the provider accepted, in order.
    pub parts_sent: usize,
    /// The provider's ids of those parts.
    #[serde(default)]
    pub provider_message_ids: Vec<String>,
    /// Part number `parts_sent` was handed to the provider and its answer is not recorded.
    #[serde(default)]
    pub at_provider: bool,
    /// The reply's fate is on the delivery topic: nothing more to do.
    #[serde(default)]
    pub finished: bool,
    /// The reply's event time (ms since the Unix epoch), for expiry.
    pub time: i64,
}

/// A boxed load future: the latest value per key of one partition.
pub type LoadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BTreeMap<String, Vec<u8>>, SinkError>> + Send + 'a>>;

/// A keyed, partitioned, durable store: Kafka in the daemon, memory in unit tests.
pub trait PartitionedStore: Send + Sync + 'static {
    /// Writes `value` (`None`: a tombstone) under `key` to `partition` of `topic`; resolves
    /// once durable.
    fn put<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    ) -> PublishFuture<'a>;

    /// Reads `partition` of `topic` from its start to its end: the latest value per key.
    fn load<'a>(&'a self, topic: &'a str, partition: i32) -> LoadFuture<'a>;
}

/// Kafka as a [`PartitionedStore`]: the daemon's producer for writes, a group-less reader for
/// loads.
pub struct KafkaStore {
    producer: omni_bus::Producer,
}

impl KafkaStore {
    /// A store writing with `producer` and reading from the cluster it is configured for.
    pub fn new(producer: omni_bus::Producer) -> Self {
        Self { producer }
    }
}

fn sink_error(topic: &str, e: &dyn std::error::Error) -> SinkError {
    SinkError {
        topic: topic.to_owned(),
        reason: e
            .source()
            .map(ToString::to_string)
            .unwrap_or_else(|| e.to_string()),
    }
}

impl PartitionedStore for KafkaStore {
    fn put<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    ) -> PublishFuture<'a> {
        Box::pin(async move {
            let record = omni_bus::OutRecord {
                topic,
                partition: Some(partition),
                key,
                payload: value,
                headers: &[],
            };
            self.producer
                .send_batch(&[record])
                .await
                .map_err(|e| sink_error(topic, &e))
        })
    }

    fn load<'a>(&'a self, topic: &'a str, partition: i32) -> LoadFuture<'a> {
        Box::pin(async move {
            let bus = self.producer.config().clone();
            let t = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                omni_bus::table::read_partition(&bus, &t, partition)
            })
            .await
            .map_err(|e| SinkError {
                topic: topic.to_owned(),
                reason: format!("read task failed: {e}"),
            })?
            .map_err(|e| sink_error(topic, &e))
        })
    }
}

/// Progress of one partition's replies, as loaded for one assignment of it.
#[derive(Debug, Default)]
struct Loaded {
    generation: u64,
    replies: HashMap<String, ReplyProgress>,
}

/// The progress of the replies of the outbound partitions this replica owns, read from and
/// written to the progress topic. See the module docs.
pub struct ProgressLog {
    store: Arc<dyn PartitionedStore>,
    topic: String,
    max_age: Duration,
    partitions: Mutex<HashMap<i32, Loaded>>,
    /// One load at a time, so handlers starting together on a new partition read it once.
    loading: tokio::sync::Mutex<()>,
}

impl ProgressLog {
    /// Progress kept in `topic` of `store`; replies older than `max_age` are forgotten.
    pub fn new(
        store: Arc<dyn PartitionedStore>,
        topic: impl Into<String>,
        max_age: Duration,
    ) -> Self {
        Self {
            store,
            topic: topic.into(),
            max_age,
            partitions: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Loaded>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_loaded(&self, partition: i32, generation: u64) -> bool {
        self.lock()
            .get(&partition)
            .is_some_and(|l| l.generation == generation)
    }

    /// The stored progress of reply `id` on `partition`, reading the partition first if this
    /// assignment (`generation`) has not read it yet. `held` says which partitions are still
    /// owned: the others are forgotten (bounded memory).
    pub async fn get(
        &self,
        partition: i32,
        generation: u64,
        id: &str,
        now_ms: i64,
        held: impl Fn(i32) -> bool,
    ) -> Result<Option<ReplyProgress>, SinkError> {
        if !self.is_loaded(partition, generation) {
            let _one = self.loading.lock().await;
            if !self.is_loaded(partition, generation) {
                let table = self.store.load(&self.topic, partition).await?;
                let (replies, expired) = decode(table, now_ms, self.max_age);
                for key in &expired {
                    // Best effort: a tombstone that fails is written again next time.
                    let _ = self
                        .store
                        .put(&self.topic, partition, key.as_bytes(), None)
                        .await;
                }
                tracing::info!(partition, replies = replies.len(), expired = expired.len(),
                    topic = %self.topic, "outbound progress restored");
                let mut partitions = self.lock();
                partitions.retain(|p, _| held(*p));
                partitions.insert(
                    partition,
                    Loaded {
                        generation,
                        replies,
                    },
                );
            }
        }
        Ok(self
            .lock()
            .get(&partition)
            .and_then(|l| l.replies.get(id))
            .cloned())
    }

    /// Writes the progress of reply `id` and, once Kafka has it, keeps it in memory.
    pub async fn put(
        &self,
        partition: i32,
        id: &str,
        progress: &ReplyProgress,
    ) -> Result<(), SinkError> {
        let value = serde_json::to_vec(progress).map_err(|e| SinkError {
            topic: self.topic.clone(),
            reason: e.to_string(),
        })?;
        self.store
            .put(&self.topic, partition, id.as_bytes(), Some(&value))
            .await?;
        let max_age_ms = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut expired = Vec::new();
        if let Some(loaded) = self.lock().get_mut(&partition) {
            loaded.replies.insert(id.to_owned(), progress.clone());
            // Now and then, forget replies past the maximum age (bounded memory).
            if loaded.replies.len() % SWEEP_EVERY == 0 {
                let newest = progress.time;
                loaded.replies.retain(|key, p| {
                    let keep = newest.saturating_sub(p.time) <= max_age_ms;
                    if !keep {
                        expired.push(key.clone());
                    }
                    keep
                });
            }
        }
        for key in expired {
            let _ = self
                .store
                .put(&self.topic, partition, key.as_bytes(), None)
                .await;
        }
        Ok(())
    }
}

/// The replies of a loaded partition younger than `max_age`, and the keys of older ones.
fn decode(
    table: BTreeMap<String, Vec<u8>>,
    now_ms: i64,
    max_age: Duration,
) -> (HashMap<String, ReplyProgress>, Vec<String>) {
    let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    let mut replies = HashMap::new();
    let mut expired = Vec::new();
    for (key, value) in table {
        match serde_json::from_slice::<ReplyProgress>(&value) {
            Ok(p) if now_ms.saturating_sub(p.time) <= max_age_ms => {
                replies.insert(key, p);
            }
            Ok(_) => expired.push(key),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "ignoring unreadable outbound progress");
            }
        }
    }
    (replies, expired)
}

/// One write to a [`MemoryStore`]: (topic, partition, key, value; `None` a tombstone).
pub type Written = (String, i32, Vec<u8>, Option<Vec<u8>>);

/// An in-memory [`PartitionedStore`] for unit tests: a log per (topic, partition).
#[derive(Default)]
pub struct MemoryStore {
    log: Mutex<Vec<Written>>,
}

impl MemoryStore {
    /// Every write so far: (topic, partition, key, value).
    pub fn writes(&self) -> Vec<Written> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl PartitionedStore for MemoryStore {
    fn put<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        key: &'a [u8],
        value: Option<&'a [u8]>,
    ) -> PublishFuture<'a> {
        Box::pin(async move {
            self.log.lock().unwrap_or_else(|p| p.into_inner()).push((
                topic.to_owned(),
                partition,
                key.to_vec(),
                value.map(<[u8]>::to_vec),
            ));
            Ok(())
        })
    }

    fn load<'a>(&'a self, topic: &'a str, partition: i32) -> LoadFuture<'a> {
        Box::pin(async move {
            let mut table = BTreeMap::new();
            for (t, p, k, v) in self.writes() {
                if t != topic || p != partition {
                    continue;
                }
                let k = String::from_utf8_lossy(&k).into_owned();
                match v {
                    Some(v) => table.insert(k, v),
                    None => table.remove(&k),
                };
            }
            Ok(table)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    #[tokio::test]
    async fn a_new_owner_reads_what_the_old_one_wrote_and_forgets_expired_replies() {
        let store = Arc::new(MemoryStore::default());
        let old = ProgressLog::new(store.clone(), "progress", Duration::from_secs(86_400));
        let now = 100 * HOUR_MS;
        assert_eq!(old.get(2, 1, "r1", now, |_| true).await.unwrap(), None);
        let sent = ReplyProgress {
            parts_sent: 2,
            provider_message_ids: vec!["m1".into(), "m2".into()],
            at_provider: true,
            finished: false,
            time: now,
        };
        old.put(2, "r1", &sent).await.unwrap();
        let stale = ReplyProgress {
            finished: true,
            time: now - 25 * HOUR_MS,
            ..ReplyProgress::default()
        };
        old.put(2, "r0", &stale).await.unwrap();
        assert_eq!(
            old.get(2, 1, "r1", now, |_| true).await.unwrap(),
            Some(sent.clone())
        );

        // Another replica, or this one after the partition came back (a new generation).
        let new = ProgressLog::new(store.clone(), "progress", Duration::from_secs(86_400));
        assert_eq!(
            new.get(2, 7, "r1", now, |_| true).await.unwrap(),
            Some(sent)
        );
        assert_eq!(new.get(2, 7, "r0", now, |_| true).await.unwrap(), None);
        let tombstoned = store
            .writes()
            .iter()
            .any(|(_, p, k, v)| *p == 2 && k == b"r0" && v.is_none());
        assert!(tombstoned, "expired progress is deleted from the topic");
        // Other partitions are separate.
        assert_eq!(new.get(3, 8, "r1", now, |_| true).await.unwrap(), None);
    }

    #[tokio::test]
    async fn partitions_no_longer_held_are_dropped_from_memory() {
        let store = Arc::new(MemoryStore::default());
        let log = ProgressLog::new(store, "progress", Duration::from_secs(60));
        log.get(0, 1, "a", 0, |_| true).await.unwrap();
        log.get(1, 2, "a", 0, |p| p == 1).await.unwrap();
        assert_eq!(log.lock().keys().copied().collect::<Vec<_>>(), vec![1]);
    }
}
