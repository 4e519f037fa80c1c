//! How an `orders` process runs: its databases, Kafka, roles and limits.

use cqrs_http::auth::JwtOptions;
use cqrs_kafka::KafkaProperty;
use cqrs_sql::db::{defaults as db, sqlite_url};
use cqrs_sql::dialect::{is_embedded_url, of_url};
use std::path::PathBuf;
use std::time::Duration;

mod kafka;
mod keys;
pub use kafka::{KafkaOptions, Membership};

/// Defaults that more than the flags above use (the bench's flags, names
/// derived from a topic); every other default is written in its flag.
pub mod defaults {
    /// Orders whose saga reactions of one batch run at once.
    pub const SAGA_CONCURRENCY: u16 = 32;
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
}

/// Name under which the order projector stores checkpoints and versions.
pub const PROJECTOR: &str = "orders_read_model";
/// Name under which the inventory projector stores checkpoints and versions.
pub const INVENTORY_PROJECTOR: &str = "inventory_read_model";

/// How a process runs: its databases, Kafka, roles and limits. `serve` and
/// every tool that opens the databases take these flags (each with its
/// environment variable); [`Config::embedded`] is what they default to.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Directory of the embedded SQLite databases.
    #[arg(long, env = "ORDERS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Write database (postgres://...); embedded SQLite when absent.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the write database's URL (keeps its password out of
    /// `ps`, where a flag shows).
    #[arg(
        long,
        env = "DATABASE_URL_FILE",
        value_name = "PATH",
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<PathBuf>,
    /// Read database; defaults to the write database's server, or SQLite.
    #[arg(long, env = "READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,
    /// A file holding the read database's URL.
    #[arg(
        long,
        env = "READ_DATABASE_URL_FILE",
        value_name = "PATH",
        conflicts_with = "read_database_url"
    )]
    pub read_database_url_file: Option<PathBuf>,
    /// The inventory's own write database [default: inventory.db beside the
    /// SQLite files, or WRITE_DB_inventory on the write database's
    /// PostgreSQL server, created when missing].
    #[arg(long, env = "INVENTORY_DATABASE_URL", hide_env_values = true)]
    pub inventory_database_url: Option<String>,
    /// A file holding the inventory database's URL.
    #[arg(
        long,
        env = "INVENTORY_DATABASE_URL_FILE",
        value_name = "PATH",
        conflicts_with = "inventory_database_url"
    )]
    pub inventory_database_url_file: Option<PathBuf>,
    /// The inventory service's base URL (http://host:port): this process
    /// is the order side alone. It opens no inventory database; the saga's
    /// stock commands go to that API, and which SKUs are tracked comes from
    /// this side's copy of the stock read model, fed from the inventory's
    /// topic (needs --kafka-brokers). Absent: the inventory runs in this
    /// process, or in none with `--role inventory` beside it.
    #[arg(
        long = "inventory-url",
        env = "ORDERS_INVENTORY_URL",
        value_name = "URL"
    )]
    pub inventory_url: Option<String>,
    /// A file holding the bearer token the order side presents to the
    /// inventory service (where it checks tokens: a warehouse or operator
    /// role).
    #[arg(
        long = "inventory-token-file",
        env = "ORDERS_INVENTORY_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub inventory_token_file: Option<PathBuf>,
    /// The master key that wraps the customers' data keys (personal data),
    /// in a file: base64 of 32 bytes. Absent (and no `ORDERS_MASTER_KEY`):
    /// `master.key` in the data dir, made on first use.
    #[arg(long, env = "ORDERS_MASTER_KEY_FILE", value_name = "PATH")]
    pub master_key_file: Option<PathBuf>,
    /// The master key itself (base64 of 32 bytes); a restart is needed to
    /// rotate it. Prefer `--master-key-file` (a flag shows in `ps`).
    #[arg(
        long = "master-key",
        env = "ORDERS_MASTER_KEY",
        hide_env_values = true,
        conflicts_with = "master_key_file",
        value_name = "BASE64"
    )]
    pub master_key: Option<cqrs_http::auth::Secret>,
    /// Create a PostgreSQL database the URLs name when it does not exist
    /// (as the URL's user, who needs the CREATEDB right).
    #[arg(long, env = "ORDERS_CREATE_DATABASE")]
    pub create_database: bool,
    /// Do not apply due schema migrations at start; refuse to start while
    /// any is due (run `orders migrate` as a deploy step instead).
    #[arg(long, env = "ORDERS_NO_MIGRATE")]
    pub no_migrate: bool,
    /// SQLite synchronous mode: NORMAL survives process crashes, FULL also power loss.
    #[arg(long, env = "ORDERS_SQLITE_SYNCHRONOUS", default_value = db::SQLITE_SYNCHRONOUS)]
    pub sqlite_synchronous: String,
    /// Connections per database pool.
    #[arg(long, env = "ORDERS_POOL_SIZE", default_value_t = db::MAX_CONNECTIONS)]
    pub pool_size: u32,
    /// Orders whose saga reactions of one batch run at once (1: one after
    /// another).
    #[arg(long, env = "ORDERS_SAGA_CONCURRENCY", default_value_t = defaults::SAGA_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub saga_concurrency: u16,
    /// Delay the projector applies before each batch, in milliseconds
    /// (shows stale reads).
    #[arg(long = "projector-delay-ms", env = "ORDERS_PROJECTOR_DELAY_MS", default_value = "0",
          value_parser = millis, value_name = "MS")]
    pub projector_delay: Duration,
    /// Kafka between the write and read sides; the embedded log when absent.
    #[command(flatten)]
    pub kafka: Option<KafkaOptions>,
    /// What this process runs (repeatable: api, relay, projector); all when absent.
    #[arg(long = "role", env = "ORDERS_ROLES", value_enum, value_delimiter = ',')]
    pub roles: Vec<Role>,
    /// How long command traces are kept, in seconds.
    #[arg(long = "trace-retention-secs", env = "ORDERS_TRACE_RETENTION_SECS", default_value = "86400",
          value_parser = secs, value_name = "SECS")]
    pub trace_retention: Duration,
    /// Bytes of query answers each process keeps in memory (orders by id,
    /// customer summaries, stats), kept current by the read progress; 0
    /// turns the cache off.
    #[arg(long, env = "ORDERS_READ_CACHE_BYTES", default_value_t = 64 << 20)]
    pub read_cache_bytes: usize,
    /// Seconds a cached answer lives at most: what a change the progress
    /// does not report (a row changed in the read DB by hand) can leave
    /// behind.
    #[arg(long = "read-cache-ttl-secs", env = "ORDERS_READ_CACHE_TTL_SECS", default_value = "10",
          value_parser = secs, value_name = "SECS")]
    pub read_cache_ttl: Duration,
    /// Seconds the tables a rebuild replaced are kept (as
    /// `<table>__retired`) before they are dropped.
    #[arg(long = "rebuild-grace-secs", env = "ORDERS_REBUILD_GRACE_SECS", default_value = "3600",
          value_parser = secs, value_name = "SECS")]
    pub rebuild_grace: Duration,
    /// Leave read models whose version this build raised as they are, to
    /// be rebuilt with `orders rebuild`, instead of building them beside
    /// the live ones at start.
    #[arg(long, env = "ORDERS_NO_AUTO_REBUILD")]
    pub no_auto_rebuild: bool,
    /// Events behind at which a projector catches up in bulk (its read
    /// models built to the head beside the live ones, then swapped in)
    /// rather than in batches; 0: never.
    #[arg(
        long = "bulk-catch-up-from",
        env = "ORDERS_BULK_CATCH_UP_FROM",
        default_value = "100000",
        value_name = "EVENTS"
    )]
    pub bulk_catch_up_from: u64,
    /// Bearer-token checks; authentication is off when absent (`serve`
    /// sets it from its own flags).
    #[arg(skip)]
    pub jwt: Option<JwtOptions>,
    /// The key stream tickets are signed with, shared by replicas behind
    /// one address; a random key of this process when absent (`serve` sets
    /// it from its own flags).
    #[arg(skip)]
    pub stream_ticket_secret: Option<cqrs_http::auth::Secret>,
    /// `/metrics` without a token even when authentication is on (`serve`
    /// sets it from its own flags).
    #[arg(skip)]
    pub metrics_public: bool,
}

