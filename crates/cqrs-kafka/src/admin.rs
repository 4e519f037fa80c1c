//! Creates the events topic and its dead-letter topic if missing.

use crate::{KafkaConfig, KafkaError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How long a topic just created may take to show its partitions.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// What the cluster said about the events topic once it existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicsReady {
    /// Brokers in the cluster's metadata.
    pub brokers: usize,
    /// Partitions of the events topic as it is (not as asked for: a topic
    /// that existed keeps its own count).
    pub partitions: i32,
}

/// Creates `topic` and `topic.dlq` unless they exist, then reads the
/// events topic's metadata.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<TopicsReady, KafkaError> {
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
    let (client, topic) = (config.client(), config.topic.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create()?;
        // A topic just created may not be in the metadata yet (no
        // partitions): ask again for a while rather than report none.
        let deadline = std::time::Instant::now() + METADATA_WAIT;
        loop {
            let meta = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let partitions = meta
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len() as i32);
            if partitions > 0 || std::time::Instant::now() >= deadline {
                return Ok(TopicsReady {
                    brokers: meta.brokers().len(),
                    partitions,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// The end (high watermark: the next offset) of each of `topic`'s
/// `partitions`, as positions keyed like a projector's checkpoints.
/// Blocking: call it off the runtime's workers.
pub fn ends<C: rdkafka::consumer::ConsumerContext>(
    client: &impl Consumer<C>,
    topic: &str,
    partitions: &[i32],
) -> Result<cqrs_sql::read::rebuild::Positions, cqrs_sql::read::SourceError> {
    let mut out = cqrs_sql::read::rebuild::Positions::new();
    for p in partitions {
        let (_, high) = client
            .fetch_watermarks(topic, *p, METADATA_WAIT)
            .map_err(|e| cqrs_sql::read::SourceError::broker("reading the topic's ends", e))?;
        out.insert(cqrs_sql::read::SourceKey::partition(topic, *p), high);
    }
    Ok(out)
}
