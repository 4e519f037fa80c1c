//! Creates the events topic and its dead-letter topic if missing.

use crate::{KafkaConfig, KafkaError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Creates `topic` and `topic.dlq` unless they exist.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.client().create()?;
    let dlq = config.dlq_topic();
    let topics = [
        NewTopic::new(
            &config.topic,
            config.partitions,
            TopicReplication::Fixed(config.replication),
        ),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(config.replication)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Kafka(rdkafka::error::KafkaError::AdminOp(code)))
                    .inspect_err(|_| tracing::error!(%topic, "cannot create topic"))
            }
        }
    }
    Ok(())
}
