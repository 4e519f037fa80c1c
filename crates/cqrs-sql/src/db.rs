//! Connecting to PostgreSQL or SQLite through one pool type.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};
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
                format!(
                    "unsupported database URL {:?}: use sqlite:PATH or postgres://...",
                    redact_url(url)
                )
                .into(),
            ))
        }
    }
}

impl Backend {
    /// `expr` (RFC 3339 text) as a value of a native time column
    /// (`TIMESTAMPTZ` on PostgreSQL; text on SQLite, which has no time type).
    pub fn instant_in(self, expr: &str) -> String {
        match self {
            Backend::Postgres => format!("CAST({expr} AS TIMESTAMPTZ)"),
            Backend::Sqlite => expr.to_owned(),
        }
    }

    /// A native time column read back as RFC 3339 UTC text with
    /// microseconds (what [`parse_timestamp`] reads), whatever the session's
    /// time zone.
    pub fn instant_out(self, column: &str) -> String {
        match self {
            Backend::Postgres => {
                format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            }
            Backend::Sqlite => column.to_owned(),
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
    /// Create a PostgreSQL database that does not exist yet (as the URL's
    /// user, through the server's `postgres` database).
    pub create_missing: bool,
}

/// The defaults of [`DbOptions`], for flags that set them.
pub mod defaults {
    /// Connections per pool.
    pub const MAX_CONNECTIONS: u32 = 16;
    /// SQLite's `synchronous`: survives a process crash.
    pub const SQLITE_SYNCHRONOUS: &str = "NORMAL";
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: defaults::MAX_CONNECTIONS,
            sqlite_synchronous: defaults::SQLITE_SYNCHRONOUS.into(),
            create_missing: false,
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

/// The URL with any password replaced by `***`, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => {
            // userinfo ends at the last '@' before the path.
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{path}")
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    // A password may also come as a query parameter.
    if let Some(i) = out.find("password=") {
        let start = i + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// A pooled PostgreSQL connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A PostgreSQL pool. sqlx pings every connection it hands out: a second
/// round trip for each one-statement query (a third of a GET's time). This
/// one pings only a connection that sat idle long enough to have been cut
/// (a restart, a proxy); one used within the last second has just answered.
async fn postgres_pool(url: &str, options: &DbOptions) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await
}

/// How long the first connection to a server may take before the start
/// fails, naming the server.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first connection to a PostgreSQL server, on its own: its failure says
/// what went wrong (refused, unknown host, bad password, missing database),
/// where a pool would only report that it timed out.
async fn first_connection(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, sqlx::AnyConnection::connect(url)).await {
        Ok(Ok(conn)) => conn.close().await,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000"))
}

/// Creates the database `url` names, connecting to the same server's
/// `postgres` database as the same user.
async fn create_database(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::{ConnectOptions, Connection};
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .ok_or_else(|| sqlx::Error::Configuration("the URL names no database".into()))?
        .to_owned();
    let mut admin: PgConnection = options.database("postgres").connect().await?;
    // An identifier cannot be a bind parameter: quoted, its quotes doubled.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match admin
        .execute(format!("CREATE DATABASE {quoted}").as_str())
        .await
    {
        Ok(_) => tracing::info!(database = %name, "database created"),
        // Another process created it first (processes starting together):
        // 42P04 duplicate_database, or the catalogue's unique index.
        Err(sqlx::Error::Database(d))
            if matches!(d.code().as_deref(), Some("42P04") | Some("23505")) => {}
        Err(e) => return Err(e),
    }
    admin.close().await?;
    Ok(())
}

/// A connection failure that names the server (password hidden) and, for a
/// database that does not exist, says how to make it.
fn connect_error(url: &str, e: sqlx::Error) -> sqlx::Error {
    let missing = is_missing_database(&e);
    let timed_out = matches!(e, sqlx::Error::PoolTimedOut);
    let mut why = format!("cannot connect to {}: ", redact_url(url));
    if timed_out {
        why.push_str(&format!(
            "no answer within {} s",
            FIRST_CONNECT_TIMEOUT.as_secs()
        ));
    } else {
        why.push_str(&e.to_string());
    }
    if missing {
        why.push_str(
            " (create it: pass --create-database (ORDERS_CREATE_DATABASE), run `createdb NAME`, \
             or CREATE DATABASE NAME as a user allowed to)",
        );
    }
    sqlx::Error::Configuration(why.into())
}

impl Db {
    /// Opens a database by URL (`sqlite:PATH` creates the file); logs which
    /// one and how long the connection took, and names it in any error.
    pub async fn connect(url: &str, options: &DbOptions) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let started = std::time::Instant::now();
        let db = Self::open(url, options).await.map_err(|e| match e {
            // A bad URL or setting says so itself, without connecting.
            e @ sqlx::Error::Configuration(_) => e,
            e => connect_error(url, e),
        })?;
        tracing::info!(
            database = %redact_url(url),
            backend = ?db.backend,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "database connected"
        );
        Ok(db)
    }

    async fn open(url: &str, options: &DbOptions) -> Result<Db, sqlx::Error> {
        let backend = Backend::of_url(url)?;
        match backend {
            Backend::Postgres => {
                match first_connection(url).await {
                    Err(e) if options.create_missing && is_missing_database(&e) => {
                        create_database(url).await?;
                        first_connection(url).await?;
                    }
                    other => other?,
                }
                let pool = postgres_pool(url, options).await?;
                Ok(Db {
                    backend,
                    writer: pool.clone(),
                    pool,
                    url: DbUrl(url.into()),
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
                                // SQLite's default page cache is 2 MiB: with
                                // a log of millions of events every insert
                                // into its indexes would read pages again.
                                conn.execute("PRAGMA cache_size = -32768").await?;
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
                    url: DbUrl(url.into()),
                })
            }
        }
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
        let mut tx = self.writer.begin().await?;
        if self.backend == Backend::Postgres {
            tx.execute("SET LOCAL synchronous_commit TO OFF").await?;
        }
        Ok(tx)
    }

    /// A read-only transaction on the read pool that sees one moment of the
    /// database throughout (SQLite: any read transaction in WAL mode;
    /// PostgreSQL: repeatable read).
    pub async fn begin_snapshot(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await?;
        }
        Ok(tx)
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
