//! Starting the pieces: write store, read DB, projector, relay, router;
//! watching them, and stopping them.

use super::access::Access;
use super::databases::ensure_topics;
pub use super::databases::{connect_databases, open_databases};
use super::routes;
use super::sides::{follow_progress, start_read_side, start_relay, start_saga, ReadSide};
use super::state::{App, AppState};
use crate::config::{Config, Role, INVENTORY_PROJECTOR, PROJECTOR, STATE_CACHE_ORDERS};
use anyhow::Context;
use cqrs_sql::{ReadProgress, StateCache};
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
pub(super) struct Roles {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
    pub(super) shutdown: CancellationToken,
}

impl Roles {
    /// Starts a role that returns when `shutdown` is cancelled.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let task = self.set.spawn(role);
        self.names.insert(task.id(), name);
    }

    /// Starts a role that would run forever: it is dropped at the shutdown.
    pub(super) fn spawn_until_shutdown(
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

/// What the processors of this process's services are built from.
struct ProcessorParts<'a> {
    config: &'a Config,
    store: &'a cqrs_sql::SqlEventStore,
    inventory: &'a Option<cqrs_sql::SqlEventStore>,
    orders_here: bool,
    link: Arc<dyn crate::inventory_link::InventoryLink>,
    progress: &'a ReadProgress,
    inventory_progress: &'a ReadProgress,
}

/// Where a processor reads: a consumer group on a topic (its history the
/// topic), or, embedded, an event log (group `embedded`).
struct Feed {
    group: String,
    topic: String,
    log: Option<cqrs_sql::SqlEventStore>,
    history: super::rebuilds::HistoryOf,
}

impl Feed {
    fn kafka(k: &crate::config::KafkaOptions, group: String) -> Feed {
        Feed {
            group,
            topic: k.topic.clone(),
            log: None,
            history: super::rebuilds::HistoryOf::Topic(k.config()),
        }
    }

    fn log(topic: &str, log: &cqrs_sql::SqlEventStore) -> Feed {
        Feed {
            group: "embedded".into(),
            topic: topic.into(),
            log: Some(log.clone()),
            history: super::rebuilds::HistoryOf::Log(log.clone()),
        }
    }
}

/// A projector fed by `feed`: its read models can be rebuilt from it.
fn projector(
    name: &'static str,
    service: &'static str,
    feed: Feed,
    projections: Vec<Arc<dyn cqrs_sql::Projection>>,
    progress: &ReadProgress,
) -> super::ops::Processor {
    super::ops::Processor {
        name,
        service,
        kind: "projector",
        group: feed.group,
        topic: feed.topic,
        log: feed.log,
        projections: projections.clone(),
        rebuild: Some(super::rebuilds::Side {
            projector: name,
            projections,
            history: feed.history,
        }),
        progress: Some(progress.clone()),
    }
}

