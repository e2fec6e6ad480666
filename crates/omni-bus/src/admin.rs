//! Topic creation at start-up.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::BusConfig;
use crate::error::BusError;
use crate::metrics::{BusMetrics, MetricsContext};

/// Creates every configured topic that does not exist yet (the router-state and e-mail
/// checkpoint topics with `cleanup.policy=compact`). Topics that exist are left as they are.
pub async fn ensure_topics(
    config: &BusConfig,
    metrics: Arc<BusMetrics>,
    timeout: Duration,
) -> Result<(), BusError> {
    let context = MetricsContext {
        client: "admin".into(),
        group: None,
        metrics,
    };
    let admin: AdminClient<MetricsContext> =
        AdminClient::from_config_and_context(&config.admin_config(), context)
            .map_err(BusError::Client)?;
    let topics = config.topics.all();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, compacted)| {
            let t = NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            );
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|e| BusError::NotReady(format!("create topics: {e}")))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                return Err(BusError::CreateTopic {
                    topic: name,
                    reason: format!("{code}"),
                })
            }
        }
    }
    Ok(())
}
