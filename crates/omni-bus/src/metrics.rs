//! Kafka client metrics, fed by librdkafka's statistics callback and by the producer and
//! consumer themselves. Registered once into the registry the daemon passes in.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;

/// Metric families of the Kafka layer. Labels are bounded: client role, topic, partition,
/// consumer group, librdkafka error code names.
#[derive(Clone)]
pub struct BusMetrics {
    /// Brokers librdkafka currently holds an UP connection to, per client.
    pub brokers_up: IntGaugeVec,
    /// Messages in the producer's queue awaiting acknowledgement.
    pub producer_queue: IntGaugeVec,
    /// Records acknowledged by the broker, per topic.
    pub produced: IntCounterVec,
    /// Records the broker did not acknowledge, per topic and error.
    pub produce_errors: IntCounterVec,
    /// Consumer lag per group, topic and partition (messages behind the high watermark).
    pub consumer_lag: IntGaugeVec,
    /// Records processed and committed, per group and topic.
    pub consumed: IntCounterVec,
    /// Records skipped as unprocessable, per group and topic.
    pub consume_skipped: IntCounterVec,
    /// Client-level errors librdkafka reported (all brokers down, auth failures…).
    pub client_errors: IntCounterVec,
    /// Times a consumer left and rejoined its group because a partition had no live owner.
    pub group_rejoins: IntCounterVec,
    /// Records a consumer could not use, copied to the dead-letter topic.
    pub dead_letters: IntCounterVec,
}

impl BusMetrics {
    /// Creates the families and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        Ok(Self {
            brokers_up: gauge(
                "omni_kafka_brokers_up",
                "Brokers the Kafka client is connected to (state UP).",
                &["client"],
            )?,
            producer_queue: gauge(
                "omni_kafka_producer_queue_messages",
                "Messages in the producer queue not yet acknowledged by the broker.",
                &["client"],
            )?,
            produced: counter(
                "omni_kafka_produced_total",
                "Records acknowledged by the broker.",
                &["topic"],
            )?,
            produce_errors: counter(
                "omni_kafka_produce_errors_total",
                "Records the broker did not acknowledge in time or refused.",
                &["topic", "error"],
            )?,
            consumer_lag: gauge(
                "omni_kafka_consumer_lag_messages",
                "Messages between a consumer group's position and the partition's high watermark.",
                &["group", "topic", "partition"],
            )?,
            consumed: counter(
                "omni_kafka_consumed_total",
                "Records processed and committed by a consumer group.",
                &["group", "topic"],
            )?,
            consume_skipped: counter(
                "omni_kafka_consume_skipped_total",
                "Records a consumer group skipped as unprocessable.",
                &["group", "topic"],
            )?,
            client_errors: counter(
                "omni_kafka_client_errors_total",
                "Client-level errors reported by librdkafka (brokers down, authentication).",
                &["client", "error"],
            )?,
            group_rejoins: counter(
                "omni_kafka_group_rejoins_total",
                "Times a consumer left and rejoined its group because a partition of its topic had no live owner (see omni_bus::liveness).",
                &["group"],
            )?,
            dead_letters: counter(
                "omni_kafka_dead_letters_total",
                "Records a consumer could not use (malformed, wrong type, missing field), copied with the reason to the dead-letter topic.",
                &["group", "topic"],
            )?,
        })
    }
}

/// The librdkafka client context of every omnirouter client: turns statistics into gauges and
/// client errors into counters and logs.
#[derive(Clone)]
pub struct MetricsContext {
    /// `producer`, `admin`, or the consumer group name.
    pub client: String,
    /// Whether this client consumes (and so reports lag).
    pub group: Option<String>,
    /// Where to record.
    pub metrics: Arc<BusMetrics>,
}

impl ClientContext for MetricsContext {
    fn stats(&self, stats: Statistics) {
        let up = stats
            .brokers
            .values()
            .filter(|b| b.state == "UP" && b.nodeid >= 0)
            .count();
        self.metrics
            .brokers_up
            .with_label_values(&[self.client.as_str()])
            .set(i64::try_from(up).unwrap_or(i64::MAX));
        if self.group.is_none() {
            self.metrics
                .producer_queue
                .with_label_values(&[self.client.as_str()])
                .set(i64::try_from(stats.msg_cnt).unwrap_or(i64::MAX));
        }
        if let Some(group) = &self.group {
            for (topic, t) in &stats.topics {
                for (partition, p) in &t.partitions {
                    if *partition < 0 || p.consumer_lag < 0 {
                        continue;
                    }
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[
                            group.as_str(),
                            topic.as_str(),
                            &partition.to_string(),
                        ])
                        .set(p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error
            .rdkafka_error_code()
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "other".into());
        self.metrics
            .client_errors
            .with_label_values(&[self.client.as_str(), code.as_str()])
            .inc();
        // librdkafka retries connections itself and repeats these while a broker is down: keep
        // them out of the warning stream (they are counted above); anything else is news.
        let transient = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        );
        if transient {
            tracing::debug!(client = %self.client, error = %error, reason, "kafka connection error");
        } else {
            tracing::warn!(client = %self.client, error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for MetricsContext {}
