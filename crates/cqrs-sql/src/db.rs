//! Connecting to PostgreSQL or SQLite through one pool type; how each
//! database connects is its [`Dialect`]'s.

use crate::connect::FIRST_CONNECT_TIMEOUT;
pub use crate::connect::{defaults, redact_url, DbOptions, Pools};
use crate::dialect::{Dialect, DialectSql};
use sqlx::AnyPool;

/// A database: a pool for reads and a pool for writes. On SQLite the writer
/// pool has one connection, because SQLite has one writer at a time and a
/// queue in the pool beats SQLITE_BUSY.
#[derive(Clone, Debug)]
pub struct Db {
    /// What differs on this database.
    pub dialect: &'static dyn Dialect,
    /// For reads (and writes on PostgreSQL).
    pub pool: AnyPool,
    /// For writes.
    pub writer: AnyPool,
    url: DbUrl,
}

/// A connection URL that never prints its password.
#[derive(Clone)]
struct DbUrl(std::sync::Arc<str>);

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// Why a database could not be opened. Each variant says its cause once
/// (the database's own words are kept as text, not as a source that a
/// report would print a second time).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL or an option is wrong; nothing was tried.
    #[error("{0}")]
    Config(String),
    /// The server or file did not take the connection.
    #[error("cannot connect to {url}: {reason}{hint}")]
    Refused {
        /// The URL, its password hidden.
        url: String,
        /// What the database or the network said.
        reason: String,
        /// How to fix it, when known (a database that does not exist).
        hint: &'static str,
    },
}

/// A connection failure that names the server (password hidden) and, for a
/// database that does not exist, says how to make it.
fn connect_error(dialect: &dyn Dialect, url: &str, e: sqlx::Error) -> ConnectError {
    let reason = match &e {
        sqlx::Error::PoolTimedOut => {
            format!("no answer within {} s", FIRST_CONNECT_TIMEOUT.as_secs())
        }
        // sqlx's own wording ("error returned from database: ...") says
        // nothing the reason does not.
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    };
    let hint = match dialect.is_missing_database(&e) {
        true => {
            " (create it: pass --create-database (ORDERS_CREATE_DATABASE), run `createdb NAME`, \
             or CREATE DATABASE NAME as a user allowed to)"
        }
        false => "",
    };
    ConnectError::Refused {
        url: redact_url(url),
        reason,
        hint,
    }
}

impl Db {
    /// Opens a database by URL (`sqlite:PATH` creates the file); logs which
    /// one and how long the connection took, and names it in any error.
    pub async fn connect(url: &str, options: &DbOptions) -> Result<Db, ConnectError> {
        sqlx::any::install_default_drivers();
        let started = std::time::Instant::now();
        let config = |e: sqlx::Error| match e {
            sqlx::Error::Configuration(why) => ConnectError::Config(why.to_string()),
            e => ConnectError::Config(e.to_string()),
        };
        let dialect = crate::dialect::of_url(url).map_err(config)?;
        let pools = dialect.open(url, options).await.map_err(|e| match e {
            // A bad URL or setting says so itself, without connecting.
            e @ sqlx::Error::Configuration(_) => config(e),
            e => connect_error(dialect, url, e),
        })?;
        tracing::info!(
            database = %redact_url(url),
            dialect = ?dialect,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "database connected"
        );
        Ok(Db {
            dialect,
            pool: pools.pool,
            writer: pools.writer,
            url: DbUrl(pools.url.into()),
        })
    }

    /// The statements and fragments of this database's dialect.
    pub fn sql(&self) -> &'static DialectSql {
        self.dialect.sql()
    }

    /// A write transaction for data that is derived again after a loss (read
    /// models with their checkpoints, the relay's checkpoint). On PostgreSQL
    /// its commit does not wait for the WAL flush (`synchronous_commit =
    /// off`, this transaction only): a server crash may lose its last
    /// milliseconds of commits, all or nothing per transaction, and they are
    /// derived again from their source (the projector re-reads what its
    /// checkpoint no longer covers, the relay re-sends). Never for the event
    /// store: a 2xx promises an event that is on disk.
    pub async fn begin_derived(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        begin(&self.writer, self.sql().derived_begin).await
    }

    /// An append transaction on the writer pool, holding what an append
    /// must hold from before its positions are allocated (PostgreSQL: the
    /// log's shared lock; see `log_horizon`).
    pub async fn begin_append(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        begin(&self.writer, self.sql().append_begin).await
    }

    /// A read-only transaction on the read pool that sees one moment of the
    /// database throughout (SQLite: any read transaction in WAL mode;
    /// PostgreSQL: repeatable read).
    pub async fn begin_snapshot(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        begin(&self.pool, self.sql().snapshot_begin).await
    }

    /// The URL this database was opened with (secret: never log it; see
    /// [`redact_url`]).
    pub fn url(&self) -> &str {
        &self.url.0
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// A transaction on `pool`, begun with `statement` (one round trip) when
/// the dialect has one, else with a plain BEGIN.
async fn begin(
    pool: &AnyPool,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    match statement {
        Some(s) => pool.begin_with(s).await,
        None => pool.begin().await,
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

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact_url("postgres://app:p@ss@db/orders?sslmode=require"),
            "postgres://app:***@db/orders?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/orders?user=app&password=s3cret&x=1"),
            "postgres://db/orders?user=app&password=***&x=1"
        );
        assert_eq!(redact_url("sqlite:///tmp/w.db"), "sqlite:///tmp/w.db");
        assert!(!redact_url("mysql://root:hunter2@h/db").contains("hunter2"));
    }
}
