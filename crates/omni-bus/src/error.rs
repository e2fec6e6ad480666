//! Errors of the Kafka layer.

use rdkafka::error::KafkaError;

/// What went wrong talking to Kafka. Each variant maps to a bounded `error_type` label.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A config value is invalid; names the key.
    #[error("invalid kafka config key {key}: {reason}")]
    Config {
        /// The offending key, as written in the config file.
        key: String,
        /// Why it is invalid.
        reason: String,
    },
    /// librdkafka refused to create a client.
    #[error("cannot create kafka client")]
    Client(#[source] KafkaError),
    /// The broker did not acknowledge a record in time, or refused it.
    #[error("kafka did not acknowledge the record on topic {topic}")]
    Publish {
        /// The topic written to.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The cluster is not reachable or a topic is missing.
    #[error("kafka not ready: {0}")]
    NotReady(String),
    /// Creating a topic failed.
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// A consumer operation failed.
    #[error("kafka consumer error")]
    Consume(#[source] KafkaError),
}

impl BusError {
    /// A bounded label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            BusError::Config { .. } => "config",
            BusError::Client(_) => "client",
            BusError::Publish { .. } => "publish",
            BusError::NotReady(_) => "not_ready",
            BusError::CreateTopic { .. } => "create_topic",
            BusError::Consume(_) => "consume",
        }
    }
}
