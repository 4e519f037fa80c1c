//! Kafka adapters of the CQRS pattern: the relay that publishes the outbox,
//! the projector's Kafka source (consumer group, offsets stored in the read
//! DB, dead-letter topic), and topic administration.

pub mod admin;
pub mod groups;
pub mod history;
pub mod membership;
pub mod ownership;
pub mod record;
pub mod relay;
pub mod source;

pub use admin::{ensure_topics, TopicsReady};
pub use history::TopicHistory;
pub use membership::MemberSlot;
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
    /// librdkafka properties every client gets on top of ours (TLS, SASL,
    /// timeouts: `security.protocol`, `sasl.password`, ...).
    pub properties: KafkaProperties,
}

/// One librdkafka property, `KEY=VALUE`. `Debug` shows the key and hides
/// the value of a credential (anything named like a password, secret or key).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    /// The librdkafka key, e.g. `sasl.username`.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl KafkaProperty {
    /// Whether `key` names a credential whose value must not be shown.
    pub fn is_secret(key: &str) -> bool {
        ["password", "secret", "key", "jaas", "token"]
            .iter()
            .any(|w| key.to_ascii_lowercase().contains(w))
    }

    /// Parses `key=value` (the value may contain `=`).
    pub fn parse(s: &str) -> Result<KafkaProperty, String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok(KafkaProperty {
                key: k.trim().to_owned(),
                value: v.to_owned(),
            }),
            // The text itself is not quoted: it may hold a credential.
            _ => Err("a Kafka property is key=value (this one has no key or no '=')".into()),
        }
    }
}

impl std::fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if Self::is_secret(&self.key) {
            write!(f, "{}=(redacted)", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

/// librdkafka properties passed through to every client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub Vec<KafkaProperty>);

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KafkaProperties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        KafkaProperties(
            pairs
                .into_iter()
                .map(|(k, v)| KafkaProperty {
                    key: k.into(),
                    value: v.into(),
                })
                .collect(),
        )
    }
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
        for p in &self.properties.0 {
            c.set(&p.key, &p.value);
        }
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
    /// The topic holds another store's records.
    #[error(transparent)]
    Ownership(#[from] ownership::OwnershipError),
    /// A blocking task (flushing the producer) panicked or was cancelled.
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}
