//! How an `orders` process runs: its databases, Kafka, roles and limits.

use cqrs_kafka::KafkaConfig;
use cqrs_sql::db::sqlite_url;
use std::path::PathBuf;
use std::time::Duration;

/// Name under which the order projector stores checkpoints and versions.
pub const PROJECTOR: &str = "orders_read_model";

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded SQLite files live.
    pub data_dir: PathBuf,
    /// Write DB; SQLite under `data_dir` when absent.
    pub database_url: Option<String>,
    /// Read DB; the write DB's server (PostgreSQL) or a SQLite file under `data_dir`.
    pub read_database_url: Option<String>,
    /// Artificial delay before the projector applies each batch.
    pub projector_delay: Duration,
    /// SQLite `synchronous` setting.
    pub sqlite_synchronous: String,
    /// Connections per pool.
    pub pool_size: u32,
    /// Kafka between the write and read sides; the embedded log when absent.
    pub kafka: Option<KafkaOptions>,
    /// What this process runs; all of them when empty.
    pub roles: Vec<Role>,
    /// How long command traces are kept.
    pub trace_retention: Duration,
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
}

impl KafkaOptions {
    /// Defaults for a broker list.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: "orders.events".into(),
            partitions: 6,
            replication: 1,
            group_id: "orders-read-model".into(),
            session_timeout_ms: 45_000,
        }
    }
    pub(crate) fn config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            replication: self.replication,
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
            read_database_url: None,
            projector_delay: Duration::ZERO,
            sqlite_synchronous: "NORMAL".into(),
            pool_size: 16,
            kafka: None,
            roles: Vec::new(),
            trace_retention: Duration::from_secs(24 * 3600),
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
}

/// Orders whose state the command handler keeps in memory, at most.
pub const STATE_CACHE_ORDERS: usize = 100_000;
