//! The acknowledged producer: `send` returns only once the broker has the record (`acks=all`,
//! idempotent), and fails within the configured publish deadline otherwise.
//!
//! After a record times out, an idempotent librdkafka producer must bump its epoch before it
//! produces again. Some brokers handle that badly (tansu 0.6 with SQLite storage fails every
//! later produce), and a real cluster loses nothing by the alternative: we replace the
//! librdkafka producer with a fresh one (a new producer id). Records of the old one have all
//! failed or been acknowledged by then, so the guarantee "Ok means durable" is unchanged.

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::BusConfig;
use crate::error::BusError;
use crate::metrics::{BusMetrics, MetricsContext};

/// A cheaply clonable handle to one idempotent librdkafka producer shared by the whole process.
#[derive(Clone)]
pub struct Producer {
    /// The current librdkafka producer and its generation (bumped on each replacement).
    current: Arc<RwLock<(u64, FutureProducer<MetricsContext>)>>,
    config: Arc<BusConfig>,
    metrics: Arc<BusMetrics>,
}

impl Producer {
    /// Creates the producer. Connects lazily: a broker that is down now only delays sends.
    pub fn new(config: &BusConfig, metrics: Arc<BusMetrics>) -> Result<Self, BusError> {
        let inner = Self::build(config, &metrics)?;
        Ok(Self {
            current: Arc::new(RwLock::new((0, inner))),
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

    /// The librdkafka producer to use now, with its generation.
    fn current(&self) -> (u64, FutureProducer<MetricsContext>) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Replaces generation `failed` with a fresh producer (once, however many sends saw it fail).
    fn replace(&self, failed: u64) {
        let fresh = match Self::build(&self.config, &self.metrics) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot recreate kafka producer");
                return;
            }
        };
        let old = {
            let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
            if guard.0 != failed {
                return;
            }
            let generation = guard.0 + 1;
            std::mem::replace(&mut *guard, (generation, fresh))
        };
        tracing::info!(
            generation = old.0 + 1,
            "replaced kafka producer after a timed-out record"
        );
        // Destroying a librdkafka handle blocks until its threads stop: not on the runtime.
        tokio::task::spawn_blocking(move || drop(old));
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
        let (generation, producer) = self.current();
        // Waiting for queue space counts against the same deadline as the acknowledgement.
        match producer
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
                if source.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
                    self.replace(generation);
                }
                Err(BusError::Publish {
                    topic: topic.to_owned(),
                    source,
                })
            }
        }
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

    /// Records not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.current().1.in_flight_count()
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
