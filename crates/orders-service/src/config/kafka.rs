//! The Kafka flags of a process: brokers, topics, groups, membership.

use super::{defaults, parsed};
use cqrs_kafka::{KafkaConfig, KafkaProperties, KafkaProperty};
use std::path::PathBuf;

/// Kafka settings of the service: present when `--kafka-brokers` (or
/// `KAFKA_BROKERS`) is given; the others are refused without it.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaOptions {
    /// Kafka bootstrap servers; the embedded log when absent.
    // Not `required`: clap would then ask for it even when no Kafka flag is
    // given; the group is absent then, and any other Kafka flag without it
    // is refused when the group is read.
    #[arg(
        id = "kafka-brokers",
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        value_name = "HOST:PORT,...",
        required = false
    )]
    pub brokers: String,
    /// Events topic.
    #[arg(long = "kafka-topic", env = "ORDERS_KAFKA_TOPIC", default_value = defaults::KAFKA_TOPIC)]
    pub topic: String,
    /// The inventory's events topic [default: inventory.events beside
    /// orders.events, X.inventory.events beside X.events]; its projectors'
    /// group is TOPIC.projectors.
    #[arg(long = "kafka-inventory-topic", env = "ORDERS_KAFKA_INVENTORY_TOPIC")]
    pub inventory_topic: Option<String>,
    /// Partitions of the events topic when it is created.
    #[arg(
        long = "kafka-partitions",
        env = "ORDERS_KAFKA_PARTITIONS",
        default_value_t = 6
    )]
    pub partitions: i32,
    /// Replication factor when topics are created.
    #[arg(
        long = "kafka-replication",
        env = "ORDERS_KAFKA_REPLICATION",
        default_value_t = 1
    )]
    pub replication: i32,
    /// Consumer group of the orders' projectors, and the prefix of the
    /// process's other groups: the saga's is GROUP.order-saga, the
    /// inventory projectors' GROUP.inventory [default: TOPIC.projectors,
    /// TOPIC.order-saga, INVENTORY_TOPIC.projectors].
    #[arg(long = "kafka-group", env = "ORDERS_KAFKA_GROUP")]
    pub group: Option<String>,
    /// This process's stable identity in its consumer groups (Kafka static
    /// membership, `group.instance.id`): restarted with the same id, a
    /// projector or saga takes its partitions back at once instead of after
    /// the session timeout. Unique per process of a group. Derived when
    /// absent: HOST-HASH-SLOT, the hash over the roles, the data directory
    /// and the groups, the slot the lowest one no live process holds (a
    /// lock on the read DB). `off`: a dynamic member, which hands its
    /// partitions over at once when it stops cleanly [default: derived].
    #[arg(long = "kafka-instance-id", env = "ORDERS_KAFKA_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// A librdkafka property for every Kafka client, KEY=VALUE (repeatable;
    /// comma-separated in the environment): TLS and SASL, e.g.
    /// security.protocol=SASL_SSL, sasl.mechanisms=SCRAM-SHA-512,
    /// sasl.username=..., sasl.password=..., ssl.ca.location=...
    #[arg(long = "kafka-property", env = "ORDERS_KAFKA_PROPERTIES", value_delimiter = ',',
          hide_env_values = true, value_parser = KafkaProperty::parse, value_name = "KEY=VALUE")]
    pub properties: Vec<KafkaProperty>,
    /// A file of librdkafka properties, KEY=VALUE a line (`#` starts a
    /// comment): where a SASL password or a key's passphrase belongs, out
    /// of `ps`.
    #[arg(
        long = "kafka-properties-file",
        env = "ORDERS_KAFKA_PROPERTIES_FILE",
        value_name = "PATH"
    )]
    pub properties_file: Option<PathBuf>,
    /// How long a dead projector holds its partitions, in milliseconds
    /// (Kafka's own default).
    #[arg(long = "kafka-session-timeout-ms", env = "ORDERS_KAFKA_SESSION_TIMEOUT_MS",
          default_value_t = defaults::KAFKA_SESSION_TIMEOUT_MS)]
    pub session_timeout_ms: u32,
}

impl KafkaOptions {
    /// The defaults for a broker list.
    pub fn new(brokers: impl Into<String>) -> Self {
        let flag = format!("--kafka-brokers={}", brokers.into());
        parsed::<KafkaOptions>(&[&flag])
            .unwrap_or_else(|e| panic!("the Kafka flags' own defaults do not parse: {e}"))
    }
    /// The projectors' consumer group.
    pub fn group_id(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| defaults::kafka_group(&self.topic))
    }
    /// How this process joins its consumer groups (`--kafka-instance-id`).
    pub fn membership(&self) -> Membership {
        match self.instance_id.as_deref().map(str::trim) {
            None | Some("") => Membership::Derived,
            Some("off") => Membership::Dynamic,
            Some(id) => Membership::Static(id.to_owned()),
        }
    }
    /// The order saga's consumer group (`--kafka-group` prefixes it).
    pub fn saga_group_id(&self) -> String {
        match &self.group {
            Some(g) => format!("{g}.order-saga"),
            None => defaults::kafka_saga_group(&self.topic),
        }
    }
    /// The same cluster, for the inventory's topic and its own group.
    pub fn inventory(&self) -> KafkaOptions {
        let topic = self
            .inventory_topic
            .clone()
            .unwrap_or_else(|| defaults::kafka_inventory_topic(&self.topic));
        KafkaOptions {
            // `--kafka-group` prefixes the inventory's group too.
            group: self.group.as_ref().map(|g| format!("{g}.inventory")),
            topic,
            inventory_topic: None,
            ..self.clone()
        }
    }
    /// The inventory's topic as the order side's copy of its read model
    /// reads it (the inventory elsewhere): a group of its own,
    /// `ORDERS_GROUP.inventory-copy`, so that it never shares the
    /// inventory service's partitions.
    pub fn inventory_copy(&self) -> KafkaOptions {
        KafkaOptions {
            group: Some(format!("{}.inventory-copy", self.group_id())),
            ..self.inventory()
        }
    }
    /// The settings every Kafka client of this process is made from.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            replication: self.replication,
            properties: KafkaProperties(self.properties.clone()),
        }
    }
}

/// How a process joins its consumer groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Static, with the id given.
    Static(String),
    /// Static, with an id derived from the command line and a free slot.
    Derived,
    /// Dynamic: a new member at every start (`--kafka-instance-id off`).
    Dynamic,
}
