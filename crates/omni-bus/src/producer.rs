//! The acknowledged producer: `send` returns only once the broker has the record (`acks=all`,
//! idempotent), and fails within the configured publish deadline otherwise.
//!
//! An idempotent librdkafka producer bumps its producer epoch on its own whenever a record it
//! sent is given up: a record it timed out, or one purged while in flight. It then goes on
//! sending with the new epoch. Apache Kafka accepts that; tansu 0.6 with SQLite storage panics
//! in its storage task on a produce with an epoch it has not registered, after which it fails
//! every request (`tests/tansu/epoch_bump.py` reproduces it). So no record may enter a
//! librdkafka producer after it gave one up:
//! - the deadline is ours, not librdkafka's (`message.timeout.ms` is pinned to 0);
//! - a record past the deadline retires its librdkafka producer: a fresh one (a new producer
//!   id, which both brokers handle) takes its place, and the old one's records, queued or in
//!   flight, are purged, so their senders get an error now and nothing is sent behind their
//!   back later;
//! - a shutdown that purges what is left closes the producer first;
//! - records enter a producer only under the read lock and after checking it is still current
//!   and open, and retiring or closing takes the write lock before purging, so nothing enters
//!   a producer after its purge.
//!
//! "Ok means durable" and "an error means it is not stored and will not be" hold throughout.

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::BusConfig;
use crate::error::BusError;
use crate::metrics::{BusMetrics, MetricsContext};

/// The record header that names the value's media type (CloudEvents Kafka protocol binding).
pub const CONTENT_TYPE: &str = "content-type";
/// The media type of a structured-mode CloudEvent in JSON, the value of every record on the
/// event topics.
pub const STRUCTURED_CLOUDEVENT: &str = "application/cloudevents+json";

/// One record for [`Producer::send_batch`].
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Explicit partition (co-partitioned changelogs), or `None` to partition by key.
    pub partition: Option<i32>,
    /// Key.
    pub key: &'a [u8],
    /// Value, or `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// Record headers (the router's owner epoch on its state records).
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// A cheaply clonable handle to one idempotent librdkafka producer shared by the whole process.
#[derive(Clone)]
pub struct Producer {
    /// The librdkafka producer records go into now (see the module docs for the locking rule).
    current: Arc<RwLock<Slot>>,
    config: Arc<BusConfig>,
    metrics: Arc<BusMetrics>,
}

/// The librdkafka producer in use.
struct Slot {
    /// Bumped on each replacement, so concurrent failures replace it once.
    generation: u64,
    producer: FutureProducer<MetricsContext>,
    /// False once a shutdown purged it: it still answers metadata requests, takes no records.
    open: bool,
}

/// How long a record waits before trying again to enter a full librdkafka queue.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

