//! How an `orders` process runs: its databases, Kafka, roles and limits.

use cqrs_http::auth::JwtOptions;
use cqrs_kafka::{KafkaConfig, KafkaProperties};
use cqrs_sql::db::sqlite_url;
use std::path::PathBuf;
use std::time::Duration;

/// Every default of a process, in one place: the CLI's flags and the
/// constructors below both take them from here.
pub mod defaults {
    /// Connections per database pool.
    pub const POOL_SIZE: u32 = 16;
    /// Orders whose saga reactions of one batch run at once.
    pub const SAGA_CONCURRENCY: u16 = 32;
    /// SQLite's `synchronous` (survives process crashes).
    pub const SQLITE_SYNCHRONOUS: &str = "NORMAL";
    /// The events topic.
    pub const KAFKA_TOPIC: &str = "orders.events";
    /// The inventory's events topic beside the events topic `topic`:
    /// `inventory.events` beside `orders.events`, `X.inventory.events`
    /// beside `X.events`, else `<topic>.inventory`.
    pub fn kafka_inventory_topic(topic: &str) -> String {
        match topic.strip_suffix(".events") {
            Some("orders") => "inventory.events".to_owned(),
            Some(prefix) => format!("{prefix}.inventory.events"),
            None => format!("{topic}.inventory"),
        }
    }
    /// Partitions of the events topic when it is created.
    pub const KAFKA_PARTITIONS: i32 = 6;
    /// Replication factor of created topics.
    pub const KAFKA_REPLICATION: i32 = 1;
    /// The projectors' consumer group on `topic`: one per topic, so that
    /// services on other topics of one cluster never share it.
    pub fn kafka_group(topic: &str) -> String {
        format!("{topic}.projectors")
    }
    /// The order saga's consumer group on the orders' topic.
    pub fn kafka_saga_group(topic: &str) -> String {
        format!("{topic}.order-saga")
    }
    /// How long a dead projector holds its partitions (Kafka's own default).
    pub const KAFKA_SESSION_TIMEOUT_MS: u32 = 45_000;
    /// How long command traces are kept, in seconds.
    pub const TRACE_RETENTION_SECS: u64 = 86_400;
}

/// Name under which the order projector stores checkpoints and versions.
pub const PROJECTOR: &str = "orders_read_model";
/// Name under which the inventory projector stores checkpoints and versions.
pub const INVENTORY_PROJECTOR: &str = "inventory_read_model";

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded SQLite files live.
    pub data_dir: PathBuf,
    /// Write DB; SQLite under `data_dir` when absent.
    pub database_url: Option<String>,
    /// The inventory's write DB (its own event store and outbox); derived
    /// from the write DB when absent (see [`Config::inventory_url`]).
    pub inventory_database_url: Option<String>,
    /// Read DB; the write DB's server (PostgreSQL) or a SQLite file under `data_dir`.
    pub read_database_url: Option<String>,
    /// Artificial delay before the projector applies each batch.
    pub projector_delay: Duration,
    /// SQLite `synchronous` setting.
    pub sqlite_synchronous: String,
    /// Connections per pool.
    pub pool_size: u32,
    /// Orders whose saga reactions of one batch run at once (1: one after
    /// another).
    pub saga_concurrency: usize,
    /// Kafka between the write and read sides; the embedded log when absent.
    pub kafka: Option<KafkaOptions>,
    /// What this process runs; all of them when empty.
    pub roles: Vec<Role>,
    /// How long command traces are kept.
    pub trace_retention: Duration,
    /// Bearer-token checks; authentication is off when absent.
    pub jwt: Option<JwtOptions>,
    /// `/metrics` without a token even when authentication is on.
    pub metrics_public: bool,
    /// Create PostgreSQL databases the URLs name that do not exist yet.
    pub create_database: bool,
    /// Apply due schema migrations at start (otherwise refuse to start
    /// while any is due).
    pub migrate: bool,
}

/// Kafka settings of the service.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Events topic.
    pub topic: String,
    /// Partitions when the topic is created.
    pub partitions: i32,
    /// Replication factor when the topic is created.
    pub replication: i32,
    /// Projector consumer group.
    pub group_id: String,
    /// Consumer `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// librdkafka properties for every client (TLS, SASL, ...).
    pub properties: KafkaProperties,
    /// The inventory's events topic (derived from `topic` when absent:
    /// [`defaults::kafka_inventory_topic`]).
    pub inventory_topic: Option<String>,
}

impl KafkaOptions {
    /// Defaults for a broker list.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: defaults::KAFKA_TOPIC.into(),
            partitions: defaults::KAFKA_PARTITIONS,
            replication: defaults::KAFKA_REPLICATION,
            group_id: defaults::kafka_group(defaults::KAFKA_TOPIC),
            session_timeout_ms: defaults::KAFKA_SESSION_TIMEOUT_MS,
            properties: KafkaProperties::default(),
            inventory_topic: None,
        }
    }
    /// The same cluster, for the inventory's topic and its own group.
    pub fn inventory(&self) -> KafkaOptions {
        let topic = self
            .inventory_topic
            .clone()
            .unwrap_or_else(|| defaults::kafka_inventory_topic(&self.topic));
        KafkaOptions {
            group_id: defaults::kafka_group(&topic),
            topic,
            inventory_topic: None,
            ..self.clone()
        }
    }
    /// The settings every Kafka client of this process is made from.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            replication: self.replication,
            properties: self.properties.clone(),
        }
    }
}

