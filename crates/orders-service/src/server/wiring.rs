//! Starting the pieces: write store, read DB, projector, relay, router;
//! watching them, and stopping them.

use super::config::{Config, KafkaOptions, Role, PROJECTOR, STATE_CACHE_ORDERS};
use super::routes;
use super::state::App;
use anyhow::Context;
use cqrs_kafka::{KafkaSource, Relay, RelayConfig, SourceConfig};
use cqrs_sql::{
    Db, DbOptions, LogSource, ProjectorConfig, ProjectorRunner, ReadProgress, SqlEventStore,
    StateCache,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A started instance: the app, its background roles and the switch that stops them.
pub struct Running {
    /// Shared state of the handlers.
    pub app: App,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    shutdown: watch::Sender<bool>,
    closing: watch::Sender<bool>,
    failure: watch::Receiver<Option<String>>,
}

/// The background roles of a process, watched: one that ends before the
/// shutdown (an error, a panic, or simply returning) is reported, so that the
/// process stops and can be restarted instead of running on without it.
struct Roles {
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    shutdown: watch::Receiver<bool>,
    failed: Arc<watch::Sender<Option<String>>>,
}

impl Roles {
    fn spawn(
        &mut self,
        name: &'static str,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        use futures::FutureExt;
        let (stopping, failed) = (self.shutdown.clone(), self.failed.clone());
        let task = tokio::spawn(async move {
            let result = std::panic::AssertUnwindSafe(role)
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(anyhow::anyhow!("panicked: {what}"))
                });
            if !*stopping.borrow() {
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
            result
        });
        self.tasks.push((name, task));
    }
}

impl Running {
    /// Opens the databases and starts this process's roles.
    pub async fn start(config: &Config) -> anyhow::Result<Running> {
        config.check()?;
        let (store, read) = open_databases(config).await?;
        let (shutdown, rx) = watch::channel(false);
        let (failed, failure) = watch::channel(None);
        let mut roles = Roles {
            tasks: Vec::new(),
            shutdown: rx.clone(),
            failed: Arc::new(failed),
        };
        if let Some(k) = &config.kafka {
            ensure_topics(k).await?;
            if config.runs(Role::Relay) {
                start_relay(&mut roles, k, &store, &rx)?;
            }
        }
        let progress = if config.runs(Role::Projector) {
            start_projector(&mut roles, config, &store, &read, &rx).await?
        } else {
            cqrs_sql::read::runner::ensure_tables(&read, &orders::read_model::projections())
                .await?;
            ReadProgress::new(read.clone(), PROJECTOR)
        };
        follow_progress(&mut roles, &progress, &read, &rx);
        super::observe::install();
        let (closing, closing_rx) = watch::channel(false);
        let (live, live_sources) =
            super::live::LiveFeed::start(read.clone(), &progress, closing_rx.clone());
        let app = App {
            store,
            read,
            progress,
            kafka: config.kafka.clone(),
            live,
            closing: closing_rx,
            projects_here: config.runs(Role::Projector),
            states: Arc::new(StateCache::new(STATE_CACHE_ORDERS)),
        };
        let sampler = super::observe::spawn_sampler(
            app.clone(),
            Duration::from_millis(500),
            live_sources.progress,
        );
        let mut stop_sampler = rx.clone();
        roles.spawn("metrics sampler", async move {
            let _ = stop_sampler.wait_for(|s| *s).await;
            sampler.abort();
            Ok(())
        });
        Ok(Running {
            app,
            tasks: roles.tasks,
            shutdown,
            closing,
            failure,
        })
    }

    /// The HTTP router over this instance.
    pub fn router(&self) -> axum::Router {
        routes::router(self.app.clone())
    }

