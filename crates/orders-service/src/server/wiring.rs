//! Starting the pieces: write store, read DB, projector, relay, router;
//! watching them, and stopping them.

use super::access::Access;
use super::routes;
use super::schema::Databases;
use super::state::{App, AppState};
use crate::config::{
    Config, KafkaOptions, Role, INVENTORY_PROJECTOR, PROJECTOR, STATE_CACHE_ORDERS,
};
use anyhow::Context;
use cqrs_kafka::{KafkaSource, Relay, RelayConfig, SourceConfig};
use cqrs_sql::{
    Db, DbOptions, LogSource, ProjectorConfig, ProjectorRunner, ReadProgress, SqlEventStore,
    StateCache,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// A started instance: the app, its background roles and the switch that stops them.
pub struct Running {
    /// Shared state of the handlers.
    pub app: App,
    /// Ends when every role has ended, with the first failure.
    roles: JoinHandle<anyhow::Result<()>>,
    shutdown: CancellationToken,
    closing: watch::Sender<bool>,
    failure: watch::Receiver<Option<String>>,
    /// Keeps a derived consumer-group instance id this process's.
    _member: Option<cqrs_kafka::MemberSlot>,
}

/// The background roles of a process, watched: one that ends before the
/// shutdown (an error, a panic, or simply returning) is reported, so that the
/// process stops and can be restarted instead of running on without it.
struct Roles {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
    shutdown: CancellationToken,
}

impl Roles {
    /// Starts a role that returns when `shutdown` is cancelled.
    fn spawn(
        &mut self,
        name: &'static str,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let task = self.set.spawn(role);
        self.names.insert(task.id(), name);
    }

    /// Starts a role that would run forever: it is dropped at the shutdown.
    fn spawn_until_shutdown(
        &mut self,
        name: &'static str,
        role: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shutdown = self.shutdown.clone();
        self.spawn(name, async move {
            shutdown.run_until_cancelled_owned(role).await;
            Ok(())
        });
    }

    /// Waits for every role. The first to end before the shutdown is
    /// reported on `failed`; the first failure is the answer.
    async fn watch(mut self, failed: watch::Sender<Option<String>>) -> anyhow::Result<()> {
        let mut first: Option<anyhow::Error> = None;
        while let Some(joined) = self.set.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(e) => (e.id(), Err(anyhow::anyhow!("{}", why_ended(e)))),
            };
            let name = self.names.get(&id).copied().unwrap_or("a role");
            if !self.shutdown.is_cancelled() {
                let why = match &result {
                    Ok(()) => format!("{name} stopped on its own"),
                    Err(e) => format!("{name} failed: {e:#}"),
                };
                tracing::error!(
                    role = name,
                    "{why}; stopping the process so that it can be restarted"
                );
                failed.send_replace(Some(why));
            }
            if let Err(e) = result {
                first.get_or_insert(e.context(format!("{name} failed")));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Why a task ended without an answer: its panic's message, or cancelled.
fn why_ended(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("panicked: {what}")
        }
        Err(_) => "cancelled".to_owned(),
    }
}

impl Running {
    /// Opens the databases and starts this process's roles.
    pub async fn start(config: &Config) -> anyhow::Result<Running> {
        config.check()?;
        let (store, inventory, read) = open_databases(config).await?;
        let (config, member) = super::membership::resolve(config, &read).await?;
        let config = &config;
        let shutdown = CancellationToken::new();
        let mut roles = Roles {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown: shutdown.clone(),
        };
        let (kafka, inventory_kafka) = match &config.kafka {
            Some(k) => (
                Some(ensure_topics(k).await?),
                Some(ensure_topics(&k.inventory()).await?),
            ),
            None => (None, None),
        };
        if config.runs(Role::Relay) {
            for (name, k, s) in [
                ("relay", &kafka, &store),
                ("inventory relay", &inventory_kafka, &inventory),
            ] {
                if let Some(k) = k {
                    start_relay(&mut roles, name, k, s)?;
                }
            }
        }
        let (progress, inventory_progress) =
            start_read_sides(&mut roles, config, (&store, &inventory), &read).await?;
        let inventory_link: Arc<dyn crate::inventory_link::InventoryLink> = Arc::new(
            crate::inventory_link::LocalInventory::new(inventory.clone(), crate::saga::SAGA),
        );
        if config.runs(Role::Projector) {
            start_saga(&mut roles, config, &store, inventory_link.clone(), &read).await?;
        }
        follow_progress(&mut roles, &inventory_progress, &read);
        follow_progress(&mut roles, &progress, &read);
        let (access, key_watcher) = Access::open(config)?;
        if let Some(watcher) = key_watcher {
            roles.spawn_until_shutdown("key set watcher", watcher);
        }
        super::observe::install();
        let (closing, closing_rx) = watch::channel(false);
        let (live, live_sources) =
            super::live::LiveFeed::start(read.clone(), &progress, closing_rx.clone());
        let progress_for_cache = progress.clone();
        let app = App::new(AppState {
            store,
            inventory,
            inventory_link,
            read,
            progress,
            inventory_progress,
            kafka,
            live,
            closing: closing_rx,
            projects_here: config.runs(Role::Projector),
            states: Arc::new(StateCache::new(STATE_CACHE_ORDERS)),
            access,
            tracked: Arc::default(),
            caches: super::cached::Caches::new(
                &progress_for_cache,
                config.read_cache_bytes,
                config.read_cache_ttl,
            ),
        });
        let every = Duration::from_millis(500);
        let sampler = super::observe::sample_every(app.clone(), every, live_sources.progress);
        roles.spawn_until_shutdown("metrics sampler", sampler);
        let (failed, failure) = watch::channel(None);
        Ok(Running {
            app,
            roles: tokio::spawn(roles.watch(failed)),
            shutdown,
            closing,
            failure,
            _member: member,
        })
    }

    /// The HTTP router over this instance.
    pub fn router(&self) -> axum::Router {
        routes::router(self.app.clone())
    }

    /// The router of a process without the API: health, readiness and
    /// metrics only.
    pub fn ops_router(&self) -> axum::Router {
        routes::ops_router(self.app.clone())
    }

    /// Serves this instance on `listener` with the default limits until the
    /// task is aborted (for the tools and tests that drive a server).
    pub fn spawn_server(&self, listener: tokio::net::TcpListener) -> JoinHandle<bool> {
        let router = self.router();
        tokio::spawn(cqrs_http::serve(
            listener,
            router,
            cqrs_http::ServerLimits::default(),
            None,
            std::future::pending(),
        ))
    }

    /// Resolves when a role ended before the shutdown, with why.
    pub async fn failure(&self) -> String {
        let mut rx = self.failure.clone();
        let why = match rx.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// The first step of a shutdown: consistency waits end (503
    /// `shutting_down`) and live streams close, so that open connections
    /// can drain; the roles keep running until [`Running::stop`].
    pub fn begin_shutdown(&self) {
        self.app.progress.close();
        self.closing.send_replace(true);
    }

    /// Stops the roles (the projector after its current batch) and closes
    /// the databases.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.shutdown.cancel();
        self.roles
            .await
            .map_err(|e| anyhow::anyhow!("the role watcher {}", why_ended(e)))??;
        self.app.store.db().close().await;
        self.app.read.close().await;
        Ok(())
    }
}

/// The two event stores and the read DB, at this build's schema.
pub async fn open_databases(config: &Config) -> anyhow::Result<(SqlEventStore, SqlEventStore, Db)> {
    let dbs = connect_databases(config).await?;
    let applied = super::schema::bring_current(&dbs, !config.no_migrate).await?;
    if !applied.is_empty() {
        tracing::info!(count = applied.len(), "databases migrated");
    }
    Ok((
        SqlEventStore::open_current(dbs.write).await?,
        SqlEventStore::open_current(dbs.inventory).await?,
        dbs.read,
    ))
}

/// Connections to the databases (one pool where two are one database), the
/// data directory made first when any is SQLite. The inventory's database,
/// when derived from the write DB's URL, is created if missing.
pub async fn connect_databases(config: &Config) -> anyhow::Result<Databases> {
    let (write_url, read_url) = config.urls();
    let (inventory_url, derived) = config.inventory_url();
    if [&write_url, &read_url, &inventory_url]
        .iter()
        .any(|u| cqrs_sql::dialect::is_embedded_url(u))
    {
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
    let write = Db::connect(&write_url, &options).await?;
    let read = if read_url == write_url {
        write.clone()
    } else {
        Db::connect(&read_url, &options).await?
    };
    let inventory_options = DbOptions {
        create_missing: config.create_database || derived,
        ..options
    };
    let inventory = Db::connect(&inventory_url, &inventory_options)
        .await
        .context("the inventory's database (--inventory-database-url)")?;
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
async fn ensure_topics(k: &KafkaOptions) -> anyhow::Result<KafkaOptions> {
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

fn start_relay(
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
struct ReadSide<'a> {
    name: &'static str,
    role: &'static str,
    /// The role that builds new versions and drops retired tables.
    versions_role: &'static str,
    projections: Vec<Arc<dyn cqrs_sql::Projection>>,
    store: &'a SqlEventStore,
    kafka: Option<&'a KafkaOptions>,
}

/// Starts `side`'s projector where this process runs projectors (else only
/// makes sure its tables exist, for queries); returns the progress that
/// consistency waits watch.
async fn start_read_side(
    roles: &mut Roles,
    config: &Config,
    side: ReadSide<'_>,
    read: &Db,
) -> anyhow::Result<ReadProgress> {
    if !config.runs(Role::Projector) {
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
    let history = match side.kafka {
        Some(k) => super::rebuilds::HistoryOf::Topic(k.config()),
        None => super::rebuilds::HistoryOf::Log(side.store.clone()),
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
    match side.kafka {
        Some(k) => {
            let source = KafkaSource::new(
                SourceConfig {
                    kafka: k.config(),
                    group_id: k.group_id(),
                    session_timeout_ms: k.session_timeout_ms,
                    projector: side.name.into(),
                    instance_id: k.instance_id.clone(),
                    store_id: Some(side.store.id().to_owned()),
                },
                read.clone(),
            )?;
            roles.spawn(
                side.role,
                async move { Ok(runner.run(source, shutdown).await?) },
            );
        }
        None => {
            let source = LogSource::new(side.store.clone(), Duration::from_millis(500));
            roles.spawn(
                side.role,
                async move { Ok(runner.run(source, shutdown).await?) },
            );
        }
    }
    Ok(progress)
}

/// Starts the orders' and the inventory's read sides; their progress.
async fn start_read_sides(
    roles: &mut Roles,
    config: &Config,
    (store, inventory): (&SqlEventStore, &SqlEventStore),
    read: &Db,
) -> anyhow::Result<(ReadProgress, ReadProgress)> {
    let orders_side = ReadSide {
        name: PROJECTOR,
        role: "projector",
        versions_role: "read model versions",
        projections: orders::read_model::projections(),
        store,
        kafka: config.kafka.as_ref(),
    };
    let inventory_options = config.kafka.as_ref().map(KafkaOptions::inventory);
    let inventory_side = ReadSide {
        name: INVENTORY_PROJECTOR,
        role: "inventory projector",
        versions_role: "inventory read model versions",
        projections: inventory::read_model::projections(),
        store: inventory,
        kafka: inventory_options.as_ref(),
    };
    let progress = start_read_side(roles, config, orders_side, read).await?;
    let inventory_progress = start_read_side(roles, config, inventory_side, read).await?;
    Ok((progress, inventory_progress))
}

/// Starts the order saga: a projector of its own (`order_saga`, its own
/// consumer group on the orders' topic, or the orders' log) whose one
/// projection issues the saga's commands on both stores.
async fn start_saga(
    roles: &mut Roles,
    config: &Config,
    store: &SqlEventStore,
    link: Arc<dyn crate::inventory_link::InventoryLink>,
    read: &Db,
) -> anyhow::Result<()> {
    use crate::saga::{OrderSaga, SagaBus, SAGA};
    let bus = SagaBus::new(store.clone(), link);
    let saga: Arc<dyn cqrs_sql::Projection> = Arc::new(
        cqrs_sql::process::ProcessProjection::<OrderSaga, _>::new(bus)
            .with_concurrency(usize::from(config.saga_concurrency)),
    );
    let runner = ProjectorRunner::new(
        read.clone(),
        ProjectorConfig {
            name: SAGA.into(),
            batch_size: 100,
            apply_delay: std::time::Duration::ZERO,
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

/// Other processes move the read model too (projectors owning other
/// partitions, `dead-letters retry`, a projector elsewhere): follow it
/// through the read DB, woken by the projectors' NOTIFY on PostgreSQL (the
/// poll is a fallback there) and polling SQLite.
fn follow_progress(roles: &mut Roles, progress: &ReadProgress, read: &Db) {
    let poll = read.dialect.follow_poll();
    roles.spawn_until_shutdown("progress follower", progress.clone().follow_database(poll));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_role_that_fails_before_the_shutdown_is_reported_and_fails_the_stop() {
        let mut r = roles();
        let shutdown = r.shutdown.clone();
        r.spawn_until_shutdown("steady", std::future::pending());
        r.spawn("relay", async { Err(anyhow::anyhow!("broker gone")) });
        let (failed, mut failure) = watch::channel(None);
        let watcher = tokio::spawn(r.watch(failed));
        let why = failure.wait_for(|f| f.is_some()).await.unwrap().clone();
        assert_eq!(why.as_deref(), Some("relay failed: broker gone"));
        assert!(
            !watcher.is_finished(),
            "the other roles run until the shutdown"
        );
        shutdown.cancel();
        let stopped = watcher.await.unwrap();
        assert_eq!(
            format!("{:#}", stopped.unwrap_err()),
            "relay failed: broker gone"
        );
    }

    #[tokio::test]
    async fn a_role_that_panics_or_returns_early_is_reported_by_name() {
        for (role, expected) in [
            (
                futures::FutureExt::boxed(async { panic!("bug in the projector") }),
                "projector failed: panicked: bug in the projector",
            ),
            (
                futures::FutureExt::boxed(async { Ok(()) }),
                "projector stopped on its own",
            ),
        ] {
            let mut r = roles();
            r.spawn("projector", role);
            let (failed, failure) = watch::channel(None);
            let _ = r.watch(failed).await;
            assert_eq!(failure.borrow().as_deref(), Some(expected));
        }
    }

    #[tokio::test]
    async fn roles_that_end_at_the_shutdown_are_not_failures() {
        let mut r = roles();
        let shutdown = r.shutdown.clone();
        r.spawn_until_shutdown("follower", std::future::pending());
        let stop = shutdown.clone();
        r.spawn("relay", async move {
            stop.cancelled().await;
            Ok(())
        });
        let (failed, failure) = watch::channel(None);
        shutdown.cancel();
        r.watch(failed).await.unwrap();
        assert_eq!(*failure.borrow(), None);
    }
}
