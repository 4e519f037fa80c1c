//! Connecting to PostgreSQL or SQLite through one pool type.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::str::FromStr;
use std::time::Duration;

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (or memory).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Tells the backend from a URL's scheme.
    pub fn of_url(url: &str) -> Result<Backend, sqlx::Error> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: use sqlite:PATH or postgres://...")
                    .into(),
            ))
        }
    }
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Connections in the pool (PostgreSQL) or readers (SQLite).
    pub max_connections: u32,
    /// SQLite `synchronous`: `NORMAL` survives a process crash, `FULL` also power loss.
    pub sqlite_synchronous: String,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            sqlite_synchronous: "NORMAL".into(),
        }
    }
}

/// A database: a pool for reads and a pool for writes. On SQLite the writer
/// pool has one connection, because SQLite has one writer at a time and a
/// queue in the pool beats SQLITE_BUSY.
#[derive(Clone, Debug)]
pub struct Db {
    /// Which database this is.
    pub backend: Backend,
    /// For reads (and writes on PostgreSQL).
    pub pool: AnyPool,
    /// For writes.
    pub writer: AnyPool,
}

impl Db {
    /// Opens a database by URL (`sqlite:PATH` creates the file).
    pub async fn connect(url: &str, options: &DbOptions) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        match backend {
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?;
                Ok(Db {
                    backend,
                    writer: pool.clone(),
                    pool,
                })
            }
            Backend::Sqlite => {
                let url = if url.contains('?') || url.contains(":memory:") {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                let connect = AnyConnectOptions::from_str(&url)?;
                let sync = options.sqlite_synchronous.clone();
                if !matches!(
                    sync.to_ascii_uppercase().as_str(),
                    "OFF" | "NORMAL" | "FULL" | "EXTRA"
                ) {
                    return Err(sqlx::Error::Configuration(
                        format!(
                            "sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, not {sync:?}"
                        )
                        .into(),
                    ));
                }
                let opts = |n: u32| {
                    let sync = sync.clone();
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(move |conn, _| {
                            let sync = sync.clone();
                            Box::pin(async move {
                                conn.execute("PRAGMA journal_mode = WAL").await?;
                                conn.execute(format!("PRAGMA synchronous = {sync}").as_str())
                                    .await?;
                                conn.execute("PRAGMA busy_timeout = 10000").await?;
                                Ok(())
                            })
                        })
                };
                let writer = opts(1).connect_with(connect.clone()).await?;
                let pool = opts(options.max_connections.clamp(1, 8))
                    .connect_with(connect)
                    .await?;
                Ok(Db {
                    backend,
                    pool,
                    writer,
                })
            }
        }
    }

    /// Runs idempotent DDL statements, serialised across processes on PostgreSQL.
    pub async fn migrate<S: AsRef<str>>(&self, statements: &[S]) -> Result<(), sqlx::Error> {
        let mut conn = self.writer.acquire().await?;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT 1 FROM (SELECT pg_advisory_lock(7233083)) AS l")
                .await?;
        }
        let mut result = Ok(());
        for s in statements {
            if let Err(e) = conn.execute(s.as_ref()).await {
                result = Err(e);
                break;
            }
        }
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7233083)").await?;
        }
        result
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// The SQLite URL of a file.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Now, as stored: RFC 3339 in UTC with microseconds, so text order is time order.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Reads a stored timestamp.
pub fn parse_timestamp(s: &str) -> Result<chrono::DateTime<chrono::Utc>, chrono::ParseError> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)?.with_timezone(&chrono::Utc))
}