    /// Serves this instance on `listener` with the default limits until the
    /// task is aborted (for the tools and tests that drive a server).
    pub fn spawn_server(&self, listener: tokio::net::TcpListener) -> JoinHandle<bool> {
        let router = self.router();
        tokio::spawn(cqrs_http::serve(
            listener,
            router,
            cqrs_http::ServerLimits::default(),
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
        let _ = self.shutdown.send(true);
        for (name, task) in self.tasks {
            task.await
                .with_context(|| format!("{name} panicked"))?
                .with_context(|| format!("{name} failed"))?;
        }
        self.app.store.db().close().await;
        self.app.read.close().await;
        Ok(())
    }
}

/// The write store and the read DB (one pool when they are one database).
pub(crate) async fn open_databases(config: &Config) -> anyhow::Result<(SqlEventStore, Db)> {
    let (write_url, read_url) = config.urls();
    if write_url.starts_with("sqlite:") || read_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    }
    let options = DbOptions {
        max_connections: config.pool_size,
        sqlite_synchronous: config.sqlite_synchronous.clone(),
    };
    let write = Db::connect(&write_url, &options).await?;
    let read = if read_url == write_url {
        write.clone()
    } else {
        Db::connect(&read_url, &options).await?
    };
    Ok((SqlEventStore::open(write).await?, read))
}

/// Creates the topics; a broker that does not answer is an answer too: say
/// so within seconds instead of waiting on the client's own timeouts.
async fn ensure_topics(k: &KafkaOptions) -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(15),
        cqrs_kafka::ensure_topics(&k.config()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Kafka at {} did not answer within 15 s", k.brokers))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot reach Kafka at {} to create {}", k.brokers, k.topic))
}

fn start_relay(
    roles: &mut Roles,
    k: &KafkaOptions,
    store: &SqlEventStore,
    rx: &watch::Receiver<bool>,
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
    let rx = rx.clone();
    roles.spawn("relay", async move { Ok(relay.run(rx).await?) });
    Ok(())
}

/// Starts the projector on Kafka or on the embedded log; returns the
/// progress that consistency waits watch.
async fn start_projector(
    roles: &mut Roles,
    config: &Config,
    store: &SqlEventStore,
    read: &Db,
    rx: &watch::Receiver<bool>,
) -> anyhow::Result<ReadProgress> {
    let runner = ProjectorRunner::new(
        read.clone(),
        ProjectorConfig {
            name: PROJECTOR.into(),
            batch_size: 500,
            apply_delay: config.projector_delay,
            max_attempts: 3,
            trace_retention: config.trace_retention,
        },
        orders::read_model::projections(),
    )
    .await?;
    let progress = runner.progress();
    let rx = rx.clone();
    match &config.kafka {
        Some(k) => {
            let source = KafkaSource::new(
                SourceConfig {
                    kafka: k.config(),
                    group_id: k.group_id.clone(),
                    session_timeout_ms: k.session_timeout_ms,
                    projector: PROJECTOR.into(),
                },
                read.clone(),
            )?;
            roles.spawn(
                "projector",
                async move { Ok(runner.run(source, rx).await?) },
            );
        }
        None => {
            let source = LogSource::new(store.clone(), Duration::from_millis(500));
            roles.spawn(
                "projector",
                async move { Ok(runner.run(source, rx).await?) },
            );
        }
    }
    Ok(progress)
}

/// Other processes move the read model too (projectors owning other
/// partitions, `dead-letters retry`, a projector elsewhere): follow it
/// through the read DB, woken by the projectors' NOTIFY on PostgreSQL (the
/// poll is a fallback there) and polling SQLite.
fn follow_progress(
    roles: &mut Roles,
    progress: &ReadProgress,
    read: &Db,
    rx: &watch::Receiver<bool>,
) {
    let poll = Duration::from_millis(match read.backend {
        cqrs_sql::Backend::Postgres => 500,
        cqrs_sql::Backend::Sqlite => 50,
    });
    let follower = progress.follow_database(poll);
    let mut rx = rx.clone();
    roles.spawn("progress follower", async move {
        let _ = rx.wait_for(|s| *s).await;
        follower.abort();
        Ok(())
    });
}