/// A part of the service a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API (commands and queries).
    Api,
    /// The outbox relay to Kafka (needs Kafka).
    Relay,
    /// The projector (from Kafka, or from the embedded log).
    Projector,
}

impl Config {
    /// The embedded default under `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            inventory_database_url: None,
            read_database_url: None,
            projector_delay: Duration::ZERO,
            sqlite_synchronous: defaults::SQLITE_SYNCHRONOUS.into(),
            pool_size: defaults::POOL_SIZE,
            saga_concurrency: usize::from(defaults::SAGA_CONCURRENCY),
            kafka: None,
            roles: Vec::new(),
            trace_retention: Duration::from_secs(defaults::TRACE_RETENTION_SECS),
            jwt: None,
            metrics_public: false,
            create_database: false,
            migrate: true,
        }
    }

    /// Refuses combinations that could only idle or fail later.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.roles.contains(&Role::Relay) && self.kafka.is_none() {
            anyhow::bail!(
                "--role relay needs --kafka-brokers: without Kafka (the embedded mode) there is \
                 nothing to relay to; the projector reads the event log itself"
            );
        }
        Ok(())
    }

    /// Whether this process runs `role`.
    pub fn runs(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    /// The write and read database URLs.
    pub fn urls(&self) -> (String, String) {
        let write = self
            .database_url
            .clone()
            .unwrap_or_else(|| sqlite_url(&self.data_dir.join("write.db")));
        let read = self
            .read_database_url
            .clone()
            .unwrap_or_else(|| match &self.database_url {
                Some(url) if !url.starts_with("sqlite:") => url.clone(),
                _ => sqlite_url(&self.data_dir.join("read.db")),
            });
        (write, read)
    }

    /// The inventory's write DB: as given; else `inventory.db` beside
    /// SQLite files, or on the write DB's PostgreSQL server the write
    /// database's name with `_inventory` appended. The second value says
    /// whether it was derived (a derived database is created when missing).
    pub fn inventory_url(&self) -> (String, bool) {
        if let Some(url) = &self.inventory_database_url {
            return (url.clone(), false);
        }
        let (write, _) = self.urls();
        if write.starts_with("sqlite:") {
            return (sqlite_url(&self.data_dir.join("inventory.db")), true);
        }
        (with_database_suffix(&write, "_inventory"), true)
    }
}

/// `url` naming the database `<its name><suffix>` (query kept).
fn with_database_suffix(url: &str, suffix: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let named = match base.rsplit_once('/') {
        Some((server, name)) if !server.ends_with('/') && !name.is_empty() => {
            format!("{server}/{name}{suffix}")
        }
        _ => format!("{}/postgres{suffix}", base.trim_end_matches('/')),
    };
    match query {
        Some(q) => format!("{named}?{q}"),
        None => named,
    }
}

/// Orders whose state the command handler keeps in memory, at most.
pub const STATE_CACHE_ORDERS: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_database_sits_beside_the_write_database() {
        let mut c = Config::embedded("/d");
        assert_eq!(
            c.inventory_url(),
            ("sqlite:///d/inventory.db".to_owned(), true)
        );
        c.database_url = Some("postgres://u:p@h:5432/shop?sslmode=require".into());
        assert_eq!(
            c.inventory_url().0,
            "postgres://u:p@h:5432/shop_inventory?sslmode=require"
        );
        c.database_url = Some("postgres://u:p@h:5432".into());
        assert_eq!(
            c.inventory_url().0,
            "postgres://u:p@h:5432/postgres_inventory"
        );
        c.inventory_database_url = Some("postgres://h/inv".into());
        assert_eq!(c.inventory_url(), ("postgres://h/inv".to_owned(), false));
    }

    #[test]
    fn the_inventory_topic_sits_beside_the_orders_topic() {
        let mut k = KafkaOptions::new("b:9092");
        assert_eq!(k.inventory().topic, "inventory.events");
        assert_eq!(k.inventory().group_id, "inventory.events.projectors");
        k.topic = "t1.events".into();
        assert_eq!(k.inventory().topic, "t1.inventory.events");
        k.topic = "shop".into();
        assert_eq!(k.inventory().topic, "shop.inventory");
        k.inventory_topic = Some("stock".into());
        assert_eq!(k.inventory().topic, "stock");
    }

    #[test]
    fn each_topic_gets_a_consumer_group_of_its_own() {
        assert_eq!(
            KafkaOptions::new("b:9092").group_id,
            "orders.events.projectors"
        );
        assert_ne!(
            defaults::kafka_group("a.events"),
            defaults::kafka_group("b.events")
        );
    }
}
