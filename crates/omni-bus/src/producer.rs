//! The acknowledged producer: `send` returns only once the broker has the record (`acks=all`,
//! idempotent), and fails within the configured publish deadline otherwise.

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::Duration;

use crate::config::BusConfig;
use crate::error::BusError;
use crate::metrics::{BusMetrics, MetricsContext};

/// A cheaply clonable handle to one idempotent librdkafka producer shared by the whole process.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<MetricsContext>,
    config: Arc<BusConfig>,
    metrics: Arc<BusMetrics>,
}

impl Producer {
    /// Creates the producer. Connects lazily: a broker that is down now only delays sends.
    pub fn new(config: &BusConfig, metrics: Arc<BusMetrics>) -> Result<Self, BusError> {
        let context = MetricsContext {
            client: "producer".into(),
            group: None,
            metrics: metrics.clone(),
        };
        let inner = FutureProducer::from_config_and_context(&config.producer_config(), context)
            .map_err(BusError::Client)?;
        Ok(Self {
            inner,
            config: Arc::new(config.clone()),
            metrics,
        })
    }

    /// The Kafka settings this producer was built from (topic names, deadlines).
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Publishes `payload` under `key` and waits for the broker's acknowledgement. `Ok` means the
    /// record is durably in the topic; an error means it is not, and never will be (librdkafka's
    /// message timeout equals the publish deadline).
    pub async fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<(), BusError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        // Waiting for queue space counts against the same deadline as the acknowledgement.
        match self
            .inner
            .send(record, Timeout::After(self.config.publish_timeout()))
            .await
        {
            Ok(_) => {
                self.metrics.produced.with_label_values(&[topic]).inc();
                Ok(())
            }
            Err((source, _message)) => {
                let code = source
                    .rdkafka_error_code()
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| "other".into());
                self.metrics
                    .produce_errors
                    .with_label_values(&[topic, code.as_str()])
                    .inc();
                Err(BusError::Publish {
                    topic: topic.to_owned(),
                    source,
                })
            }
        }
    }

    /// Waits until every queued record is acknowledged (or `timeout` passes), for shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| BusError::NotReady(format!("flush task failed: {e}")))?
            .map_err(|source| BusError::Publish {
                topic: "*".into(),
                source,
            })
    }

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Readiness: the cluster answers a metadata request within `timeout` and every configured
    /// topic exists. The error lists what is missing.
    pub async fn check_ready(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.inner.clone();
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
