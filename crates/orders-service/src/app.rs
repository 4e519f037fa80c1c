//! Starting the pieces: write store, read DB, projector, router.

use crate::api;
use cqrs_sql::db::sqlite_url;
use cqrs_sql::read::runner::RunnerError;
use cqrs_sql::{
    Db, DbOptions, LogSource, ProjectorConfig, ProjectorRunner, ReadProgress, SqlEventStore,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
        }
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

/// What request handlers share.
#[derive(Clone)]
pub struct App {
    /// The write side.
    pub store: SqlEventStore,
    /// The read DB.
    pub read: Db,
    /// The read model's progress, for consistency waits.
    pub progress: ReadProgress,
}

/// A started instance: the app, its projector and the switch that stops it.
pub struct Running {
    /// Shared state of the handlers.
    pub app: App,
    projector: JoinHandle<Result<(), RunnerError>>,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Opens the databases and starts the in-process projector.
    pub async fn start(config: &Config) -> anyhow::Result<Running> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (write_url, read_url) = config.urls();
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
        let store = SqlEventStore::open(write).await?;
        let runner = ProjectorRunner::new(
            read.clone(),
            ProjectorConfig {
                name: PROJECTOR.into(),
                batch_size: 500,
                apply_delay: config.projector_delay,
            },
            orders::read_model::projections(),
        )
        .await?;
        let progress = runner.progress();
        let (shutdown, rx) = watch::channel(false);
        let source = LogSource::new(store.clone(), Duration::from_millis(500));
        let projector = tokio::spawn(runner.run(source, rx));
        Ok(Running {
            app: App {
                store,
                read,
                progress,
            },
            projector,
            shutdown,
        })
    }

    /// The HTTP router over this instance.
    pub fn router(&self) -> axum::Router {
        api::router(self.app.clone())
    }

    /// Stops the projector and closes the databases.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.projector.await??;
        self.app.store.db().close().await;
        self.app.read.close().await;
        Ok(())
    }
}