/// `args` parsed as these flags alone, every environment variable ignored:
/// the defaults as the flags' attributes write them, never a second copy.
/// (Only a change to those attributes can make it fail, and the tests below
/// would.)
fn parsed<T: clap::FromArgMatches + clap::Args>(args: &[&str]) -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|a| a.env(None));
    T::from_arg_matches(&command.try_get_matches_from(args)?)
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("milliseconds: {e}"))
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds: {e}"))
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
    /// The inventory service alone: its API (`/inventory`), relay and
    /// projector, on its own write DB; it never opens the orders'.
    Inventory,
}

impl Config {
    /// The embedded default under `data_dir`: every flag at its default.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let config = parsed::<Config>(&[])
            .unwrap_or_else(|e| panic!("the flags' own defaults do not parse: {e}"));
        Config {
            data_dir: data_dir.into(),
            ..config
        }
    }

    /// The same config with the URLs and Kafka properties that files hold
    /// read in (each `*_file` flag), so that no secret need be a flag.
    pub fn read_secret_files(mut self) -> anyhow::Result<Config> {
        use anyhow::Context;
        let read = |path: &PathBuf, flag: &str| -> anyhow::Result<String> {
            let secret = cqrs_http::auth::Secret::from_file(path)
                .with_context(|| format!("{flag} {}", path.display()))?;
            match secret.expose().trim() {
                "" => anyhow::bail!("{flag} {}: the file is empty", path.display()),
                text => Ok(text.to_owned()),
            }
        };
        if let Some(p) = self.database_url_file.take() {
            self.database_url = Some(read(&p, "--database-url-file")?);
        }
        if let Some(p) = self.read_database_url_file.take() {
            self.read_database_url = Some(read(&p, "--read-database-url-file")?);
        }
        if let Some(p) = self.inventory_database_url_file.take() {
            self.inventory_database_url = Some(read(&p, "--inventory-database-url-file")?);
        }
        if let Some(kafka) = &mut self.kafka {
            if let Some(p) = kafka.properties_file.take() {
                let text = read(&p, "--kafka-properties-file")?;
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let property = KafkaProperty::parse(line).map_err(|why| {
                        anyhow::anyhow!(
                            "--kafka-properties-file {} line {}: {why}",
                            p.display(),
                            n + 1
                        )
                    })?;
                    kafka.properties.push(property);
                }
            }
        }
        Ok(self)
    }

    /// Refuses combinations that could only idle or fail later.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.roles.contains(&Role::Relay) && self.kafka.is_none() {
            anyhow::bail!(
                "--role relay needs --kafka-brokers: without Kafka (the embedded mode) there is \
                 nothing to relay to; the projector reads the event log itself"
            );
        }
        if self.roles.contains(&Role::Inventory) && self.kafka.is_none() {
            anyhow::bail!(
                "--role inventory needs --kafka-brokers: the two services meet only on Kafka \
                 (without it, run them in one process: no --role)"
            );
        }
        if let Some(url) = &self.inventory_url {
            if self.kafka.is_none() {
                anyhow::bail!(
                    "--inventory-url needs --kafka-brokers: the order side learns the inventory's \
                     stock from its topic"
                );
            }
            if self.roles.is_empty() || self.roles.contains(&Role::Inventory) {
                anyhow::bail!(
                    "--inventory-url says the inventory runs elsewhere: give this process the \
                     order side's roles only (--role api,relay,projector)"
                );
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("--inventory-url: an http:// or https:// URL, not {url:?}");
            }
        }
        Ok(())
    }

    /// Whether this process runs `role` (the order side's roles: an
    /// inventory-only process runs none of them).
    pub fn runs(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    /// Whether this process runs any of the order side.
    pub fn hosts_orders(&self) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| *r != Role::Inventory)
    }

    /// Whether this process runs the inventory's part of `role` (its routes
    /// for the API, its relay, its projector): all of them with `--role
    /// inventory` or no role; beside the order side's same role when the
    /// inventory is not elsewhere (`--inventory-url`).
    pub fn hosts_inventory(&self, role: Role) -> bool {
        self.inventory_url.is_none()
            && (self.roles.is_empty()
                || self.roles.contains(&Role::Inventory)
                || self.roles.contains(&role))
    }

    /// The write and read database URLs of a deployment that exists: for
    /// the tools that read it (an embedded one's data directory must be
    /// there; they never make an empty one).
    pub fn existing_urls(&self) -> anyhow::Result<(String, String)> {
        let (write, read) = self.urls();
        let embedded = is_embedded_url(&write) || is_embedded_url(&read);
        if embedded && !self.data_dir.is_dir() {
            anyhow::bail!(
                "no data directory {}: pass --data-dir (ORDERS_DATA_DIR) where `orders serve` keeps \
                 its SQLite files, or --database-url for PostgreSQL",
                self.data_dir.display()
            );
        }
        Ok((write, read))
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
                Some(url) if !is_embedded_url(url) => url.clone(),
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
        let beside = of_url(&write)
            .ok()
            .and_then(|d| d.sibling(&write, "_inventory"));
        match beside {
            Some(url) => (url, true),
            None => (sqlite_url(&self.data_dir.join("inventory.db")), true),
        }
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
        assert_eq!(k.inventory().group_id(), "inventory.events.projectors");
        k.topic = "t1.events".into();
        assert_eq!(k.inventory().topic, "t1.inventory.events");
        k.topic = "shop".into();
        assert_eq!(k.inventory().topic, "shop.inventory");
        k.inventory_topic = Some("stock".into());
        assert_eq!(k.inventory().topic, "stock");
    }

    #[test]
    fn the_defaults_are_the_flags_defaults_whatever_the_environment() {
        // Set for this process: Config::embedded must not read it.
        std::env::set_var("ORDERS_POOL_SIZE", "3");
        let c = Config::embedded("/d");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.pool_size, 16);
        assert_eq!(c.sqlite_synchronous, "NORMAL");
        assert_eq!(c.saga_concurrency, defaults::SAGA_CONCURRENCY);
        assert_eq!(c.trace_retention, Duration::from_secs(86_400));
        assert_eq!(c.projector_delay, Duration::ZERO);
        assert_eq!(c.bulk_catch_up_from, cqrs_sql::read::runner::BULK_FROM);
        assert!(c.kafka.is_none() && c.roles.is_empty() && c.jwt.is_none());
        assert!(!c.no_migrate && !c.create_database && c.database_url.is_none());
        let k = KafkaOptions::new("-b:9092");
        assert_eq!(k.brokers, "-b:9092");
        assert_eq!(
            (k.topic.as_str(), k.partitions, k.replication),
            ("orders.events", 6, 1)
        );
        assert_eq!(k.session_timeout_ms, defaults::KAFKA_SESSION_TIMEOUT_MS);
        assert!(k.properties.is_empty() && k.group.is_none());
    }

    #[test]
    fn kafka_flags_need_the_brokers_and_properties_hide_their_secrets() {
        let refused = parsed::<Config>(&["--kafka-topic", "t.events"]).unwrap_err();
        assert!(refused.to_string().contains("kafka-brokers"), "{refused}");
        let c = parsed::<Config>(&[
            "--kafka-brokers",
            "b:1",
            "--kafka-property",
            "sasl.password=hunter2",
            "--kafka-property",
            "client.id=x=y",
        ])
        .unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.properties[1].value, "x=y");
        assert!(!format!("{:?}", k.config()).contains("hunter2"));
        assert!(
            parsed::<Config>(&["--kafka-brokers", "b:1", "--kafka-property", "nokey"]).is_err()
        );
    }

    #[test]
    fn the_kafka_group_names_the_projectors_group_and_prefixes_the_others() {
        let plain = KafkaOptions::new("b:9092");
        assert_eq!(plain.group_id(), "orders.events.projectors");
        assert_eq!(plain.saga_group_id(), "orders.events.order-saga");
        assert_eq!(plain.inventory().group_id(), "inventory.events.projectors");
        let named =
            parsed::<KafkaOptions>(&["--kafka-brokers=b:9092", "--kafka-group=shop"]).unwrap();
        assert_eq!(named.group_id(), "shop");
        assert_eq!(named.saga_group_id(), "shop.order-saga");
        assert_eq!(named.inventory().group_id(), "shop.inventory");
        // The inventory's options name no saga of their own: one prefix.
        assert_eq!(named.inventory().topic, "inventory.events");
    }

    #[test]
    fn each_topic_gets_a_consumer_group_of_its_own() {
        assert_eq!(
            KafkaOptions::new("b:9092").group_id(),
            "orders.events.projectors"
        );
        assert_ne!(
            defaults::kafka_group("a.events"),
            defaults::kafka_group("b.events")
        );
    }
}