/// The processors (projectors and the saga) of this process's services,
/// whichever process runs them: their groups (or, embedded, their logs),
/// what a retried dead letter is applied to, and where their read models
/// are rebuilt from.
fn processors(parts: ProcessorParts<'_>) -> Vec<super::ops::Processor> {
    let ProcessorParts {
        config,
        store,
        inventory,
        orders_here,
        link,
        progress,
        inventory_progress,
    } = parts;
    let (orders_feed, saga_feed, inventory_feed) = match &config.kafka {
        Some(k) => {
            let inv = match config.inventory_url {
                Some(_) => k.inventory_copy(),
                None => k.inventory(),
            };
            (
                orders_here.then(|| Feed::kafka(k, k.group_id())),
                orders_here.then(|| Feed::kafka(k, k.saga_group_id())),
                Some(Feed::kafka(&inv, inv.group_id())),
            )
        }
        None => (
            Some(Feed::log("log", store)),
            Some(Feed::log("log", store)),
            inventory.as_ref().map(|i| Feed::log("inventory log", i)),
        ),
    };
    let mut out = Vec::new();
    if let Some(feed) = orders_feed {
        let projections = orders::read_model::projections();
        out.push(projector(PROJECTOR, "orders", feed, projections, progress));
    }
    if let Some(feed) = saga_feed {
        // A process manager: its letters can be retried, it is never rebuilt.
        out.push(super::ops::Processor {
            name: crate::saga::SAGA,
            service: "orders",
            kind: "saga",
            group: feed.group,
            topic: feed.topic,
            log: feed.log,
            projections: vec![super::sides::saga_projection(config, store, link)],
            rebuild: None,
            progress: None,
        });
    }
    if let Some(feed) = inventory_feed {
        let projections = inventory::read_model::projections();
        let name = INVENTORY_PROJECTOR;
        out.push(projector(
            name,
            "inventory",
            feed,
            projections,
            inventory_progress,
        ));
    }
    out
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
        use crate::inventory_link::{InventoryLink, LocalInventory, RemoteInventory};
        config.check()?;
        // Before anything records a metric: what is recorded before the
        // recorder exists is lost.
        super::observe::install();
        let (orders_store, inventory_store, read) = open_databases(config).await?;
        let (config, member) = super::membership::resolve(config, &read).await?;
        let config = &config;
        let shutdown = CancellationToken::new();
        let mut roles = Roles {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown: shutdown.clone(),
        };
        let orders_here = orders_store.is_some();
        let keys = match &orders_store {
            Some(s) => {
                let (master, source) = config.master_key()?;
                Some(Arc::new(
                    cqrs_sql::shred::KeyRing::open(s.db().clone(), master, source).await?,
                ))
            }
            None => None,
        };
        let (kafka, inventory_kafka) = match &config.kafka {
            Some(k) => (
                match orders_here {
                    true => Some(ensure_topics(k).await?),
                    false => None,
                },
                Some(ensure_topics(&k.inventory()).await?),
            ),
            None => (None, None),
        };
        if let (Some(k), Some(s), true) = (&kafka, &orders_store, config.runs(Role::Relay)) {
            start_relay(&mut roles, "relay", k, s)?;
        }
        let inventory_relays = config.hosts_inventory(Role::Relay);
        if let (Some(k), Some(s), true) = (&inventory_kafka, &inventory_store, inventory_relays) {
            start_relay(&mut roles, "inventory relay", k, s)?;
        }
        let progress = match &orders_store {
            Some(store) => {
                let side = ReadSide {
                    name: PROJECTOR,
                    role: "projector",
                    versions_role: "read model versions",
                    projections: orders::read_model::projections(),
                    store: Some(store),
                    kafka: kafka.clone(),
                    runs: config.runs(Role::Projector),
                };
                start_read_side(&mut roles, config, side, &read).await?
            }
            None => ReadProgress::new(read.clone(), PROJECTOR),
        };
        // The inventory's read model: its own where it runs here; the order
        // side's copy, fed from its topic, where it runs elsewhere.
        let remote = config.inventory_url.is_some();
        let inventory_side = ReadSide {
            name: INVENTORY_PROJECTOR,
            role: "inventory projector",
            versions_role: "inventory read model versions",
            projections: inventory::read_model::projections(),
            store: inventory_store.as_ref(),
            kafka: config.kafka.as_ref().map(|k| match remote {
                true => k.inventory_copy(),
                false => k.inventory(),
            }),
            runs: config.hosts_inventory(Role::Projector)
                || (remote && config.runs(Role::Projector)),
        };
        let inventory_progress = start_read_side(&mut roles, config, inventory_side, &read).await?;
        let local = inventory_store
            .clone()
            .map(|s| Arc::new(LocalInventory::new(s, crate::saga::SAGA)));
        let inventory_link: Arc<dyn InventoryLink> = match (&config.inventory_url, &local) {
            (Some(url), _) => {
                let token = match &config.inventory_token_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("--inventory-token-file {}", p.display()))?
                            .trim()
                            .to_owned(),
                    ),
                    None => None,
                };
                Arc::new(RemoteInventory::new(url, token, read.clone())?)
            }
            (None, Some(l)) => l.clone(),
            (None, None) => anyhow::bail!("the inventory is neither here nor elsewhere"),
        };
        let store = match (orders_store, &inventory_store) {
            (Some(s), _) => s,
            // An inventory-only process: its own write side is the
            // inventory's.
            (None, Some(s)) => s.clone(),
            (None, None) => anyhow::bail!("no write database to serve"),
        };
        if orders_here && config.runs(Role::Projector) {
            start_saga(&mut roles, config, &store, inventory_link.clone(), &read).await?;
        }
        follow_progress(&mut roles, &inventory_progress, &read);
        follow_progress(&mut roles, &progress, &read);
        let (access, key_watcher) = Access::open(config)?;
        if let Some(watcher) = key_watcher {
            roles.spawn_until_shutdown("key set watcher", watcher);
        }
        // What each role owns shows at 0 from its start, not from its first
        // increment.
        use super::metrics_catalog::register;
        let serves_api = config.runs(Role::Api) || config.roles.contains(&Role::Inventory);
        if serves_api {
            register(Some(Role::Api));
        }
        if config.kafka.is_some() && (config.runs(Role::Relay) || inventory_relays) {
            register(Some(Role::Relay));
        }
        if config.runs(Role::Projector) || config.hosts_inventory(Role::Projector) {
            register(Some(Role::Projector));
        }
        let (closing, closing_rx) = watch::channel(false);
        let (live, live_sources) =
            super::live::LiveFeed::start(read.clone(), &progress, closing_rx.clone());
        let progress_for_cache = progress.clone();
        let (ops, ops_sources) = super::ops::Ops::new(processors(ProcessorParts {
            config,
            store: &store,
            inventory: &inventory_store,
            orders_here,
            link: inventory_link.clone(),
            progress: &progress,
            inventory_progress: &inventory_progress,
        }));
        let app = App::new(AppState {
            store,
            orders_here,
            inventory: local,
            inventory_link,
            read,
            progress,
            inventory_progress,
            kafka: kafka.or(inventory_kafka),
            ops,
            live,
            closing: closing_rx,
            projects_here: config.runs(Role::Projector) || config.hosts_inventory(Role::Projector),
            states: Arc::new(StateCache::new(STATE_CACHE_ORDERS)),
            access,
            tracked: Arc::default(),
            caches: super::cached::Caches::new(
                &progress_for_cache,
                config.read_cache_bytes,
                config.read_cache_ttl,
            ),
            keys,
        });
        let every = Duration::from_millis(500);
        // The console's snapshot only where the API serves it.
        let console = serves_api.then_some(ops_sources);
        let sampler =
            super::observe::sample_every(app.clone(), every, live_sources.progress, console);
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
