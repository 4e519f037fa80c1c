//! Kafka adapters of the CQRS pattern: the relay that publishes the outbox,
//! the projector's Kafka source (consumer group, offsets stored in the read
//! DB, dead-letter topic), and topic administration.

pub mod admin;
pub mod record;
pub mod relay;
pub mod source;

pub use admin::ensure_topics;
pub use relay::{Relay, RelayConfig};
pub use source::{KafkaSource, SourceConfig};

/// Where the broker and the topics are.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Partitions when the topic is created.
    pub partitions: i32,
    /// Replication factor when the topic is created.
    pub replication: i32,
}

impl KafkaConfig {
    /// A client config for these brokers, with the settings every client of
    /// ours shares: reconnect quickly (at most 1 s apart instead of
    /// librdkafka's 10 s) once a broker or the link to it is back, and send
    /// small requests at once (librdkafka leaves Nagle's algorithm on, which
    /// held a produce request behind the previous one's TCP ACK; Java
    /// clients turn it off too).
    pub fn client(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        c
    }

    /// The dead-letter topic beside the events topic.
    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }
}

/// Why a Kafka adapter failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The client or broker refused.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The outbox or read DB failed.
    #[error(transparent)]
    Store(#[from] cqrs_sql::StoreError),
    /// A database call failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A blocking task (flushing the producer) panicked or was cancelled.
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}
