//! The background parts of each service that a process runs: the relays,
//! the read sides (projector, read model versions) and the order saga.

use super::wiring::Roles;
use crate::config::{Config, KafkaOptions};
use crate::inventory_link::InventoryLink;
use cqrs_kafka::{KafkaSource, Relay, RelayConfig, SourceConfig};
use cqrs_sql::{
    Db, LogSource, Projection, ProjectorConfig, ProjectorRunner, ReadProgress, SqlEventStore,
};
use std::sync::Arc;
use std::time::Duration;

/// Starts a relay of `store` to `k`'s topic.
pub(super) fn start_relay(
    roles: &mut Roles,
    name: &'static str,
    k: &KafkaOptions,
    store: &SqlEventStore,
) -> anyhow::Result<()> {
    let relay = Relay::new(
        RelayConfig {
            kafka: k.config(),
            database_url: store.db().url().to_owned(),
            batch_size: 1000,
            poll: Duration::from_millis(100),
            standby_retry: Duration::from_millis(500),
        },
        store.clone(),
    )?;
    let shutdown = roles.shutdown.clone();
    roles.spawn(name, async move { Ok(relay.run(shutdown).await?) });
    Ok(())
}

/// One service's read side: its projector's name and projections, fed from
/// its event store (embedded) or its topic.
pub(super) struct ReadSide<'a> {
    pub name: &'static str,
    pub role: &'static str,
    /// The role that builds new versions and drops retired tables.
    pub versions_role: &'static str,
    pub projections: Vec<Arc<dyn Projection>>,
    /// Its event store: what the embedded log reads, and whose records the
    /// topic must hold (None: a copy of another service's read model, fed
    /// from its topic alone).
    pub store: Option<&'a SqlEventStore>,
    pub kafka: Option<KafkaOptions>,
    /// Whether this process runs its projector (else only makes sure its
    /// tables exist, for queries).
    pub runs: bool,
}

/// Starts `side`'s projector where this process runs it; returns the
/// progress that consistency waits watch.
pub(super) async fn start_read_side(
    roles: &mut Roles,
    config: &Config,
    side: ReadSide<'_>,
    read: &Db,
) -> anyhow::Result<ReadProgress> {
    if !side.runs {
        cqrs_sql::read::runner::ensure_tables(read, &side.projections).await?;
        return Ok(ReadProgress::new(read.clone(), side.name));
    }
    let projections = side.projections.clone();
    let runner = ProjectorRunner::new(
        read.clone(),
        ProjectorConfig {
            name: side.name.into(),
            batch_size: 500,
            apply_delay: config.projector_delay,
            max_attempts: 3,
            trace_retention: config.trace_retention,
            bulk_from: config.bulk_catch_up_from,
            bulk_recheck: cqrs_sql::read::runner::BULK_RECHECK,
        },
        side.projections,
    )
    .await?;
    let progress = runner.progress();
    let history = match (&side.kafka, side.store) {
        (Some(k), _) => super::rebuilds::HistoryOf::Topic(k.config()),
        (None, Some(store)) => super::rebuilds::HistoryOf::Log(store.clone()),
        (None, None) => anyhow::bail!("{}: neither a topic nor an event log", side.name),
    };
    let (projector, stop) = (side.name, roles.shutdown.clone());
    let own = super::rebuilds::Side {
        projector,
        projections,
        history,
    };
    let keeper = super::rebuilds::keeper(read, own, &progress, config, stop).await?;
    roles.spawn_until_shutdown(side.versions_role, keeper);
    let shutdown = roles.shutdown.clone();
    match (&side.kafka, side.store) {
        (Some(k), store) => {
            let source = KafkaSource::new(
                SourceConfig {
                    kafka: k.config(),
                    group_id: k.group_id(),
                    session_timeout_ms: k.session_timeout_ms,
                    projector: side.name.into(),
                    instance_id: k.instance_id.clone(),
                    store_id: store.map(|s| s.id().to_owned()),
                },
                read.clone(),
            )?;
            roles.spawn(
                side.role,
                async move { Ok(runner.run(source, shutdown).await?) },
            );
        }
        (None, Some(store)) => {
            let source = LogSource::new(store.clone(), Duration::from_millis(500));
            roles.spawn(
                side.role,
                async move { Ok(runner.run(source, shutdown).await?) },
            );
        }
        (None, None) => anyhow::bail!("{}: neither a topic nor an event log", side.name),
    }
    Ok(progress)
}

/// Starts the order saga: a projector of its own (`order_saga`, its own
/// consumer group on the orders' topic, or the orders' log) whose one
/// projection issues the saga's commands: on the orders' store, and on the
/// inventory through its link.
pub(super) async fn start_saga(
    roles: &mut Roles,
    config: &Config,
    store: &SqlEventStore,
    link: Arc<dyn InventoryLink>,
    read: &Db,
) -> anyhow::Result<()> {
    use crate::saga::SAGA;
    let saga = saga_projection(config, store, link);
    let runner = ProjectorRunner::new(
        read.clone(),
        ProjectorConfig {
            name: SAGA.into(),
            batch_size: 100,
            apply_delay: Duration::ZERO,
            max_attempts: 3,
            trace_retention: config.trace_retention,
            // A process manager is never rebuilt from history.
            bulk_from: 0,
            bulk_recheck: cqrs_sql::read::runner::BULK_RECHECK,
        },
        vec![saga],
    )
    .await?;
    let shutdown = roles.shutdown.clone();
    match &config.kafka {
        Some(k) => {
            let source = KafkaSource::new(
                SourceConfig {
                    kafka: k.config(),
                    group_id: k.saga_group_id(),
                    session_timeout_ms: k.session_timeout_ms,
                    projector: SAGA.into(),
                    instance_id: k.instance_id.clone(),
                    store_id: Some(store.id().to_owned()),
                },
                read.clone(),
            )?;
            roles.spawn("order saga", async move {
                Ok(runner.run(source, shutdown).await?)
            });
        }
        None => {
            let source = LogSource::new(store.clone(), Duration::from_millis(500));
            roles.spawn("order saga", async move {
                Ok(runner.run(source, shutdown).await?)
            });
        }
    }
    Ok(())
}

/// The order saga's one projection: its reactions, commands on the
/// orders' store and, through `link`, on the inventory.
pub(super) fn saga_projection(
    config: &Config,
    store: &SqlEventStore,
    link: Arc<dyn InventoryLink>,
) -> Arc<dyn Projection> {
    use crate::saga::{OrderSaga, SagaBus};
    let bus = SagaBus::new(store.clone(), link);
    Arc::new(
        cqrs_sql::process::ProcessProjection::<OrderSaga, _>::new(bus)
            .with_concurrency(usize::from(config.saga_concurrency)),
    )
}

/// Other processes move the read model too (projectors owning other
/// partitions, `dead-letters retry`, a projector elsewhere): follow it
/// through the read DB, woken by the projectors' NOTIFY on PostgreSQL (the
/// poll is a fallback there) and polling SQLite.
pub(super) fn follow_progress(roles: &mut Roles, progress: &ReadProgress, read: &Db) {
    let poll = read.dialect.follow_poll();
    roles.spawn_until_shutdown("progress follower", progress.clone().follow_database(poll));
}