impl Producer {
    /// Creates the producer. Connects lazily: a broker that is down now only delays sends.
    pub fn new(config: &BusConfig, metrics: Arc<BusMetrics>) -> Result<Self, BusError> {
        let producer = Self::build(config, &metrics)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Slot {
                generation: 0,
                producer,
                open: true,
            })),
            config: Arc::new(config.clone()),
            metrics,
        })
    }

    fn build(
        config: &BusConfig,
        metrics: &Arc<BusMetrics>,
    ) -> Result<FutureProducer<MetricsContext>, BusError> {
        let context = MetricsContext {
            client: "producer".into(),
            group: None,
            metrics: metrics.clone(),
        };
        FutureProducer::from_config_and_context(&config.producer_config(), context)
            .map_err(BusError::Client)
    }

    /// The librdkafka producer for metadata and counts, with its generation. Records never
    /// go through this: see [`Producer::enqueue`].
    fn current(&self) -> (u64, FutureProducer<MetricsContext>) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.generation, guard.producer.clone())
    }

    /// Puts `record` into the current producer's queue, waiting for room until `deadline`,
    /// and returns the producer's generation with the acknowledgement to wait for. The record
    /// enters under the read lock, so it cannot enter a producer already retired or closed
    /// (see the module docs).
    async fn enqueue<'a>(
        &self,
        topic: &str,
        mut record: FutureRecord<'a, [u8], [u8]>,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, DeliveryFuture), BusError> {
        loop {
            let (generation, attempt) = {
                let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
                if !guard.open {
                    return Err(BusError::NotReady(
                        "the kafka producer is closed for shutdown".into(),
                    ));
                }
                (guard.generation, guard.producer.send_result(record))
            };
            match attempt {
                Ok(delivery) => return Ok((generation, delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() + QUEUE_FULL_RETRY < deadline =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((source, _)) => return Err(self.failed(topic, source, generation)),
            }
        }
    }

    /// Replaces generation `failed` with a fresh producer (once, however many sends saw it
    /// fail) and purges what the old one still holds (see the module docs).
    fn replace(&self, failed: u64) {
        if self.current().0 != failed {
            return;
        }
        let fresh = match Self::build(&self.config, &self.metrics) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot recreate kafka producer");
                return;
            }
        };
        let old = {
            let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
            if guard.generation != failed || !guard.open {
                return;
            }
            guard.generation += 1;
            std::mem::replace(&mut guard.producer, fresh)
        };
        tracing::info!(
            generation = failed + 1,
            "replaced kafka producer after a timed-out record"
        );
        // Purging and destroying a librdkafka handle block until its threads answer: not on
        // the runtime. Purged records' senders get their error from the delivery reports.
        tokio::task::spawn_blocking(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            let _ = old.flush(Timeout::After(Duration::from_millis(100)));
            drop(old);
        });
    }

    /// The error of a record that missed the publish deadline: counted like librdkafka's own
    /// timeouts were, and its producer replaced.
    fn timed_out(&self, topic: &str, generation: u64) -> BusError {
        let source = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        self.failed(topic, source, generation)
    }

    /// Counts a record the broker did not take, replaces the producer after a timeout (see the
    /// module docs), and returns the error for the caller.
    fn failed(&self, topic: &str, source: KafkaError, generation: u64) -> BusError {
        let code = source
            .rdkafka_error_code()
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "other".into());
        self.metrics
            .produce_errors
            .with_label_values(&[topic, code.as_str()])
            .inc();
        if source.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
            self.replace(generation);
        }
        BusError::Publish {
            topic: topic.to_owned(),
            source,
        }
    }

    /// The Kafka settings this producer was built from (topic names, deadlines).
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Publishes `payload` under `key` and waits for the broker's acknowledgement. `Ok` means the
    /// record is durably in the topic; an error means it is not, and never will be (a record
    /// past the deadline is purged with its producer, see the module docs).
    pub async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<(), BusError> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(headers) = self.headers_for(topic, &[]) {
            record = record.headers(headers);
        }
        // Waiting for queue space counts against the same deadline as the acknowledgement.
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout();
        let (generation, delivery) = self.enqueue(topic, record, deadline).await?;
        self.acknowledged(topic, generation, delivery, deadline)
            .await
            .inspect(|()| self.metrics.produced.with_label_values(&[topic]).inc())
    }

    /// The headers of a record for `topic`: `given`, and on the event topics, whose values are
    /// structured-mode CloudEvents, `content-type: application/cloudevents+json` unless given
    /// (the CloudEvents Kafka binding: it is how SDKs tell structured from binary mode) and the
    /// `traceparent` of the running [`crate::trace::in_trace`] unless given.
    fn headers_for(&self, topic: &str, given: &[(&str, &[u8])]) -> Option<OwnedHeaders> {
        let t = &self.config.topics;
        let event_topic = [
            &t.inbound,
            &t.outbound,
            &t.delivery,
            &t.commands,
            &t.routing,
        ]
        .iter()
        .any(|event_topic| event_topic.as_str() == topic);
        let has = |header: &str| {
            given
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(header))
        };
        let structured = event_topic && !has(CONTENT_TYPE);
        let traceparent = if event_topic && !has(crate::trace::TRACEPARENT) {
            crate::trace::current()
        } else {
            None
        };
        if given.is_empty() && !structured && traceparent.is_none() {
            return None;
        }
        let mut headers = OwnedHeaders::new_with_capacity(given.len() + 2);
        for (name, value) in given {
            headers = headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        if structured {
            headers = headers.insert(Header {
                key: CONTENT_TYPE,
                value: Some(STRUCTURED_CLOUDEVENT),
            });
        }
        if let Some(traceparent) = &traceparent {
            headers = headers.insert(Header {
                key: crate::trace::TRACEPARENT,
                value: Some(traceparent.as_str()),
            });
        }
        Some(headers)
    }

    /// Waits for a queued record's acknowledgement until `deadline`.
    async fn acknowledged(
        &self,
        topic: &str,
        generation: u64,
        delivery: DeliveryFuture,
        deadline: tokio::time::Instant,
    ) -> Result<(), BusError> {
        match tokio::time::timeout_at(deadline, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((source, _)))) => Err(self.failed(topic, source, generation)),
            Ok(Err(_cancelled)) => Err(self.failed(topic, KafkaError::Canceled, generation)),
            Err(_elapsed) => Err(self.timed_out(topic, generation)),
        }
    }

    /// Publishes several records at once (each to an explicit partition or by key, `None`
    /// payload = a compaction tombstone) and returns once the broker acknowledged all of them,
    /// or with the first error. Records are enqueued together, so their acknowledgements
    /// overlap instead of adding up.
    pub async fn send_batch(&self, records: &[OutRecord<'_>]) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout();
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(r.topic).key(r.key);
            if let Some(payload) = r.payload {
                record = record.payload(payload);
            }
            if let Some(partition) = r.partition {
                record = record.partition(partition);
            }
            if let Some(headers) = self.headers_for(r.topic, r.headers) {
                record = record.headers(headers);
            }
            let (generation, delivery) = self.enqueue(r.topic, record, deadline).await?;
            pending.push((r.topic, generation, delivery));
        }
        let mut first_error = None;
        for (topic, generation, delivery) in pending {
            match self
                .acknowledged(topic, generation, delivery, deadline)
                .await
            {
                Ok(()) => self.metrics.produced.with_label_values(&[topic]).inc(),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until every queued record is acknowledged (or `timeout` passes), for shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let (_, producer) = self.current();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| BusError::NotReady(format!("flush task failed: {e}")))?
            .map_err(|source| BusError::Publish {
                topic: "*".into(),
                source,
            })
    }

    /// For the end of a shutdown: waits until every queued record is acknowledged or
    /// `timeout` passes, then closes the producer (later sends are refused, see the module
    /// docs), purges what is left, queued or in flight, so their senders get an error and
    /// nothing is sent behind their back, and returns how many records that was. Whoever
    /// produced them did not get an acknowledgement: an HTTP client got no 202, a consumed
    /// record's offset was not committed, so each is retried or redelivered.
    pub async fn flush_or_purge(&self, timeout: Duration) -> usize {
        let slot = self.current.clone();
        let left = tokio::task::spawn_blocking(move || {
            let (_, producer) = {
                let guard = slot.read().unwrap_or_else(|p| p.into_inner());
                (guard.generation, guard.producer.clone())
            };
            // The result only says whether records are left; the count says how many.
            let _ = producer.flush(Timeout::After(timeout));
            let producer = {
                let mut guard = slot.write().unwrap_or_else(|p| p.into_inner());
                guard.open = false;
                guard.producer.clone()
            };
            let left = producer.in_flight_count();
            if left > 0 {
                producer.purge(PurgeConfig::default().queue().inflight());
                // Serve the purged records' delivery reports, so their senders learn of it.
                let _ = producer.flush(Timeout::After(Duration::from_millis(100)));
            }
            left
        })
        .await;
        match left {
            Ok(left) => usize::try_from(left).unwrap_or(0),
            Err(_) => usize::try_from(self.in_flight()).unwrap_or(0),
        }
    }

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.current().1.in_flight_count()
    }

    /// The partition count of each of `topics` (an error names any that is missing).
    pub async fn partition_counts(
        &self,
        topics: &[String],
        timeout: Duration,
    ) -> Result<std::collections::BTreeMap<String, usize>, BusError> {
        let (_, producer) = self.current();
        let wanted = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map_err(|e| BusError::NotReady(format!("kafka unreachable: {e}")))?;
            let mut out = std::collections::BTreeMap::new();
            for w in &wanted {
                let t = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == w.as_str() && t.error().is_none())
                    .ok_or_else(|| BusError::NotReady(format!("missing topic {w}")))?;
                out.insert(w.clone(), t.partitions().len());
            }
            Ok(out)
        })
        .await
        .map_err(|e| BusError::NotReady(format!("metadata task failed: {e}")))?
    }

    /// Readiness: the cluster answers a metadata request within `timeout` and every configured
    /// topic exists. The error lists what is missing.
    pub async fn check_ready(&self, timeout: Duration) -> Result<(), BusError> {
        let (_, producer) = self.current();
        let wanted: Vec<String> = self
            .config
            .topics
            .all()
            .iter()
            .map(|(t, _)| (*t).to_owned())
            .collect();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map_err(|e| BusError::NotReady(format!("kafka unreachable: {e}")))?;
            let missing: Vec<&str> = wanted
                .iter()
                .filter(|w| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == w.as_str() && t.error().is_none())
                })
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(BusError::NotReady(format!(
                    "missing topics: {}",
                    missing.join(", ")
                )))
            }
        })
        .await
        .map_err(|e| BusError::NotReady(format!("readiness task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose broker is not there: records stay queued, never acknowledged.
    fn unreachable_producer() -> Producer {
        let mut config = BusConfig {
            bootstrap_servers: "127.0.0.1:9".into(),
            publish_timeout_ms: 30_000,
            ..BusConfig::default()
        };
        config
            .librdkafka
            .insert("reconnect_backoff_max_ms".into(), "100".into());
        let metrics = BusMetrics::register(&prometheus::Registry::new()).unwrap();
        Producer::new(&config, Arc::new(metrics)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_purge_fails_what_is_left_and_refuses_later_records() {
        let producer = unreachable_producer();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let record = FutureRecord::to("omni.test.v1")
            .key(&b"k"[..])
            .payload(&b"queued"[..]);
        let (generation, delivery) = producer
            .enqueue("omni.test.v1", record, deadline)
            .await
            .unwrap();

        let purged = producer.flush_or_purge(Duration::from_millis(50)).await;

        // librdkafka's count also holds callbacks it has not served yet (the broker is down).
        assert!(purged >= 1, "the queued record is counted: {purged}");
        let sent = producer
            .acknowledged("omni.test.v1", generation, delivery, deadline)
            .await;
        assert!(
            matches!(&sent, Err(BusError::Publish { .. })),
            "its sender learns it is not stored: {sent:?}"
        );
        let later = producer.send("omni.test.v1", b"k", b"after").await;
        assert!(
            matches!(&later, Err(BusError::NotReady(why)) if why.contains("closed")),
            "nothing enters a purged producer: {later:?}"
        );
    }
}
