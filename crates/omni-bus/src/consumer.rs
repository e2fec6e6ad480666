//! Consumer groups with commit-after-processing (at least once): an offset is committed only
//! after the handler finished with the record, so a crash replays, never skips.

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::BusConfig;
use crate::error::BusError;
use crate::metrics::{BusMetrics, MetricsContext};

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
}

/// What a handler did with a record, which decides whether its offset is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Processed: commit.
    Done,
    /// Can never be processed (malformed, unknown type): count, log and commit, so one bad
    /// record does not stop the partition.
    Skip(String),
    /// Failed for a reason that may pass (a provider or broker down): retry the same record
    /// with backoff; nothing after it is processed meanwhile, preserving order.
    Retry(String),
}

/// A member of a consumer group reading some topics.
pub struct Consumer {
    inner: StreamConsumer<MetricsContext>,
    group: String,
    metrics: Arc<BusMetrics>,
}

impl Consumer {
    /// Joins `group` and subscribes to `topics`.
    pub fn new(
        config: &BusConfig,
        group: &str,
        topics: &[&str],
        metrics: Arc<BusMetrics>,
    ) -> Result<Self, BusError> {
        let context = MetricsContext {
            client: group.to_owned(),
            group: Some(group.to_owned()),
            metrics: metrics.clone(),
        };
        let inner: StreamConsumer<MetricsContext> =
            StreamConsumer::from_config_and_context(&config.consumer_config(group), context)
                .map_err(BusError::Client)?;
        inner.subscribe(topics).map_err(BusError::Consume)?;
        Ok(Self {
            inner,
            group: group.to_owned(),
            metrics,
        })
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
                m = self.inner.recv() => m,
            };
            let record = match message {
                Ok(m) => Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                },
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut backoff = Duration::from_millis(100);
            loop {
                match handler(record.clone()).await {
                    HandlerOutcome::Done => {
                        self.metrics
                            .consumed
                            .with_label_values(&[self.group.as_str(), record.topic.as_str()])
                            .inc();
                        break;
                    }
                    HandlerOutcome::Skip(reason) => {
                        self.metrics
                            .consume_skipped
                            .with_label_values(&[self.group.as_str(), record.topic.as_str()])
                            .inc();
                        tracing::warn!(group = %self.group, topic = %record.topic,
                            partition = record.partition, offset = record.offset, %reason,
                            "skipping unprocessable record");
                        break;
                    }
                    HandlerOutcome::Retry(reason) => {
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
                    }
                }
            }
            self.commit(&record)?;
            processed_any = true;
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
