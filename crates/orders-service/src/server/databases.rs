//! This process's databases: connected (only those its parts use: an
//! inventory-only process never opens the orders' write DB, the order side
//! with `--inventory-url` never the inventory's), brought to this build's
//! schema, and opened as event stores.

use super::schema::Databases;
use crate::config::{Config, KafkaOptions};
use anyhow::Context;
use cqrs_sql::{Db, DbOptions, SqlEventStore};
use std::time::Duration;

/// The orders' event store (None in an inventory-only process), the
/// inventory's (None where it runs elsewhere) and the read DB, at this
/// build's schema.
pub async fn open_databases(
    config: &Config,
) -> anyhow::Result<(Option<SqlEventStore>, Option<SqlEventStore>, Db)> {
    let dbs = connect_databases(config).await?;
    let applied = super::schema::bring_current(&dbs, !config.no_migrate).await?;
    if !applied.is_empty() {
        tracing::info!(count = applied.len(), "databases migrated");
    }
    let write = match dbs.write {
        Some(db) => Some(SqlEventStore::open_current(db).await?),
        None => None,
    };
    let inventory = match dbs.inventory {
        Some(db) => Some(SqlEventStore::open_current(db).await?),
        None => None,
    };
    Ok((write, inventory, dbs.read))
}

/// Connections to this process's databases (one pool where two are one
/// database), the data directory made first when any is SQLite. The
/// inventory's database, when derived from the write DB's URL, is created
/// if missing.
pub async fn connect_databases(config: &Config) -> anyhow::Result<Databases> {
    let (write_url, read_url) = config.urls();
    let (inventory_url, derived) = config.inventory_url();
    let orders_here = config.hosts_orders();
    let inventory_here = config.inventory_url.is_none();
    let mut urls = vec![&read_url];
    if orders_here {
        urls.push(&write_url);
    }
    if inventory_here {
        urls.push(&inventory_url);
    }
    if urls.iter().any(|u| cqrs_sql::dialect::is_embedded_url(u)) {
        // Its owner's alone (0700), as are the database files in it.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    config.data_dir.display()
                )
            })?;
    }
    let options = DbOptions {
        max_connections: config.pool_size,
        sqlite_synchronous: config.sqlite_synchronous.clone(),
        create_missing: config.create_database,
    };
    let write = match orders_here {
        true => Some(Db::connect(&write_url, &options).await?),
        false => None,
    };
    let read = match &write {
        Some(w) if read_url == write_url => w.clone(),
        _ => Db::connect(&read_url, &options).await?,
    };
    let inventory = match inventory_here {
        true => {
            let inventory_options = DbOptions {
                create_missing: config.create_database || derived,
                ..options
            };
            Some(
                Db::connect(&inventory_url, &inventory_options)
                    .await
                    .context("the inventory's database (--inventory-database-url)")?,
            )
        }
        false => None,
    };
    Ok(Databases {
        write,
        inventory,
        read,
    })
}

/// Creates the topics and logs what the cluster answered; a broker that does
/// not answer is an answer too: say so within seconds instead of waiting on
/// the client's own timeouts. Returns the options with the topic's real
/// partition count (an existing topic keeps its own).
pub(super) async fn ensure_topics(k: &KafkaOptions) -> anyhow::Result<KafkaOptions> {
    let started = std::time::Instant::now();
    let ready = tokio::time::timeout(
        Duration::from_secs(15),
        cqrs_kafka::ensure_topics(&k.config()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Kafka at {} did not answer within 15 s", k.brokers))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot reach Kafka at {} to create {}", k.brokers, k.topic))?;
    tracing::info!(
        bootstrap = %k.brokers,
        brokers = ready.brokers,
        topic = %k.topic,
        partitions = ready.partitions,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kafka connected"
    );
    if ready.partitions != k.partitions {
        tracing::warn!(topic = %k.topic, partitions = ready.partitions, asked = k.partitions,
            "the topic existed with another partition count; it keeps its own");
    }
    Ok(KafkaOptions {
        partitions: ready.partitions,
        ..k.clone()
    })
}
